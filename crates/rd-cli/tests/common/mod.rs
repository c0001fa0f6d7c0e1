//! Running the `rd` binary from the integration tests, offline and with no user cache.

#![allow(dead_code)] // each test file uses its own subset

use std::process::{Command, Output};

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
