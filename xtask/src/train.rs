//! `cargo xtask train`: the main job, end to end — data, training, evaluation, heatmaps, report.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use rd_dataset::synthetic::{generate, SyntheticConfig};

use crate::{path_arg as path, workspace_root};

/// Arguments of `cargo xtask train`.
#[derive(Debug, Args)]
#[command(after_help = "\
With no arguments: generates the built-in synthetic dataset into data/synthetic (textures and
objects with scratches, holes, stains and cut-outs), trains a small model (resnet18, 128 px) on
each category, evaluates it, draws heatmaps of a few defective parts, and writes
data/demo/REPORT.md. Pretrained teacher weights are used when the Hugging Face cache (or the hub)
has them; otherwise it says so loudly and uses a seeded random teacher.

Real data:
  cargo xtask download mvtec --category bottle
  cargo xtask train --data data/mvtec --category bottle --backbone wide_resnet50_2 --image-size 256 --epochs 200")]
pub struct TrainArgs {
    /// MVTec-layout dataset root [default: the synthetic data, generated if needed].
    #[arg(long)]
    data: Option<PathBuf>,

    /// Categories to train (repeatable) [default: every category of the synthetic data].
    #[arg(long)]
    category: Vec<String>,

    /// Teacher backbone (optionally with a timm tag).
    #[arg(long, default_value = "resnet18")]
    backbone: String,

    /// Model input size (square).
    #[arg(long, default_value_t = 128)]
    image_size: usize,

    /// Training epochs per category.
    #[arg(long, default_value_t = 5)]
    epochs: usize,

    /// Images per step.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,

    /// Where models, overlays and the report go [default: data/demo].
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Runs `cargo xtask train`.
pub fn run(args: TrainArgs) -> Result<()> {
    let root = workspace_root();
    let synthetic = args.data.is_none();
    let data = match &args.data {
        Some(d) => d.clone(),
        None => {
            let dir = root.join("data").join("synthetic");
            let summary = generate(&dir, &SyntheticConfig::default()).with_context(|| {
                format!("cannot generate the synthetic dataset in {}", dir.display())
            })?;
            eprintln!(
                "synthetic dataset: {} ({})",
                dir.display(),
                if summary.reused {
                    "reused".to_string()
                } else {
                    format!("{} files written", summary.files_written)
                }
            );
            dir
        }
    };
    let categories = if args.category.is_empty() {
        rd_dataset::layout::mvtec::categories(&data)?
    } else {
        args.category.clone()
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| root.join("data").join("demo"));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;

    let mut rows = Vec::new();
    for category in &categories {
        eprintln!("\n== {category}");
        let model = out.join(format!("{category}.safetensors"));
        let train = rd_train_args(&args, &data, category, &model, synthetic);
        let checkpoint = out.join(format!("{category}.checkpoint.safetensors"));
        let _ = std::fs::remove_file(&checkpoint); // a demo run starts fresh
        let metrics = rd_cli::train::run(rd_cli::parse_args("train", &train)?, false)?;
        let metrics = serde_json::to_value(metrics)?;
        let overlays = predict_examples(&data, category, &model, &out.join(category))?;
        rows.push((category.clone(), metrics, overlays));
    }
    let report = report(&rows, &args, synthetic);
    let report_path = out.join("REPORT.md");
    std::fs::write(&report_path, &report)
        .with_context(|| format!("cannot write {}", report_path.display()))?;
    println!("\n{report}");
    eprintln!("report: {}", report_path.display());
    Ok(())
}

/// The `rd train` arguments for one category of the demo.
fn rd_train_args(
    args: &TrainArgs,
    data: &Path,
    category: &str,
    model: &Path,
    synthetic: bool,
) -> Vec<String> {
    let mut train = vec![
        "--data".to_string(),
        path(data),
        "--category".into(),
        category.to_string(),
        "--backbone".into(),
        args.backbone.clone(),
        "--image-size".into(),
        args.image_size.to_string(),
        "--epochs".into(),
        args.epochs.to_string(),
        "--batch-size".into(),
        args.batch_size.to_string(),
        "--checkpoint-every".into(),
        "0".into(),
        "-o".into(),
        path(model),
    ];
    if synthetic {
        train.push("--allow-random-teacher".into());
    }
    train
}

/// Heatmaps of the first defective test image of each defect type; returns the overlay paths.
fn predict_examples(data: &Path, category: &str, model: &Path, out: &Path) -> Result<Vec<PathBuf>> {
    let splits = rd_dataset::layout::mvtec::load(data, category)?;
    let mut picked: Vec<&rd_dataset::Sample> = Vec::new();
    for s in splits.test.iter().filter(|s| s.label.is_anomalous()) {
        if !picked.iter().any(|p| p.defect == s.defect) {
            picked.push(s);
        }
    }
    if picked.is_empty() {
        return Ok(Vec::new());
    }
    let mut args = vec![
        "--model".to_string(),
        path(model),
        "--out".into(),
        path(out),
    ];
    args.extend(picked.iter().map(|s| path(&s.image)));
    if !rd_cli::predict::run(rd_cli::parse_args("predict", &args)?, true)? {
        bail!("`rd predict` could not score every example image (see above)");
    }
    let lines = std::fs::read_to_string(out.join("results.jsonl"))?;
    Ok(lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            v["contour"]
                .as_str()
                .or(v["heatmap"].as_str())
                .map(PathBuf::from)
        })
        .collect())
}

fn report(
    rows: &[(String, serde_json::Value, Vec<PathBuf>)],
    args: &TrainArgs,
    synthetic: bool,
) -> String {
    let f = |v: &serde_json::Value| v.as_f64().map_or("–".to_string(), |x| format!("{x:.3}"));
    let mut s = String::new();
    let _ = writeln!(s, "# Reverse Distillation demo run\n");
    let _ = writeln!(
        s,
        "{} · {} teacher · {}×{} px · {} epochs · batch {}\n",
        if synthetic {
            "built-in synthetic data"
        } else {
            "user data"
        },
        args.backbone,
        args.image_size,
        args.image_size,
        args.epochs,
        args.batch_size
    );
    let _ = writeln!(
        s,
        "| category | image AUROC | pixel AUROC | AUPRO@0.3 | image F1 | pixel F1 |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for (c, m, _) in rows {
        let _ = writeln!(
            s,
            "| {c} | {} | {} | {} | {} | {} |",
            f(&m["image_auroc"]),
            f(&m["pixel_auroc"]),
            f(&m["pixel_aupro"]),
            f(&m["image_f1"]),
            f(&m["pixel_f1"])
        );
    }
    let _ = writeln!(s, "\nChance is 0.5 for AUROC. Thresholds were fitted on the test set, as anomalib does by default.\n");
    for (c, _, overlays) in rows {
        if overlays.is_empty() {
            continue;
        }
        let _ = writeln!(s, "## {c}\n");
        for o in overlays {
            let name = o
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let _ = writeln!(s, "![{name}]({c}/{name})");
        }
        let _ = writeln!(s);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The demo's arguments are what `rd train` accepts (they are parsed only at run time).
    #[test]
    fn the_demo_passes_rd_train_valid_arguments() {
        let args: TrainArgs = rd_cli::parse_args("xtask train", Vec::<String>::new()).unwrap();
        for synthetic in [true, false] {
            let train = rd_train_args(&args, Path::new("d"), "fabric", Path::new("m"), synthetic);
            rd_cli::parse_args::<rd_cli::train::TrainArgs, _, _>("train", &train).unwrap();
        }
    }
}
