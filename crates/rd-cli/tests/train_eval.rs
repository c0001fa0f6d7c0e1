//! `rd train` then `rd eval` then `rd predict` on a tiny synthetic dataset, as a user runs them.

mod common;

use common::{rd, text};

use std::path::Path;

use rd_dataset::synthetic::{generate, SyntheticConfig};
use rd_dataset::SyntheticCategory;

fn tiny_dataset(root: &Path) {
    let config = SyntheticConfig {
        size: 64,
        train_good: 6,
        test_good: 2,
        test_defective: 3,
        categories: vec![SyntheticCategory::Puck],
        ..SyntheticConfig::default()
    };
    generate(root, &config).unwrap();
}

#[test]
fn train_evaluate_and_predict_on_synthetic_data() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("data");
    tiny_dataset(&data);
    let model = d.join("puck.safetensors");
    let base = [
        "train",
        "--data",
        data.to_str().unwrap(),
        "--category",
        "puck",
        "--backbone",
        "resnet18",
        "--image-size",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "3",
        "--json",
        "-o",
        model.to_str().unwrap(),
    ];

    // without weights and without permission to go random, training refuses and says why
    let o = rd(&base);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("timm/resnet18.a1_in1k") && t.contains("--teacher-weights"),
        "{t}"
    );
    assert!(!model.exists());

    let mut args = base.to_vec();
    args.push("--allow-random-teacher");
    let o = rd(&args);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("RANDOM"),
        "the random teacher is announced loudly"
    );
    let metrics: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(metrics["images"], 5);
    assert_eq!(metrics["anomalous_images"], 3);
    assert!(metrics["image_auroc"].as_f64().unwrap() >= 0.0);
    assert!(d.join("puck.log.jsonl").is_file());
    assert!(d.join("puck.checkpoint.safetensors").is_file());

    let o = rd(&["inspect", model.to_str().unwrap(), "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let post = &info["meta"]["post"];
    for k in [
        "image_threshold",
        "pixel_threshold",
        "image_min",
        "image_max",
        "pixel_min",
        "pixel_max",
    ] {
        assert!(post[k].is_number(), "{k} fitted: {post}");
    }
    let training = &info["meta"]["training"];
    assert_eq!(training["epochs"], 1);
    assert!(training["metrics"]["image_auroc"].is_number(), "{training}");
    assert_eq!(info["meta"]["teacher_weights"], "random (seed 42)");
    assert_eq!(
        info["optimizer_state"], false,
        "the model file is not a checkpoint"
    );

    // evaluation with the stored thresholds reproduces training's numbers
    let o = rd(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--category",
        "puck",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["thresholds"], "from the model file");
    let eval_dir = d.join("puck.eval");
    for f in ["metrics.json", "metrics.md", "roc.png", "pro.png"] {
        assert!(eval_dir.join(f).is_file(), "{f} written beside the model");
    }
    let roc = image::open(eval_dir.join("roc.png")).unwrap();
    assert_eq!((roc.width(), roc.height()), (640, 480));
    for k in [
        "image_auroc",
        "pixel_auroc",
        "image_f1",
        "pixel_f1",
        "pixel_aupro",
    ] {
        let a = report["metrics"][k].as_f64().unwrap();
        let b = metrics[k].as_f64().unwrap();
        assert!((a - b).abs() < 1e-9, "{k}: eval {a} vs train {b}");
    }

    // a folder of test images: every one scored, with overlays named after their folder
    let out = d.join("pred");
    let test_dir = data.join("puck").join("test");
    let pattern = format!("{}/*/*.png", test_dir.display());
    let o = rd(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        &pattern,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let lines = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 5);
    for l in lines.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(
            v["label"].is_boolean() && v["normalized_score"].is_number(),
            "{v}"
        );
        assert!(Path::new(v["contour"].as_str().unwrap()).is_file());
    }
}

#[test]
fn eval_lists_categories_when_none_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_dataset(&data);
    let model = dir.path().join("m.safetensors");
    std::fs::write(&model, b"").unwrap();
    let o = rd(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("--category is required") && text(&o).contains("puck"),
        "{}",
        text(&o)
    );
    let o = rd(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--category",
        "puck",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("m.safetensors"), "{}", text(&o));
}

/// A training process killed outright (SIGKILL, no chance to clean up) leaves a checkpoint that
/// resumes to completion; nothing torn is ever left behind.
#[cfg(unix)]
#[test]
fn a_killed_training_run_resumes_from_its_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("data");
    tiny_dataset(&data);
    let model = d.join("m.safetensors");
    let ckpt = d.join("m.checkpoint.safetensors");
    let args = [
        "train",
        "--data",
        data.to_str().unwrap(),
        "--category",
        "puck",
        "--backbone",
        "resnet18",
        "--image-size",
        "64",
        "--epochs",
        "200",
        "--batch-size",
        "3",
        "--checkpoint-every",
        "1",
        "--allow-random-teacher",
        "--quiet",
        "-o",
        model.to_str().unwrap(),
    ];
    let mut child = common::rd_command()
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !ckpt.exists() {
        assert!(started.elapsed().as_secs() < 120, "no checkpoint appeared");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(700));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !model.exists(),
        "the final model is only written at the end"
    );
    // a kill may land mid-write, but the checkpoint is always a complete model file
    let o = rd(&["inspect", ckpt.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let done = info["meta"]["training"]["epochs"].as_u64().unwrap();
    assert!(done >= 1 && info["optimizer_state"] == true, "{info}");

    let epochs = (done + 1).to_string();
    let at = args.iter().position(|a| *a == "--epochs").unwrap() + 1;
    let mut resume = args.to_vec();
    resume[at] = &epochs; // one more epoch than already done
    resume.extend(["--resume", ckpt.to_str().unwrap()]);
    let o = rd(&resume);
    assert!(o.status.success(), "{}", text(&o));
    let o = rd(&["inspect", model.to_str().unwrap(), "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        info["meta"]["training"]["epochs"].as_u64().unwrap(),
        done + 1
    );
}
