//! Running the `rd` binary of this workspace, so xtask drives exactly what users run.

use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::workspace_root;

/// `cargo run -q -p rd-cli --release? -- <args>` in the workspace, built with the same profile as
/// xtask itself (dev, whose dependencies are optimised), streaming stderr to the user.
/// Returns stdout.
pub fn run_rd(args: &[String]) -> Result<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let out = Command::new(&cargo)
        .current_dir(workspace_root())
        .args(["run", "-q", "-p", "rd-cli", "--"])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start `{cargo} run -p rd-cli`"))?;
    if !out.status.success() {
        bail!("`rd {}` failed ({})", args.join(" "), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
