//! The library half of `cargo xtask`: one module per subcommand, so that `main.rs` stays a thin
//! dispatcher and the integration tests in `xtask/tests/` can call the subcommands directly.

pub mod bench;
mod bench_fit;
pub mod cuda_toolkit;
pub mod download;
pub mod eval;
mod gpu_memory;
pub mod loadtest;
pub mod train;

use std::path::PathBuf;

/// The workspace root (the folder holding the top-level `Cargo.toml`). Default paths such as
/// `data/mvtec` are relative to it, so `cargo xtask …` does the same from any subfolder.
///
/// A release binary carried to another machine (the GPU check, `scripts/gpu-check.sh`) finds no
/// workspace where it was built, and takes the current folder instead.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir);
    if root.join("Cargo.toml").is_file() {
        root
    } else {
        std::env::current_dir().unwrap_or(root)
    }
}

/// A path as a command-line argument of the rd subcommands xtask runs.
pub(crate) fn path_arg(p: &std::path::Path) -> String {
    p.display().to_string()
}
