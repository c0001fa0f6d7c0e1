//! anomalib's post-processing statistics and normalisation (`PostProcessor`, `MinMax`).
//!
//! During validation anomalib fits, on raw model outputs, an F1-adaptive threshold and the
//! min/max of the image scores and of all anomaly-map pixels. Outputs are then normalised as
//! `clamp((x − t) / (max − min) + 0.5, 0, 1)` in `f32` and labelled anomalous when the normalised
//! value is **strictly** greater than 0.5. Unset statistics are NaN (as anomalib's buffers):
//! a NaN threshold borrows the other level's threshold (threshold matching), then falls back to
//! `(max + min) / 2`; a NaN min or max disables normalisation.

use crate::error::Result;
use crate::f1::f1_adaptive_threshold;
use crate::label::{check_scores, Label};
use rayon::prelude::*;

/// Normalised values strictly above this are anomalous (`1 − sensitivity` with anomalib's
/// default sensitivity 0.5).
pub const NORMALIZED_THRESHOLD: f32 = 0.5;

/// Whether a normalised score or pixel is anomalous: `value > 0.5` (strictly).
pub fn is_anomalous_normalized(value: f32) -> bool {
    value > NORMALIZED_THRESHOLD
}

/// Minimum and maximum of raw scores (anomalib `MinMax`); NaN fields mean "not computed".
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MinMax {
    /// Smallest value seen.
    pub min: f32,
    /// Largest value seen.
    pub max: f32,
}

impl MinMax {
    /// Statistics that were never computed (both NaN): normalisation is then disabled.
    pub const UNSET: MinMax = MinMax {
        min: f32::NAN,
        max: f32::NAN,
    };

    /// Min and max of `values`. Errors: empty input or a NaN value.
    pub fn of(values: &[f32]) -> Result<MinMax> {
        check_scores("values", values)?;
        let (min, max) = values
            .par_iter()
            .fold(
                || (f32::INFINITY, f32::NEG_INFINITY),
                |(lo, hi), &x| (lo.min(x), hi.max(x)),
            )
            .reduce(
                || (f32::INFINITY, f32::NEG_INFINITY),
                |a, b| (a.0.min(b.0), a.1.max(b.1)),
            );
        Ok(MinMax { min, max })
    }

    /// Whether both bounds are set (not NaN).
    pub fn is_set(&self) -> bool {
        !self.min.is_nan() && !self.max.is_nan()
    }
}

impl Default for MinMax {
    fn default() -> Self {
        Self::UNSET
    }
}

/// The raw-score thresholds of the two levels; NaN means "not computed".
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    /// Threshold on raw image scores.
    pub image: f32,
    /// Threshold on raw anomaly-map pixels.
    pub pixel: f32,
}

impl Thresholds {
    /// Neither threshold computed (both NaN).
    pub const UNSET: Thresholds = Thresholds {
        image: f32::NAN,
        pixel: f32::NAN,
    };

    /// The image threshold, or the pixel one when it is NaN (anomalib's threshold matching).
    pub fn matched_image(&self) -> f32 {
        if self.image.is_nan() {
            self.pixel
        } else {
            self.image
        }
    }

    /// The pixel threshold, or the image one when it is NaN (anomalib's threshold matching).
    pub fn matched_pixel(&self) -> f32 {
        if self.pixel.is_nan() {
            self.image
        } else {
            self.pixel
        }
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Self::UNSET
    }
}

/// Maps raw scores of one level to anomalib's normalised [0, 1] scale (0.5 = the threshold).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalizer {
    /// Raw threshold `t` (NaN: use `(max + min) / 2`).
    pub threshold: f32,
    /// Min/max statistics (either NaN: normalisation is the identity).
    pub stats: MinMax,
}

impl Normalizer {
    /// A normaliser with raw threshold `threshold` and statistics `stats`.
    pub fn new(threshold: f32, stats: MinMax) -> Self {
        Self { threshold, stats }
    }

    /// Whether normalisation is disabled because min or max is NaN (values pass through).
    pub fn is_identity(&self) -> bool {
        !self.stats.is_set()
    }

    /// The threshold actually used: `threshold`, or `(max + min) / 2` when it is NaN.
    pub fn effective_threshold(&self) -> f32 {
        if self.threshold.is_nan() {
            (self.stats.max + self.stats.min) / 2.0
        } else {
            self.threshold
        }
    }

    /// `clamp((x − t) / (max − min) + 0.5, 0, 1)` in `f32`, or `x` when [`Self::is_identity`].
    pub fn normalize(&self, x: f32) -> f32 {
        if self.is_identity() {
            return x;
        }
        let t = self.effective_threshold();
        ((x - t) / (self.stats.max - self.stats.min) + 0.5).clamp(0.0, 1.0)
    }

    /// [`Self::normalize`] applied to every value.
    pub fn normalize_all(&self, values: &[f32]) -> Vec<f32> {
        values.par_iter().map(|&x| self.normalize(x)).collect()
    }

    /// [`Self::normalize`] applied in place.
    pub fn normalize_in_place(&self, values: &mut [f32]) {
        values.par_iter_mut().for_each(|x| *x = self.normalize(*x));
    }

    /// Whether a raw value is anomalous: its normalised value is strictly above 0.5.
    pub fn is_anomalous(&self, x: f32) -> bool {
        is_anomalous_normalized(self.normalize(x))
    }
}

/// The statistics anomalib's `PostProcessor` fits on the validation set, and its normalisers.
///
/// Starts unset (all NaN); fit each level with the methods below.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct PostProcessor {
    /// F1-adaptive thresholds on raw scores (NaN where not fitted).
    pub thresholds: Thresholds,
    /// Min/max of raw image scores.
    pub image_stats: MinMax,
    /// Min/max of raw anomaly-map pixels.
    pub pixel_stats: MinMax,
}

