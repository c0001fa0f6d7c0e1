//! Finding the images, labels and masks of a dataset on disk.
//!
//! Each layout produces [`Splits`]: lists of [`Sample`]s for training, testing and optionally
//! validation. Nothing is decoded here; only paths are listed and paired, so problems such as a
//! missing mask are reported before training starts.
//!
//! * [`mvtec`]: MVTec AD (`<root>/<category>/{train/good, test/<defect>, ground_truth/<defect>}`;
//!   `ground_truth/` optional).
//! * [`visa`]: VisA, raw release with `split_csv/1cls.csv` or anomalib's converted `visa_pytorch`.
//! * [`folder`]: a folder of normal images with optional good test images, folders of abnormal
//!   images (one per defect type) and their masks.

pub mod folder;
pub mod mvtec;
pub mod visa;

use std::path::{Path, PathBuf};

use crate::error::{DatasetError, Result};
use crate::image::has_image_extension;
use crate::rng::SplitMix64;

/// Whether an image shows a good part or a defective one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Label {
    /// A good part.
    Normal,
    /// A defective part.
    Anomalous,
}

impl Label {
    /// `0` for normal, `1` for anomalous (anomalib's convention).
    pub fn as_u8(self) -> u8 {
        match self {
            Label::Normal => 0,
            Label::Anomalous => 1,
        }
    }

    /// Whether this is [`Label::Anomalous`].
    pub fn is_anomalous(self) -> bool {
        self == Label::Anomalous
    }
}

/// One image of a dataset, with its label and optional ground-truth mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The image file.
    pub image: PathBuf,
    /// Normal or anomalous.
    pub label: Label,
    /// The ground-truth mask of an anomalous image, if the dataset has one.
    pub mask: Option<PathBuf>,
    /// The defect type (the folder name, `good` for normal images).
    pub defect: String,
}

impl Sample {
    /// A normal sample without mask (defect `good`).
    pub fn normal(image: impl Into<PathBuf>) -> Self {
        Sample {
            image: image.into(),
            label: Label::Normal,
            mask: None,
            defect: "good".into(),
        }
    }
}

/// A dataset divided into training, test and (optionally) validation samples.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Splits {
    /// Training samples (normal images only for the usual one-class setting).
    pub train: Vec<Sample>,
    /// Test samples.
    pub test: Vec<Sample>,
    /// Validation samples, if a validation split was made.
    pub validation: Option<Vec<Sample>>,
}

impl Splits {
    /// The validation samples, or the test samples when there is no validation split
    /// (anomalib's default for MVTec AD and VisA).
    pub fn validation_or_test(&self) -> &[Sample] {
        self.validation.as_deref().unwrap_or(&self.test)
    }

    /// Moves a seeded share of the training images to the validation split: what a user without
    /// defect samples validates on (thresholds then sit above every score of a good part).
    pub fn hold_out_normals(&mut self, share: f64, seed: u64) -> Result<()> {
        if !(share > 0.0 && share < 1.0) {
            return Err(DatasetError::InvalidConfig(format!(
                "the held-out share must be between 0 and 1 (exclusive), got {share}"
            )));
        }
        let n = (self.train.len() as f64 * share).round() as usize;
        if n == 0 || n == self.train.len() {
            return Err(DatasetError::InvalidConfig(format!(
                "holding out {share} of {} training images leaves none for {}",
                self.train.len(),
                if n == 0 { "validation" } else { "training" }
            )));
        }
        let mut held = vec![false; self.train.len()];
        let mut idx: Vec<usize> = (0..self.train.len()).collect();
        SplitMix64::derive(seed, &[2]).shuffle(&mut idx);
        for &i in idx.iter().take(n) {
            held[i] = true;
        }
        let (val, train): (Vec<_>, Vec<_>) = std::mem::take(&mut self.train)
            .into_iter()
            .zip(held)
            .partition(|(_, h)| *h);
        self.train = train.into_iter().map(|(s, _)| s).collect();
        self.validation = Some(val.into_iter().map(|(s, _)| s).collect());
        Ok(())
    }

