//! The library half of `cargo xtask`: one module per subcommand, so that `main.rs` stays a thin
//! dispatcher and the integration tests in `xtask/tests/` can call the subcommands directly.

pub mod bench;
pub mod cuda_toolkit;
pub mod download;
pub mod eval;
mod rd;
pub mod train;

use std::path::PathBuf;

/// The workspace root (the folder holding the top-level `Cargo.toml`). Default paths such as
/// `data/mvtec` are relative to it, so `cargo xtask …` does the same from any subfolder.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}
