//! Anomaly-detection metrics and post-processing computed exactly as anomalib 2.7 computes them.
//!
//! - [`auroc`]: image or pixel AUROC (torchmetrics `BinaryROC` with exact thresholds, trapezoid
//!   area; equal to sklearn's `roc_auc_score`, ties handled as one point);
//! - [`aupro`] / [`aupro_curve`]: anomalib's AUPRO up to an FPR limit (8-connected regions,
//!   pooled over all images, linear interpolation at the limit, area ÷ last FPR);
//! - [`f1_max`], [`f1_adaptive_threshold`], [`f1_score`]: F1-maximising threshold (anomalib's
//!   `F1Max` / `F1AdaptiveThreshold`, lowest threshold on ties) and the F1 of fixed predictions;
//! - [`MinMax`], [`Thresholds`], [`Normalizer`], [`PostProcessor`]: anomalib's normalisation
//!   `clamp((x − t) / (max − min) + 0.5, 0, 1)`, its NaN fallbacks and the `> 0.5` label rule.
//!
//! Inputs are plain slices: `f32` scores, labels/masks as `bool` or `u8` (0/1, see [`Label`]),
//! and anomaly maps as one flat row-major slice with a [`MapShape`] `(n, h, w)`. Bad input (empty,
//! mismatched lengths, NaN scores, non-binary labels) is a [`MetricsError`], never a panic.
//! Pixel metrics stream over unique scores in bounded batches (see the `sweep` module notes), so
//! a whole MVTec category (~100 M pixels) takes seconds and a few hundred MB beyond the inputs.
//!
//! ```
//! use rd_metrics::{auroc, aupro, f1_adaptive_threshold, MapShape, MinMax, Normalizer};
//!
//! // Image level: scores and labels (1 = anomalous).
//! let scores = [0.1_f32, 0.4, 0.35, 0.8];
//! let labels = [0_u8, 0, 1, 1];
//! assert!((auroc(&scores, &labels)? - 0.75).abs() < 1e-6);
//! let t = f1_adaptive_threshold(&scores, &labels)?;
//! assert_eq!(t, 0.35);
//!
//! // anomalib normalisation: the threshold maps to 0.5, and only values above it are anomalous.
//! let norm = Normalizer::new(t, MinMax::of(&scores)?);
//! assert_eq!(norm.normalize(0.35), 0.5);
//! assert!(norm.is_anomalous(0.8) && !norm.is_anomalous(0.35));
//!
//! // Pixel level: two 2×2 maps, one defect pixel in the first.
//! let maps = [0.9_f32, 0.2, 0.1, 0.3, 0.4, 0.1, 0.2, 0.0];
//! let masks = [true, false, false, false, false, false, false, false];
//! let pro = aupro(&maps, &masks, MapShape::new(2, 2, 2), 0.3)?;
//! assert!((pro - 1.0).abs() < 1e-6); // the defect pixel outranks every normal pixel
//! # Ok::<(), rd_metrics::MetricsError>(())
//! ```
#![warn(missing_docs)]

mod aupro;
mod error;
mod f1;
mod label;
mod normalize;
mod roc;
mod sweep;

pub use aupro::{aupro, aupro_curve, AuproCurve, MapShape};
pub use error::{MetricsError, Result};
pub use f1::{f1_adaptive_threshold, f1_max, f1_score, F1Max};
pub use label::Label;
pub use normalize::{
    is_anomalous_normalized, MinMax, Normalizer, PostProcessor, Thresholds, NORMALIZED_THRESHOLD,
};
pub use roc::{auroc, roc_curve, RocCurve};

#[cfg(test)]
mod scale_tests {
    use super::*;
    use std::time::Instant;

    /// A full MVTec category's worth of pixels (1500 maps of 256×256 ≈ 98 M). Run with
    /// `cargo test -p rd-metrics --release -- --ignored --nocapture` to see the timings.
    #[test]
    #[ignore = "allocates ~500 MB and takes seconds; run manually in release"]
    fn full_category_scale() {
        let (n, h, w) = (1500, 256, 256);
        let len = n * h * w;
        let mut maps = Vec::with_capacity(len);
        let mut masks = Vec::with_capacity(len);
        let mut state = 1u64;
        for i in 0..len {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = (state >> 40) as u32;
            let (img, y, x) = (i / (h * w), (i / w) % h, i % w);
            let defect = img.is_multiple_of(3)
                && (100..140).contains(&y)
                && (60..60 + img % 80).contains(&x);
            maps.push(r as f32 / 16_777_216.0 + if defect { 0.3 } else { 0.0 }); // ~16 M unique
            masks.push(u8::from(defect));
        }
        let shape = MapShape::new(n, h, w);
        let t0 = Instant::now();
        let a = auroc(&maps, &masks).unwrap();
        let t1 = Instant::now();
        let t = f1_adaptive_threshold(&maps, &masks).unwrap();
        let t2 = Instant::now();
        let p = aupro(&maps, &masks, shape, 0.3).unwrap();
        let t3 = Instant::now();
        eprintln!(
            "{len} pixels: auroc {a:.6} in {:?}, f1 threshold {t} in {:?}, aupro {p:.6} in {:?}",
            t1 - t0,
            t2 - t1,
            t3 - t2
        );
        assert!(a > 0.7 && a < 1.0);
        assert!(p > 0.0 && p < 1.0);
    }
}
