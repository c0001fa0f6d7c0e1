//! A generic folder dataset: a folder of normal images, and optionally a folder of abnormal
//! images, a folder of their masks (paired by file stem: `x.png` goes with `x.png` or
//! `x_mask.png`), a folder of normal test images, and a held-out share of the normal images
//! used for testing (drawn deterministically from a seed).

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
    /// Images of defective parts (test only).
    pub abnormal_dir: Option<PathBuf>,
    /// Masks of the abnormal images, paired by stem (`x.png` or `x_mask.png`).
    pub mask_dir: Option<PathBuf>,
    /// Extra images of good parts used for testing only.
    pub normal_test_dir: Option<PathBuf>,
    /// Share of `normal_dir` held out for testing, in `[0, 1)`.
    pub normal_test_share: f64,
    /// Seed of the held-out draw.
    pub seed: u64,
}

impl FolderConfig {
    /// A configuration with only a folder of normal images.
    pub fn new(normal_dir: impl Into<PathBuf>) -> Self {
        FolderConfig {
            normal_dir: normal_dir.into(),
            abnormal_dir: None,
            mask_dir: None,
            normal_test_dir: None,
            normal_test_share: 0.0,
            seed: 0,
        }
    }
}

/// Lists a folder dataset.
pub fn load(config: &FolderConfig) -> Result<Splits> {
    let share = config.normal_test_share;
    if !(0.0..1.0).contains(&share) {
        return Err(DatasetError::InvalidConfig(format!(
            "normal_test_share must be in [0, 1), got {share}"
        )));
    }
    if config.mask_dir.is_some() && config.abnormal_dir.is_none() {
        return Err(DatasetError::InvalidConfig(
            "a mask folder was given without a folder of abnormal images".into(),
        ));
    }
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
    if let Some(dir) = &config.abnormal_dir {
        let defect = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "abnormal".into());
        let images = list_images_nonempty(dir)?;
        let masks = match &config.mask_dir {
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
