//! `cargo xtask bench --fit`: whole training runs, `rd train` against anomalib's `Engine.fit`
//! with the same recipe (batch 8, Adam with anomalib's betas, the same epochs) on the same
//! synthetic images, interleaved round by round.
//!
//! Both teachers are seeded random ones (no weights can be downloaded here), so the runs time
//! the same work but their detection quality is not compared. anomalib validates every epoch,
//! as its recipe does; `rd train` fits thresholds and evaluates once at the end. The table
//! gives each side's whole process (what a user waits for) and its training part alone.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rd_backbone::Backbone;
use rd_dataset::synthetic::{generate, SyntheticCategory, SyntheticConfig};
use serde_json::Value;

use crate::bench::{last_json_line, median, python, run_captured, time_process, BenchArgs};

/// Images per training step (the recipe and anomalib's example).
const BATCH: usize = 8;

/// One side's measurements over the rounds.
#[derive(Default)]
struct Runs {
    /// Whole-process wall seconds.
    wall: Vec<f64>,
    /// Seconds of training alone (ours: the epochs' own times; anomalib: `Engine.fit`).
    train: Vec<f64>,
    /// Peak RSS over the rounds, KiB.
    rss_kb: u64,
}

/// Runs the comparison and prints its table (one row per backbone).
pub(crate) fn fit_table(
    args: &BenchArgs,
    root: &Path,
    rd: &Path,
    script: &Path,
    tmp: &Path,
) -> Result<()> {
    if !rd.exists() {
        bail!(
            "{} is missing: run `cargo build --release -p rd-cli`",
            rd.display()
        );
    }
    let data = root
        .join("target/bench/fit-data")
        .join(format!("{}px-{}", args.size, args.fit_images));
    let config = SyntheticConfig {
        size: args.size as u32,
        train_good: args.fit_images,
        categories: vec![SyntheticCategory::Fabric],
        ..SyntheticConfig::default()
    };
    generate(&data, &config)
        .with_context(|| format!("cannot generate the synthetic images in {}", data.display()))?;
    let category = data.join("fabric");
    let py = args.torch_python.as_deref();
    println!(
        "Whole training runs: {} good images of {}², {} epochs, batch {BATCH}, {} threads, {} \
         rounds\n",
        args.fit_images, args.size, args.fit_epochs, args.threads, args.rounds
    );
    println!(
        "| backbone | rd train | its training | anomalib (process) | Engine.fit | speed-up (process) \
         | speed-up (training) | rd train peak RSS | anomalib peak RSS | RSS ratio |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for backbone in &args.backbones {
        backbone
            .parse::<Backbone>()
            .with_context(|| format!("unknown backbone {backbone}"))?;
        let (mut ours, mut theirs) = (Runs::default(), Runs::default());
        for round in 0..args.rounds {
            eprintln!(
                "  round {}/{}: rd train ({backbone})…",
                round + 1,
                args.rounds
            );
            ours_round(args, rd, &data, backbone, tmp, &mut ours)?;
            if let Some(py) = py {
                eprintln!(
                    "  round {}/{}: anomalib's Engine.fit ({backbone}, its progress bar off)…",
                    round + 1,
                    args.rounds
                );
                let workdir = tmp.join("anomalib-fit");
                let mut c = python(py, script, args.threads);
                c.arg("fit")
                    .arg(backbone)
                    .arg(args.size.to_string())
                    .arg(BATCH.to_string())
                    .arg(args.fit_epochs.to_string())
                    .arg(args.threads.to_string())
                    .arg(&category)
                    .arg(&workdir);
                let t0 = Instant::now();
                let out = run_captured(c, "anomalib's Engine.fit")?;
                theirs.wall.push(t0.elapsed().as_secs_f64());
                let v = last_json_line(&out)?;
                theirs.train.push(v["fit_s"].as_f64().unwrap_or(f64::NAN));
                theirs.rss_kb = theirs.rss_kb.max(v["peak_rss_kb"].as_u64().unwrap_or(0));
                let _ = std::fs::remove_dir_all(&workdir);
            }
            eprintln!(
                "  round {}: rd train {:.1} s (training {:.1} s){}",
                round + 1,
                ours.wall.last().copied().unwrap_or(f64::NAN),
                ours.train.last().copied().unwrap_or(f64::NAN),
                match (theirs.wall.last(), theirs.train.last()) {
                    (Some(w), Some(t)) => format!(" | anomalib {w:.1} s (Engine.fit {t:.1} s)"),
                    _ => String::new(),
                }
            );
        }
        let mib = |kb: u64| format!("{} MiB", kb / 1024);
        let (ow, ot) = (median(&ours.wall), median(&ours.train));
        if py.is_some() {
            let (tw, tt) = (median(&theirs.wall), median(&theirs.train));
            println!(
                "| {backbone} | {ow:.1} s | {ot:.1} s | {tw:.1} s | {tt:.1} s | {:.2}× | {:.2}× | {} | {} | {:.2} |",
                tw / ow,
                tt / ot,
                mib(ours.rss_kb),
                mib(theirs.rss_kb),
                ours.rss_kb as f64 / theirs.rss_kb.max(1) as f64
            );
        } else {
            println!(
                "| {backbone} | {ow:.1} s | {ot:.1} s | – | – | – | – | {} | – | – |",
                mib(ours.rss_kb)
            );
        }
    }
    println!(
        "\n(medians over the rounds; both teachers seeded random, so quality is not compared)"
    );
    Ok(())
}

/// One `rd train` run on the fabric category of `data`, recorded in `runs`.
fn ours_round(
    args: &BenchArgs,
    rd: &Path,
    data: &Path,
    backbone: &str,
    tmp: &Path,
    runs: &mut Runs,
) -> Result<()> {
    let model = tmp.join("fit.safetensors");
    let log = tmp.join("fit.log.jsonl");
    let _ = std::fs::remove_file(&log);
    let mut c = Command::new(rd);
    c.env("RAYON_NUM_THREADS", args.threads.to_string())
        .args(["train", "--data"])
        .arg(data)
        .args([
            "--category",
            "fabric",
            "--backbone",
            backbone,
            "--allow-random-teacher",
        ])
        .args(["--image-size", &args.size.to_string()])
        .args(["--epochs", &args.fit_epochs.to_string()])
        .args(["--batch-size", &BATCH.to_string()])
        .args(["--anomalib-betas", "--checkpoint-every", "0", "--log"])
        .arg(&log)
        .arg("-o")
        .arg(&model);
    let (wall, rss) = time_process(c, "rd train", tmp)?;
    let text =
        std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    let mut train = 0.0;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line)?;
        train += v["seconds"].as_f64().unwrap_or(f64::NAN);
    }
    runs.wall.push(wall);
    runs.train.push(train);
    runs.rss_kb = runs.rss_kb.max(rss);
    let _ = std::fs::remove_file(&model);
    Ok(())
}
