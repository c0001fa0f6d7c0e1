//! F1-maximising thresholds (`F1AdaptiveThreshold`, `F1Max`) and the F1 score of fixed predictions.
//!
//! anomalib builds torchmetrics' exact precision-recall curve (no binning, no sigmoid): every
//! unique score `t` is a candidate, `score >= t` is positive, thresholds are in ascending order,
//! and `F1 = 2PR / (P + R + 1e-10)` (NaN replaced by 0) is maximised with `argmax`, which returns
//! the *first* maximum, i.e. the **lowest** threshold among equal F1 values. The F1 values are
//! computed here in `f32` with torch's operation order, so equal-F1 ties (and hence the chosen
//! threshold) are exactly torch's.

use crate::error::Result;
use crate::label::{check_binary, is_positive, BinaryCounts, Label};
use crate::sweep::{payload, sweep_descending, BinaryPayload};
use crate::MetricsError;
use std::ops::ControlFlow;

/// The best F1 score over all thresholds and the threshold reaching it (anomalib `F1Max`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct F1Max {
    /// The maximal F1 score (an `f32` value widened to `f64`).
    pub f1: f64,
    /// The lowest score threshold reaching it (`score >= threshold` is anomalous).
    pub threshold: f32,
}

/// F1 at a threshold from cumulative counts, in torch's `f32` arithmetic and order.
#[inline]
fn f1_at(tps: u64, at_or_above: u64, positives: f32) -> f32 {
    let tp = tps as f32;
    let fp = at_or_above as f32 - tp;
    let precision = tp / (tp + fp);
    let recall = tp / positives;
    let f1 = (2.0 * precision * recall) / (precision + recall + 1e-10);
    if f1.is_nan() {
        0.0
    } else {
        f1
    }
}

/// Sweeps all thresholds; returns the maximal F1 and the lowest threshold reaching it.
fn best_f1<L: Label>(scores: &[f32], labels: &[L], counts: BinaryCounts) -> F1Max {
    let positives = counts.positives as f32;
    let (mut seen, mut tps) = (0u64, 0u64);
    // torch appends a final (precision 1, recall 0) point whose F1 is 0, so the maximum is at
    // least 0; every F1 is >= 0 after NaN -> 0, so the first point always updates `threshold`.
    let (mut best, mut threshold) = (0.0f32, f32::NAN);
    sweep_descending(scores, &BinaryPayload { labels }, |value, run| {
        seen += run.len() as u64;
        tps += run.iter().filter(|&&e| payload(e) != 0).count() as u64;
        let f1 = f1_at(tps, seen, positives);
        // Descending sweep: `>=` keeps the lowest threshold among equal maxima (torch's argmax).
        if f1 >= best {
            (best, threshold) = (f1, value);
        }
        ControlFlow::Continue(())
    });
    F1Max {
        f1: f64::from(best),
        threshold,
    }
}

/// Maximal F1 over all thresholds and its threshold, as anomalib's `F1Max` computes them.
///
/// With no anomalous sample every F1 is 0 and the threshold is the lowest score (anomalib's
/// `F1Max` reports NaN there, as it does not replace NaN by 0). With no normal sample the
/// threshold is the lowest anomalous score.
///
/// Errors: empty input, length mismatch, NaN score, label other than 0/1.
pub fn f1_max<L: Label>(scores: &[f32], labels: &[L]) -> Result<F1Max> {
    let counts = check_binary(scores, labels)?;
    Ok(best_f1(scores, labels, counts))
}

/// The F1-maximising threshold, as anomalib's `F1AdaptiveThreshold` computes it.
///
/// With no anomalous sample it is the **highest** score; with no normal sample the **lowest**
/// score. Otherwise it equals [`f1_max`]'s threshold.
///
/// Errors: empty input, length mismatch, NaN score, label other than 0/1.
pub fn f1_adaptive_threshold<L: Label>(scores: &[f32], labels: &[L]) -> Result<f32> {
    let counts = check_binary(scores, labels)?;
    if counts.positives == 0 {
        return Ok(scores.iter().copied().fold(f32::NEG_INFINITY, f32::max));
    }
    if counts.negatives() == 0 {
        return Ok(scores.iter().copied().fold(f32::INFINITY, f32::min));
    }
    Ok(best_f1(scores, labels, counts).threshold)
}

