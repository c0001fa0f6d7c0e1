//! Every endpoint answering as documented.

use base64::Engine;

use crate::common::{
    get, model_dir, models, offline_score, png, post, post_json, TestServer, SIZE,
};

fn server() -> TestServer {
    let m = models();
    TestServer::start(model_dir(&[("a", &m.a), ("raw", &m.raw)]), |_| {})
}

fn decode_png(b64: &str) -> image::DynamicImage {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    image::load_from_memory_with_format(&bytes, image::ImageFormat::Png).unwrap()
}

#[test]
fn predict_scores_an_image_file_as_rd_predict_does() {
    let s = server();
    let bytes = png(96, 80, 0);
    let file = s.dir.path().join("part.png");
    std::fs::write(&file, &bytes).unwrap();
    let a = post(&s.url("/predict/a"), "image/png", &bytes);
    assert_eq!(a.status, 200, "{}", a.body);
    let j = a.json();
    assert_eq!(j["model"], "a");
    let score = j["score"].as_f64().unwrap() as f32;
    let offline = offline_score(&models().a, &file);
    assert!(
        (score - offline).abs() <= 1e-5,
        "served {score} vs offline {offline}"
    );
    // Thresholds in the file: t = 1, min 0.5, max 1.5.
    let normalized = j["normalized_score"].as_f64().unwrap() as f32;
    let want = ((score - 1.0) / 1.0 + 0.5).clamp(0.0, 1.0);
    assert!((normalized - want).abs() < 1e-6);
    let label = if want > 0.5 { "anomalous" } else { "normal" };
    assert_eq!(j["label"], label);
    assert_eq!(j["threshold"].as_f64().unwrap(), 1.0);
    assert_eq!(j["image_size"]["width"], 96);
    assert_eq!(j["image_size"]["height"], 80);
    assert!(j.get("heatmap").is_none(), "drawings only when asked for");
}

#[test]
fn predict_takes_a_multipart_form_and_draws_heatmap_and_mask() {
    let s = server();
    let bytes = png(72, 60, 1);
    let raw = post(&s.url("/predict/a"), "image/png", &bytes).json();

    let boundary = "XyZboundary42";
    let mut form = Vec::new();
    form.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nline 3\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"p.png\"\r\n\
             Content-Type: image/png\r\n\r\n"
        )
        .as_bytes(),
    );
    form.extend_from_slice(&bytes);
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let a = post(
        &s.url("/predict/a?outputs=heatmap,mask"),
        &format!("multipart/form-data; boundary={boundary}"),
        &form,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let j = a.json();
    assert_eq!(j["score"], raw["score"], "the same image scores the same");
    let heat = decode_png(j["heatmap"].as_str().unwrap());
    assert_eq!((heat.width(), heat.height()), (72, 60));
    let mask = decode_png(j["mask"].as_str().unwrap()).to_luma8();
    assert_eq!(mask.dimensions(), (72, 60));
    assert!(mask.pixels().all(|p| p[0] == 0 || p[0] == 255));

    // A form without the field is refused, saying which field.
    let mut empty = Vec::new();
    empty.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"photo\"\r\n\r\nx\r\n--{boundary}--\r\n"
        )
        .as_bytes(),
    );
    let e = post(
        &s.url("/predict/a"),
        &format!("multipart/form-data; boundary={boundary}"),
        &empty,
    );
    assert_eq!(e.status, 400);
    assert!(e.json()["error"].as_str().unwrap().contains("`image`"));
}

#[test]
fn a_model_without_statistics_gives_raw_scores_and_no_label() {
    let s = server();
    let j = post(
        &s.url("/predict/raw?outputs=heatmap,mask"),
        "image/png",
        &png(64, 64, 2),
    )
    .json();
    assert!(j["score"].as_f64().unwrap() > 0.0);
    assert!(j["normalized_score"].is_null());
    assert!(j["label"].is_null());
    assert!(j["heatmap"].is_string());
    assert!(j.get("mask").is_none(), "no mask without pixel statistics");
}

