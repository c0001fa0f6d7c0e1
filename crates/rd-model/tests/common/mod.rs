//! Shared fixtures: a tiny synthetic MVTec-style category and a tiny seeded resnet18 model.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Device;
use rd_anomaly_map::MapMode;
use rd_backbone::{Backbone, Teacher};
use rd_dataset::synthetic::{generate, DefectKind, SyntheticCategory, SyntheticConfig};
use rd_dataset::{layout::mvtec, Splits};
use rd_model::{ModelConfig, ModelMeta, ReverseDistillation, Student, Variant};

/// Side of the images and of the model input.
pub const SIZE: usize = 32;

/// A category with 5 good training images (batches of 2 give 2 + 2 + 1, the last folded) and
/// 2 good + 3 defective test images with masks.
pub fn dataset(root: &Path) -> Splits {
    let config = SyntheticConfig {
        seed: 7,
        size: SIZE as u32,
        train_good: 5,
        test_good: 2,
        test_defective: 3,
        categories: vec![SyntheticCategory::Fabric],
        defects: DefectKind::ALL.to_vec(),
    };
    generate(root, &config).unwrap();
    mvtec::load(root, SyntheticCategory::Fabric.name()).unwrap()
}

/// A seeded resnet18 model at `SIZE`×`SIZE`.
pub fn model() -> ReverseDistillation {
    seeded(Backbone::Resnet18, SIZE, (0, 1))
}

/// A model of `backbone` at `size`² from the seeds of its teacher and student (anomalib
/// variant, add mode).
pub fn seeded(backbone: Backbone, size: usize, (t, s): (u64, u64)) -> ReverseDistillation {
    let dev = Device::Cpu;
    let config = ModelConfig {
        backbone,
        variant: Variant::Anomalib,
        image_size: (size, size),
        map_mode: MapMode::Add,
    };
    let teacher = Teacher::seeded(backbone, t, &dev).unwrap();
    let student = Student::seeded(backbone, config.variant, s, &dev).unwrap();
    ReverseDistillation::new(config, teacher, student).unwrap()
}

/// Metadata for `model`.
pub fn meta(model: &ReverseDistillation) -> ModelMeta {
    ModelMeta::new(model.config(), "seeded(0)")
}

/// The student's tensors (parameters and BatchNorm statistics) by name.
pub fn student_tensors(model: &ReverseDistillation) -> BTreeMap<String, Vec<f32>> {
    model
        .student_params()
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            let v = t
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            (n, v)
        })
        .collect()
}

/// Asserts two models have bit-identical student tensors.
pub fn assert_same_student(a: &ReverseDistillation, b: &ReverseDistillation) {
    let (ta, tb) = (student_tensors(a), student_tensors(b));
    assert_eq!(ta.len(), tb.len());
    for ((na, va), (nb, vb)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        let same = va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "tensor {na} differs");
    }
}
