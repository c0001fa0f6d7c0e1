//! The `rd` command as a library: every subcommand's arguments and its `run`, so that other
//! programs (`cargo xtask train` among them) run exactly what `rd` runs, in their own process.
//!
//! ```no_run
//! let args: rd_cli::train::TrainArgs = rd_cli::parse_args(
//!     "train",
//!     ["--data", "data/synthetic", "--category", "fabric", "--allow-random-teacher",
//!      "--image-size", "64", "--epochs", "1", "-o", "fabric.safetensors"],
//! )?;
//! let metrics = rd_cli::train::run(args, false)?;
//! # anyhow::Ok(())
//! ```
//!
//! The `serve` feature (on by default) adds `rd serve` and its HTTP stack (tokio, axum); the
//! library without it builds in about half a minute less, which the first `cargo xtask train`
//! of a fresh clone is measured by.

mod data;
mod device;
pub mod eval;
pub mod import;
pub mod inspect;
mod plot;
pub mod predict;
mod progress;
mod report;
#[cfg(feature = "serve")]
pub mod serve;
pub mod train;

use std::ffi::OsString;

use anyhow::Result;
use clap::{Args, FromArgMatches, Parser, Subcommand};

/// Reverse Distillation anomaly detection (Deng & Li, CVPR 2022), computed exactly as anomalib
/// does, in one program.
///
/// Train on pictures of good parts, then score new pictures and see where the defects are.
/// One model file carries the weights, input size, normalisation and thresholds, so `rd predict`
/// gives the same answers on every machine.
#[derive(Debug, Parser)]
#[command(name = "rd", version, about, long_about, after_help = EXAMPLES)]
pub struct Cli {
    /// Print nothing but errors and the requested output.
    #[arg(long, short, global = true)]
    pub quiet: bool,

    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
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

/// The subcommands of `rd`.
#[derive(Debug, Subcommand)]
pub enum Command {
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
    #[cfg(feature = "serve")]
    Serve(serve::ServeArgs),
}

/// Runs a parsed command line; `Ok(false)` when it finished but some inputs failed (`rd
/// predict` goes on past unreadable images and says so).
pub fn run(cli: Cli) -> Result<bool> {
    let quiet = cli.quiet;
    match cli.command {
        Command::Train(args) => train::run(*args, quiet).map(|_| true),
        Command::Eval(args) => eval::run(args, quiet).map(|_| true),
        Command::Import(args) => import::run(args, quiet).map(|()| true),
        Command::Inspect(args) => inspect::run(args).map(|()| true),
        Command::Predict(args) => predict::run(args, quiet),
        #[cfg(feature = "serve")]
        Command::Serve(args) => serve::run(args, quiet).map(|()| true),
    }
}

/// Parses the arguments of one subcommand as `rd <name> <args…>` would (errors carry clap's
/// usage text), e.g. `parse_args::<train::TrainArgs>("train", ["--data", "d", …])`.
pub fn parse_args<A, I, T>(name: &str, args: I) -> Result<A>
where
    A: Args + FromArgMatches,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let command = A::augment_args(clap::Command::new("rd").bin_name(format!("rd {name}")));
    let argv = std::iter::once(OsString::from(name)).chain(args.into_iter().map(Into::into));
    // clap's messages start with their own "error: ", which callers print again.
    let clean = |e: clap::Error| {
        let text = e.render().to_string();
        anyhow::anyhow!("{}", text.trim_start_matches("error: ").trim_end())
    };
    let mut matches = command.try_get_matches_from(argv).map_err(clean)?;
    A::from_arg_matches_mut(&mut matches).map_err(clean)
}

/// Logs go to stderr, filtered by `RUST_LOG` (default: warnings, or errors only with `--quiet`).
pub fn init_logging(quiet: bool) {
    let default = if quiet { "error" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parse_args_reads_a_subcommand_and_reports_bad_flags() {
        let args: inspect::InspectArgs =
            parse_args("inspect", ["m.safetensors", "--json"]).unwrap();
        assert!(format!("{args:?}").contains("m.safetensors"));
        let err =
            parse_args::<inspect::InspectArgs, _, _>("inspect", ["--no-such-flag"]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("--no-such-flag") && !text.starts_with("error"),
            "{text}"
        );
    }
}