#[test]
fn health_and_model_metadata() {
    let s = server();
    assert_eq!(get(&s.url("/v2/health/live")).status, 200);
    let r = get(&s.url("/v2/health/ready"));
    assert_eq!((r.status, r.json()["ready"].as_bool()), (200, Some(true)));
    assert_eq!(get(&s.url("/v2/models/a/ready")).status, 200);
    assert_eq!(get(&s.url("/v2/models/nope/ready")).status, 404);
    let m = get(&s.url("/v2/models/a"));
    assert_eq!(m.status, 200);
    let m = m.json();
    assert_eq!(m["name"], "a");
    assert_eq!(m["inputs"][0]["name"], "input");
    assert_eq!(m["inputs"][0]["datatype"], "FP32");
    assert_eq!(
        m["inputs"][0]["shape"],
        serde_json::json!([-1, 3, SIZE, SIZE])
    );
    let names: Vec<&str> = m["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["pred_score", "pred_label", "anomaly_map", "pred_mask"]
    );
    assert_eq!(m["parameters"]["image_threshold"], 1.0);
    let list = get(&s.url("/v2/models")).json();
    let listed: Vec<&str> = list["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["a", "raw"]);
    assert_eq!(get(&s.url("/v2")).json()["name"], "rd");
    s.stop().expect("a clean stop");
}

/// The FP32 input of an image exactly as the server prepares it (via rd-model's Predictor).
fn prepared(bytes: &[u8]) -> Vec<f32> {
    let p = rd_model::Predictor::load(&models().a, &candle_core::Device::Cpu).unwrap();
    let img = rd_dataset::load_rgb_bytes(
        bytes,
        std::path::Path::new("x"),
        &rd_dataset::LoadOptions::default(),
    )
    .unwrap();
    p.prepare(&img)
}

#[test]
fn kserve_infer_with_fp32_and_bytes_tensors() {
    let s = server();
    let images = [png(64, 64, 3), png(100, 90, 4)];
    let scores: Vec<f64> = images
        .iter()
        .map(|b| {
            post(&s.url("/predict/a"), "image/png", b).json()["normalized_score"]
                .as_f64()
                .unwrap()
        })
        .collect();

    let data: Vec<f32> = images.iter().flat_map(|b| prepared(b)).collect();
    let req = serde_json::json!({
        "id": "req-1",
        "inputs": [{ "name": "input", "shape": [2, 3, SIZE, SIZE], "datatype": "FP32", "data": data }],
    });
    let a = post_json(&s.url("/v2/models/a/infer"), &req);
    assert_eq!(a.status, 200, "{}", a.body);
    let j = a.json();
    assert_eq!(j["id"], "req-1");
    assert_eq!(j["model_name"], "a");
    let out = |name: &str| {
        j["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .unwrap_or_else(|| panic!("output {name}"))
            .clone()
    };
    let pred = out("pred_score");
    assert_eq!(pred["shape"], serde_json::json!([2]));
    for (k, want) in scores.iter().enumerate() {
        let got = pred["data"][k].as_f64().unwrap();
        assert!((got - want).abs() < 1e-5, "image {k}: {got} vs {want}");
    }
    assert_eq!(out("pred_label")["datatype"], "BOOL");
    let map = out("anomaly_map");
    assert_eq!(map["shape"], serde_json::json!([2, 1, SIZE, SIZE]));
    assert_eq!(map["data"].as_array().unwrap().len(), 2 * SIZE * SIZE);
    assert_eq!(
        out("pred_mask")["data"].as_array().unwrap().len(),
        2 * SIZE * SIZE
    );

    // BYTES: the encoded files themselves, resized by the server; only the score asked for.
    let b64: Vec<String> = images
        .iter()
        .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
        .collect();
    let req = serde_json::json!({
        "inputs": [{ "name": "image", "shape": [2], "datatype": "BYTES", "data": b64 }],
        "outputs": [{ "name": "pred_score" }],
    });
    let j = post_json(&s.url("/v2/models/a/infer"), &req).json();
    let outputs = j["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 1);
    for (k, want) in scores.iter().enumerate() {
        let got = outputs[0]["data"][k].as_f64().unwrap();
        assert!(
            (got - want).abs() < 1e-5,
            "BYTES image {k}: {got} vs {want}"
        );
    }
}

#[test]
fn metrics_count_requests_batches_and_models() {
    let s = server();
    post(&s.url("/predict/a"), "image/png", &png(64, 64, 5));
    post(&s.url("/predict/a"), "image/png", b"not an image");
    post(&s.url("/predict/ghost"), "image/png", b"x");
    let m = get(&s.url("/metrics"));
    assert_eq!(m.status, 200);
    assert!(m.content_type.unwrap().starts_with("text/plain"));
    let text = m.body;
    for needle in [
        r#"rd_requests_total{endpoint="predict",model="a",status="200"} 1"#,
        r#"rd_requests_total{endpoint="predict",model="a",status="400"} 1"#,
        r#"rd_requests_total{endpoint="predict",model="unknown",status="404"} 1"#,
        r#"rd_batch_size_count{model="a"} 1"#,
        r#"rd_queue_duration_seconds_count{model="a"} 1"#,
        r#"rd_compute_duration_seconds_count{model="a"} 1"#,
        "rd_models_loaded 2",
        "rd_queue_depth 0",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in\n{text}");
    }
}
