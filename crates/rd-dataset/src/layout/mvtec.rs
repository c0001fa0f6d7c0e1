//! MVTec AD layout (also used by anomalib's converted VisA and by the synthetic generator).
//!
//! ```text
//! <root>/<category>/train/good/000.png
//! <root>/<category>/test/good/000.png
//! <root>/<category>/test/<defect>/000.png
//! <root>/<category>/ground_truth/<defect>/000_mask.png
//! ```
//!
//! Masks are paired with the images of each defect folder by sorted path, and each image's stem
//! must be contained in its mask's stem, as anomalib checks.
//!
//! Without a `ground_truth/` folder the category is classification-only, as most inspection data
//! is and as anomalib treats it: defect images get no mask, and only image-level metrics apply.
//! Once `ground_truth/` exists, every defect image needs its mask.

use std::path::{Path, PathBuf};

use super::{list_images, list_images_nonempty, list_subdirs, stem, Label, Sample, Splits};
use crate::error::{DatasetError, Result};

/// Name of the folder of normal images in `train/` and `test/`.
pub const GOOD: &str = "good";

/// The categories under `root`: sub-folders that contain `train/good`, sorted.
pub fn categories(root: &Path) -> Result<Vec<String>> {
    if !root.is_dir() {
        return Err(DatasetError::MissingFolder {
            path: root.to_path_buf(),
            what: "an MVTec-style dataset root with one folder per category".into(),
        });
    }
    Ok(list_subdirs(root)?
        .into_iter()
        .filter(|c| root.join(c).join("train").join(GOOD).is_dir())
        .collect())
}

/// Lists category `category` of the MVTec-style dataset at `root`.
pub fn load(root: &Path, category: &str) -> Result<Splits> {
    let dir = root.join(category);
    if !dir.is_dir() {
        return Err(DatasetError::CategoryNotFound {
            root: root.to_path_buf(),
            category: category.to_string(),
            available: categories(root)?,
        });
    }
    load_category_dir(&dir)
}

/// Name of the folder of ground-truth masks, beside `train/` and `test/`.
pub const GROUND_TRUTH: &str = "ground_truth";

/// Lists one category folder (the folder that holds `train/`, `test/` and, optionally,
/// `ground_truth/`).
pub fn load_category_dir(dir: &Path) -> Result<Splits> {
    let train_dir = dir.join("train").join(GOOD);
    if !train_dir.is_dir() {
        return Err(DatasetError::MissingFolder {
            path: train_dir,
            what: "the normal training images (train/good)".into(),
        });
    }
    let train = list_images_nonempty(&train_dir)?
        .into_iter()
        .map(Sample::normal)
        .collect();

    let test_dir = dir.join("test");
    if !test_dir.is_dir() {
        return Err(DatasetError::MissingFolder {
            path: test_dir,
            what: "the test images (test/good and test/<defect>)".into(),
        });
    }
    let ground_truth = dir.join(GROUND_TRUTH);
    let has_masks = ground_truth.is_dir();
    let mut test = Vec::new();
    for defect in list_subdirs(&test_dir)? {
        let images = list_images(&test_dir.join(&defect))?;
        if defect == GOOD {
            test.extend(images.into_iter().map(Sample::normal));
            continue;
        }
        let masks: Vec<Option<PathBuf>> = if has_masks {
            pair_masks(&images, &ground_truth.join(&defect))?
                .into_iter()
                .map(Some)
                .collect()
        } else {
            vec![None; images.len()]
        };
        test.extend(images.into_iter().zip(masks).map(|(image, mask)| Sample {
            image,
            label: Label::Anomalous,
            mask,
            defect: defect.clone(),
        }));
    }
    if test.is_empty() {
        return Err(DatasetError::EmptyFolder { path: test_dir });
    }
    Ok(Splits {
        train,
        test,
        validation: None,
    })
}

/// Pairs sorted `images` with the sorted masks of `mask_dir`; returns one mask per image.
///
/// Errors: an image whose stem is in no mask's stem ([`DatasetError::MissingMask`], naming the
/// expected `<stem>_mask.png`), masks left over ([`DatasetError::UnpairedMasks`]), or a sorted
/// pair whose mask stem does not contain the image stem ([`DatasetError::MaskPairing`]).
pub fn pair_masks(images: &[PathBuf], mask_dir: &Path) -> Result<Vec<PathBuf>> {
    let masks = if mask_dir.is_dir() {
        list_images(mask_dir)?
    } else {
        Vec::new()
    };
    let mask_stems: Vec<String> = masks.iter().map(|m| stem(m)).collect();
    let image_stems: Vec<String> = images.iter().map(|i| stem(i)).collect();
    let missing = |image: &PathBuf, s: &str| DatasetError::MissingMask {
        image: image.clone(),
        expected: mask_dir.join(format!("{s}_mask.png")),
    };
    let exact = |s: &str| {
        mask_stems
            .iter()
            .any(|m| m == s || m.strip_suffix("_mask") == Some(s))
    };
    let any = |s: &str| mask_stems.iter().any(|m| m.contains(s));
    if masks.len() < images.len() {
        // Name the image most likely to lack its mask: no exact name match, then no match.
        let pick = image_stems
            .iter()
            .position(|s| !exact(s))
            .or_else(|| image_stems.iter().position(|s| !any(s)))
            .unwrap_or(masks.len());
        return Err(missing(&images[pick], &image_stems[pick]));
    }
    if let Some(i) = image_stems.iter().position(|s| !any(s)) {
        return Err(missing(&images[i], &image_stems[i]));
    }
    if masks.len() > images.len() {
        let first = masks
            .iter()
            .zip(&mask_stems)
            .find(|(_, m)| !image_stems.iter().any(|s| m.contains(s.as_str())))
            .map(|(p, _)| p.clone())
            .unwrap_or_else(|| masks[images.len()].clone());
        return Err(DatasetError::UnpairedMasks {
            dir: mask_dir.to_path_buf(),
            count: masks.len() - images.len(),
            first,
        });
    }
    for ((image, s), (mask, m)) in images
        .iter()
        .zip(&image_stems)
        .zip(masks.iter().zip(&mask_stems))
    {
        if !m.contains(s.as_str()) {
            return Err(DatasetError::MaskPairing {
                image: image.clone(),
                mask: mask.clone(),
            });
        }
    }
    Ok(masks)
}
