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