impl PostProcessor {
    /// Fits the image threshold and image min/max on raw image scores and labels.
    pub fn fit_image<L: Label>(&mut self, scores: &[f32], labels: &[L]) -> Result<()> {
        let threshold = f1_adaptive_threshold(scores, labels)?;
        self.image_stats = MinMax::of(scores)?;
        self.thresholds.image = threshold;
        Ok(())
    }

    /// Fits the pixel threshold and pixel min/max on raw anomaly maps and masks (flat slices).
    pub fn fit_pixel<L: Label>(&mut self, maps: &[f32], masks: &[L]) -> Result<()> {
        let threshold = f1_adaptive_threshold(maps, masks)?;
        self.pixel_stats = MinMax::of(maps)?;
        self.thresholds.pixel = threshold;
        Ok(())
    }

    /// Fits only the pixel min/max, for validation data without masks.
    pub fn fit_pixel_stats(&mut self, maps: &[f32]) -> Result<()> {
        self.pixel_stats = MinMax::of(maps)?;
        Ok(())
    }

    /// The normaliser of image scores (image threshold, matched; image min/max).
    pub fn image_normalizer(&self) -> Normalizer {
        Normalizer::new(self.thresholds.matched_image(), self.image_stats)
    }

    /// The normaliser of anomaly-map pixels (pixel threshold, matched; pixel min/max).
    pub fn pixel_normalizer(&self) -> Normalizer {
        Normalizer::new(self.thresholds.matched_pixel(), self.pixel_stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MetricsError;

    #[test]
    fn formula_and_clamping() {
        let n = Normalizer::new(1.0, MinMax { min: 0.0, max: 2.0 });
        assert_eq!(n.normalize(1.0), 0.5);
        assert_eq!(n.normalize(1.5), 0.75);
        assert_eq!(n.normalize(2.0), 1.0);
        assert_eq!(n.normalize(0.0), 0.0);
        assert_eq!(n.normalize(3.0), 1.0);
        assert_eq!(n.normalize(-5.0), 0.0);
        assert_eq!(n.normalize_all(&[0.5, 1.0]), vec![0.25, 0.5]);
        let mut v = [1.5, 3.0];
        n.normalize_in_place(&mut v);
        assert_eq!(v, [0.75, 1.0]);
    }

    #[test]
    fn label_is_strictly_greater() {
        let n = Normalizer::new(1.0, MinMax { min: 0.0, max: 2.0 });
        assert!(!n.is_anomalous(1.0), "exactly at the threshold is normal");
        assert!(n.is_anomalous(1.0 + f32::EPSILON));
        assert!(!is_anomalous_normalized(0.5));
        assert!(is_anomalous_normalized(0.500_000_06));
    }

    #[test]
    fn nan_threshold_uses_the_midpoint() {
        let n = Normalizer::new(f32::NAN, MinMax { min: 0.0, max: 4.0 });
        assert_eq!(n.effective_threshold(), 2.0);
        assert_eq!(n.normalize(2.0), 0.5);
        assert_eq!(n.normalize(3.0), 0.75);
    }

    #[test]
    fn nan_min_or_max_disables_normalisation() {
        for stats in [
            MinMax::UNSET,
            MinMax {
                min: f32::NAN,
                max: 1.0,
            },
            MinMax {
                min: 0.0,
                max: f32::NAN,
            },
        ] {
            let n = Normalizer::new(0.2, stats);
            assert!(n.is_identity());
            assert_eq!(n.normalize(3.25), 3.25);
            // Labels then cut the raw value at 0.5, as anomalib does.
            assert!(n.is_anomalous(0.6) && !n.is_anomalous(0.5));
        }
    }

    #[test]
    fn threshold_matching() {
        let t = Thresholds {
            image: f32::NAN,
            pixel: 0.7,
        };
        assert_eq!(t.matched_image(), 0.7);
        assert_eq!(t.matched_pixel(), 0.7);
        let t = Thresholds {
            image: 0.2,
            pixel: f32::NAN,
        };
        assert_eq!(t.matched_pixel(), 0.2);
        assert!(Thresholds::UNSET.matched_image().is_nan());

        let mut pp = PostProcessor::default();
        pp.fit_pixel(&[0.0, 1.0, 2.0, 3.0], &[0u8, 0, 1, 1])
            .unwrap();
        assert_eq!(pp.thresholds.pixel, 2.0);
        assert_eq!(pp.pixel_stats, MinMax { min: 0.0, max: 3.0 });
        // No image statistics yet: the image normaliser is the identity but borrows t.
        let img = pp.image_normalizer();
        assert_eq!(img.threshold, 2.0);
        assert!(img.is_identity());
        pp.fit_image(&[1.0, 5.0], &[false, true]).unwrap();
        assert_eq!(pp.thresholds.image, 5.0);
        assert_eq!(pp.image_normalizer().normalize(5.0), 0.5);
        // (3 − 2) / (3 − 0) + 0.5
        assert!((pp.pixel_normalizer().normalize(3.0) - (1.0 / 3.0 + 0.5)).abs() < 1e-6);
    }

    #[test]
    fn min_max_and_its_errors() {
        assert_eq!(
            MinMax::of(&[0.5, -2.0, 3.0]).unwrap(),
            MinMax {
                min: -2.0,
                max: 3.0
            }
        );
        assert!(!MinMax::default().is_set());
        assert_eq!(MinMax::of(&[]), Err(MetricsError::Empty { what: "values" }));
        assert!(matches!(
            MinMax::of(&[1.0, f32::NAN]),
            Err(MetricsError::NanScore { index: 1, .. })
        ));
    }
}
