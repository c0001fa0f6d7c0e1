//! Binary ground truth (`bool` or `u8` 0/1) and the input checks shared by the metrics.

use crate::error::{MetricsError, Result};
use rayon::prelude::*;

/// A binary ground-truth value: an image label or a mask pixel (`bool`, or `u8` holding 0 or 1).
pub trait Label: Copy + Send + Sync {
    /// `Some(true)` for anomalous, `Some(false)` for normal, `None` for a value that is not binary.
    fn to_bool(self) -> Option<bool>;
    /// The value as a byte, for error messages.
    fn to_byte(self) -> u8;
}

impl Label for bool {
    fn to_bool(self) -> Option<bool> {
        Some(self)
    }
    fn to_byte(self) -> u8 {
        u8::from(self)
    }
}

impl Label for u8 {
    fn to_bool(self) -> Option<bool> {
        match self {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
    fn to_byte(self) -> u8 {
        self
    }
}

/// Whether a (validated) label is anomalous.
#[inline]
pub(crate) fn is_positive<L: Label>(l: L) -> bool {
    matches!(l.to_bool(), Some(true))
}

/// Number of samples and of anomalous samples in a validated input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BinaryCounts {
    pub total: u64,
    pub positives: u64,
}

impl BinaryCounts {
    pub fn negatives(&self) -> u64 {
        self.total - self.positives
    }
}

/// Checks that `scores` is non-empty and NaN-free.
pub(crate) fn check_scores(what: &'static str, scores: &[f32]) -> Result<()> {
    if scores.is_empty() {
        return Err(MetricsError::Empty { what });
    }
    match scores.par_iter().position_first(|x| x.is_nan()) {
        Some(index) => Err(MetricsError::NanScore { what, index }),
        None => Ok(()),
    }
}

/// Checks that every label is binary and counts the anomalous ones.
pub(crate) fn check_labels<L: Label>(what: &'static str, labels: &[L]) -> Result<u64> {
    const CHUNK: usize = 1 << 16;
    // One pass: (first invalid index, number of anomalous labels).
    let (invalid, positives) = labels
        .par_chunks(CHUNK)
        .enumerate()
        .map(|(c, chunk)| {
            let (mut invalid, mut positives) = (None, 0u64);
            for (j, &l) in chunk.iter().enumerate() {
                match l.to_bool() {
                    Some(p) => positives += u64::from(p),
                    None => {
                        invalid = Some(c * CHUNK + j);
                        break;
                    }
                }
            }
            (invalid, positives)
        })
        .reduce(
            || (None, 0),
            |a, b| {
                let invalid = match (a.0, b.0) {
                    (Some(x), Some(y)) => Some(x.min(y)),
                    (x, y) => x.or(y),
                };
                (invalid, a.1 + b.1)
            },
        );
    match invalid {
        Some(index) => Err(MetricsError::InvalidLabel {
            what,
            index,
            value: labels[index].to_byte(),
        }),
        None => Ok(positives),
    }
}

/// Checks a (scores, labels) pair: same non-zero length, no NaN, binary labels.
pub(crate) fn check_binary<L: Label>(scores: &[f32], labels: &[L]) -> Result<BinaryCounts> {
    if labels.len() != scores.len() {
        return Err(MetricsError::LengthMismatch {
            what: "labels",
            expected: scores.len(),
            actual: labels.len(),
        });
    }
    check_scores("scores", scores)?;
    let positives = check_labels("labels", labels)?;
    Ok(BinaryCounts {
        total: scores.len() as u64,
        positives,
    })
}
