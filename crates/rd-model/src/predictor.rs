//! Scoring single decoded images the way `rd predict` and `rd serve` both do: resize and
//! normalise as the model file says, run the model, and read the verdict off the file's
//! thresholds. One home for these steps, so a served score equals an offline one.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rd_dataset::{Preprocess, RgbImage32};
use rd_metrics::Normalizer;

use crate::{LoadedModel, ModelError, ModelMeta, Result, ReverseDistillation};

/// A model with its metadata, ready to score images.
#[derive(Debug)]
pub struct Predictor {
    model: ReverseDistillation,
    meta: ModelMeta,
    preprocess: Preprocess,
    image_norm: Normalizer,
    pixel_norm: Normalizer,
}

/// Raw outputs of one forward pass over `n` images.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredBatch {
    /// Raw image scores, one per image.
    pub scores: Vec<f32>,
    /// Raw blurred anomaly maps, `n × H × W` row-major at the model's input size.
    pub maps: Vec<f32>,
}

/// What the model file's thresholds say about one raw image score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// The raw score.
    pub score: f32,
    /// anomalib's normalised score in `[0, 1]` (0.5 = the threshold); `None` without statistics.
    pub normalized_score: Option<f32>,
    /// Whether the image is anomalous; `None` without statistics.
    pub anomalous: Option<bool>,
}

/// Normalised pixels above this are anomalous (anomalib's rule for masks).
pub const MASK_THRESHOLD: f32 = 0.5;

impl Predictor {
    /// Wraps a loaded model file.
    pub fn new(loaded: LoadedModel) -> Self {
        let LoadedModel { model, meta, .. } = loaded;
        let post = meta.post.post_processor();
        let [h, w] = meta.image_size;
        let mut preprocess = Preprocess::new(h, w);
        preprocess.normalization = Some(meta.normalization);
        Predictor {
            model,
            image_norm: post.image_normalizer(),
            pixel_norm: post.pixel_normalizer(),
            meta,
            preprocess,
        }
    }

    /// Reads a model file onto `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Ok(Self::new(ReverseDistillation::load(path, device)?))
    }

    /// The model.
    pub fn model(&self) -> &ReverseDistillation {
        &self.model
    }

    /// The model file's metadata.
    pub fn meta(&self) -> &ModelMeta {
        &self.meta
    }

    /// Model input `(height, width)`.
    pub fn input_size(&self) -> (usize, usize) {
        (self.meta.image_size[0], self.meta.image_size[1])
    }

    /// Values in one model input (`3 × H × W`).
    pub fn input_len(&self) -> usize {
        let (h, w) = self.input_size();
        3 * h * w
    }

    /// The normaliser of image scores (the identity when the file has no statistics).
    pub fn image_normalizer(&self) -> &Normalizer {
        &self.image_norm
    }

    /// The normaliser of map pixels (the identity when the file has no statistics).
    pub fn pixel_normalizer(&self) -> &Normalizer {
        &self.pixel_norm
    }

    /// A decoded `[0, 1]` image as a model input: anomalib's antialiased resize to the model
    /// size, then the file's normalisation (`3 × H × W`, channel-first).
    pub fn prepare(&self, image: &RgbImage32) -> Vec<f32> {
        self.preprocess.finish_image(image).data
    }

    /// Runs the model on `inputs`, whole prepared images back to back (`n × 3 × H × W`).
    pub fn score(&self, inputs: Vec<f32>) -> Result<ScoredBatch> {
        let (h, w) = self.input_size();
        let per = self.input_len();
        if inputs.is_empty() || !inputs.len().is_multiple_of(per) {
            return Err(ModelError::Config(format!(
                "a batch of {h}x{w} RGB inputs needs a multiple of {per} values, got {}",
                inputs.len()
            )));
        }
        let n = inputs.len() / per;
        let device = self.model.student_params().device().clone();
        let x = Tensor::from_vec(inputs, (n, 3, h, w), &device)?;
        let maps = self.model.anomaly_maps(&x)?;
        let flat = |t: &Tensor| -> Result<Vec<f32>> {
            Ok(t.detach()
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?)
        };
        Ok(ScoredBatch {
            scores: flat(&maps.scores)?,
            maps: flat(&maps.map)?,
        })
    }

    /// The verdict on a raw image score.
    pub fn verdict(&self, score: f32) -> Verdict {
        let known = !self.image_norm.is_identity();
        Verdict {
            score,
            normalized_score: known.then(|| self.image_norm.normalize(score)),
            anomalous: known.then(|| self.image_norm.is_anomalous(score)),
        }
    }

    /// A raw map made ready for drawing: normalised with the file's pixel statistics when it
    /// has them (then [`MASK_THRESHOLD`] separates defects), else left raw for min-max colouring.
    pub fn display_map(&self, map: &[f32]) -> (Vec<f32>, rd_anomaly_map::Normalization) {
        if self.pixel_norm.is_identity() {
            (map.to_vec(), rd_anomaly_map::Normalization::MapMinMax)
        } else {
            (
                self.pixel_norm.normalize_all(map),
                rd_anomaly_map::Normalization::Identity,
            )
        }
    }
}
