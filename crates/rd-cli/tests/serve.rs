//! `rd serve` as users run it: the served score equals `rd predict`'s for the same file, and
//! SIGTERM finishes the request in flight, then exits 0.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::Stdio;
use std::time::Duration;

/// A plain HTTP/1.1 POST of `body`; returns (status, body).
fn post(addr: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[test]
fn served_scores_equal_rd_predict_and_sigterm_drains_then_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    common::tiny_model(&models);
    let image = dir.path().join("part.png");
    image::RgbImage::from_fn(90, 70, |x, y| {
        image::Rgb([(x * 3) as u8, (y * 3) as u8, 128])
    })
    .save(&image)
    .unwrap();

    let out = dir.path().join("out");
    let o = common::rd(&[
        "predict",
        "--model",
        models.join("tiny.safetensors").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
        image.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", common::text(&o));
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap()).unwrap();
    let offline = line["score"].as_f64().unwrap();

    // A long batching delay keeps the request in flight when SIGTERM arrives.
    let mut child = common::rd_command()
        .args(["serve", "--models", models.to_str().unwrap()])
        .args(["--addr", "127.0.0.1:0", "--max-delay-ms", "1500"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    let addr = first
        .split("listening on http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_string();
    let bytes = std::fs::read(&image).unwrap();
    let request = {
        let (addr, bytes) = (addr.clone(), bytes.clone());
        std::thread::spawn(move || post(&addr, "/predict/tiny", &bytes))
    };
    std::thread::sleep(Duration::from_millis(500));
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let (status, body) = request.join().unwrap();
    assert_eq!(status, 200, "{body}");
    let served: serde_json::Value = serde_json::from_str(&body).unwrap();
    let served = served["score"].as_f64().unwrap();
    assert!(
        (served - offline).abs() <= 1e-5,
        "rd serve {served} vs rd predict {offline}"
    );
    let mut waited = 0;
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(waited < 300, "rd serve did not exit within 30 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
        waited += 1;
    };
    let mut rest = String::new();
    let _ = stderr.read_to_string(&mut rest);
    assert!(exit.success(), "exit {exit}: {rest}");
}
