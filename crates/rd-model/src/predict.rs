//! Running a model (eval mode) over images in batches and keeping what thresholds and metrics
//! need: raw image scores, labels, raw anomaly maps at model resolution and masks.
//!
//! Memory: the maps are kept whole, 4 bytes per pixel (256 KiB per image at 256×256, ~40 MB for
//! an MVTec test set), plus the masks at 1 byte per pixel. Only one batch of images and model
//! activations is alive at a time.

use std::path::PathBuf;

use candle_core::DType;
use rd_dataset::{Loader, LoaderConfig, Normalization, Sample, SkippedFile};
use rd_metrics::MapShape;

use crate::batches::batch_to_tensor;
use crate::{ModelError, ModelMeta, Progress, Result, ReverseDistillation};

/// How to run the model over images.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictConfig {
    /// Images per forward pass.
    pub batch_size: usize,
    /// Input normalisation (the model file's).
    pub normalization: Normalization,
    /// Skip unreadable images (listed in [`Predictions::skipped`]) instead of stopping.
    pub skip_bad: bool,
    /// Decode images on this many threads (`None`: rayon's global pool).
    pub loader_threads: Option<usize>,
    /// Apply the EXIF orientation tag when decoding (the model file's choice).
    pub exif_orientation: bool,
}

impl PredictConfig {
    /// Batches of `batch_size` ImageNet-normalised images, stopping at the first bad file.
    pub fn new(batch_size: usize) -> Self {
        PredictConfig {
            batch_size,
            normalization: Normalization::IMAGENET,
            skip_bad: false,
            loader_threads: None,
            exif_orientation: false,
        }
    }

    /// As [`PredictConfig::new`] with the normalisation and orientation rule recorded in `meta`.
    pub fn for_model(meta: &ModelMeta, batch_size: usize) -> Self {
        PredictConfig {
            normalization: meta.normalization,
            exif_orientation: meta.exif_orientation,
            ..Self::new(batch_size)
        }
    }
}

/// Raw model outputs over a set of images, in sample order (skipped images left out).
#[derive(Debug, Clone, PartialEq)]
pub struct Predictions {
    /// Raw image scores (the maximum of each blurred map).
    pub scores: Vec<f32>,
    /// Ground-truth labels, 0 normal / 1 anomalous.
    pub labels: Vec<u8>,
    /// Raw blurred anomaly maps, `N × H × W` row-major, at the model's input size.
    pub maps: Vec<f32>,
    /// Ground-truth masks `N × H × W` (0/1) when any sample has one (the others get zeros).
    pub masks: Option<Vec<u8>>,
    /// Image file of each prediction.
    pub paths: Vec<PathBuf>,
    /// Defect type of each prediction (`good` for normal images).
    pub defects: Vec<String>,
    /// Map height `H`.
    pub height: usize,
    /// Map width `W`.
    pub width: usize,
    /// Images left out because they could not be read (with [`PredictConfig::skip_bad`]).
    pub skipped: Vec<SkippedFile>,
}

impl Predictions {
    /// Number of images `N`.
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    /// Whether no image was predicted.
    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    /// `(N, H, W)` of the maps, as `rd_metrics` takes it.
    pub fn map_shape(&self) -> MapShape {
        MapShape::new(self.len(), self.height, self.width)
    }

    /// The raw anomaly map of image `i` (`H × W`), if there is one.
    pub fn map(&self, i: usize) -> Option<&[f32]> {
        let n = self.height * self.width;
        self.maps.get(i * n..(i + 1) * n)
    }

    /// Whether any image is anomalous.
    pub fn has_anomalies(&self) -> bool {
        self.labels.contains(&1)
    }
}

/// Runs `model` in eval mode over `samples` and collects raw scores, maps, labels and masks.
pub fn predict(
    model: &ReverseDistillation,
    samples: &[Sample],
    config: &PredictConfig,
) -> Result<Predictions> {
    predict_with(model, samples, config, &mut |_| {})
}

/// [`predict()`], calling `progress` after every batch.
pub fn predict_with(
    model: &ReverseDistillation,
    samples: &[Sample],
    config: &PredictConfig,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Predictions> {
    if samples.is_empty() {
        return Err(ModelError::Config(
            "there are no images to evaluate; check the dataset folder".into(),
        ));
    }
    let (h, w) = model.config().image_size;
    let mut lc = LoaderConfig::new(h, w, config.batch_size);
    lc.preprocess.normalization = Some(config.normalization);
    lc.skip_bad = config.skip_bad;
    lc.num_threads = config.loader_threads;
    lc.preprocess.load.apply_orientation = config.exif_orientation;
    let mut loader = Loader::new(samples.to_vec(), lc)?;
    let device = model.student_params().device().clone();
    let mut out = Predictions {
        scores: Vec::with_capacity(samples.len()),
        labels: Vec::with_capacity(samples.len()),
        maps: Vec::with_capacity(samples.len() * h * w),
        masks: samples
            .iter()
            .any(|s| s.mask.is_some())
            .then(|| Vec::with_capacity(samples.len() * h * w)),
        paths: Vec::with_capacity(samples.len()),
        defects: Vec::with_capacity(samples.len()),
        height: h,
        width: w,
        skipped: Vec::new(),
    };
    let started = std::time::Instant::now();
    let mut done = 0u64;
    for batch in loader.by_ref() {
        let mut batch = batch?;
        let x = batch_to_tensor(&mut batch, &device)?;
        let maps = model.anomaly_maps(&x)?;
        out.maps.extend(
            maps.map
                .detach()
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        );
        out.scores.extend(
            maps.scores
                .detach()
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        );
        out.labels.extend(batch.labels_u8());
        if let (Some(all), Some(m)) = (out.masks.as_mut(), batch.masks.as_ref()) {
            all.extend_from_slice(m);
        }
        done += batch.paths.len() as u64;
        out.paths.extend(batch.paths);
        out.defects.extend(batch.defects);
        progress(&Progress {
            done,
            total: samples.len() as u64,
            epoch: None,
            loss: None,
            images_per_sec: done as f64 / started.elapsed().as_secs_f64().max(1e-9),
        });
    }
    out.skipped = loader.skipped();
    if out.is_empty() {
        return Err(ModelError::Config(format!(
            "none of the {} images could be read; see the skipped files",
            samples.len()
        )));
    }
    Ok(out)
}
