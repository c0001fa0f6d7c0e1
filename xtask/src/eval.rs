//! `cargo xtask eval`: a per-category table of a set of models, beside the published numbers.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::Value;

use crate::path_arg as path;

/// Arguments of `cargo xtask eval`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  cargo xtask eval --model bottle.safetensors --data data/mvtec --category bottle
  cargo xtask eval --model models/ --data data/mvtec --all      # models/<category>.safetensors

Writes eval.md and eval.json (into --out, default the current folder) with image AUROC, pixel
AUROC, AUPRO@0.3 and image F1 per category, and the paper's and anomalib's published numbers
beside ours for MVTec AD categories.")]
pub struct EvalArgs {
    /// A model file, or with --all a folder of `<category>.safetensors` models.
    #[arg(long)]
    model: PathBuf,

    /// MVTec-layout dataset root.
    #[arg(long)]
    data: PathBuf,

    /// One category.
    #[arg(long, conflicts_with = "all")]
    category: Option<String>,

    /// Every category of --data that has a model in the --model folder.
    #[arg(long)]
    all: bool,

    /// Where eval.md and eval.json go.
    #[arg(long, default_value = ".")]
    out: PathBuf,
}

/// Runs `cargo xtask eval`.
pub fn run(args: EvalArgs) -> Result<()> {
    let jobs: Vec<(String, PathBuf)> = if args.all {
        if !args.model.is_dir() {
            bail!("with --all, --model must be a folder of <category>.safetensors files");
        }
        let cats = rd_dataset::layout::mvtec::categories(&args.data)?;
        let jobs: Vec<_> = cats
            .into_iter()
            .map(|c| {
                let m = args.model.join(format!("{c}.safetensors"));
                (c, m)
            })
            .filter(|(c, m)| {
                let ok = m.is_file();
                if !ok {
                    eprintln!("note: no model for {c} ({} missing); skipped", m.display());
                }
                ok
            })
            .collect();
        if jobs.is_empty() {
            bail!(
                "no category of {} has a model in {}",
                args.data.display(),
                args.model.display()
            );
        }
        jobs
    } else {
        match &args.category {
            Some(c) => vec![(c.clone(), args.model.clone())],
            None => bail!("pass --category C, or --all with a folder of models"),
        }
    };
    let mut reports = Vec::new();
    for (category, model) in &jobs {
        eprintln!("== {category}");
        let eval = [
            "--model".to_string(),
            path(model),
            "--data".into(),
            path(&args.data),
            "--category".into(),
            category.clone(),
        ];
        let report = rd_cli::eval::run(rd_cli::parse_args("eval", &eval)?, false)?;
        let report = serde_json::to_value(report)?;
        reports.push((category.clone(), report));
    }
    let table = markdown(&reports);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let json: Vec<Value> = reports.iter().map(|(_, r)| r.clone()).collect();
    std::fs::write(
        args.out.join("eval.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    std::fs::write(args.out.join("eval.md"), &table)?;
    println!("{table}");
    Ok(())
}

/// The per-category table with published numbers (and means) in Markdown.
pub fn markdown(reports: &[(String, Value)]) -> String {
    let f = |v: &Value| v.as_f64().map_or("–".to_string(), |x| format!("{x:.3}"));
    let mut s = String::from(
        "| category | image AUROC | pixel AUROC | AUPRO@0.3 | image F1 | paper img / px / PRO | anomalib img / px / F1 |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let mut sums = [0.0f64; 4];
    let mut counts = [0usize; 4];
    for (c, r) in reports {
        let m = &r["metrics"];
        for (i, k) in ["image_auroc", "pixel_auroc", "pixel_aupro", "image_f1"]
            .iter()
            .enumerate()
        {
            if let Some(v) = m[k].as_f64() {
                sums[i] += v;
                counts[i] += 1;
            }
        }
        let p = &r["published"];
        let (paper, anomalib) = if p.is_object() {
            (
                format!(
                    "{} / {} / {}",
                    f(&p["paper_image_auroc"]),
                    f(&p["paper_pixel_auroc"]),
                    f(&p["paper_pro"])
                ),
                format!(
                    "{} / {} / {}",
                    f(&p["anomalib_image_auroc"]),
                    f(&p["anomalib_pixel_auroc"]),
                    f(&p["anomalib_image_f1"])
                ),
            )
        } else {
            ("–".into(), "–".into())
        };
        let _ = writeln!(
            s,
            "| {c} | {} | {} | {} | {} | {paper} | {anomalib} |",
            f(&m["image_auroc"]),
            f(&m["pixel_auroc"]),
            f(&m["pixel_aupro"]),
            f(&m["image_f1"])
        );
    }
    if reports.len() > 1 {
        let mean = |i: usize| {
            if counts[i] == 0 {
                "–".to_string()
            } else {
                format!("{:.3}", sums[i] / counts[i] as f64)
            }
        };
        let _ = writeln!(
            s,
            "| **mean** | {} | {} | {} | {} | | |",
            mean(0),
            mean(1),
            mean(2),
            mean(3)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_published_numbers_and_means() {
        let bottle = serde_json::json!({
            "metrics": {"image_auroc": 0.99, "pixel_auroc": 0.97, "pixel_aupro": 0.9, "image_f1": 0.95},
            "published": {"paper_image_auroc": 1.0, "paper_pixel_auroc": 0.987, "paper_pro": 0.966,
                          "anomalib_image_auroc": 1.0, "anomalib_pixel_auroc": 0.984, "anomalib_image_f1": 0.984}
        });
        let own = serde_json::json!({
            "metrics": {"image_auroc": 0.89, "pixel_auroc": null, "pixel_aupro": null, "image_f1": 0.85}
        });
        let t = markdown(&[("bottle".into(), bottle), ("own".into(), own)]);
        assert!(t.contains("| bottle | 0.990 | 0.970 | 0.900 | 0.950 | 1.000 / 0.987 / 0.966 | 1.000 / 0.984 / 0.984 |"), "{t}");
        assert!(t.contains("| own | 0.890 | – | – | 0.850 | – | – |"), "{t}");
        assert!(
            t.contains("| **mean** | 0.940 | 0.970 | 0.900 | 0.900 | | |"),
            "{t}"
        );
    }
}
