//! Parity of `rd-metrics` with anomalib's own metric classes on `$RD_SHARED/metrics/<case>/`.
//!
//! Each case holds `metrics.safetensors` (`maps` f32 [N,H,W], `masks` u8 [N,H,W], `scores` f32
//! [N], `labels` u8 [N]) and `expected.json`, written by `reference/metrics_ref.py` with
//! anomalib 2.7 (`_AUROC`, `_AUPRO`, `_F1AdaptiveThreshold`, `_F1Max`). Every value must match to
//! 1e-6 absolute.

use candle_core::{Device, Tensor};
use rd_metrics::{aupro, auroc, f1_adaptive_threshold, f1_max, MapShape, MinMax, Normalizer};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

const TOL: f64 = 1e-6;

struct Case {
    maps: Vec<f32>,
    masks: Vec<u8>,
    shape: MapShape,
    scores: Vec<f32>,
    labels: Vec<u8>,
    expected: Value,
}

fn load(dir: &Path) -> Case {
    let tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("metrics.safetensors"), &Device::Cpu)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let get = |name: &str| {
        tensors
            .get(name)
            .unwrap_or_else(|| panic!("{}: no tensor `{name}`", dir.display()))
    };
    let (n, h, w) = get("maps").dims3().unwrap();
    assert_eq!(get("masks").dims3().unwrap(), (n, h, w), "masks shape");
    let flat_f32 = |name: &str| get(name).flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let flat_u8 = |name: &str| get(name).flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let text = std::fs::read_to_string(dir.join("expected.json"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    Case {
        maps: flat_f32("maps"),
        masks: flat_u8("masks"),
        shape: MapShape::new(n, h, w),
        scores: flat_f32("scores"),
        labels: flat_u8("labels"),
        expected: serde_json::from_str(&text).expect("expected.json"),
    }
}

/// Compares one value, printing it; returns whether it is within tolerance.
fn check(case: &str, key: &str, got: f64, expected: &Value) -> bool {
    let want = expected[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{case}: expected.json has no number `{key}`"));
    let diff = (got - want).abs();
    let ok = diff <= TOL;
    println!(
        "{case} {key:<30} got {got:<22} expected {want:<22} |diff| {diff:.2e} {}",
        if ok { "ok" } else { "MISMATCH" }
    );
    ok
}

#[test]
fn metrics_match_anomalib() {
    let Some(cases) = rd_tests::fixture_cases("metrics") else {
        return;
    };
    let mut failures = Vec::new();
    for dir in cases {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let c = load(&dir);
        let e = &c.expected;
        let mut values: Vec<(&str, f64)> = vec![
            ("image_auroc", auroc(&c.scores, &c.labels).unwrap()),
            ("pixel_auroc", auroc(&c.maps, &c.masks).unwrap()),
        ];
        for (key, limit) in [
            ("aupro_fpr0.3", 0.3),
            ("aupro_fpr0.05", 0.05),
            ("aupro_fpr1.0", 1.0),
        ] {
            values.push((key, aupro(&c.maps, &c.masks, c.shape, limit).unwrap()));
        }
        let image_t = f1_adaptive_threshold(&c.scores, &c.labels).unwrap();
        let pixel_t = f1_adaptive_threshold(&c.maps, &c.masks).unwrap();
        values.push(("image_f1_adaptive_threshold", f64::from(image_t)));
        values.push(("pixel_f1_adaptive_threshold", f64::from(pixel_t)));
        let image_f1 = f1_max(&c.scores, &c.labels).unwrap();
        let pixel_f1 = f1_max(&c.maps, &c.masks).unwrap();
        values.push(("image_f1_max", image_f1.f1));
        values.push(("image_f1_max_threshold", f64::from(image_f1.threshold)));
        values.push(("pixel_f1_max", pixel_f1.f1));
        values.push(("pixel_f1_max_threshold", f64::from(pixel_f1.threshold)));
        let image_stats = MinMax::of(&c.scores).unwrap();
        let pixel_stats = MinMax::of(&c.maps).unwrap();
        values.push(("image_min", f64::from(image_stats.min)));
        values.push(("image_max", f64::from(image_stats.max)));
        values.push(("pixel_min", f64::from(pixel_stats.min)));
        values.push(("pixel_max", f64::from(pixel_stats.max)));
        for (key, got) in values {
            if !check(&name, key, got, e) {
                failures.push(format!("{name}: {key}"));
            }
        }

        // anomalib normalisation of the image scores with the image statistics, and `> 0.5`.
        let norm = Normalizer::new(image_t, image_stats);
        let want_scores = e["normalized_scores"]
            .as_array()
            .expect("normalized_scores");
        let want_labels = e["pred_labels"].as_array().expect("pred_labels");
        assert_eq!(
            want_scores.len(),
            c.scores.len(),
            "{name}: normalized_scores"
        );
        assert_eq!(want_labels.len(), c.scores.len(), "{name}: pred_labels");
        let mut max_diff = 0.0f64;
        for (i, &s) in c.scores.iter().enumerate() {
            let got = f64::from(norm.normalize(s));
            let want = want_scores[i].as_f64().expect("number");
            max_diff = max_diff.max((got - want).abs());
            if (got - want).abs() > TOL {
                failures.push(format!("{name}: normalized_scores[{i}] {got} vs {want}"));
            }
            let want_label = want_labels[i].as_i64().expect("0/1") == 1;
            if norm.is_anomalous(s) != want_label {
                failures.push(format!("{name}: pred_labels[{i}]"));
            }
        }
        let anomalous = c.scores.iter().filter(|&&s| norm.is_anomalous(s)).count();
        println!(
            "{name} normalized_scores ({}) max |diff| {max_diff:.2e}; pred_labels: {anomalous} anomalous, all equal: {}",
            c.scores.len(),
            !failures.iter().any(|f| f.contains("pred_labels"))
        );
    }
    assert!(failures.is_empty(), "mismatches: {failures:#?}");
}
