//! The student loads from anomalib, Lightning and official RD4AD names, and says clearly when a
//! file is for another variant.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use rd_backbone::{Backbone, Teacher, WeightFile};
use rd_model::{Student, Variant};

fn save(dir: &Path, name: &str, tensors: &HashMap<String, Tensor>) -> std::sync::Arc<WeightFile> {
    let path = dir.join(name);
    candle_core::safetensors::save(tensors, &path).unwrap();
    WeightFile::open(path).unwrap().into()
}

fn renamed(tensors: &[(String, Tensor)], f: impl Fn(&str) -> String) -> HashMap<String, Tensor> {
    tensors.iter().map(|(n, t)| (f(n), t.clone())).collect()
}

fn outputs(student: &Student) -> Vec<f32> {
    let dev = Device::Cpu;
    let (teacher, _) = Teacher::seeded(Backbone::Resnet18, 3, &dev).unwrap();
    let x = Tensor::ones((1, 3, 64, 64), candle_core::DType::F32, &dev).unwrap();
    let (_, s) = student
        .forward_t(&teacher.forward(&x).unwrap(), false)
        .unwrap();
    s[0].flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn anomalib_lightning_and_official_names_give_the_same_student() {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let (reference, store) =
        Student::seeded(Backbone::Resnet18, Variant::Anomalib, 5, &dev).unwrap();
    let want = outputs(&reference);
    let tensors = store.tensors();
    let layouts = [
        ("anomalib.safetensors", renamed(&tensors, |n| n.to_string())),
        (
            "lightning.safetensors",
            renamed(&tensors, |n| format!("model.{n}")),
        ),
        (
            "official.safetensors",
            renamed(&tensors, |n| n.replace("bottleneck.", "bn.")),
        ),
    ];
    for (name, t) in layouts {
        let file = save(dir.path(), name, &t);
        let (student, _) = Student::load(file, Backbone::Resnet18, Variant::Anomalib, &dev)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(outputs(&student), want, "{name}");
    }
}

#[test]
fn an_official_resnet34_checkpoint_loaded_as_anomalib_says_which_variant() {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let (_, store) = Student::seeded(Backbone::Resnet34, Variant::Official, 1, &dev).unwrap();
    let file = save(
        dir.path(),
        "rd4ad.safetensors",
        &store.tensors().into_iter().collect(),
    );
    let err = Student::load(file.clone(), Backbone::Resnet34, Variant::Anomalib, &dev)
        .unwrap_err()
        .to_string();
    assert!(err.contains("bottleneck.bn_layer.2."), "{err}");
    assert!(err.contains("`official` variant"), "{err}");
    assert!(Student::load(file, Backbone::Resnet34, Variant::Official, &dev).is_ok());
}

#[test]
fn a_wide_official_checkpoint_has_a_shape_error_under_anomalib() {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let (_, store) = Student::seeded(Backbone::Resnet50, Variant::Anomalib, 1, &dev).unwrap();
    let file = save(
        dir.path(),
        "r50.safetensors",
        &store.tensors().into_iter().collect(),
    );
    let err = Student::load(file, Backbone::Resnet18, Variant::Anomalib, &dev)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bottleneck.conv1.weight") && err.contains("shape"),
        "{err}"
    );
}
