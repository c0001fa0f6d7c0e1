//! `rd`: train, run and inspect Reverse Distillation anomaly detectors.

use clap::Parser;

/// Reverse Distillation anomaly detection (Deng & Li, CVPR 2022), anomalib-exact, in Rust.
#[derive(Debug, Parser)]
#[command(name = "rd", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
