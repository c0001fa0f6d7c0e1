//! `rd train`: train a model on good images, fit its thresholds, evaluate it, save it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use rd_anomaly_map::MapMode;
use rd_backbone::{BackboneId, Teacher, TeacherWeights, WeightFile, WeightsLocator};
use rd_model::evaluate::{compute_metrics, fit_post_processor, Metrics, MetricsConfig};
use rd_model::fit::{Fit, FitOutcome, TrainConfig};
use rd_model::predict::{predict_with, PredictConfig, Predictions};
use rd_model::{
    AdamConfig, ModelConfig, ModelMeta, PostStats, ReverseDistillation, Student, Variant,
};

use crate::data::DataArgs;
use crate::device::DeviceArg;
use crate::progress::Reporter;
use crate::report::print_metrics;

/// Which images the thresholds and min/max statistics are fitted on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Validation {
    /// The test set (anomalib's default for MVTec AD and VisA; optimistic).
    Test,
    /// A held-out share of the good training images (for users without defect samples).
    Holdout(f64),
}

impl std::str::FromStr for Validation {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "test" => Ok(Validation::Test),
            _ => match s.strip_prefix("holdout:").map(str::parse::<f64>) {
                Some(Ok(share)) if share > 0.0 && share < 1.0 => Ok(Validation::Holdout(share)),
                _ => Err(format!(
                    "`{s}`: use `test` or `holdout:SHARE` with 0 < SHARE < 1, e.g. holdout:0.2"
                )),
            },
        }
    }
}

/// Arguments of `rd train`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  rd train --data data/mvtec --category bottle --backbone wide_resnet50_2 -o bottle.safetensors
  rd train --data data/synthetic --category fabric --backbone resnet18 --image-size 128 --epochs 20 \\
           --allow-random-teacher -o fabric.safetensors
  rd train --layout folder --data good_parts/ --validation holdout:0.2 -o line3.safetensors
  rd train --layout folder --data line3/train_good --normal-test-dir line3/test_good \\
           --abnormal-dir line3/scratch --abnormal-dir line3/dent -o line3.safetensors
  rd train ... --resume bottle.checkpoint.safetensors     # continue an interrupted run

Training writes <output>.checkpoint.safetensors every --checkpoint-every epochs and on Ctrl-C;
--resume continues from it exactly. The checkpoint of a run that completed is removed once the
model is written (--keep-checkpoint keeps it). After training, thresholds are fitted on the
validation images and metrics are computed on the test images; both travel inside the model
file. Without masks (no ground_truth/ folder, no --mask-dir) only image-level metrics are
computed, as anomalib does for classification data.")]
pub struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,

    /// Teacher backbone, optionally with a timm weight tag: resnet18, resnet34, resnet50,
    /// wide_resnet50_2 (anomalib's default weights) or e.g. wide_resnet50_2.tv_in1k (the paper's).
    #[arg(long, default_value = "wide_resnet50_2")]
    backbone: BackboneId,

    /// A local teacher weights file (timm/torchvision names) instead of the Hugging Face cache/hub.
    #[arg(long)]
    teacher_weights: Option<PathBuf>,

    /// When no pretrained teacher can be found, use a seeded random one instead of failing
    /// (results are much worse; for demos and offline smoke tests).
    #[arg(long)]
    allow_random_teacher: bool,

    /// Model input size: `H` for square inputs, or `H W` (multiples of 32).
    #[arg(long, num_args = 1..=2, default_values_t = [256], value_name = "H [W]")]
    image_size: Vec<usize>,

    /// Student variant: anomalib's or the official RD4AD code's.
    #[arg(long, default_value = "anomalib")]
    variant: Variant,

    /// How the scales combine in the anomaly map.
    #[arg(long, default_value = "add")]
    map_mode: MapMode,

    /// Epochs (the paper: 200).
    #[arg(long, default_value_t = 200)]
    epochs: usize,

    /// Stop after this many optimiser steps in total, even mid-epoch.
    #[arg(long)]
    max_steps: Option<usize>,

    /// Images per step (the paper: 16).
    #[arg(long, default_value_t = 16)]
    batch_size: usize,

    /// Adam learning rate.
    #[arg(long, default_value_t = 0.005)]
    lr: f64,

    /// Use anomalib's Adam betas (0.5, 0.99) instead of the paper's (0.5, 0.999).
    #[arg(long)]
    anomalib_betas: bool,

    /// Seed of initialisation, shuffling and splits.
    #[arg(long, default_value_t = 42)]
    seed: u64,

    /// Where thresholds are fitted: `test` (anomalib's default) or `holdout:SHARE` of the good
    /// training images.
    #[arg(long, default_value = "test")]
    validation: Validation,

    /// Write a checkpoint every this many epochs (0: only at the end and on Ctrl-C).
    #[arg(long, default_value_t = 10)]
    checkpoint_every: usize,

    /// Continue from this checkpoint.
    #[arg(long)]
    resume: Option<PathBuf>,

    /// Keep the checkpoint after a run that completed (it holds the optimiser state, about
    /// 2.5 times the model's size; only needed to train further with --resume).
    #[arg(long)]
    keep_checkpoint: bool,

    /// Turn images upright by their EXIF orientation tag (phone and camera photos). Off by
    /// default because anomalib does not rotate: a model imported from or compared with anomalib
    /// must see the same pixels. The choice is stored in the model file; `rd eval` and
    /// `rd predict` follow it.
    #[arg(long)]
    exif_orientation: bool,

    /// Append one JSON line per epoch to this file [default: <output>.log.jsonl].
    #[arg(long)]
    log: Option<PathBuf>,

    /// Report and skip unreadable images instead of stopping.
    #[arg(long)]
    skip_bad: bool,

    /// Keep up to this many MiB of the frozen teacher's features of the training images from
    /// the first epoch for the later ones, which then skip the teacher's forward pass (a sixth
    /// to a fifth of a CPU step; the weights come out bit-identical). 512 MiB holds about 1 100
    /// images for resnet18 at 128 px, 290 for wide_resnet50_2 (a quarter of that at 256 px);
    /// 0 recomputes them every epoch, for the least memory.
    #[arg(long, default_value_t = TrainConfig::DEFAULT_TEACHER_CACHE >> 20, value_name = "MIB")]
    teacher_cache_mib: usize,

    /// Where the model runs: cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    device: DeviceArg,

    /// Print the final metrics as JSON on stdout.
    #[arg(long)]
    json: bool,

    /// Where to write the model file.
    #[arg(long, short)]
    output: PathBuf,
}