/// F1 score of fixed binary predictions (torchmetrics `BinaryF1Score`, anomalib's default
/// `image_F1Score` / `pixel_F1Score` on `pred_label` / `pred_mask`); 0 when it is 0/0.
///
/// Errors: empty input, length mismatch, label other than 0/1.
pub fn f1_score<L: Label>(predictions: &[bool], labels: &[L]) -> Result<f64> {
    if predictions.is_empty() {
        return Err(MetricsError::Empty {
            what: "predictions",
        });
    }
    if labels.len() != predictions.len() {
        return Err(MetricsError::LengthMismatch {
            what: "labels",
            expected: predictions.len(),
            actual: labels.len(),
        });
    }
    crate::label::check_labels("labels", labels)?;
    let (mut tp, mut fp, mut fneg) = (0u64, 0u64, 0u64);
    for (&p, &l) in predictions.iter().zip(labels) {
        match (p, is_positive(l)) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fneg += 1,
            (false, false) => {}
        }
    }
    // torchmetrics: (1 + b²)·tp / ((1 + b²)·tp + b²·fn + fp) in f32, b = 1, 0/0 -> 0.
    let num = 2.0f32 * tp as f32;
    let den = num + fneg as f32 + fp as f32;
    Ok(if den == 0.0 {
        0.0
    } else {
        f64::from(num / den)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anomalib_doc_example() {
        let scores = [0.1, 0.4, 0.35, 0.8];
        let labels = [0u8, 0, 1, 1];
        let m = f1_max(&scores, &labels).unwrap();
        assert_eq!(m.threshold, 0.35);
        assert!((m.f1 - 0.8).abs() < 1e-7, "{}", m.f1);
        assert_eq!(f1_adaptive_threshold(&scores, &labels).unwrap(), 0.35);
    }

    #[test]
    fn equal_f1_picks_the_lowest_threshold() {
        // t = 4: P = 1, R = 1/2; t = 1: P = 1/2, R = 1: both F1 = 2/3 exactly in f32.
        let scores = [4.0, 3.0, 2.0, 1.0];
        let labels = [1u8, 0, 0, 1];
        let m = f1_max(&scores, &labels).unwrap();
        assert_eq!(m.threshold, 1.0);
        assert!((m.f1 - 2.0 / 3.0).abs() < 1e-7);
        assert_eq!(f1_adaptive_threshold(&scores, &labels).unwrap(), 1.0);
    }

    #[test]
    fn tied_scores_are_one_candidate_and_count_as_positive() {
        // t = 0.5 takes both tied samples: P = 1/2, R = 1 -> 2/3 beats t = 0.2 (1/2).
        let scores = [0.5, 0.5, 0.2];
        let labels = [1u8, 0, 0];
        let m = f1_max(&scores, &labels).unwrap();
        assert_eq!(m.threshold, 0.5);
        assert!((m.f1 - 2.0 / 3.0).abs() < 1e-7);
    }

    #[test]
    fn single_class_fallbacks() {
        let scores = [0.3, 0.9, 0.1];
        assert_eq!(f1_adaptive_threshold(&scores, &[0u8, 0, 0]).unwrap(), 0.9);
        assert_eq!(f1_adaptive_threshold(&scores, &[1u8, 1, 1]).unwrap(), 0.1);
        assert_eq!(
            f1_max(&scores, &[0u8, 0, 0]).unwrap(),
            F1Max {
                f1: 0.0,
                threshold: 0.1
            }
        );
        // All anomalous: the lowest threshold has recall 1 and precision 1.
        let m = f1_max(&scores, &[true, true, true]).unwrap();
        assert_eq!(m.threshold, 0.1);
        assert!((m.f1 - 1.0).abs() < 1e-7);
    }

    /// Max F1 over unique thresholds in f64.
    fn brute_f1_max(scores: &[f32], labels: &[u8]) -> f64 {
        let pos = labels.iter().filter(|&&l| l == 1).count() as f64;
        let mut best = 0.0f64;
        for &t in scores {
            let tp = scores
                .iter()
                .zip(labels)
                .filter(|(&s, &l)| s >= t && l == 1)
                .count() as f64;
            let n = scores.iter().filter(|&&s| s >= t).count() as f64;
            let (p, r) = (tp / n, tp / pos);
            let f1 = if p + r > 0.0 {
                2.0 * p * r / (p + r)
            } else {
                0.0
            };
            best = best.max(f1);
        }
        best
    }

    #[test]
    fn matches_brute_force_on_random_ties() {
        let mut state = 99u64;
        let (mut scores, mut labels) = (Vec::new(), Vec::new());
        for _ in 0..800 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = (state >> 33) as u32;
            let label = u8::from(r.is_multiple_of(5));
            scores.push(((r >> 3) % 40 + 12 * u32::from(label)) as f32 / 8.0);
            labels.push(label);
        }
        let m = f1_max(&scores, &labels).unwrap();
        let want = brute_f1_max(&scores, &labels);
        assert!((m.f1 - want).abs() < 1e-6, "{} vs {want}", m.f1);
        // The returned threshold reaches that F1.
        let pos = labels.iter().filter(|&&l| l == 1).count() as f64;
        let tp = scores
            .iter()
            .zip(&labels)
            .filter(|(&s, &l)| s >= m.threshold && l == 1)
            .count();
        let n = scores.iter().filter(|&&s| s >= m.threshold).count();
        let (p, r) = (tp as f64 / n as f64, tp as f64 / pos);
        assert!((2.0 * p * r / (p + r) - want).abs() < 1e-6);
    }

    #[test]
    fn f1_score_of_fixed_predictions() {
        let preds = [true, false, true, true];
        let f = f1_score(&preds, &[1u8, 0, 0, 1]).unwrap();
        assert!((f - 0.8).abs() < 1e-7);
        assert_eq!(f1_score(&[false, false], &[0u8, 0]).unwrap(), 0.0);
        assert!(matches!(
            f1_score(&[true], &[0u8, 1]),
            Err(MetricsError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(matches!(
            f1_max::<u8>(&[], &[]),
            Err(MetricsError::Empty { .. })
        ));
        assert!(matches!(
            f1_adaptive_threshold(&[f32::NAN], &[1u8]),
            Err(MetricsError::NanScore { index: 0, .. })
        ));
        assert!(matches!(
            f1_adaptive_threshold(&[0.0, 1.0], &[0u8, 2]),
            Err(MetricsError::InvalidLabel { value: 2, .. })
        ));
    }
}
