//! `rd import`: anomalib checkpoints and official RD4AD weights into an rd model file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::{Args, ValueEnum};
use rd_anomaly_map::MapMode;
use rd_backbone::{Backbone, BackboneId, Teacher, WeightFile, WeightsLocator};
use rd_model::file::TEACHER_PREFIX;
use rd_model::{ModelConfig, ModelMeta, PostStats, ReverseDistillation, Student, Variant};

/// Which program wrote the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Origin {
    /// anomalib: a Lightning `.ckpt`, or a `.safetensors`/`.pt` state dict with anomalib's names.
    Anomalib,
    /// The official hq-deng/RD4AD code: a `.pth` holding `bn` and `decoder` state dicts.
    Rd4ad,
}

/// Arguments of `rd import`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  rd import --from anomalib --weights results/ReverseDistillation/MVTecAD/bottle/latest/weights/lightning/model.ckpt \\
            --backbone wide_resnet50_2 --image-size 256 -o bottle.safetensors
  rd import --from rd4ad --weights checkpoints/wres50_bottle.pth --teacher wide_resnet50_2.tv_in1k \\
            --backbone wide_resnet50_2 --image-size 256 -o bottle.safetensors

anomalib checkpoints carry their teacher, thresholds and min/max statistics; they are kept.
The official RD4AD checkpoints hold only the student: name the teacher with --teacher.")]
pub struct ImportArgs {
    /// What wrote the weights.
    #[arg(long = "from", value_enum)]
    from: Origin,

    /// The checkpoint or weights file (.ckpt, .pth, .pt or .safetensors).
    #[arg(long)]
    weights: PathBuf,

    /// Teacher weights when the checkpoint has none: a file, or a timm name such as
    /// `wide_resnet50_2.tv_in1k` (found in the Hugging Face cache or downloaded).
    #[arg(long)]
    teacher: Option<String>,

    /// The backbone the model was trained with, e.g. `wide_resnet50_2` or `resnet18`.
    #[arg(long)]
    backbone: Backbone,

    /// Model input size: `H` for square inputs, or `H W`.
    #[arg(long, num_args = 1..=2, required = true, value_name = "H [W]")]
    image_size: Vec<usize>,

    /// How the three scales combine in the anomaly map (anomalib's default: add).
    #[arg(long, default_value = "add")]
    map_mode: MapMode,

    /// Student variant [default: anomalib for --from anomalib, official for --from rd4ad].
    #[arg(long)]
    variant: Option<Variant>,

    /// Where to write the model file.
    #[arg(long, short)]
    output: PathBuf,
}

/// Runs `rd import`.
pub fn run(args: ImportArgs, quiet: bool) -> Result<()> {
    let (h, w) = match args.image_size[..] {
        [h] => (h, h),
        [h, w] => (h, w),
        _ => unreachable!("clap allows one or two values"),
    };
    if h == 0 || w == 0 || h % 32 != 0 || w % 32 != 0 {
        return Err(rd_backbone::BackboneError::InputSize {
            height: h,
            width: w,
        }
        .into());
    }
    let variant = args.variant.unwrap_or(match args.from {
        Origin::Anomalib => Variant::Anomalib,
        Origin::Rd4ad => Variant::Official,
    });
    let config = ModelConfig {
        backbone: args.backbone,
        variant,
        image_size: (h, w),
        map_mode: args.map_mode,
    };

    let (mut tensors, post) = match args.from {
        Origin::Anomalib => read_anomalib(&args.weights)?,
        Origin::Rd4ad => (read_rd4ad(&args.weights)?, PostStats::default()),
    };
    let has_teacher = tensors.keys().any(|k| k.starts_with(TEACHER_PREFIX));
    let teacher_source = match (&args.teacher, has_teacher) {
        (Some(spec), _) => {
            tensors.retain(|k, _| !k.starts_with(TEACHER_PREFIX));
            let (source, teacher) = read_teacher(spec)?;
            tensors.extend(teacher);
            source
        }
        (None, true) => format!("from {}", args.weights.display()),
        (None, false) => bail!(
            "{} holds no teacher weights; pass --teacher with a file or a timm name such as {}.tv_in1k",
            args.weights.display(),
            args.backbone
        ),
    };

    let model = build(&tensors, config, &args.output).map_err(|e| {
        // The tensors were checked through a temporary file; name the user's file instead.
        anyhow::anyhow!(
            "{}",
            e.message
                .replace(&e.temp, &args.weights.display().to_string())
        )
    })?;
    let mut meta = ModelMeta::new(&config, teacher_source);
    meta.post = post;
    model
        .save(&args.output, &meta, &[])
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    if !quiet {
        eprintln!(
            "imported {} ({}, {} variant, {h}x{w}) -> {}",
            args.weights.display(),
            config.backbone,
            variant,
            args.output.display()
        );
    }
    Ok(())
}

/// Why the imported tensors do not make a model, and the temporary file the message may name.
struct BuildError {
    message: String,
    temp: String,
}

/// Validates the tensors by building the model from them (through a temporary file, so loading
/// takes the same checked path as any weights file).
fn build(
    tensors: &HashMap<String, Tensor>,
    config: ModelConfig,
    output: &Path,
) -> std::result::Result<ReverseDistillation, BuildError> {
    let mut temp = String::new();
    build_via_temp(tensors, config, output, &mut temp).map_err(|e| BuildError {
        message: format!("{e:#}"),
        temp,
    })
}