/// `<output>` with `suffix` in place of its extension.
fn sibling(output: &Path, suffix: &str) -> PathBuf {
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    output.with_file_name(format!("{stem}.{suffix}"))
}

/// Runs `rd train`.
pub fn run(args: TrainArgs, quiet: bool) -> Result<Option<Metrics>> {
    let device = args.device.open()?;
    let (h, w) = match args.image_size[..] {
        [h] => (h, h),
        [h, w] => (h, w),
        _ => unreachable!("clap allows one or two values"),
    };
    let (mut splits, data_desc) = args.data.load(args.seed)?;
    if let Validation::Holdout(share) = args.validation {
        splits.hold_out_normals(share, args.seed)?;
    }
    if splits.train.is_empty() {
        bail!("no training images found in {data_desc}");
    }
    let mut config = TrainConfig::new(sibling(&args.output, "checkpoint.safetensors"));
    config.epochs = args.epochs;
    config.max_steps = args.max_steps;
    config.batch_size = args.batch_size;
    config.adam = AdamConfig {
        lr: args.lr,
        ..if args.anomalib_betas {
            AdamConfig::anomalib()
        } else {
            AdamConfig::paper()
        }
    };
    config.seed = args.seed;
    config.checkpoint_every = args.checkpoint_every;
    config.log = Some(
        args.log
            .clone()
            .unwrap_or_else(|| sibling(&args.output, "log.jsonl")),
    );
    config.skip_bad = args.skip_bad;
    config.teacher_cache = args.teacher_cache_mib.saturating_mul(1 << 20);

    let mut fit = match &args.resume {
        Some(ckpt) => {
            config.checkpoint = ckpt.clone();
            Fit::resume(ckpt, &device, config)?
        }
        None => {
            let model_config = ModelConfig {
                backbone: args.backbone.backbone,
                variant: args.variant,
                image_size: (h, w),
                map_mode: args.map_mode,
            };
            let (teacher, source) = load_teacher(&args, &device, quiet)?;
            let student = Student::seeded(
                model_config.backbone,
                model_config.variant,
                args.seed,
                &device,
            )?;
            let model = ReverseDistillation::new(model_config, teacher, student)?;
            let mut meta = ModelMeta::new(&model_config, source);
            meta.exif_orientation = args.exif_orientation;
            Fit::new(model, meta, data_desc.clone(), config)?
        }
    };
    let trained_upright = fit.meta().exif_orientation;
    if trained_upright != args.exif_orientation {
        bail!(
            "the checkpoint was trained {} EXIF orientation; resume {} --exif-orientation",
            if trained_upright { "with" } else { "without" },
            if trained_upright { "with" } else { "without" }
        );
    }
    if !quiet {
        eprintln!(
            "training on {} images of {data_desc} ({} epochs, batch {}); testing on {}",
            splits.train.len(),
            fit.config().epochs,
            fit.config().batch_size,
            DataArgs::test_summary(&splits.test)
        );
    }
    tracing::info!(
        train = splits.train.len(),
        test = splits.test.len(),
        validation = splits.validation.as_ref().map_or(0, Vec::len),
        "dataset loaded"
    );
    let mut progress = Reporter::new("training", "step", 0, quiet);
    let report = fit.run_with(&splits.train, &mut |p| progress.report(p))?;
    progress.finish();
    tracing::info!(steps = report.steps, seconds = report.seconds, outcome = ?report.outcome, "training finished");
    for s in &report.skipped {
        eprintln!("warning: skipped {}: {}", s.path.display(), s.reason);
    }
    match report.outcome {
        FitOutcome::Interrupted => bail!(
            "interrupted after {} epochs; continue with `rd train ... --resume {}`",
            report.epochs_done,
            fit.config().checkpoint.display()
        ),
        FitOutcome::StepLimit | FitOutcome::Completed => {}
    }

    let checkpoint = fit.config().checkpoint.clone();
    let (model, mut meta) = fit.into_parts();
    let predict_config = PredictConfig::for_model(&meta, args.batch_size.max(1));
    let score = |samples: &[rd_dataset::Sample]| -> Result<Predictions> {
        let mut progress = Reporter::new("scoring", "image", samples.len() as u64, quiet);
        let p = predict_with(&model, samples, &predict_config, &mut |p| {
            progress.report(p)
        })?;
        progress.finish();
        Ok(p)
    };
    let validation = splits.validation_or_test();
    let val = score(validation).context("validation failed")?;
    let post = fit_post_processor(&val)?;
    meta.post = PostStats::from(&post);
    let test = if splits.validation.is_some() {
        score(&splits.test).context("testing failed")?
    } else {
        val
    };
    if let (Some(why), false) = (args.data.missing_masks(&splits.test), quiet) {
        eprintln!("note: pixel metrics skipped: {why}; image-level metrics only");
    }
    let metrics = if test.is_empty() {
        None
    } else {
        Some(compute_metrics(&test, &post, &MetricsConfig::default())?)
    };
    if let (Some(m), Some(t)) = (&metrics, meta.training.as_mut()) {
        t.metrics = m.to_map();
        t.validation = match args.validation {
            Validation::Test => "test set (anomalib's default)".into(),
            Validation::Holdout(s) => format!("{:.0} % of the good training images", s * 100.0),
        };
    }
    model
        .save(&args.output, &meta, &[])
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    if report.outcome == FitOutcome::Completed && !args.keep_checkpoint {
        // Checkpoints exist to continue interrupted runs; this one is done and the model holds
        // its result. A missing file is fine (nothing was left to remove).
        match std::fs::remove_file(&checkpoint) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!(
                "warning: cannot remove the checkpoint {}: {e}",
                checkpoint.display()
            ),
        }
    }
    if let Some(m) = &metrics {
        if args.json {
            println!("{}", serde_json::to_string_pretty(m)?);
        } else if !quiet {
            print_metrics(&[(data_desc.clone(), m.clone())]);
        }
    }
    if !quiet {
        eprintln!("model written to {}", args.output.display());
    }
    Ok(metrics)
}

