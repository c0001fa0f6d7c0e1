//! anomalib's thresholds and normalisation statistics (SPEC §5.4) and its test metrics
//! (SPEC §5.5), computed from [`Predictions`].
//!
//! **Validation data.** [`fit_post_processor`] fits what anomalib's `PostProcessor` fits during
//! validation, on raw outputs:
//! * with defects in the validation set (MVTec's default uses the test set itself): the
//!   F1-maximising image threshold, the F1-maximising pixel threshold when masks exist, and the
//!   min/max of scores and map pixels. Metrics on that same set are then optimistic.
//! * with **only good images** (e.g. held-out good parts): anomalib's rule sets the image
//!   threshold to the **highest** validation score. Every validation image is then called good,
//!   and a part is flagged only when it scores above the worst-looking good part seen: few false
//!   alarms on parts like those, but subtle defects can pass, and with few validation images the
//!   threshold is noisy. Without masks the pixel threshold is not fitted and borrows the image
//!   one (threshold matching); as the score is the map's maximum, that is the highest pixel value
//!   of any good map, so only pixels above everything seen on good parts are marked.
//! * with only defective images the thresholds are the lowest values.
//!
//! **Metrics** are computed, as anomalib's evaluator computes them, on the *normalised* outputs
//! `clamp((x − t)/(max − min) + 0.5, 0, 1)`: AUROC and AUPRO on normalised scores and maps, F1 on
//! the labels `normalised > 0.5` (i.e. raw > t). Normalisation is monotone, so the AUROC equals
//! the raw-score AUROC unless clamping merges values outside the validation min/max into ties,
//! which cannot happen when the validation set is the test set.

use std::collections::BTreeMap;

use rd_metrics::{aupro, auroc, f1_score, PostProcessor};
use serde::{Deserialize, Serialize};

use crate::predict::Predictions;
use crate::Result;

/// Fits anomalib's post-processing statistics on validation predictions (see the module docs).
pub fn fit_post_processor(validation: &Predictions) -> Result<PostProcessor> {
    let mut post = PostProcessor::default();
    post.fit_image(&validation.scores, &validation.labels)?;
    match &validation.masks {
        Some(masks) => post.fit_pixel(&validation.maps, masks)?,
        None => post.fit_pixel_stats(&validation.maps)?,
    }
    Ok(post)
}

/// Which optional metrics to compute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricsConfig {
    /// Compute AUPRO (opt-in in anomalib; needs masks).
    pub aupro: bool,
    /// AUPRO's false-positive-rate limit (anomalib: 0.3).
    pub fpr_limit: f64,
}

impl Default for MetricsConfig {
    /// AUPRO on, up to FPR 0.3.
    fn default() -> Self {
        MetricsConfig {
            aupro: true,
            fpr_limit: 0.3,
        }
    }
}

/// anomalib's test metrics of one evaluation. `None` where undefined: pixel metrics without
/// masks, AUROC with a single class present (anomalib reports 0 there), AUPRO without any
/// defect region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Images evaluated.
    pub images: usize,
    /// Of which anomalous.
    pub anomalous_images: usize,
    /// Image AUROC on normalised scores.
    pub image_auroc: Option<f64>,
    /// F1 of the predicted labels (normalised score > 0.5).
    pub image_f1: f64,
    /// Pixel AUROC on normalised maps.
    pub pixel_auroc: Option<f64>,
    /// F1 of the predicted masks (normalised pixel > 0.5).
    pub pixel_f1: Option<f64>,
    /// AUPRO up to the configured FPR limit, on normalised maps.
    pub pixel_aupro: Option<f64>,
}

impl Metrics {
    /// The defined metrics by name (`image_auroc`, `image_f1`, ...), e.g. for
    /// `TrainingSummary::metrics`.
    pub fn to_map(&self) -> BTreeMap<String, f64> {
        let entries = [
            ("image_auroc", self.image_auroc),
            ("image_f1", Some(self.image_f1)),
            ("pixel_auroc", self.pixel_auroc),
            ("pixel_f1", self.pixel_f1),
            ("pixel_aupro", self.pixel_aupro),
        ];
        entries
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
            .collect()
    }
}

/// Whether a 0/1 slice holds both classes.
fn both_classes(labels: &[u8]) -> bool {
    labels.contains(&0) && labels.contains(&1)
}

/// Computes the metrics of `predictions` post-processed with `post` (see the module docs).
pub fn compute_metrics(
    predictions: &Predictions,
    post: &PostProcessor,
    config: &MetricsConfig,
) -> Result<Metrics> {
    let image = post.image_normalizer();
    let scores = image.normalize_all(&predictions.scores);
    let labels = &predictions.labels;
    let image_auroc = if both_classes(labels) {
        Some(auroc(&scores, labels)?)
    } else {
        None
    };
    let predicted: Vec<bool> = scores
        .iter()
        .map(|&s| rd_metrics::is_anomalous_normalized(s))
        .collect();
    let image_f1 = f1_score(&predicted, labels)?;
    let (mut pixel_auroc, mut pixel_f1, mut pixel_aupro) = (None, None, None);
    if let Some(masks) = &predictions.masks {
        let maps = post.pixel_normalizer().normalize_all(&predictions.maps);
        if both_classes(masks) {
            pixel_auroc = Some(auroc(&maps, masks)?);
            if config.aupro {
                pixel_aupro = Some(aupro(
                    &maps,
                    masks,
                    predictions.map_shape(),
                    config.fpr_limit,
                )?);
            }
        }
        let predicted: Vec<bool> = maps
            .iter()
            .map(|&v| rd_metrics::is_anomalous_normalized(v))
            .collect();
        drop(maps);
        pixel_f1 = Some(f1_score(&predicted, masks)?);
    }
    Ok(Metrics {
        images: predictions.len(),
        anomalous_images: labels.iter().filter(|&&l| l == 1).count(),
        image_auroc,
        image_f1,
        pixel_auroc,
        pixel_f1,
        pixel_aupro,
    })
}
