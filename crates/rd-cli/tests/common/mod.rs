//! Running the `rd` binary from the integration tests, offline and with no user cache.

#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::Device;
use rd_anomaly_map::MapMode;
use rd_backbone::{Backbone, Teacher};
use rd_model::{ModelConfig, ModelMeta, PostStats, ReverseDistillation, Student, Variant};

/// `rd` with no network and an empty Hugging Face cache.
pub fn rd_command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rd"));
    c.env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", "/nonexistent-rd-test-cache");
    c
}

/// Runs `rd args…` to completion.
pub fn rd(args: &[&str]) -> Output {
    rd_command()
        .args(args)
        .output()
        .expect("the rd binary runs")
}

/// Everything the run printed, stdout then stderr.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `rd import --from anomalib` of a shared parity case (backbone and size from its `meta.json`)
/// into `out`; returns the case's metadata.
pub fn import_parity_case(case: &std::path::Path, out: &std::path::Path) -> serde_json::Value {
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(case.join("meta.json")).expect("meta.json is readable"),
    )
    .expect("meta.json is JSON");
    let backbone = meta["config"]["backbone"].as_str().expect("a backbone");
    let size = meta["config"]["input_size"][0].to_string();
    let weights = case.join("weights.safetensors");
    let o = rd(&[
        "import",
        "--from",
        "anomalib",
        "--weights",
        weights.to_str().unwrap(),
        "--backbone",
        backbone,
        "--image-size",
        &size,
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    meta
}

/// A small seeded model with thresholds, saved to `dir`.
pub fn tiny_model(dir: &Path) -> PathBuf {
    let dev = Device::Cpu;
    let config = ModelConfig {
        backbone: Backbone::Resnet18,
        variant: Variant::Anomalib,
        image_size: (64, 64),
        map_mode: MapMode::Add,
    };
    let model = ReverseDistillation::new(
        config,
        Teacher::seeded(config.backbone, 1, &dev).unwrap(),
        Student::seeded(config.backbone, config.variant, 2, &dev).unwrap(),
    )
    .unwrap();
    let mut meta = ModelMeta::new(&config, "seeded(1)");
    meta.post = PostStats {
        image_threshold: Some(1.0),
        pixel_threshold: Some(1.0),
        image_min: Some(0.5),
        image_max: Some(1.5),
        pixel_min: Some(0.0),
        pixel_max: Some(2.0),
    };
    let path = dir.join("tiny.safetensors");
    model.save(&path, &meta, &[]).unwrap();
    path
}
