//! Weight files that are wrong in every way a user can get them wrong: each gives an error naming
//! the problem, never a panic.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rd_backbone::{Backbone, BackboneError, Teacher, WeightFile};

fn seeded_tensors() -> HashMap<String, Tensor> {
    let (_, store) = Teacher::seeded(Backbone::Resnet18, 7, &Device::Cpu).unwrap();
    store.tensors().into_iter().collect()
}

fn write(dir: &Path, name: &str, tensors: &HashMap<String, Tensor>) -> std::path::PathBuf {
    let path = dir.join(name);
    candle_core::safetensors::save(tensors, &path).unwrap();
    path
}

fn load(path: &Path) -> Result<Teacher, BackboneError> {
    let file = WeightFile::open(path)?;
    Teacher::load(file.into(), Backbone::Resnet18, &Device::Cpu).map(|(t, _)| t)
}

fn input() -> Tensor {
    let v: Vec<f32> = (0..3 * 64 * 64)
        .map(|i| ((i % 97) as f32 / 97.0) - 0.5)
        .collect();
    Tensor::from_vec(v, (1, 3, 64, 64), &Device::Cpu).unwrap()
}

#[test]
fn a_saved_teacher_reloads_to_the_same_features_in_f32_and_f16() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = seeded_tensors();
    let (seeded, _) = Teacher::seeded(Backbone::Resnet18, 7, &Device::Cpu).unwrap();
    let want = seeded.forward(&input()).unwrap();

    let mut with_extras = tensors.clone();
    // hub files carry layer4, fc and num_batches_tracked; all are ignored
    with_extras.insert(
        "layer4.0.conv1.weight".into(),
        Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap(),
    );
    with_extras.insert(
        "fc.weight".into(),
        Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap(),
    );
    with_extras.insert(
        "bn1.num_batches_tracked".into(),
        Tensor::new(&[3i64], &Device::Cpu).unwrap(),
    );
    let got = load(&write(dir.path(), "f32.safetensors", &with_extras))
        .unwrap()
        .forward(&input())
        .unwrap();
    for i in 0..3 {
        let d = (&got[i] - &want[i])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0, "layer{}", i + 1);
    }

    let half: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.to_dtype(DType::F16).unwrap()))
        .collect();
    let got = load(&write(dir.path(), "f16.safetensors", &half))
        .unwrap()
        .forward(&input())
        .unwrap();
    let scale = want[2]
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let d = (&got[2] - &want[2])
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        d < 0.05 * scale,
        "f16 weights drift too far: {d} vs scale {scale}"
    );
}

#[test]
fn a_missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = seeded_tensors();
    t.remove("layer2.0.downsample.0.weight");
    let err = load(&write(dir.path(), "m.safetensors", &t)).unwrap_err();
    assert!(
        matches!(err, BackboneError::MissingTensor { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("layer2.0.downsample.0.weight") && msg.contains("m.safetensors"),
        "{msg}"
    );
}

#[test]
fn a_wrong_shape_names_tensor_and_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = seeded_tensors();
    t.insert(
        "layer1.0.conv1.weight".into(),
        Tensor::zeros((64, 64, 1, 1), DType::F32, &Device::Cpu).unwrap(),
    );
    let msg = load(&write(dir.path(), "s.safetensors", &t))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("layer1.0.conv1.weight"), "{msg}");
    assert!(
        msg.contains("[64, 64, 1, 1]") && msg.contains("[64, 64, 3, 3]"),
        "{msg}"
    );
}

#[test]
fn tensors_of_a_deeper_network_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = seeded_tensors();
    t.insert(
        "layer1.2.conv1.weight".into(),
        Tensor::zeros((64, 64, 3, 3), DType::F32, &Device::Cpu).unwrap(),
    );
    let msg = load(&write(dir.path(), "x.safetensors", &t))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("unexpected") && msg.contains("layer1.2.conv1.weight"),
        "{msg}"
    );
}

#[test]
fn truncated_empty_and_foreign_files_are_refused_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.safetensors", &seeded_tensors());
    let bytes = std::fs::read(&good).unwrap();

    let cases: [(&str, &[u8]); 4] = [
        ("truncated.safetensors", &bytes[..bytes.len() / 2]),
        ("empty.safetensors", b""),
        (
            "text.safetensors",
            b"this is not a weights file, just some text\n",
        ),
        (
            "pickle.pt",
            b"PK\x03\x04\x14\x00\x00\x00\x08\x00archive/data.pkl",
        ),
    ];
    for (name, contents) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        let err = load(&path).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, BackboneError::WeightsFile { .. }),
            "{name}: {err:?}"
        );
        assert!(msg.contains(name), "{name}: {msg}");
    }
    let msg = load(&dir.path().join("absent.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("absent.safetensors"), "{msg}");
}

#[test]
fn inputs_must_be_multiples_of_32() {
    let (teacher, _) = Teacher::seeded(Backbone::Resnet18, 1, &Device::Cpu).unwrap();
    let x = Tensor::zeros((1, 3, 250, 256), DType::F32, &Device::Cpu).unwrap();
    let err = teacher.forward(&x).unwrap_err();
    assert!(
        matches!(
            err,
            BackboneError::InputSize {
                height: 250,
                width: 256
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("multiples of 32"));
    let shapes = teacher
        .forward(&Tensor::zeros((2, 3, 224, 96), DType::F32, &Device::Cpu).unwrap())
        .unwrap();
    assert_eq!(shapes[0].dims(), &[2, 64, 56, 24]);
    assert_eq!(shapes[2].dims(), &[2, 256, 14, 6]);
}
