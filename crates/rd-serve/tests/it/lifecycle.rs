//! Batching, hot reload and graceful shutdown.

use std::time::Duration;

use crate::common::{eventually, get, model_dir, models, place, png, post, TestServer};

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[test]
fn concurrent_requests_share_batches_and_each_gets_its_own_score() {
    let m = models();
    let s = TestServer::start(model_dir(&[("a", &m.a)]), |c| {
        c.max_batch = 4;
        c.max_delay = Duration::from_millis(300);
    });
    let images: Vec<Vec<u8>> = (0..8).map(|k| png(64, 64, k * 5)).collect();
    let alone: Vec<f64> = images
        .iter()
        .map(|b| {
            post(&s.url("/predict/a"), "image/png", b).json()["score"]
                .as_f64()
                .unwrap()
        })
        .collect();
    let before = get(&s.url("/metrics")).body;
    let handles: Vec<_> = images
        .iter()
        .cloned()
        .map(|b| {
            let url = s.url("/predict/a");
            std::thread::spawn(move || post(&url, "image/png", &b))
        })
        .collect();
    for (h, want) in handles.into_iter().zip(&alone) {
        let got = h.join().unwrap().json()["score"].as_f64().unwrap();
        assert!((got - want).abs() <= 1e-5, "batched {got} vs alone {want}");
    }
    let after = get(&s.url("/metrics")).body;
    let key = r#"rd_batch_size_count{model="a"}"#;
    let batches = metric(&after, key) - metric(&before, key);
    assert!(
        batches <= 4.0,
        "8 concurrent requests with max_batch 4 took {batches} batches"
    );
}

#[test]
fn replaced_added_and_removed_model_files_are_followed_without_a_restart() {
    let m = models();
    let s = TestServer::start(model_dir(&[("line", &m.a)]), |_| {});
    let image = png(64, 64, 9);
    let score = || -> (u16, Option<f64>) {
        let a = post(&s.url("/predict/line"), "image/png", &image);
        (a.status, a.json()["score"].as_f64())
    };
    let (_, first) = score();
    let first = first.unwrap();

    // Requests keep flowing while the file is swapped; none may fail.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (url, image, stop) = (s.url("/predict/line"), image.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut statuses = Vec::new();
            for _ in 0..200 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                statuses.push(post(&url, "image/png", &image).status);
            }
            statuses
        })
    };
    place(&m.b, &s.dir.path().join("line.safetensors"));
    let changed = eventually(Duration::from_secs(20), || {
        score().1.is_some_and(|v| (v - first).abs() > 1e-4)
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = load.join().unwrap();
    assert!(changed, "the replaced model file was not picked up");
    assert!(statuses.iter().all(|&c| c == 200), "{statuses:?}");

    // A broken file next to it is not served, and does not disturb the others.
    std::fs::write(s.dir.path().join("broken.safetensors"), b"garbage").unwrap();
    place(&m.a, &s.dir.path().join("extra.safetensors"));
    assert!(eventually(Duration::from_secs(20), || {
        get(&s.url("/v2/models/extra/ready")).status == 200
    }));
    assert_eq!(get(&s.url("/v2/models/broken/ready")).status, 404);
    let extra = post(&s.url("/predict/extra"), "image/png", &image).json();
    assert!((extra["score"].as_f64().unwrap() - first).abs() <= 1e-5);

    std::fs::remove_file(s.dir.path().join("extra.safetensors")).unwrap();
    assert!(eventually(Duration::from_secs(20), || {
        post(&s.url("/predict/extra"), "image/png", &image).status == 404
    }));
    assert_eq!(score().0, 200);
}

#[test]
fn shutdown_finishes_the_request_in_flight_then_stops() {
    let m = models();
    let s = TestServer::start(model_dir(&[("a", &m.a)]), |c| {
        c.max_delay = Duration::from_millis(800);
    });
    let url = s.url("/predict/a");
    let inflight = std::thread::spawn(move || post(&url, "image/png", &png(64, 64, 1)));
    assert!(eventually(Duration::from_secs(5), || {
        get(&s.url("/metrics"))
            .body
            .contains("rd_in_flight_requests 1")
    }));
    let base = s.base.clone();
    s.stop_handle().trigger();
    assert_eq!(
        inflight.join().unwrap().status,
        200,
        "the request in flight is answered"
    );
    s.join().expect("run returns Ok after a graceful stop");
    let addr = base.trim_start_matches("http://");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the server no longer accepts connections"
    );
}
