//! `rd eval`: how well a model finds defects, in anomalib's metrics.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use rd_dataset::layout::mvtec;
use rd_metrics::{aupro_curve, roc_curve, PostProcessor};
use rd_model::evaluate::{compute_metrics, fit_post_processor, Metrics, MetricsConfig};
use rd_model::predict::{predict_with, PredictConfig, Predictions};
use rd_model::{LoadedModel, ReverseDistillation};
use serde::Serialize;

use crate::data::{DataArgs, Layout};
use crate::device::DeviceArg;
use crate::plot::{save_curves, Curve, PlotSpec};
use crate::progress::Reporter;
use crate::report::{metrics_table, published, Published};

/// Arguments of `rd eval`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  rd eval --model bottle.safetensors --data data/mvtec --category bottle
  rd eval --model bottle.safetensors --data data/mvtec --category bottle --json
  rd eval --model fabric.safetensors --data data/synthetic --category fabric --out eval/

Metrics follow anomalib: scores and maps are normalised with the model's thresholds and
min/max statistics (fitted by `rd train`); image and pixel F1 use normalised > 0.5. A model
without statistics (e.g. imported from plain weights) has them fitted on the test images first,
as anomalib does by default for MVTec AD, and says so. Without masks (no ground_truth/ folder,
no --mask-dir) pixel metrics are skipped and reported as null in --json; EXIF orientation is
applied or not as the model file says (see `rd train --exif-orientation`).")]
pub struct EvalArgs {
    /// The model file.
    #[arg(long)]
    model: PathBuf,

    #[command(flatten)]
    data: DataArgs,

    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,

    /// Seed of the held-out share of good images (folder layout without --normal-test-dir):
    /// the one `rd train` used, so that no training image is tested on.
    #[arg(long, default_value_t = 42)]
    seed: u64,

    /// AUPRO's false-positive-rate limit.
    #[arg(long, default_value_t = 0.3)]
    fpr_limit: f64,

    /// Where the model runs: cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    device: DeviceArg,

    /// Print JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,

    /// Folder for metrics.json, metrics.md and the ROC and PRO curve plots
    /// [default: <model>.eval beside the model file].
    #[arg(long)]
    out: Option<PathBuf>,
}

/// What `rd eval --json` prints.
#[derive(Debug, Serialize)]
pub struct Report {
    model: PathBuf,
    data: String,
    thresholds: &'static str,
    metrics: Metrics,
    #[serde(skip_serializing_if = "Option::is_none")]
    published: Option<PublishedJson>,
}

/// Published numbers in JSON form.
#[derive(Debug, Serialize)]
struct PublishedJson {
    paper_image_auroc: f64,
    paper_pixel_auroc: f64,
    paper_pro: f64,
    anomalib_image_auroc: f64,
    anomalib_pixel_auroc: f64,
    anomalib_image_f1: f64,
}

impl From<Published> for PublishedJson {
    fn from(p: Published) -> Self {
        PublishedJson {
            paper_image_auroc: p.paper[0],
            paper_pixel_auroc: p.paper[1],
            paper_pro: p.paper[2],
            anomalib_image_auroc: p.anomalib[0],
            anomalib_pixel_auroc: p.anomalib[1],
            anomalib_image_f1: p.anomalib[2],
        }
    }
}