/// The teacher from a file, the cache or the hub; or, if allowed, a seeded random one.
fn load_teacher(
    args: &TrainArgs,
    device: &Device,
    quiet: bool,
) -> Result<((Teacher, rd_backbone::ParamStore), String)> {
    let backbone = args.backbone.backbone;
    let spec = match &args.teacher_weights {
        Some(path) => TeacherWeights::File(path.clone()),
        None => TeacherWeights::Hub(args.backbone.clone()),
    };
    let mut locator = WeightsLocator::from_env();
    locator.progress = !quiet;
    match spec.resolve(&locator) {
        Ok(path) => {
            let file = WeightFile::open(&path)?;
            let source = match &spec {
                TeacherWeights::File(p) => format!("file {}", p.display()),
                TeacherWeights::Hub(id) => id.hub_repo(),
            };
            Ok((Teacher::load(file.into(), backbone, device)?, source))
        }
        Err(e) if args.allow_random_teacher && args.teacher_weights.is_none() => {
            eprintln!(
                "warning: =================================================================="
            );
            eprintln!("warning: NO PRETRAINED TEACHER: {e}");
            eprintln!(
                "warning: using a seeded RANDOM {backbone} teacher (seed {}).",
                args.seed
            );
            eprintln!("warning: Reverse Distillation needs ImageNet features to work well; expect");
            eprintln!("warning: much weaker detection than with pretrained weights.");
            eprintln!(
                "warning: =================================================================="
            );
            Ok((
                Teacher::seeded(backbone, args.seed, device)?,
                format!("random (seed {})", args.seed),
            ))
        }
        Err(e) => Err(e.into()),
    }
}
