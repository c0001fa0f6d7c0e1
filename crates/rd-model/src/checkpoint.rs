//! Training progress inside an epoch, and how it travels in a checkpoint.
//!
//! A checkpoint written mid-epoch (interrupt, step limit, data error) records in its metadata
//! the completed epochs (`TrainingSummary::epochs`) and total steps, and in one extra tensor,
//! [`PARTIAL_EPOCH_TENSOR`], how many steps of the next epoch were already taken and their loss
//! sums. Resuming replays that epoch's (seeded) batch order, skips the batches already trained
//! on, and goes on: the weights end bit-identical to an uninterrupted run. The tensor sits under
//! the optimiser prefix `adam.` because the model file admits extra tensors only there;
//! [`crate::Adam::load_state`] ignores it.

use candle_core::{DType, Device, Tensor};

use crate::{ModelError, Result};

/// Name of the tensor holding the progress of an unfinished epoch.
pub const PARTIAL_EPOCH_TENSOR: &str = "adam.fit.partial_epoch";

/// Steps, images and loss sums of an epoch so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct EpochProgress {
    /// Optimiser steps taken in the epoch.
    pub steps: usize,
    /// Images trained on in the epoch.
    pub images: usize,
    /// Σ loss × batch size.
    pub loss_sum: f64,
    /// Σ term × batch size, per scale.
    pub term_sums: [f64; 3],
}

impl EpochProgress {
    /// Adds one step on `images` images.
    pub fn add(&mut self, images: usize, loss: f32, terms: [f32; 3]) {
        let n = images as f64;
        self.steps += 1;
        self.images += images;
        self.loss_sum += f64::from(loss) * n;
        for (s, t) in self.term_sums.iter_mut().zip(terms) {
            *s += f64::from(t) * n;
        }
    }

    /// Image-weighted mean loss and terms; `None` before the first step.
    pub fn means(&self) -> Option<(f64, [f64; 3])> {
        (self.images > 0).then(|| {
            let n = self.images as f64;
            (self.loss_sum / n, self.term_sums.map(|s| s / n))
        })
    }

    /// The progress as a `u32` tensor (each value an `f64` split into two words, so that it is
    /// exact and loads on every device).
    pub fn to_tensor(self) -> Result<Tensor> {
        let values = [
            self.steps as f64,
            self.images as f64,
            self.loss_sum,
            self.term_sums[0],
            self.term_sums[1],
            self.term_sums[2],
        ];
        let words: Vec<u32> = values
            .iter()
            .flat_map(|v| {
                let b = v.to_bits();
                [(b >> 32) as u32, b as u32]
            })
            .collect();
        Ok(Tensor::new(words.as_slice(), &Device::Cpu)?)
    }

    /// Reads a tensor written by [`EpochProgress::to_tensor`].
    pub fn from_tensor(t: &Tensor) -> Result<Self> {
        let words: Vec<u32> = t.to_dtype(DType::U32)?.flatten_all()?.to_vec1()?;
        let bad = || {
            ModelError::Training(format!(
                "the checkpoint's `{PARTIAL_EPOCH_TENSOR}` is damaged ({} values instead of 12); \
                 resume from an earlier checkpoint",
                words.len()
            ))
        };
        if words.len() != 12 {
            return Err(bad());
        }
        let v: Vec<f64> = words
            .chunks_exact(2)
            .map(|w| f64::from_bits((u64::from(w[0]) << 32) | u64::from(w[1])))
            .collect();
        let count = |x: f64| -> Result<usize> {
            if x.is_finite() && x >= 0.0 && x.fract() == 0.0 {
                Ok(x as usize)
            } else {
                Err(bad())
            }
        };
        Ok(EpochProgress {
            steps: count(v[0])?,
            images: count(v[1])?,
            loss_sum: v[2],
            term_sums: [v[3], v[4], v[5]],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_round_trips_exactly() {
        let mut p = EpochProgress::default();
        p.add(3, 0.123_456_79, [0.1, 0.02, 0.003]);
        p.add(2, 1.0 / 3.0, [0.5, 0.25, 0.125]);
        let q = EpochProgress::from_tensor(&p.to_tensor().unwrap()).unwrap();
        assert_eq!(p, q);
        assert_eq!(q.steps, 2);
        assert_eq!(q.images, 5);
    }

    #[test]
    fn damaged_progress_is_an_error() {
        let t = Tensor::new(&[1u32, 2, 3], &Device::Cpu).unwrap();
        assert!(EpochProgress::from_tensor(&t).is_err());
    }
}
