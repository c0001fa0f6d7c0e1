//! `rd inspect`: what a model file holds.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use clap::Args;
use rd_backbone::params::is_parameter;
use rd_model::{ModelMeta, ReverseDistillation};
use serde::Serialize;

/// Arguments of `rd inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The model file (`.safetensors` written by `rd train` or `rd import`).
    model: PathBuf,

    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Parameter counts per part (BatchNorm running statistics excluded).
#[derive(Debug, Serialize)]
struct Counts {
    teacher: usize,
    bottleneck: usize,
    decoder: usize,
}

/// What `rd inspect --json` prints.
#[derive(Debug, Serialize)]
struct Report {
    path: PathBuf,
    meta: ModelMeta,
    parameters: Counts,
    tensors: usize,
    bytes: u64,
    optimizer_state: bool,
}

/// Runs `rd inspect`.
pub fn run(args: InspectArgs) -> Result<()> {
    let loaded = ReverseDistillation::load(&args.model, &Device::Cpu)?;
    let count = |tensors: Vec<(String, candle_core::Tensor)>, prefix: &str| -> usize {
        tensors
            .iter()
            .filter(|(n, _)| n.starts_with(prefix) && is_parameter(n))
            .map(|(_, t)| t.elem_count())
            .sum()
    };
    let student = loaded.model.student_params().tensors();
    let parameters = Counts {
        teacher: loaded.model.teacher_params().parameter_count(),
        bottleneck: count(student.clone(), "bottleneck."),
        decoder: count(student, "decoder."),
    };
    let file = rd_backbone::WeightFile::open(&args.model)?;
    let report = Report {
        bytes: std::fs::metadata(&args.model)
            .with_context(|| format!("cannot read {}", args.model.display()))?
            .len(),
        tensors: file.names().len(),
        path: args.model,
        meta: loaded.meta,
        parameters,
        optimizer_state: !loaded.optimizer_state.is_empty(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(())
}

fn opt(v: Option<f32>) -> String {
    v.map_or_else(|| "not set".to_string(), |v| format!("{v:.6}"))
}

fn print_text(r: &Report) {
    let m = &r.meta;
    let mut rows: Vec<(&str, String)> = Vec::new();
    let mut row = |label: &'static str, value: String| rows.push((label, value));
    row(
        "file",
        format!(
            "{} ({:.1} MB, {} tensors)",
            r.path.display(),
            r.bytes as f64 / 1e6,
            r.tensors
        ),
    );
    row(
        "backbone",
        format!("{} (teacher weights: {})", m.backbone, m.teacher_weights),
    );
    row("variant", m.variant.to_string());
    row(
        "input size",
        format!("{}x{} (height x width)", m.image_size[0], m.image_size[1]),
    );
    row(
        "normalisation",
        format!(
            "mean {:?}, std {:?}",
            m.normalization.mean, m.normalization.std
        ),
    );
    row(
        "EXIF orientation",
        if m.exif_orientation {
            "applied (images turned upright by their tag)"
        } else {
            "ignored, as anomalib does"
        }
        .to_string(),
    );
    row(
        "anomaly map",
        format!("{}, Gaussian blur σ {}", m.map_mode, m.blur_sigma),
    );
    row(
        "image threshold",
        format!(
            "{} (scores min {}, max {})",
            opt(m.post.image_threshold),
            opt(m.post.image_min),
            opt(m.post.image_max)
        ),
    );
    row(
        "pixel threshold",
        format!(
            "{} (pixels min {}, max {})",
            opt(m.post.pixel_threshold),
            opt(m.post.pixel_min),
            opt(m.post.pixel_max)
        ),
    );
    let p = &r.parameters;
    row(
        "parameters",
        format!(
            "teacher {}, bottleneck {}, decoder {} (trainable {})",
            p.teacher,
            p.bottleneck,
            p.decoder,
            p.bottleneck + p.decoder
        ),
    );
    row(
        "optimiser state",
        if r.optimizer_state {
            "present (training checkpoint)"
        } else {
            "none"
        }
        .to_string(),
    );
    if let Some(t) = &m.training {
        row(
            "training",
            format!(
                "{} epochs, {} steps, batch {}, seed {}, final loss {:.5} on {}",
                t.epochs, t.steps, t.batch_size, t.seed, t.final_loss, t.data
            ),
        );
        for (k, v) in &t.metrics {
            row("  metric", format!("{k} = {v:.4}"));
        }
    }
    for (label, value) in rows {
        println!("{label:<16} {value}");
    }
}
