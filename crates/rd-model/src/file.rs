//! The model file: one safetensors holding teacher, bottleneck and decoder under anomalib's names,
//! with everything needed to reproduce evaluation (size, normalisation, map mode, thresholds and
//! min/max statistics, how it was trained) in its `__metadata__`.
//!
//! Tensors: `encoder.feature_extractor.*` (the teacher, torchvision names), `bottleneck.*`,
//! `decoder.*`, and in training checkpoints the optimiser state `adam.*`. Metadata keys: `format`
//! ([`FORMAT`]), `format_version` ([`FORMAT_VERSION`]) and `rd` (the [`ModelMeta`] as JSON).
//! Files are written to a temporary file and renamed, so a crash never leaves a torn file.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use rd_anomaly_map::MapMode;
use rd_backbone::{Backbone, Teacher, WeightFile};
use rd_dataset::Normalization;
use rd_metrics::{MinMax, PostProcessor, Thresholds};
use serde::{Deserialize, Serialize};

use crate::{ModelConfig, ModelError, Result, ReverseDistillation, Student, Variant};

/// The `format` value every model file carries.
pub const FORMAT: &str = "rd-reverse-distillation";
/// The newest format version this build reads and the one it writes.
pub const FORMAT_VERSION: u32 = 1;
/// Prefix of the teacher's tensors in a model file (anomalib's own).
pub const TEACHER_PREFIX: &str = "encoder.feature_extractor.";
/// Prefix of optimiser-state tensors in training checkpoints.
pub const OPTIMIZER_PREFIX: &str = "adam.";

/// anomalib's post-processing statistics; `None` where not computed (anomalib's NaN buffers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PostStats {
    /// F1-adaptive threshold on raw image scores.
    pub image_threshold: Option<f32>,
    /// F1-adaptive threshold on raw anomaly-map pixels.
    pub pixel_threshold: Option<f32>,
    /// Smallest raw image score on the validation set.
    pub image_min: Option<f32>,
    /// Largest raw image score on the validation set.
    pub image_max: Option<f32>,
    /// Smallest raw map pixel on the validation set.
    pub pixel_min: Option<f32>,
    /// Largest raw map pixel on the validation set.
    pub pixel_max: Option<f32>,
}

fn some(v: f32) -> Option<f32> {
    (!v.is_nan()).then_some(v)
}

impl From<&PostProcessor> for PostStats {
    fn from(p: &PostProcessor) -> Self {
        PostStats {
            image_threshold: some(p.thresholds.image),
            pixel_threshold: some(p.thresholds.pixel),
            image_min: some(p.image_stats.min),
            image_max: some(p.image_stats.max),
            pixel_min: some(p.pixel_stats.min),
            pixel_max: some(p.pixel_stats.max),
        }
    }
}

impl PostStats {
    /// The statistics as rd-metrics' post-processor (absent values become NaN, as in anomalib).
    pub fn post_processor(&self) -> PostProcessor {
        let v = |o: Option<f32>| o.unwrap_or(f32::NAN);
        PostProcessor {
            thresholds: Thresholds {
                image: v(self.image_threshold),
                pixel: v(self.pixel_threshold),
            },
            image_stats: MinMax {
                min: v(self.image_min),
                max: v(self.image_max),
            },
            pixel_stats: MinMax {
                min: v(self.pixel_min),
                max: v(self.pixel_max),
            },
        }
    }
}

/// How a model was trained, for the record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingSummary {
    /// The training data (folder and category).
    pub data: String,
    /// Epochs run.
    pub epochs: usize,
    /// Optimiser steps run.
    pub steps: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Seed of initialisation and shuffling.
    pub seed: u64,
    /// Mean loss of the last epoch.
    pub final_loss: f32,
    /// Adam (lr, beta1, beta2, eps, weight decay).
    pub adam: [f64; 5],
    /// Which images the thresholds and statistics were fitted on.
    pub validation: String,
    /// Evaluation metrics at the end of training (e.g. `image_auroc`).
    pub metrics: BTreeMap<String, f64>,
}

/// Everything about a model besides its tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// The teacher architecture.
    pub backbone: Backbone,
    /// Where the teacher's weights came from (`timm/<model>.<tag>`, a file, or a seeded init).
    pub teacher_weights: String,
    /// The student variant.
    pub variant: Variant,
    /// Model input (height, width).
    pub image_size: [usize; 2],
    /// Input normalisation.
    pub normalization: Normalization,
    /// Whether images are turned upright by their EXIF orientation tag before use (anomalib does
    /// not; files written before this field existed did not either).
    #[serde(default)]
    pub exif_orientation: bool,
    /// How the scales of the anomaly map combine.
    pub map_mode: MapMode,
    /// σ of the anomaly-map blur.
    pub blur_sigma: f64,
    /// Thresholds and min/max statistics.
    pub post: PostStats,
    /// How the model was trained, when it was trained here.
    pub training: Option<TrainingSummary>,
}

