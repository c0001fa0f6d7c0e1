//! Choosing a dataset on the command line: MVTec AD, VisA, or a user's own folders.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use rd_dataset::layout::{folder, mvtec, visa};
use rd_dataset::Splits;

/// How the data is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Layout {
    /// `<data>/<category>/{train/good, test/<defect>, ground_truth/<defect>}` (also the synthetic
    /// demo data and anomalib's converted VisA).
    Mvtec,
    /// The raw VisA release (`split_csv/1cls.csv`) or anomalib's `visa_pytorch` layout.
    Visa,
    /// Your own folders: `--data` holds good images; see `--abnormal-dir` and `--mask-dir`.
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

    /// Folder layout: a folder of defective images for testing.
    #[arg(long)]
    pub abnormal_dir: Option<PathBuf>,

    /// Folder layout: masks of the defective images, paired by file name.
    #[arg(long)]
    pub mask_dir: Option<PathBuf>,

    /// Folder layout: share of the good images kept aside for testing.
    #[arg(long, default_value_t = 0.2)]
    pub normal_test_share: f64,
}

impl DataArgs {
    /// The splits, plus a short description for logs and model metadata.
    pub fn load(&self, seed: u64) -> Result<(Splits, String)> {
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
                config.abnormal_dir = self.abnormal_dir.clone();
                config.mask_dir = self.mask_dir.clone();
                config.normal_test_share = self.normal_test_share;
                config.seed = seed;
                (
                    folder::load(&config)?,
                    format!("{} (folder)", self.data.display()),
                )
            }
        })
    }
}