fn build_via_temp(
    tensors: &HashMap<String, Tensor>,
    config: ModelConfig,
    output: &Path,
    temp: &mut String,
) -> Result<ReverseDistillation> {
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".rd-import-")
        .suffix(".safetensors")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    *temp = tmp.path().display().to_string();
    candle_core::safetensors::save(tensors, tmp.path())?;
    let file = std::sync::Arc::new(WeightFile::open(tmp.path())?);
    let teacher = Teacher::load(file.clone(), config.backbone, &Device::Cpu)?;
    let student = Student::load(file, config.backbone, config.variant, &Device::Cpu)?;
    Ok(ReverseDistillation::new(config, teacher, student)?)
}

/// Reads a safetensors file or a PyTorch pickle (optionally the entry `key` of its top-level dict).
fn read_file(path: &Path, key: Option<&str>) -> Result<Vec<(String, Tensor)>> {
    if !path.is_file() {
        bail!("{} does not exist or is not a file", path.display());
    }
    let is_safetensors = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    let read = if is_safetensors {
        candle_core::safetensors::load(path, &Device::Cpu).map(|m| m.into_iter().collect())
    } else {
        candle_core::pickle::read_all_with_key(path, key)
    };
    read.with_context(|| {
        format!(
            "cannot read {} as {}",
            path.display(),
            if is_safetensors {
                "safetensors"
            } else {
                "a PyTorch checkpoint"
            }
        )
    })
}

/// Tensors under anomalib's names, and the post-processor statistics when the checkpoint has them.
fn read_anomalib(path: &Path) -> Result<(HashMap<String, Tensor>, PostStats)> {
    let raw = match read_file(path, Some("state_dict")) {
        Ok(t) if !t.is_empty() => t,
        _ => read_file(path, None)?,
    };
    let mut tensors = HashMap::new();
    let mut post = HashMap::new();
    for (name, t) in raw {
        let name = name.strip_prefix("model.").unwrap_or(&name).to_string();
        if let Some(stat) = name.strip_prefix("post_processor.") {
            post.insert(stat.to_string(), scalar(&t)?);
        } else if is_model_tensor(&name) {
            tensors.insert(name, t);
        }
    }
    if !tensors.keys().any(|k| k.starts_with("bottleneck.")) {
        bail!(
            "{} has no `bottleneck.*` tensors: it is not an anomalib Reverse Distillation checkpoint",
            path.display()
        );
    }
    let get = |k: &str| post.get(k).copied().flatten();
    let stats = PostStats {
        image_threshold: get("_image_threshold"),
        pixel_threshold: get("_pixel_threshold"),
        image_min: get("image_min"),
        image_max: get("image_max"),
        pixel_min: get("pixel_min"),
        pixel_max: get("pixel_max"),
    };
    Ok((tensors, stats))
}

/// The official code's `{'bn': ..., 'decoder': ...}` checkpoint, renamed to anomalib's names.
fn read_rd4ad(path: &Path) -> Result<HashMap<String, Tensor>> {
    let mut tensors = HashMap::new();
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
    {
        for (name, t) in read_file(path, None)? {
            let name = match name.strip_prefix("bn.") {
                Some(rest) => format!("bottleneck.{rest}"),
                None => name,
            };
            if is_model_tensor(&name) {
                tensors.insert(name, t);
            }
        }
    } else {
        for (key, prefix) in [("bn", "bottleneck."), ("decoder", "decoder.")] {
            let part = read_file(path, Some(key)).with_context(|| {
                "expected an RD4AD checkpoint with `bn` and `decoder` entries".to_string()
            })?;
            for (name, t) in part {
                tensors.insert(format!("{prefix}{name}"), t);
            }
        }
    }
    tensors.retain(|k, _| is_model_tensor(k));
    Ok(tensors)
}

/// Teacher tensors renamed under [`TEACHER_PREFIX`], and where they came from.
fn read_teacher(spec: &str) -> Result<(String, HashMap<String, Tensor>)> {
    let path = PathBuf::from(spec);
    let (source, path) = if path.is_file() {
        (format!("file {spec}"), path)
    } else {
        let id: BackboneId = spec.parse().with_context(|| {
            format!("--teacher {spec}: neither an existing file nor a backbone name")
        })?;
        let file = WeightsLocator::from_env().resolve(&id)?;
        (id.hub_repo(), file)
    };
    let raw = read_file(&path, None)?;
    // torchvision and timm files use bare names; anomalib files nest them.
    let prefix = raw
        .iter()
        .filter_map(|(n, _)| n.strip_suffix("conv1.weight"))
        .filter(|p| p.is_empty() || p.ends_with('.') && !p.contains("layer"))
        .min_by_key(|p| p.len())
        .unwrap_or("")
        .to_string();
    let tensors = raw
        .into_iter()
        .filter_map(|(n, t)| {
            let rest = n.strip_prefix(&prefix)?.to_string();
            let keep = !rest.ends_with("num_batches_tracked")
                && !rest.starts_with("layer4.")
                && !rest.starts_with("fc.");
            keep.then(|| (format!("{TEACHER_PREFIX}{rest}"), t))
        })
        .collect();
    Ok((source, tensors))
}

fn is_model_tensor(name: &str) -> bool {
    let part = name.starts_with(TEACHER_PREFIX)
        || name.starts_with("bottleneck.")
        || name.starts_with("decoder.");
    part && !name.ends_with("num_batches_tracked")
        && !name.contains(".layer4.")
        && !name.contains(".fc.")
}

/// A 0-d or 1-element statistic as a number; NaN (anomalib's "not computed") becomes `None`.
fn scalar(t: &Tensor) -> Result<Option<f32>> {
    let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(v.first().copied().filter(|v| !v.is_nan()))
}
