//! Every error answer: its status, and a message that names the problem.

use std::time::{Duration, Instant};

use crate::common::{get, model_dir, models, png, post, post_json, TestServer, SIZE};

fn error_of(a: &crate::common::Answer) -> String {
    a.json()["error"].as_str().unwrap().to_string()
}

#[test]
fn bad_bytes_unknown_models_and_bad_queries() {
    let m = models();
    let s = TestServer::start(model_dir(&[("a", &m.a)]), |_| {});
    let a = post(
        &s.url("/predict/a"),
        "image/png",
        b"plain text, not a picture at all",
    );
    assert_eq!(a.status, 400);
    assert!(
        error_of(&a).contains("not a PNG, JPEG, BMP or TIFF"),
        "{}",
        a.body
    );

    let mut truncated = png(64, 64, 0);
    truncated.truncate(truncated.len() / 2);
    let a = post(&s.url("/predict/a"), "image/png", &truncated);
    assert_eq!(a.status, 400);
    assert!(error_of(&a).contains("cannot decode"), "{}", a.body);

    let a = post(&s.url("/predict/a"), "image/png", b"");
    assert_eq!(a.status, 400);
    assert!(error_of(&a).contains("empty"), "{}", a.body);

    let a = post(&s.url("/predict/nope"), "image/png", &png(64, 64, 0));
    assert_eq!(a.status, 404);
    assert!(error_of(&a).contains("`nope`"));
    assert_eq!(get(&s.url("/v2/models/nope")).status, 404);
    assert_eq!(
        post_json(&s.url("/v2/models/nope/infer"), &serde_json::json!({})).status,
        404
    );

    let a = post(
        &s.url("/predict/a?outputs=heatmap,xray"),
        "image/png",
        &png(64, 64, 0),
    );
    assert_eq!(a.status, 400);
    assert!(error_of(&a).contains("`xray`"));

    // The server is still fine after all that.
    assert_eq!(
        post(&s.url("/predict/a"), "image/png", &png(64, 64, 0)).status,
        200
    );
}

#[test]
fn a_body_over_the_limit_is_413() {
    let m = models();
    let s = TestServer::start(model_dir(&[("a", &m.a)]), |c| c.max_body_bytes = 1000);
    let a = post(&s.url("/predict/a"), "image/png", &vec![7u8; 5000]);
    assert_eq!(a.status, 413);
    assert!(error_of(&a).contains("--max-body-mb"));
    let a = post_json(
        &s.url("/v2/models/a/infer"),
        &serde_json::json!({ "pad": "x".repeat(2000) }),
    );
    assert_eq!(a.status, 413);
}

#[test]
fn wrong_tensors_are_400_naming_the_shape() {
    let m = models();
    let s = TestServer::start(model_dir(&[("a", &m.a)]), |_| {});
    let infer = |body: serde_json::Value| post_json(&s.url("/v2/models/a/infer"), &body);
    let a = infer(serde_json::json!({
        "inputs": [{ "name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": vec![0.0f32; 3 * 32 * 32] }],
    }));
    assert_eq!(a.status, 400);
    assert!(
        error_of(&a).contains(&format!("[N, 3, {SIZE}, {SIZE}]")),
        "{}",
        a.body
    );

    let a = infer(serde_json::json!({
        "inputs": [{ "name": "input", "shape": [1, 3, SIZE, SIZE], "datatype": "FP32", "data": [0.0, 1.0] }],
    }));
    assert_eq!(a.status, 400);
    assert!(error_of(&a).contains("holds 2"), "{}", a.body);

    let a = infer(serde_json::json!({
        "inputs": [{ "name": "input", "shape": [1], "datatype": "INT8", "data": [1] }],
    }));
    assert_eq!(a.status, 400);
    assert!(error_of(&a).contains("INT8"));

    let a = infer(serde_json::json!({
        "inputs": [{ "name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%%"] }],
    }));
    assert_eq!(a.status, 400);
    assert!(error_of(&a).contains("base64"));

    let a = infer(serde_json::json!({ "inputs": [] }));
    assert_eq!(a.status, 400);
    let a = post(
        &s.url("/v2/models/a/infer"),
        "application/json",
        b"{not json",
    );
    assert_eq!(a.status, 400);
    assert!(error_of(&a).contains("KServe v2"));
}

#[test]
fn a_full_queue_answers_503_at_once_with_retry_after() {
    let m = models();
    // One place; the first request waits 1.5 s for company that never comes.
    let s = TestServer::start(model_dir(&[("a", &m.a)]), |c| {
        c.queue = 1;
        c.max_delay = Duration::from_millis(1500);
    });
    let url = s.url("/predict/a");
    let image = png(64, 64, 0);
    let first = {
        let (url, image) = (url.clone(), image.clone());
        std::thread::spawn(move || post(&url, "image/png", &image))
    };
    assert!(crate::common::eventually(Duration::from_secs(5), || {
        get(&s.url("/metrics"))
            .body
            .contains("rd_in_flight_requests 1")
    }));
    let t = Instant::now();
    let second = post(&url, "image/png", &image);
    assert_eq!(second.status, 503, "{}", second.body);
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "503 must be immediate"
    );
    assert_eq!(second.retry_after.as_deref(), Some("1"));
    assert!(error_of(&second).contains("capacity"));
    assert_eq!(first.join().unwrap().status, 200);
}

#[test]
fn a_request_outliving_its_timeout_is_504() {
    let m = models();
    let s = TestServer::start(model_dir(&[("a", &m.a)]), |c| {
        c.request_timeout = Duration::from_millis(200);
        c.max_delay = Duration::from_secs(3);
    });
    let a = post(&s.url("/predict/a"), "image/png", &png(64, 64, 0));
    assert_eq!(a.status, 504, "{}", a.body);
    assert!(error_of(&a).contains("timeout"));
}
