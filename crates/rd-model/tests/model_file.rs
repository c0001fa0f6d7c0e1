//! The model file round-trips exactly and refuses files it cannot trust.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rd_anomaly_map::MapMode;
use rd_backbone::{Backbone, Teacher};
use rd_model::{ModelConfig, ModelMeta, PostStats, ReverseDistillation, Student, Variant};

fn model() -> ReverseDistillation {
    let dev = Device::Cpu;
    let config = ModelConfig {
        backbone: Backbone::Resnet18,
        variant: Variant::Anomalib,
        image_size: (64, 96),
        map_mode: MapMode::Add,
    };
    let teacher = Teacher::seeded(config.backbone, 1, &dev).unwrap();
    let student = Student::seeded(config.backbone, config.variant, 2, &dev).unwrap();
    ReverseDistillation::new(config, teacher, student).unwrap()
}

fn input() -> Tensor {
    let v: Vec<f32> = (0..2 * 3 * 64 * 96)
        .map(|i| ((i % 113) as f32 / 50.0) - 1.0)
        .collect();
    Tensor::from_vec(v, (2, 3, 64, 96), &Device::Cpu).unwrap()
}

fn meta(m: &ReverseDistillation) -> ModelMeta {
    let mut meta = ModelMeta::new(m.config(), "seeded(1)");
    meta.post = PostStats {
        image_threshold: Some(1.25),
        pixel_threshold: Some(0.75),
        image_min: Some(0.5),
        image_max: Some(2.0),
        pixel_min: None,
        pixel_max: Some(3.0),
    };
    meta
}

#[test]
fn save_then_load_gives_the_same_maps_metadata_and_optimizer_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let m = model();
    let state = vec![(
        "adam.m.decoder.layer1.0.conv1.weight".to_string(),
        Tensor::ones((2, 2), DType::F32, &Device::Cpu).unwrap(),
    )];
    m.save(&path, &meta(&m), &state).unwrap();
    let loaded = ReverseDistillation::load(&path, &Device::Cpu).unwrap();
    assert_eq!(loaded.meta, meta(&m));
    assert_eq!(loaded.optimizer_state.len(), 1);
    let a: Vec<f32> = m
        .anomaly_maps(&input())
        .unwrap()
        .map
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let b: Vec<f32> = loaded
        .model
        .anomaly_maps(&input())
        .unwrap()
        .map
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(a, b);
    // no temporary file is left behind
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

fn rewrite(
    src: &Path,
    dst: &Path,
    edit: impl FnOnce(&mut HashMap<String, Tensor>, &mut HashMap<String, String>),
) {
    let file = rd_backbone::WeightFile::open(src).unwrap();
    let mut meta = file.metadata().unwrap();
    let mut tensors = candle_core::safetensors::load(src, &Device::Cpu).unwrap();
    edit(&mut tensors, &mut meta);
    safetensors::serialize_to_file(
        tensors.iter().map(|(k, v)| (k.as_str(), v)),
        Some(meta),
        dst,
    )
    .unwrap();
}

#[test]
fn untrustworthy_files_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    let m = model();
    m.save(&good, &meta(&m), &[]).unwrap();
    let err = |p: &Path| {
        ReverseDistillation::load(p, &Device::Cpu)
            .unwrap_err()
            .to_string()
    };

    let p = dir.path().join("newer.safetensors");
    rewrite(&good, &p, |_, meta| {
        meta.insert("format_version".into(), "99".into());
    });
    assert!(
        err(&p).contains("version 99") && err(&p).contains("update rd"),
        "{}",
        err(&p)
    );

    let p = dir.path().join("anomalib.safetensors");
    rewrite(&good, &p, |_, meta| meta.clear());
    assert!(err(&p).contains("rd import"), "{}", err(&p));

    let p = dir.path().join("extra.safetensors");
    rewrite(&good, &p, |t, _| {
        t.insert(
            "something.else".into(),
            Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    assert!(err(&p).contains("something.else"), "{}", err(&p));

    let p = dir.path().join("missing.safetensors");
    rewrite(&good, &p, |t, _| {
        t.remove("decoder.layer3.1.bn2.running_var");
    });
    assert!(
        err(&p).contains("decoder.layer3.1.bn2.running_var"),
        "{}",
        err(&p)
    );

    let p = dir.path().join("truncated.safetensors");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
    assert!(err(&p).contains("truncated.safetensors"), "{}", err(&p));

    let p = dir.path().join("absent.safetensors");
    assert!(err(&p).contains("absent.safetensors"), "{}", err(&p));
}
