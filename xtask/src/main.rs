//! `cargo xtask`: project automation (datasets, training runs, evaluation, benchmarks).

use clap::Parser;

/// Project automation for the Reverse Distillation workspace.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
