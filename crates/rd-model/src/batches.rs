//! From dataset batches to model inputs: the per-epoch shuffle, the one-image-batch rule and the
//! conversion of a [`Batch`] to a candle tensor.
//!
//! **Single-image batches.** Training keeps a last, smaller batch (`drop_last = false`, as the
//! official code and anomalib do), so every image counts in every epoch. Train-mode BatchNorm
//! needs more than one value per channel; the smallest BatchNorm (the OCBE's last layer) sees
//! `N × H/32 × W/32` values, so only a one-image batch at 32×32 is degenerate (PyTorch refuses
//! it; here its unbiased-variance update would divide by zero and poison the running
//! statistics). Such a batch is **folded into the batch before it** (one step on `batch_size + 1`
//! images) rather than dropped, so no image is skipped. Any other batch passes through unchanged.

use candle_core::{Device, Tensor};
use rd_dataset::rng::SplitMix64;
use rd_dataset::{Batch, DatasetError, Loader};

use crate::{ModelError, Result};

/// The shuffle seed of epoch `epoch` (0-based): a function of the run's seed and the epoch only,
/// so a resumed run sees exactly the order an uninterrupted one would.
pub fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    SplitMix64::derive(seed, &[epoch as u64]).next_u64()
}

/// Whether a one-image batch of `height × width` images gives some BatchNorm a single value.
pub(crate) fn single_image_is_degenerate(height: usize, width: usize) -> bool {
    height / 32 * (width / 32) <= 1
}

/// `[N, 3, H, W]` tensor of a batch's images on `device` (moves the pixels out of the batch).
pub fn batch_to_tensor(batch: &mut Batch, device: &Device) -> Result<Tensor> {
    let shape = batch.image_shape();
    let images = std::mem::take(&mut batch.images);
    Ok(Tensor::from_vec(images, shape.to_vec(), device)?)
}

/// Appends `b`'s samples to `a` (same image size).
fn append(a: &mut Batch, b: Batch) {
    a.images.extend(b.images);
    match (a.masks.as_mut(), b.masks) {
        (Some(ma), Some(mb)) => ma.extend(mb),
        (_, _) => a.masks = None,
    }
    a.labels.extend(b.labels);
    a.paths.extend(b.paths);
    a.defects.extend(b.defects);
}

/// The training steps of one epoch: the loader's batches, one behind, folding a final
/// degenerate one-image batch into the previous one (see the module docs).
pub(crate) struct EpochBatches {
    loader: Loader,
    fold_single: bool,
    pending: Option<Batch>,
    error: Option<DatasetError>,
    done: bool,
}

impl EpochBatches {
    /// Steps over `loader`; `fold_single` when one-image batches are degenerate.
    pub(crate) fn new(loader: Loader, fold_single: bool) -> Self {
        EpochBatches {
            loader,
            fold_single,
            pending: None,
            error: None,
            done: false,
        }
    }

    /// The loader (for its skipped files).
    pub(crate) fn loader(&self) -> &Loader {
        &self.loader
    }
}

impl Iterator for EpochBatches {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                if let Some(b) = self.pending.take() {
                    return Some(Ok(b));
                }
                return self.error.take().map(|e| Err(e.into()));
            }
            match self.loader.next() {
                None => self.done = true,
                Some(Err(e)) => {
                    self.done = true;
                    self.error = Some(e);
                }
                Some(Ok(b)) if self.fold_single && b.len() == 1 => match self.pending.as_mut() {
                    Some(p) => append(p, b),
                    None => {
                        self.done = true;
                        return Some(Err(ModelError::Training(format!(
                            "only one usable training image ({}) at {}x{}: BatchNorm needs at \
                             least two; add images or train at a larger size",
                            b.paths
                                .first()
                                .map(|p| p.display().to_string())
                                .unwrap_or_default(),
                            b.height,
                            b.width
                        ))));
                    }
                },
                Some(Ok(b)) => {
                    if let Some(prev) = self.pending.replace(b) {
                        return Some(Ok(prev));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_image_at_32_is_degenerate() {
        assert!(single_image_is_degenerate(32, 32));
        assert!(!single_image_is_degenerate(64, 32));
        assert!(!single_image_is_degenerate(256, 256));
    }

    #[test]
    fn epoch_seeds_depend_on_seed_and_epoch_only() {
        assert_eq!(epoch_seed(42, 3), epoch_seed(42, 3));
        assert_ne!(epoch_seed(42, 3), epoch_seed(42, 4));
        assert_ne!(epoch_seed(42, 3), epoch_seed(43, 3));
    }
}
