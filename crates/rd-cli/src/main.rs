//! `rd`: train, import, run, evaluate and inspect Reverse Distillation anomaly detectors.

use std::process::ExitCode;

use clap::Parser;
use rd_cli::Cli;

/// Activations are multi-MiB buffers allocated and freed at every layer: mimalloc keeps the
/// freed pages for the next layer, where glibc's malloc unmaps them and pays page faults again.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    rd_kernels::use_small_pages();
    let cli = Cli::parse();
    rd_cli::init_logging(cli.quiet);
    match rd_cli::run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
