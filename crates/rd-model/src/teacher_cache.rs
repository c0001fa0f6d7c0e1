//! The frozen teacher's features of the training images, kept from an image's first epoch for
//! the later ones: the teacher never changes and an image's features do not depend on the
//! batch it comes in, so a step on kept features is bit-identical to one that recomputes them,
//! without the teacher's forward pass (a sixth to a fifth of a CPU training step).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::Tensor;
use rd_backbone::FeatureMaps;

use crate::{ModelError, Result, Trainer};

/// Per-image teacher features by image file, up to a memory budget.
#[derive(Debug, Default)]
pub(crate) struct TeacherCache {
    /// Most bytes of features kept.
    budget: usize,
    /// Bytes kept so far.
    used: usize,
    /// Each kept image's three maps (one image each).
    maps: HashMap<PathBuf, [Tensor; 3]>,
}

impl TeacherCache {
    /// An empty cache that keeps at most `budget` bytes of features (0: keeps nothing).
    pub fn new(budget: usize) -> Self {
        TeacherCache {
            budget,
            ..Self::default()
        }
    }

    /// The teacher's features of the batch `x`, whose images came from `paths` (in order):
    /// kept ones taken as they are, the others computed in one teacher pass and kept while the
    /// budget lasts.
    pub fn features(
        &mut self,
        trainer: &Trainer,
        x: &Tensor,
        paths: &[PathBuf],
    ) -> Result<FeatureMaps> {
        let images = x.dims().first().copied().unwrap_or(0);
        if self.budget == 0 || paths.len() != images {
            return trainer.teacher_features(x);
        }
        let missing: Vec<usize> = (0..images)
            .filter(|&i| !self.maps.contains_key(&paths[i]))
            .collect();
        if missing.len() == images {
            // Nothing kept (every image's first epoch): the batch's own pass, no gather.
            let fresh = trainer.teacher_features(x)?;
            self.keep(&fresh, &missing, paths)?;
            return Ok(fresh);
        }
        // Where each image's maps come from: the fresh pass's image j, or the cache.
        let mut source = vec![None; images];
        for (j, &i) in missing.iter().enumerate() {
            source[i] = Some(j);
        }
        let fresh = if missing.is_empty() {
            None
        } else {
            let rows: Vec<u32> = missing.iter().map(|&i| i as u32).collect();
            let rows = Tensor::new(rows.as_slice(), x.device())?;
            let fresh = trainer.teacher_features(&x.index_select(&rows, 0)?.contiguous()?)?;
            self.keep(&fresh, &missing, paths)?;
            Some(fresh)
        };
        let scale = |k: usize| -> Result<Tensor> {
            let parts = paths
                .iter()
                .zip(&source)
                .map(|(path, from)| match (from, &fresh, self.maps.get(path)) {
                    (Some(j), Some(f), _) => Ok(f.0[k].narrow(0, *j, 1)?),
                    (None, _, Some(kept)) => Ok(kept[k].clone()),
                    _ => Err(ModelError::Training(format!(
                        "the teacher features of {} went missing from the cache",
                        path.display()
                    ))),
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Tensor::cat(&parts, 0)?)
        };
        Ok(FeatureMaps([scale(0)?, scale(1)?, scale(2)?]))
    }

    /// Keeps image `j` of `fresh` as `paths[missing[j]]` for every `j` that fits the budget.
    fn keep(&mut self, fresh: &FeatureMaps, missing: &[usize], paths: &[PathBuf]) -> Result<()> {
        let per_image: usize = fresh
            .iter()
            .map(|t| t.elem_count() / missing.len().max(1) * t.dtype().size_in_bytes())
            .sum();
        for (j, &i) in missing.iter().enumerate() {
            if self.used + per_image > self.budget || self.maps.contains_key(&paths[i]) {
                continue;
            }
            // Copies: a view would keep the whole batch's storage alive.
            let one = |k: usize| {
                fresh.0[k]
                    .narrow(0, j, 1)
                    .and_then(|t| t.force_contiguous())
            };
            self.maps
                .insert(paths[i].clone(), [one(0)?, one(1)?, one(2)?]);
            self.used += per_image;
        }
        Ok(())
    }
}
