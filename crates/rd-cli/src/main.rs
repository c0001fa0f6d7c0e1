//! `rd`: train, import, run, evaluate and inspect Reverse Distillation anomaly detectors.

mod data;
mod device;
mod eval;
mod import;
mod inspect;
mod plot;
mod predict;
mod progress;
mod report;
mod serve;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Activations are multi-MiB buffers allocated and freed at every layer: mimalloc keeps the
/// freed pages for the next layer, where glibc's malloc unmaps them and pays page faults again.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Reverse Distillation anomaly detection (Deng & Li, CVPR 2022), computed exactly as anomalib
/// does, in one program.
///
/// Train on pictures of good parts, then score new pictures and see where the defects are.
/// One model file carries the weights, input size, normalisation and thresholds, so `rd predict`
/// gives the same answers on every machine.
#[derive(Debug, Parser)]
#[command(name = "rd", version, about, long_about, after_help = EXAMPLES)]
struct Cli {
    /// Print nothing but errors and the requested output.
    #[arg(long, short, global = true)]
    quiet: bool,

    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "\
Examples:
  rd train --data data/mvtec --category bottle --backbone wide_resnet50_2 -o bottle.safetensors
  rd eval --model bottle.safetensors --data data/mvtec --category bottle
  rd predict --model bottle.safetensors photos/ --out results/
  rd import --from anomalib --weights model.ckpt --backbone wide_resnet50_2 --image-size 256 -o rd.safetensors
  rd inspect rd.safetensors
  rd inspect rd.safetensors --json
  rd serve --models models/ --addr 127.0.0.1:8080

Set RUST_LOG=debug for detailed logs.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a model on images of good parts, fit its thresholds and evaluate it.
    Train(Box<train::TrainArgs>),
    /// Measure a model on a labelled dataset (image/pixel AUROC, AUPRO, F1).
    Eval(eval::EvalArgs),
    /// Convert an anomalib checkpoint or official RD4AD weights into an rd model file.
    Import(import::ImportArgs),
    /// Show a model file's metadata, thresholds, parameter counts and tensors.
    Inspect(inspect::InspectArgs),
    /// Score images and write heatmaps, masks and contours of where the defects are.
    Predict(predict::PredictArgs),
    /// Serve the models of a folder over HTTP (batched; KServe v2; Prometheus metrics).
    Serve(serve::ServeArgs),
}

fn main() -> ExitCode {
    rd_kernels::use_small_pages();
    let cli = Cli::parse();
    init_logging(cli.quiet);
    let result = match cli.command {
        Command::Train(args) => train::run(*args, cli.quiet).map(|()| true),
        Command::Eval(args) => eval::run(args, cli.quiet).map(|()| true),
        Command::Import(args) => import::run(args, cli.quiet).map(|()| true),
        Command::Inspect(args) => inspect::run(args).map(|()| true),
        Command::Predict(args) => predict::run(args, cli.quiet),
        Command::Serve(args) => serve::run(args, cli.quiet).map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default: warnings, or errors only with `--quiet`).
fn init_logging(quiet: bool) {
    let default = if quiet { "error" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