    /// Moves a share of the test samples, drawn separately from each label, to a validation
    /// split, deterministically from `seed`. Both lists keep their sorted order.
    pub fn split_validation_from_test(&mut self, share: f64, seed: u64) -> Result<()> {
        if !(share > 0.0 && share < 1.0) {
            return Err(DatasetError::InvalidConfig(format!(
                "the validation share must be between 0 and 1 (exclusive), got {share}"
            )));
        }
        let mut to_val = vec![false; self.test.len()];
        for (k, label) in [Label::Normal, Label::Anomalous].into_iter().enumerate() {
            let mut idx: Vec<usize> = (0..self.test.len())
                .filter(|&i| self.test[i].label == label)
                .collect();
            let n = (idx.len() as f64 * share).round() as usize;
            SplitMix64::derive(seed, &[k as u64]).shuffle(&mut idx);
            for &i in idx.iter().take(n) {
                to_val[i] = true;
            }
        }
        let (val, test): (Vec<_>, Vec<_>) = std::mem::take(&mut self.test)
            .into_iter()
            .zip(to_val)
            .partition(|(_, v)| *v);
        self.test = test.into_iter().map(|(s, _)| s).collect();
        self.validation = Some(val.into_iter().map(|(s, _)| s).collect());
        Ok(())
    }
}

/// Sorted image files directly inside `dir` (extensions [`crate::IMAGE_EXTENSIONS`],
/// case-insensitive; names starting with `.` are skipped). A missing folder is an error; an
/// empty list is returned for a folder without images.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Err(DatasetError::MissingFolder {
            path: dir.to_path_buf(),
            what: "a folder of images".into(),
        });
    }
    let entries = std::fs::read_dir(dir).map_err(|e| DatasetError::io(dir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DatasetError::io(dir, e))?;
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && has_image_extension(&path) && path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Like [`list_images`], but a folder without images is an [`DatasetError::EmptyFolder`] error.
pub fn list_images_nonempty(dir: &Path) -> Result<Vec<PathBuf>> {
    let images = list_images(dir)?;
    if images.is_empty() {
        return Err(DatasetError::EmptyFolder {
            path: dir.to_path_buf(),
        });
    }
    Ok(images)
}

/// Sorted names of the sub-folders of `dir` (names starting with `.` skipped).
pub(crate) fn list_subdirs(dir: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(dir).map_err(|e| DatasetError::io(dir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DatasetError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && entry.path().is_dir() {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// The file stem of `path` as a string (lossy).
pub(crate) fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: usize, label: Label) -> Sample {
        Sample {
            image: PathBuf::from(format!("{i:03}.png")),
            label,
            mask: None,
            defect: String::new(),
        }
    }

    #[test]
    fn validation_split_is_stratified_and_deterministic() {
        let mut test: Vec<Sample> = (0..10).map(|i| sample(i, Label::Normal)).collect();
        test.extend((10..30).map(|i| sample(i, Label::Anomalous)));
        let mut a = Splits {
            train: vec![],
            test: test.clone(),
            validation: None,
        };
        let mut b = a.clone();
        a.split_validation_from_test(0.5, 1).unwrap();
        b.split_validation_from_test(0.5, 1).unwrap();
        assert_eq!(a, b);
        let val = a.validation.as_ref().unwrap();
        assert_eq!(val.len(), 15);
        assert_eq!(val.iter().filter(|s| s.label == Label::Normal).count(), 5);
        assert_eq!(a.test.len(), 15);
        assert!(a.test.windows(2).all(|w| w[0].image < w[1].image));
        assert!(Splits::default()
            .split_validation_from_test(1.0, 0)
            .is_err());
    }

    #[test]
    fn list_images_filters_and_sorts() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "b.PNG",
            "a.jpg",
            "c.Tiff",
            "d.txt",
            ".hidden.png",
            "e.jpeg",
            "f.bmp",
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        std::fs::create_dir(dir.path().join("sub.png")).unwrap();
        let names: Vec<String> = list_images(dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.jpg", "b.PNG", "c.Tiff", "e.jpeg", "f.bmp"]);
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let err = list_images_nonempty(&empty).unwrap_err();
        assert!(matches!(err, DatasetError::EmptyFolder { .. }));
        assert!(err.to_string().contains("empty"), "{err}");
        let err = list_images(&dir.path().join("nope")).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}

#[cfg(test)]
mod hold_out_tests {
    use super::*;

    #[test]
    fn holds_out_a_seeded_share_of_training_images() {
        let make = || Splits {
            train: (0..10)
                .map(|i| Sample::normal(format!("{i}.png")))
                .collect(),
            ..Default::default()
        };
        let mut a = make();
        a.hold_out_normals(0.2, 7).unwrap();
        assert_eq!(a.train.len(), 8);
        assert_eq!(a.validation.as_ref().unwrap().len(), 2);
        let mut b = make();
        b.hold_out_normals(0.2, 7).unwrap();
        assert_eq!(a, b);
        assert!(make().hold_out_normals(0.01, 7).is_err());
        assert!(make().hold_out_normals(1.5, 7).is_err());
    }
}
