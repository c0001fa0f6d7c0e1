//! Choosing a dataset on the command line: MVTec AD, VisA, or a user's own folders.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use rd_dataset::layout::{folder, mvtec, visa};
use rd_dataset::{Sample, Splits};

/// How the data is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Layout {
    /// `<data>/<category>/{train/good, test/good, test/<defect>, ground_truth/<defect>}` (also the
    /// synthetic demo data and anomalib's converted VisA); without `ground_truth/`, image-level
    /// metrics only.
    Mvtec,
    /// The raw VisA release (`split_csv/1cls.csv`) or anomalib's `visa_pytorch` layout.
    Visa,
    /// Your own folders: `--data` holds good images; see `--normal-test-dir`, `--abnormal-dir`
    /// and `--mask-dir`.
    Folder,
}

/// Dataset arguments shared by `rd train` and `rd eval`.
#[derive(Debug, Args)]
pub struct DataArgs {
    /// Dataset root (MVTec/VisA), or the folder of good images (`--layout folder`).
    #[arg(long)]
    pub data: PathBuf,

    /// Category (MVTec) or object (VisA), e.g. `bottle`.
    #[arg(long)]
    pub category: Option<String>,

    /// How the data is laid out.
    #[arg(long, value_enum, default_value = "mvtec")]
    pub layout: Layout,

    /// Folder layout: a folder of defective images for testing, named after its defect type
    /// (repeatable: one folder per defect type, reported by folder name).
    #[arg(long = "abnormal-dir", value_name = "DIR")]
    pub abnormal_dirs: Vec<PathBuf>,

    /// Folder layout: the masks of an `--abnormal-dir`'s images, paired by file name (`x.png`
    /// with `x.png` or `x_mask.png`); repeatable, one per `--abnormal-dir` in the same order.
    /// Without masks, pixel metrics are skipped.
    #[arg(long = "mask-dir", value_name = "DIR")]
    pub mask_dirs: Vec<PathBuf>,

    /// Folder layout: a folder of good images for testing only (anomalib's `normal_test_dir`);
    /// then every image of `--data` is used for training.
    #[arg(long, value_name = "DIR", conflicts_with = "normal_test_share")]
    pub normal_test_dir: Option<PathBuf>,

    /// Folder layout: share of the good images of `--data` kept aside for testing, when there is
    /// no `--normal-test-dir` [default: 0.2].
    #[arg(long, value_name = "SHARE")]
    pub normal_test_share: Option<f64>,
}

/// The held-out share of good images when neither it nor a folder of good test images is given.
const DEFAULT_NORMAL_TEST_SHARE: f64 = 0.2;

impl DataArgs {
    /// The splits, plus a short description for logs and model metadata.
    pub fn load(&self, seed: u64) -> Result<(Splits, String)> {
        self.check_layout_options()?;
        let need_category = || -> Result<&str> {
            match &self.category {
                Some(c) => Ok(c),
                None => bail!(
                    "--category is required for the {:?} layout (e.g. --category bottle)",
                    self.layout
                ),
            }
        };
        Ok(match self.layout {
            Layout::Mvtec => {
                let c = need_category()?;
                (
                    mvtec::load(&self.data, c)?,
                    format!("{}/{c}", self.data.display()),
                )
            }
            Layout::Visa => {
                let c = need_category()?;
                (
                    visa::load(&self.data, c)?,
                    format!("{}/{c} (VisA)", self.data.display()),
                )
            }
            Layout::Folder => {
                let mut config = folder::FolderConfig::new(&self.data);
                config.abnormal_dirs = self.abnormal_dirs.clone();
                config.mask_dirs = self.mask_dirs.clone();
                config.normal_test_dir = self.normal_test_dir.clone();
                config.normal_test_share = match (&self.normal_test_dir, self.normal_test_share) {
                    (_, Some(share)) => share,
                    (Some(_), None) => 0.0,
                    (None, None) => DEFAULT_NORMAL_TEST_SHARE,
                };
                config.seed = seed;
                (
                    folder::load(&config)?,
                    format!("{} (folder)", self.data.display()),
                )
            }
        })
    }

    /// Refuses the folder layout's options with another layout, where they would be ignored.
    fn check_layout_options(&self) -> Result<()> {
        let folder_only = [
            ("--abnormal-dir", !self.abnormal_dirs.is_empty()),
            ("--mask-dir", !self.mask_dirs.is_empty()),
            ("--normal-test-dir", self.normal_test_dir.is_some()),
            ("--normal-test-share", self.normal_test_share.is_some()),
        ];
        if self.layout != Layout::Folder {
            if let Some((flag, _)) = folder_only.iter().find(|(_, given)| *given) {
                bail!(
                    "{flag} belongs to `--layout folder`; the {:?} layout finds its test images \
                     and masks itself",
                    self.layout
                );
            }
        }
        Ok(())
    }

    /// The test images by defect type, e.g. `12 good, 5 crack, 3 scratch` (MVTec's names: the
    /// folder names).
    pub fn test_summary(test: &[Sample]) -> String {
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for s in test {
            match counts.iter_mut().find(|(d, _)| *d == s.defect) {
                Some((_, n)) => *n += 1,
                None => counts.push((&s.defect, 1)),
            }
        }
        counts.sort_by_key(|&(d, _)| (d != mvtec::GOOD, d));
        if counts.is_empty() {
            return "no images".into();
        }
        let parts: Vec<String> = counts.iter().map(|(d, n)| format!("{n} {d}")).collect();
        parts.join(", ")
    }

    /// Why there are no pixel metrics for `test`, when it has defective images but no mask at all
    /// (classification-only data, which anomalib evaluates at image level only).
    pub fn missing_masks(&self, test: &[Sample]) -> Option<String> {
        let defective = test.iter().any(|s| s.label.is_anomalous());
        if !defective || test.iter().any(|s| s.mask.is_some()) {
            return None;
        }
        Some(match (self.layout, &self.category) {
            (Layout::Mvtec, Some(c)) => format!(
                "{} has no {}/ folder",
                self.data.join(c).display(),
                mvtec::GROUND_TRUTH
            ),
            (Layout::Folder, _) => "no --mask-dir was given".into(),
            _ => "the dataset has no masks".into(),
        })
    }
}