impl ModelMeta {
    /// Metadata for `config` with anomalib's defaults and no statistics yet.
    pub fn new(config: &ModelConfig, teacher_weights: impl Into<String>) -> Self {
        ModelMeta {
            backbone: config.backbone,
            teacher_weights: teacher_weights.into(),
            variant: config.variant,
            image_size: [config.image_size.0, config.image_size.1],
            normalization: Normalization::IMAGENET,
            exif_orientation: false,
            map_mode: config.map_mode,
            blur_sigma: 4.0,
            post: PostStats::default(),
            training: None,
        }
    }

    /// The architecture part.
    pub fn config(&self) -> ModelConfig {
        ModelConfig {
            backbone: self.backbone,
            variant: self.variant,
            image_size: (self.image_size[0], self.image_size[1]),
            map_mode: self.map_mode,
        }
    }
}

/// A model read from a file, with its metadata and any extra state it carried.
#[derive(Debug)]
pub struct LoadedModel {
    /// The model.
    pub model: ReverseDistillation,
    /// Its metadata.
    pub meta: ModelMeta,
    /// Optimiser state (`adam.*`), present in training checkpoints.
    pub optimizer_state: HashMap<String, Tensor>,
}

fn file_error(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::ModelFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl ReverseDistillation {
    /// Writes the model and `meta` (plus `extra` tensors such as optimiser state) to `path`,
    /// atomically: a temporary file in the same folder, flushed, then renamed over `path`.
    pub fn save(&self, path: &Path, meta: &ModelMeta, extra: &[(String, Tensor)]) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = self
            .teacher_params()
            .tensors()
            .into_iter()
            .map(|(n, t)| (format!("{TEACHER_PREFIX}{n}"), t))
            .collect();
        tensors.extend(self.student_params().tensors());
        tensors.extend(extra.iter().cloned());
        let meta_json = serde_json::to_string(meta)
            .map_err(|e| file_error(path, format!("cannot encode metadata: {e}")))?;
        let metadata = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("format_version".to_string(), FORMAT_VERSION.to_string()),
            ("rd".to_string(), meta_json),
        ]);
        write_atomically(path, |tmp| {
            let views = tensors.iter().map(|(n, t)| (n.as_str(), t));
            safetensors::serialize_to_file(views, Some(metadata), tmp).map_err(|e| e.to_string())
        })
    }

    /// Reads a model file written by [`ReverseDistillation::save`] (memory-mapped), checking its
    /// format, version and that its tensors are exactly the model's.
    pub fn load(path: &Path, device: &Device) -> Result<LoadedModel> {
        let file = Arc::new(WeightFile::open(path)?);
        let meta = read_meta(&file)?;
        let config = meta.config();
        let teacher = Teacher::load(file.clone(), config.backbone, device)?;
        let student = Student::load(file.clone(), config.backbone, config.variant, device)?;
        let known = [TEACHER_PREFIX, "bottleneck.", "decoder.", OPTIMIZER_PREFIX];
        if let Some(odd) = file
            .names()
            .into_iter()
            .find(|n| !known.iter().any(|p| n.starts_with(p)))
        {
            return Err(file_error(path, format!("unexpected tensor `{odd}`")));
        }
        let optimizer_state = file
            .names()
            .into_iter()
            .filter(|n| n.starts_with(OPTIMIZER_PREFIX))
            .map(|n| Ok((n.to_string(), file.load_raw(n, device)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        let model = ReverseDistillation::new(config, teacher, student)?;
        Ok(LoadedModel {
            model,
            meta,
            optimizer_state,
        })
    }
}

/// Reads and checks the metadata of a model file.
pub fn read_meta(file: &WeightFile) -> Result<ModelMeta> {
    let path = file.path();
    let metadata = file.metadata()?;
    match metadata.get("format").map(String::as_str) {
        Some(FORMAT) => {}
        Some(other) => {
            return Err(file_error(
                path,
                format!("it is a `{other}` file, not an rd model"),
            ));
        }
        None => {
            return Err(file_error(
                path,
                "it has no rd model metadata; to use anomalib or RD4AD weights, convert them \
                 with `rd import`",
            ));
        }
    }
    let version: u32 = metadata
        .get("format_version")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| file_error(path, "its format_version is missing or not a number"))?;
    if version > FORMAT_VERSION {
        return Err(file_error(
            path,
            format!(
                "it has format version {version}, newer than this build reads ({FORMAT_VERSION}); \
                 update rd"
            ),
        ));
    }
    let json = metadata
        .get("rd")
        .ok_or_else(|| file_error(path, "its `rd` metadata entry is missing"))?;
    serde_json::from_str(json)
        .map_err(|e| file_error(path, format!("its metadata is invalid: {e}")))
}

/// Writes `path` through a temporary sibling, flushed to disk, then renamed into place.
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&Path) -> std::result::Result<(), String>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| file_error(path, "the path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = write(&tmp)
        .map_err(|e| file_error(path, format!("cannot write: {e}")))
        .and_then(|()| {
            let f = std::fs::File::open(&tmp).map_err(|e| file_error(path, e.to_string()))?;
            f.sync_all().map_err(|e| file_error(path, e.to_string()))?;
            std::fs::rename(&tmp, path).map_err(|e| file_error(path, format!("cannot rename: {e}")))
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
