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
    assert!(
        !d.join("puck.checkpoint.safetensors").exists(),
        "a completed run removes its checkpoint"
    );

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

/// `rd train` options for a one-epoch run on the tiny data at 64 px, writing `model`.
fn quick_train(model: &str) -> Vec<&str> {
    vec![
        "train",
        "--backbone",
        "resnet18",
        "--image-size",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "3",
        "--allow-random-teacher",
        "--json",
        "-o",
        model,
    ]
}

fn json(stdout: &[u8]) -> serde_json::Value {
    serde_json::from_slice(stdout)
        .unwrap_or_else(|e| panic!("{e}: not JSON: {}", String::from_utf8_lossy(stdout)))
}

#[test]
fn classification_only_mvtec_data_gets_image_level_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("data");
    tiny_dataset(&data);
    std::fs::remove_dir_all(data.join("puck/ground_truth")).unwrap();
    let model = d.join("solar.safetensors");
    let mut args = quick_train(model.to_str().unwrap());
    args.extend(["--data", data.to_str().unwrap(), "--category", "puck"]);
    let o = rd(&args);
    assert!(o.status.success(), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let notes: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("pixel metrics skipped"))
        .collect();
    assert_eq!(notes.len(), 1, "{stderr}");
    assert!(notes[0].contains("ground_truth"), "{}", notes[0]);
    assert!(
        stderr.contains("testing on 2 good, 1 hole, 1 scratch, 1 stain"),
        "{stderr}"
    );
    let metrics = json(&o.stdout);
    assert_eq!(metrics["images"], 5);
    assert_eq!(metrics["anomalous_images"], 3);
    assert!(metrics["image_auroc"].is_number(), "{metrics}");
    for k in ["pixel_auroc", "pixel_f1", "pixel_aupro"] {
        assert!(metrics[k].is_null(), "{k}: {metrics}");
    }

    let out = d.join("eval");
    let o = rd(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--category",
        "puck",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("pixel metrics skipped"), "{}", text(&o));
    let report = json(&o.stdout);
    assert_eq!(report["metrics"]["image_auroc"], metrics["image_auroc"]);
    assert!(report["metrics"]["pixel_auroc"].is_null(), "{report}");
    assert!(out.join("roc.png").is_file() && !out.join("pro.png").exists());

    // Some masks present but one missing: still an error that names the image.
    tiny_dataset(&data);
    std::fs::remove_file(data.join("puck/ground_truth/hole/000_mask.png")).unwrap();
    let o = rd(&args);
    assert!(!o.status.success());
    assert!(text(&o).contains("test/hole/000.png"), "{}", text(&o));
}

#[test]
fn folder_layout_with_good_test_folder_and_defect_folders() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("data");
    tiny_dataset(&data);
    let puck = data.join("puck");
    let model = d.join("line3.safetensors");
    let p = |sub: &str| puck.join(sub).to_str().unwrap().to_string();
    let (train, good) = (p("train/good"), p("test/good"));
    let defects = ["hole", "scratch", "stain"];
    let abnormal: Vec<String> = defects.iter().map(|x| p(&format!("test/{x}"))).collect();
    let masks: Vec<String> = defects
        .iter()
        .map(|x| p(&format!("ground_truth/{x}")))
        .collect();
    let mut args = quick_train(model.to_str().unwrap());
    args.extend([
        "--layout",
        "folder",
        "--data",
        &train,
        "--normal-test-dir",
        &good,
    ]);
    for (a, m) in abnormal.iter().zip(&masks) {
        args.extend(["--abnormal-dir", a.as_str(), "--mask-dir", m.as_str()]);
    }
    args.push("--keep-checkpoint");
    let o = rd(&args);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    // No share of the training images is held out: all 6 train, the 2 good test images test.
    assert!(t.contains("training on 6 images"), "{t}");
    assert!(
        t.contains("testing on 2 good, 1 hole, 1 scratch, 1 stain"),
        "{t}"
    );
    assert!(!t.contains("pixel metrics skipped"), "{t}");
    let metrics = json(&o.stdout);
    assert_eq!(
        (
            metrics["images"].as_u64(),
            metrics["anomalous_images"].as_u64()
        ),
        (Some(5), Some(3))
    );
    assert!(metrics["pixel_auroc"].is_number(), "{metrics}");
    assert!(
        d.join("line3.checkpoint.safetensors").is_file(),
        "--keep-checkpoint keeps it"
    );

    // Without masks: image level only; a held-out share conflicts with the good test folder.
    let o = rd(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--layout",
        "folder",
        "--data",
        &train,
        "--normal-test-dir",
        &good,
        "--abnormal-dir",
        &abnormal[0],
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("no --mask-dir was given"), "{}", text(&o));
    let report = json(&o.stdout);
    assert_eq!(report["metrics"]["images"], 3);
    assert!(report["metrics"]["pixel_f1"].is_null(), "{report}");
    let o = rd(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--layout",
        "folder",
        "--data",
        &train,
        "--normal-test-dir",
        &good,
        "--normal-test-share",
        "0.5",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--normal-test-share"), "{}", text(&o));
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
