//! Area under the ROC curve, as anomalib's `AUROC` (torchmetrics `BinaryROC` + `auc`) computes it.

use crate::error::Result;
use crate::label::{check_binary, Label};
use crate::sweep::{payload, sweep_descending, BinaryPayload};
use std::ops::ControlFlow;

/// Area under the ROC curve of `scores` against binary `labels` (image or flattened pixel level).
///
/// Every unique score is a threshold (`score >= t` is positive), tied scores form one point, the
/// curve starts at (0, 0) and the area is the trapezoidal rule: this equals sklearn's
/// `roc_auc_score`. The points are formed in `f32` the way torchmetrics forms them; the area is
/// accumulated in `f64` (torchmetrics sums in `f32`; the two differ by ~1e-7 at most).
///
/// Like torchmetrics, returns `0.0` when all samples share one class (its ROC is then flat zero).
/// torchmetrics applies a sigmoid to predictions outside [0, 1]; that is monotone, so it only
/// matters when `f32` rounding of the sigmoid merges distinct large scores, which this crate
/// does not imitate (anomalib's evaluator sees normalised scores in [0, 1] anyway).
///
/// Errors: empty input, length mismatch, NaN score, label other than 0/1.
pub fn auroc<L: Label>(scores: &[f32], labels: &[L]) -> Result<f64> {
    let (mut prev_fpr, mut prev_tpr) = (0.0f32, 0.0f32);
    let mut twice_area = 0.0f64;
    let both = roc_points(scores, labels, |fpr, tpr| {
        twice_area += f64::from((prev_tpr + tpr) * (fpr - prev_fpr));
        (prev_fpr, prev_tpr) = (fpr, tpr);
    })?;
    Ok(if both { twice_area / 2.0 } else { 0.0 })
}

/// The ROC curve: false- and true-positive rates at every unique score, highest score first,
/// starting at (0, 0) and ending at (1, 1).
#[derive(Debug, Clone, PartialEq)]
pub struct RocCurve {
    /// False-positive rates.
    pub fpr: Vec<f32>,
    /// True-positive rates.
    pub tpr: Vec<f32>,
}

/// The ROC curve whose area [`auroc`] is (empty when all samples share one class).
///
/// It has one point per unique score, so for pixel-level inputs it can hold millions of points.
pub fn roc_curve<L: Label>(scores: &[f32], labels: &[L]) -> Result<RocCurve> {
    let mut curve = RocCurve {
        fpr: vec![0.0],
        tpr: vec![0.0],
    };
    let both = roc_points(scores, labels, |fpr, tpr| {
        curve.fpr.push(fpr);
        curve.tpr.push(tpr);
    })?;
    if !both {
        curve.fpr.clear();
        curve.tpr.clear();
    }
    Ok(curve)
}

