//! Running the `rd` binary of this workspace, so xtask drives exactly what users run.
//!
//! The binary is built once per xtask run, by `cargo build -p rd-cli -p xtask` in the profile
//! xtask itself was built with (`cargo xtask` builds in release: training wants optimised code).
//! Naming xtask as well makes cargo resolve the dependencies' features as it did for xtask's own
//! build, so this build reuses all of them and only compiles what rd alone needs. (`cargo run -p
//! rd-cli` alone resolved them differently and compiled candle and most of the tree a second
//! time; `xtask/Cargo.toml` says what keeps the two resolutions equal.) Cargo's own progress
//! stays on the terminal.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

use crate::workspace_root;

/// What `cargo run` sets for the program it runs (besides `CARGO_PKG_*`), to keep away from the
/// nested build.
const RUN_TARGET_VARS: [&str; 5] = [
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
];

/// The rd binary once built in this process.
static RD: OnceLock<PathBuf> = OnceLock::new();

/// `rd <args>`, its stderr (progress, notes) streamed to the user; returns its stdout.
pub fn run_rd(args: &[String]) -> Result<String> {
    let rd = rd_binary()?;
    tracing::debug!(rd = %rd.display(), ?args, "running rd");
    let out = Command::new(rd)
        .current_dir(workspace_root())
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start {}", rd.display()))?;
    if !out.status.success() {
        bail!("`rd {}` failed ({})", args.join(" "), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The path of the rd binary, built (or found up to date) on the first call.
pub fn rd_binary() -> Result<&'static Path> {
    if let Some(path) = RD.get() {
        return Ok(path);
    }
    let path = build_rd()?;
    Ok(RD.get_or_init(|| path))
}

/// Runs the build and reads the binary's path from cargo's JSON messages (so any target folder
/// or profile works).
fn build_rd() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let profile = own_profile();
    eprintln!("building rd (cargo build --profile {profile} -p rd-cli -p xtask)");
    let mut command = Command::new(&cargo);
    // `cargo run` describes xtask to it in CARGO_PKG_* and CARGO_MANIFEST_*; build scripts that
    // watch those names (ring's does) would see them changed since xtask's own build and
    // rebuild, and everything above them with them.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if RUN_TARGET_VARS.contains(&name.as_ref()) || name.starts_with("CARGO_PKG_") {
            command.env_remove(name.as_ref());
        }
    }
    let mut child = command
        .current_dir(workspace_root())
        .args([
            "build",
            "--profile",
            &profile,
            "-p",
            "rd-cli",
            "-p",
            "xtask",
        ])
        .arg("--message-format=json-render-diagnostics")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start `{cargo} build`"))?;
    let mut exe = None;
    if let Some(stdout) = child.stdout.take() {
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.context("cannot read cargo's output")?;
            if let Some(path) = rd_executable(&line) {
                exe = Some(path);
            }
        }
    }
    let status = child.wait().context("cargo build did not finish")?;
    if !status.success() {
        bail!("building rd failed ({status}); the compiler's messages are above");
    }
    exe.context("cargo built no `rd` executable")
}

/// The executable of the `rd` binary target, if `line` is cargo's JSON message about it.
fn rd_executable(line: &str) -> Option<PathBuf> {
    let message: serde_json::Value = serde_json::from_str(line).ok()?;
    if message["reason"] != "compiler-artifact" || message["target"]["name"] != "rd" {
        return None;
    }
    message["executable"].as_str().map(PathBuf::from)
}

/// The cargo profile this xtask binary was built with, from the folder it sits in
/// (`target/debug` is the `dev` profile, `target/<name>` any other; test binaries sit one level
/// deeper, in `deps/`).
fn own_profile() -> String {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent();
    if dir.and_then(Path::file_name).is_some_and(|n| n == "deps") {
        dir = dir.and_then(Path::parent);
    }
    match dir.and_then(Path::file_name).and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_string(),
        Some(name) => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_rd_executable_in_cargo_messages() {
        let rd = r#"{"reason":"compiler-artifact","target":{"name":"rd","kind":["bin"]},"executable":"/w/target/release/rd","fresh":true}"#;
        assert_eq!(
            rd_executable(rd),
            Some(PathBuf::from("/w/target/release/rd"))
        );
        let lib = r#"{"reason":"compiler-artifact","target":{"name":"rd_model","kind":["lib"]},"executable":null}"#;
        assert_eq!(rd_executable(lib), None);
        assert_eq!(
            rd_executable(r#"{"reason":"build-finished","success":true}"#),
            None
        );
        assert_eq!(rd_executable("not json"), None);
    }
}
