//! `cargo xtask`: project automation (datasets, training runs, evaluation, benchmarks).
//!
//! This file only parses the command line and dispatches; each subcommand lives in its own module
//! of the `xtask` library (`xtask/src/lib.rs`), where the integration tests can reach it too.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The allocator of the `rd` binary, so the benchmark workers measure what users run.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Project automation for the Reverse Distillation workspace.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Download a dataset (MVTec AD, VisA) or pretrained teacher weights.
    Download(xtask::download::DownloadArgs),
    /// The main job: train, evaluate and draw heatmaps (built-in synthetic data by default).
    Train(xtask::train::TrainArgs),
    /// Evaluate models per category, beside the paper's and anomalib's published numbers.
    Eval(xtask::eval::EvalArgs),
    /// Time inference, training and start-up (optionally against anomalib with --torch-python).
    Bench(xtask::bench::BenchArgs),
    /// Drive `rd serve` on loopback: throughput, latency percentiles, overload answers.
    Loadtest(xtask::loadtest::LoadtestArgs),
    /// Install the CUDA 13.0 toolkit from PyPI wheels for `--features cuda` (no GPU needed).
    CudaToolkit(xtask::cuda_toolkit::CudaToolkitArgs),
}

fn main() -> ExitCode {
    rd_kernels::use_small_pages();
    // Logs as `rd` writes them (RUST_LOG; warnings by default): xtask runs rd's subcommands.
    rd_cli::init_logging(false);
    let result = match Cli::parse().command {
        Command::Download(args) => xtask::download::run(args),
        Command::Train(args) => xtask::train::run(args),
        Command::Eval(args) => xtask::eval::run(args),
        Command::Bench(args) => xtask::bench::run(args),
        Command::Loadtest(args) => xtask::loadtest::run(args),
        Command::CudaToolkit(args) => xtask::cuda_toolkit::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole cause chain on one line and never a backtrace (even with
            // RUST_BACKTRACE set): these messages are meant to be read by users.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