/// Calls `visit(fpr, tpr)` at every unique score, highest first, as torchmetrics forms the points:
/// `tps = cumsum(target)` and `fps = (index + 1) − tps`, rates as `f32` ratios. Returns whether
/// both classes are present (otherwise nothing is visited).
fn roc_points<L: Label>(
    scores: &[f32],
    labels: &[L],
    mut visit: impl FnMut(f32, f32),
) -> Result<bool> {
    let counts = check_binary(scores, labels)?;
    if counts.positives == 0 || counts.negatives() == 0 {
        return Ok(false);
    }
    let tps_last = counts.positives as f32;
    let fps_last = counts.total as f32 - tps_last;
    let (mut seen, mut tps) = (0u64, 0u64);
    sweep_descending(scores, &BinaryPayload { labels }, |_, run| {
        seen += run.len() as u64;
        tps += run.iter().filter(|&&e| payload(e) != 0).count() as u64;
        let tp = tps as f32;
        let fp = seen as f32 - tp;
        visit(fp / fps_last, tp / tps_last);
        ControlFlow::Continue(())
    });
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MetricsError;

    /// Mann-Whitney U / (P N) in f64: the probability a positive outranks a negative (ties 1/2).
    fn brute_auroc(scores: &[f32], labels: &[u8]) -> f64 {
        let (mut wins, mut p, mut n) = (0.0f64, 0usize, 0usize);
        for (i, &si) in scores.iter().enumerate() {
            if labels[i] == 1 {
                p += 1;
                for (j, &sj) in scores.iter().enumerate() {
                    if labels[j] == 0 {
                        wins += if si > sj {
                            1.0
                        } else if si == sj {
                            0.5
                        } else {
                            0.0
                        };
                    }
                }
            } else {
                n += 1;
            }
        }
        wins / (p * n) as f64
    }

    #[test]
    fn curve_points_and_area_agree() {
        let scores = [0.1f32, 0.4, 0.35, 0.8, 0.4];
        let labels = [0u8, 0, 1, 1, 1];
        let c = roc_curve(&scores, &labels).unwrap();
        // thresholds 0.8, 0.4 (one tied pair), 0.35, 0.1
        assert_eq!(c.fpr, vec![0.0, 0.0, 0.5, 0.5, 1.0]);
        assert_eq!(c.tpr, vec![0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0, 1.0]);
        let area: f64 = c
            .fpr
            .windows(2)
            .zip(c.tpr.windows(2))
            .map(|(f, t)| f64::from((f[1] - f[0]) * (t[1] + t[0])) / 2.0)
            .sum();
        assert!((area - auroc(&scores, &labels).unwrap()).abs() < 1e-7);
        assert!(roc_curve(&[0.1f32, 0.2], &[1u8, 1]).unwrap().fpr.is_empty());
    }

    #[test]
    fn perfect_reversed_and_hand_computed_ties() {
        assert_eq!(auroc(&[0.1, 0.2, 0.8, 0.9], &[0u8, 0, 1, 1]).unwrap(), 1.0);
        assert_eq!(auroc(&[0.9, 0.8, 0.2, 0.1], &[0u8, 0, 1, 1]).unwrap(), 0.0);
        // One tied positive/negative pair counts one half.
        assert_eq!(auroc(&[0.5, 0.5], &[false, true]).unwrap(), 0.5);
        // (1 + 0.5 + 2) / 4
        let a = auroc(&[0.1, 0.5, 0.5, 0.9], &[0u8, 0, 1, 1]).unwrap();
        assert!((a - 0.875).abs() < 1e-7, "{a}");
        // 3 of 4 pairs ordered (anomalib's doc example).
        let a = auroc(&[0.1, 0.4, 0.35, 0.8], &[0u8, 0, 1, 1]).unwrap();
        assert!((a - 0.75).abs() < 1e-7, "{a}");
    }

    #[test]
    fn negative_zero_ties_with_zero() {
        assert_eq!(auroc(&[-0.0, 0.0], &[0u8, 1]).unwrap(), 0.5);
    }

    #[test]
    fn single_class_gives_zero_like_torchmetrics() {
        assert_eq!(auroc(&[0.1, 0.7], &[0u8, 0]).unwrap(), 0.0);
        assert_eq!(auroc(&[0.1, 0.7], &[1u8, 1]).unwrap(), 0.0);
    }

    #[test]
    fn matches_mann_whitney_with_many_ties() {
        let mut state = 7u64;
        let (mut scores, mut labels) = (Vec::new(), Vec::new());
        for _ in 0..1500 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = (state >> 33) as u32;
            let label = (r & 1) as u8;
            scores.push((r >> 1) % 60 + 15 * u32::from(label));
            labels.push(label);
        }
        let scores: Vec<f32> = scores.iter().map(|&s| s as f32 * 0.01).collect();
        let got = auroc(&scores, &labels).unwrap();
        let want = brute_auroc(&scores, &labels);
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        assert!(want > 0.6 && want < 0.9);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert_eq!(
            auroc::<u8>(&[], &[]),
            Err(MetricsError::Empty { what: "scores" })
        );
        assert!(matches!(
            auroc(&[0.1, 0.2], &[0u8]),
            Err(MetricsError::LengthMismatch {
                expected: 2,
                actual: 1,
                ..
            })
        ));
        assert!(matches!(
            auroc(&[0.1, f32::NAN], &[0u8, 1]),
            Err(MetricsError::NanScore { index: 1, .. })
        ));
        assert!(matches!(
            auroc(&[0.1, 0.2], &[0u8, 255]),
            Err(MetricsError::InvalidLabel {
                index: 1,
                value: 255,
                ..
            })
        ));
    }
}
