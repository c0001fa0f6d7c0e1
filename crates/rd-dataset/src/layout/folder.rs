//! A generic folder dataset, like anomalib's `Folder`: a folder of normal images, and optionally
//! a folder of normal test images, folders of abnormal images (one per defect type, named after
//! the folder) and, in the same order, folders of their masks (paired by file stem: `x.png` goes
//! with `x.png` or `x_mask.png`). Without a folder of normal test images, a share of the normal
//! images can be held out for testing (drawn deterministically from a seed).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{list_images_nonempty, stem, Label, Sample, Splits};
use crate::error::{DatasetError, Result};
use crate::rng::SplitMix64;

/// Where the images of a folder dataset are.
#[derive(Debug, Clone, PartialEq)]
pub struct FolderConfig {
    /// Images of good parts (training, and testing for the held-out share).
    pub normal_dir: PathBuf,
    /// Folders of images of defective parts (test only), one per defect type; each folder's
    /// name is its defect type.
    pub abnormal_dirs: Vec<PathBuf>,
    /// Masks of the abnormal images, one folder per abnormal folder in the same order, paired by
    /// stem (`x.png` or `x_mask.png`); empty for a dataset without masks.
    pub mask_dirs: Vec<PathBuf>,
    /// Images of good parts used for testing only (anomalib's `normal_test_dir`).
    pub normal_test_dir: Option<PathBuf>,
    /// Share of `normal_dir` held out for testing, in `[0, 1)`; must be 0 with
    /// `normal_test_dir`.
    pub normal_test_share: f64,
    /// Seed of the held-out draw.
    pub seed: u64,
}

impl FolderConfig {
    /// A configuration with only a folder of normal images.
    pub fn new(normal_dir: impl Into<PathBuf>) -> Self {
        FolderConfig {
            normal_dir: normal_dir.into(),
            abnormal_dirs: Vec::new(),
            mask_dirs: Vec::new(),
            normal_test_dir: None,
            normal_test_share: 0.0,
            seed: 0,
        }
    }

    /// Checks that the options fit together, before any folder is read.
    fn validate(&self) -> Result<()> {
        let share = self.normal_test_share;
        if !(0.0..1.0).contains(&share) {
            return Err(DatasetError::InvalidConfig(format!(
                "normal_test_share must be in [0, 1), got {share}"
            )));
        }
        if let (Some(dir), true) = (&self.normal_test_dir, share > 0.0) {
            return Err(DatasetError::InvalidConfig(format!(
                "good test images come from {}, so no share of the training images is held out \
                 as well: set the share to 0 or drop the folder of good test images",
                dir.display()
            )));
        }
        if !self.mask_dirs.is_empty() && self.mask_dirs.len() != self.abnormal_dirs.len() {
            return Err(DatasetError::InvalidConfig(format!(
                "{} mask folder(s) for {} abnormal folder(s): give one mask folder per abnormal \
                 folder, in the same order, or none",
                self.mask_dirs.len(),
                self.abnormal_dirs.len()
            )));
        }
        Ok(())
    }
}

/// Lists a folder dataset.
pub fn load(config: &FolderConfig) -> Result<Splits> {
    config.validate()?;
    let share = config.normal_test_share;
    let normals = list_images_nonempty(&config.normal_dir)?;
    let mut held_out = vec![false; normals.len()];
    if share > 0.0 {
        let n_test = ((normals.len() as f64 * share).round() as usize).max(1);
        if n_test >= normals.len() {
            return Err(DatasetError::InvalidConfig(format!(
                "holding out {share} of the {} normal images in {} leaves none for training",
                normals.len(),
                config.normal_dir.display()
            )));
        }
        let mut idx: Vec<usize> = (0..normals.len()).collect();
        SplitMix64::new(config.seed).shuffle(&mut idx);
        for &i in &idx[..n_test] {
            held_out[i] = true;
        }
    }
    let mut splits = Splits::default();
    for (path, test) in normals.into_iter().zip(held_out) {
        if test {
            splits.test.push(Sample::normal(path));
        } else {
            splits.train.push(Sample::normal(path));
        }
    }
    if let Some(dir) = &config.normal_test_dir {
        splits
            .test
            .extend(list_images_nonempty(dir)?.into_iter().map(Sample::normal));
    }
    for (k, dir) in config.abnormal_dirs.iter().enumerate() {
        let defect = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "abnormal".into());
        let images = list_images_nonempty(dir)?;
        let masks = match config.mask_dirs.get(k) {
            Some(mask_dir) => pair_by_stem(&images, mask_dir)?
                .into_iter()
                .map(Some)
                .collect(),
            None => vec![None; images.len()],
        };
        splits
            .test
            .extend(images.into_iter().zip(masks).map(|(image, mask)| Sample {
                image,
                label: Label::Anomalous,
                mask,
                defect: defect.clone(),
            }));
    }
    splits.test.sort_by(|a, b| a.image.cmp(&b.image));
    Ok(splits)
}

/// For each image, the mask in `mask_dir` with the same stem or the stem plus `_mask`.
fn pair_by_stem(images: &[PathBuf], mask_dir: &Path) -> Result<Vec<PathBuf>> {
    let masks = list_images_nonempty(mask_dir)?;
    let by_stem: HashMap<String, &PathBuf> = masks.iter().rev().map(|m| (stem(m), m)).collect();
    images
        .iter()
        .map(|image| {
            let s = stem(image);
            by_stem
                .get(&s)
                .or_else(|| by_stem.get(&format!("{s}_mask")))
                .map(|m| (*m).clone())
                .ok_or_else(|| DatasetError::MissingMask {
                    image: image.clone(),
                    expected: mask_dir.join(format!("{s}.png")),
                })
        })
        .collect()
}