/// Runs `rd eval`.
pub fn run(args: EvalArgs, quiet: bool) -> Result<Report> {
    if args.data.layout == Layout::Mvtec && args.data.category.is_none() {
        let found = mvtec::categories(&args.data.data).unwrap_or_default();
        bail!(
            "--category is required; {} has: {}",
            args.data.data.display(),
            if found.is_empty() {
                "no categories".to_string()
            } else {
                found.join(", ")
            }
        );
    }
    let device = args.device.open()?;
    let LoadedModel { model, meta, .. } = ReverseDistillation::load(&args.model, &device)?;
    let (splits, data_desc) = args.data.load(args.seed)?;
    if splits.test.is_empty() {
        bail!("{data_desc} has no test images");
    }
    if !quiet {
        eprintln!(
            "testing on {} of {data_desc}",
            DataArgs::test_summary(&splits.test)
        );
    }
    let predict_config = PredictConfig::for_model(&meta, args.batch_size.max(1));
    let mut progress = Reporter::new("scoring", "image", splits.test.len() as u64, quiet);
    let predictions = predict_with(&model, &splits.test, &predict_config, &mut |p| {
        progress.report(p)
    })
    .with_context(|| format!("cannot score the test images of {data_desc}"))?;
    progress.finish();
    if let (Some(why), false) = (args.data.missing_masks(&splits.test), quiet) {
        eprintln!("note: pixel metrics skipped: {why}; image-level metrics only");
    }
    tracing::info!(images = predictions.len(), "test images scored");
    let stored = meta.post.post_processor();
    let (post, thresholds) = if stored.image_normalizer().is_identity() {
        if !quiet {
            eprintln!("note: {} has no thresholds; fitting them on these test images (anomalib's default)", args.model.display());
        }
        (
            fit_post_processor(&predictions)?,
            "fitted on the test images",
        )
    } else {
        (stored, "from the model file")
    };
    let config = MetricsConfig {
        fpr_limit: args.fpr_limit,
        ..MetricsConfig::default()
    };
    let metrics = compute_metrics(&predictions, &post, &config)?;
    let report = Report {
        model: args.model.clone(),
        published: published(&data_desc).map(Into::into),
        data: data_desc.clone(),
        thresholds,
        metrics,
    };
    let table = metrics_table(&[(data_desc, report.metrics.clone())]);
    let json = serde_json::to_string_pretty(&report)?;
    if args.json {
        println!("{json}");
    } else {
        print!("{table}");
    }
    let dir = args
        .out
        .clone()
        .unwrap_or_else(|| args.model.with_extension("eval"));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text)
            .with_context(|| format!("cannot write into {}", dir.display()))
    };
    write("metrics.json", &json)?;
    write("metrics.md", &table)?;
    let plots = plot_curves(&dir, &predictions, &post, args.fpr_limit)?;
    if !quiet {
        eprintln!("metrics and {} plot(s) written to {}", plots, dir.display());
    }
    Ok(report)
}

/// ROC curves (image and pixel level) and the PRO curve, on the normalised outputs the metrics
/// use; returns how many plots were written.
fn plot_curves(dir: &Path, p: &Predictions, post: &PostProcessor, fpr_limit: f64) -> Result<usize> {
    let scores = post.image_normalizer().normalize_all(&p.scores);
    let image = roc_curve(&scores, &p.labels)?;
    let pixel_maps = p
        .masks
        .as_ref()
        .map(|_| post.pixel_normalizer().normalize_all(&p.maps));
    let pixel = match (&pixel_maps, &p.masks) {
        (Some(maps), Some(masks)) => Some(roc_curve(maps, masks)?),
        _ => None,
    };
    let mut roc = Vec::new();
    for (level, c) in [("image", Some(&image)), ("pixel", pixel.as_ref())] {
        if let Some(c) = c.filter(|c| !c.fpr.is_empty()) {
            roc.push(Curve {
                label: format!("{level} (AUROC {:.3})", trapezoid(&c.fpr, &c.tpr)),
                x: &c.fpr,
                y: &c.tpr,
            });
        }
    }
    let mut written = 0;
    if !roc.is_empty() {
        let spec = PlotSpec {
            title: "ROC",
            x_label: "false-positive rate",
            y_label: "true-positive rate",
            x_max: 1.0,
            diagonal: true,
        };
        save_curves(&dir.join("roc.png"), &spec, &roc)?;
        written += 1;
    }
    if let (Some(maps), Some(masks)) = (&pixel_maps, &p.masks) {
        if masks.contains(&1) {
            let pro = aupro_curve(maps, masks, p.map_shape(), fpr_limit)?;
            let spec = PlotSpec {
                title: "Per-region overlap (PRO)",
                x_label: "false-positive rate",
                y_label: "per-region overlap",
                x_max: fpr_limit as f32,
                diagonal: false,
            };
            let curve = Curve {
                label: format!("AUPRO@{fpr_limit} {:.3}", pro.aupro),
                x: &pro.fpr,
                y: &pro.pro,
            };
            save_curves(&dir.join("pro.png"), &spec, &[curve])?;
            written += 1;
        }
    }
    Ok(written)
}

/// Area under a polyline by the trapezoidal rule.
fn trapezoid(x: &[f32], y: &[f32]) -> f64 {
    x.windows(2)
        .zip(y.windows(2))
        .map(|(a, b)| f64::from(a[1] - a[0]) * f64::from(b[0] + b[1]) / 2.0)
        .sum()
}
