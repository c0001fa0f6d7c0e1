//! `cargo xtask download …`: datasets (MVTec AD, VisA) and pretrained teacher weights.
//!
//! A dataset goes through three steps, each skipped when already done:
//! 1. get the archive: use a file already at the archive path (side-loaded, or from an earlier
//!    run) if its SHA-256 is right, else download it into `<archive>.part` with resume
//!    ([`fetch`]) and verify it;
//! 2. extract it, all of it or one category's subtree, into the dataset folder ([`extract`]);
//! 3. write a marker file, so the next run sees the work is done and does nothing.

pub mod extract;
pub mod fetch;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use rd_backbone::{BackboneId, WeightsLocator};

pub use fetch::{DownloadSpec, FetchOptions};

/// The 15 MVTec AD categories (SPEC §8.1).
pub const MVTEC_CATEGORIES: [&str; 15] = [
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
];

/// The marker written into a dataset folder once an extraction is complete.
pub const MARKER_FILE: &str = ".xtask-download.done";

/// A dataset archive and what to tell the user about it.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Human-readable name.
    pub name: &'static str,
    /// Licence notice printed before downloading or extracting.
    pub licence: &'static str,
    /// Default folder, relative to the workspace root.
    pub default_dir: &'static str,
    /// Official archive.
    pub url: &'static str,
    /// SHA-256 of the official archive.
    pub sha256: &'static str,
    /// The archive's file name.
    pub file_name: &'static str,
}

impl Dataset {
    /// The archive to fetch, with an optional mirror URL in place of the official one.
    pub fn spec(&self, url: Option<&str>) -> DownloadSpec {
        DownloadSpec {
            url: url.unwrap_or(self.url).to_string(),
            sha256: self.sha256.to_string(),
            file_name: self.file_name.to_string(),
        }
    }
}

/// MVTec AD (SPEC §8.1; URL and SHA-256 as anomalib uses them).
pub const MVTEC_AD: Dataset = Dataset {
    name: "MVTec AD",
    licence: "MVTec AD is licensed under CC BY-NC-SA 4.0: non-commercial use only, share alike, \
              attribution required (https://www.mvtec.com/company/research/datasets/mvtec-ad).",
    default_dir: "data/mvtec",
    url: "https://www.mydrive.ch/shares/150996/b52ecdcbf521176e9db9c731f2304b27/download/420938113-1629960298/mvtec_anomaly_detection.tar.xz",
    sha256: "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
    file_name: "mvtec_anomaly_detection.tar.xz",
};

/// VisA (SPEC §8.2; URL and SHA-256 as anomalib uses them).
pub const VISA: Dataset = Dataset {
    name: "VisA",
    licence:
        "VisA licence: the amazon-science/spot-diff README says CC BY 4.0, anomalib's docs say \
              CC BY-NC-SA 4.0. Check https://github.com/amazon-science/spot-diff before any \
              commercial use.",
    default_dir: "data/visa",
    url: "https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar",
    sha256: "2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362",
    file_name: "VisA_20220922.tar",
};

/// `cargo xtask download`.
#[derive(Debug, Args)]
#[command(
    about = "Download a dataset (MVTec AD, VisA) or pretrained teacher weights",
    long_about = "Download a dataset (MVTec AD, VisA) or pretrained teacher weights.\n\n\
                  Datasets are verified by SHA-256 before use, resume an interrupted download, and \
                  are not downloaded or extracted again once done. Without network, put the archive \
                  where the error message says and run the command again."
)]
pub struct DownloadArgs {
    #[command(subcommand)]
    pub what: DownloadCommand,
}

/// What to download.
#[derive(Debug, Subcommand)]
pub enum DownloadCommand {
    /// MVTec AD (about 4.9 GB, CC BY-NC-SA 4.0, non-commercial) into data/mvtec.
    #[command(after_help = "Examples:\n  \
        cargo xtask download mvtec\n  \
        cargo xtask download mvtec --category bottle\n  \
        cargo xtask download mvtec --dir /datasets/mvtec --url https://mirror.example/mvtec_anomaly_detection.tar.xz\n\n\
        Offline: copy mvtec_anomaly_detection.tar.xz (SHA-256 cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d)\n\
        into the --dir folder (or pass --archive PATH) and run the same command.")]
    Mvtec(MvtecArgs),
    /// VisA (a plain .tar; licence: see the note printed) into data/visa.
    #[command(after_help = "Examples:\n  \
        cargo xtask download visa\n  \
        cargo xtask download visa --dir /datasets/visa\n\n\
        Offline: copy VisA_20220922.tar (SHA-256 2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362)\n\
        into the --dir folder (or pass --archive PATH) and run the same command.\n\
        The archive is extracted as published (<object>/Data/…, split_csv/). `rd --layout visa`\n\
        reads it through split_csv/1cls.csv, the file anomalib's converted visa_pytorch/ copy is\n\
        made from (same images and split, masks binarised, as rd reads them), so no copy is made.")]
    Visa(VisaArgs),
    /// Teacher weights (timm model.safetensors) into the Hugging Face cache.
    #[command(after_help = "Examples:\n  \
        cargo xtask download weights wide_resnet50_2            # timm default tag (racm_in1k)\n  \
        cargo xtask download weights wide_resnet50_2.tv_in1k    # torchvision weights (paper parity)\n  \
        cargo xtask download weights timm/resnet18.a1_in1k\n\n\
        The cache is $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub.\n\
        With HF_HUB_OFFLINE=1 only the cache is looked at. Prints the file's path.")]
    Weights(WeightsArgs),
}

/// Options shared by the dataset downloads.
#[derive(Debug, Clone, Args)]
pub struct ArchiveArgs {
    /// Download from this URL instead of the official one (a mirror); the SHA-256 check stays.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Where the archive is kept (and looked for, if side-loaded) [default: <DIR>/<archive name>].
    #[arg(long, value_name = "PATH")]
    pub archive: Option<PathBuf>,
    /// Delete the archive once it is extracted.
    #[arg(long)]
    pub remove_archive: bool,
}

/// `cargo xtask download mvtec`.
#[derive(Debug, Args)]
pub struct MvtecArgs {
    /// Extract only this category (the archive is still downloaded whole).
    #[arg(long, value_name = "C", value_parser = clap::builder::PossibleValuesParser::new(MVTEC_CATEGORIES))]
    pub category: Option<String>,
    /// Dataset folder; relative defaults are in the workspace root [default: data/mvtec].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    #[command(flatten)]
    pub archive: ArchiveArgs,
}

/// `cargo xtask download visa`.
#[derive(Debug, Args)]
pub struct VisaArgs {
    /// Dataset folder; relative defaults are in the workspace root [default: data/visa].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    #[command(flatten)]
    pub archive: ArchiveArgs,
}

/// `cargo xtask download weights`.
#[derive(Debug, Args)]
pub struct WeightsArgs {
    /// Backbone: `wide_resnet50_2`, `wide_resnet50_2.tv_in1k`, `timm/resnet18.a1_in1k`, …
    #[arg(value_name = "BACKBONE", value_parser = clap::value_parser!(BackboneId))]
    pub backbone: BackboneId,
}

/// Runs `cargo xtask download …`.
pub fn run(args: DownloadArgs) -> Result<()> {
    match args.what {
        DownloadCommand::Mvtec(a) => {
            run_dataset(&MVTEC_AD, a.dir, a.category, &a.archive)?;
        }
        DownloadCommand::Visa(a) => {
            run_dataset(&VISA, a.dir, None, &a.archive)?;
        }
        DownloadCommand::Weights(a) => {
            let id = a.backbone;
            eprintln!("Resolving timm weights {} ({})", id, id.hub_repo());
            let path = WeightsLocator::from_env()
                .resolve(&id)
                .with_context(|| format!("could not get the weights for {id}"))?;
            println!("{}", path.display());
        }
    }
    Ok(())
}

fn run_dataset(
    dataset: &Dataset,
    dir: Option<PathBuf>,
    category: Option<String>,
    archive: &ArchiveArgs,
) -> Result<()> {
    let dir = dir.unwrap_or_else(|| crate::workspace_root().join(dataset.default_dir));
    let spec = dataset.spec(archive.url.as_deref());
    let job = DatasetJob {
        archive: archive
            .archive
            .clone()
            .unwrap_or_else(|| dir.join(&spec.file_name)),
        dir,
        spec,
        category,
        remove_archive: archive.remove_archive,
        fetch: FetchOptions::default(),
        licence: Some(dataset.licence),
    };
    let outcome = ensure_dataset(&job)?;
    let what = match &job.category {
        Some(c) => format!("{} ({c})", dataset.name),
        None => dataset.name.to_string(),
    };
    match outcome {
        Outcome::AlreadyPresent => println!(
            "{what} is already in {} (delete {} to extract again)",
            job.dir.display(),
            job.dir.join(MARKER_FILE).display()
        ),
        Outcome::Extracted { .. } => println!("{what} is ready in {}", job.dir.display()),
    }
    Ok(())
}

/// One dataset download + extraction, with every path and the checksum spelled out (tests build
/// these directly, with their own URL and SHA-256).
#[derive(Debug, Clone)]
pub struct DatasetJob {
    /// Where and what to download.
    pub spec: DownloadSpec,
    /// The dataset folder the archive is extracted into.
    pub dir: PathBuf,
    /// The archive's path; the download goes to this path plus `.part` first.
    pub archive: PathBuf,
    /// Extract only this top-level folder of the archive (plus its top-level files).
    pub category: Option<String>,
    /// Delete the archive after a successful extraction.
    pub remove_archive: bool,
    /// Network and progress settings.
    pub fetch: FetchOptions,
    /// Printed (to stderr) when there is work to do.
    pub licence: Option<&'static str>,
}

/// What [`ensure_dataset`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The marker says it was done before: nothing was read, downloaded or written.
    AlreadyPresent,
    /// The archive was extracted; `downloaded` tells whether it came over the network (rather than
    /// from a verified file already at the archive path).
    Extracted { downloaded: bool },
}

/// Downloads (if needed), verifies and extracts a dataset archive; idempotent.
pub fn ensure_dataset(job: &DatasetJob) -> Result<Outcome> {
    let expected = job.spec.expected_sha256()?;
    let marker_path = job.dir.join(MARKER_FILE);
    let mut marker = Marker::read(&marker_path)?;
    if let Some(m) = &marker {
        if m.sha256 == expected && m.covers(job.category.as_deref()) {
            return Ok(Outcome::AlreadyPresent);
        }
        if m.sha256 != expected {
            // A different archive was extracted here before; start a fresh record.
            marker = None;
        }
    }
    if let Some(licence) = job.licence {
        eprintln!("{licence}");
    }
    std::fs::create_dir_all(&job.dir)
        .with_context(|| format!("cannot create the dataset folder {}", job.dir.display()))?;

    let downloaded = fetch::obtain(&job.spec, &job.archive, &job.fetch)?;

    let found = extract::extract(
        &job.archive,
        &job.dir,
        job.category.as_deref(),
        job.fetch.progress,
    )?;
    let mut marker = marker.unwrap_or_else(|| Marker {
        sha256: expected.clone(),
        all: false,
        categories: BTreeSet::new(),
    });
    match &job.category {
        None => marker.all = true,
        Some(c) => {
            marker.categories.insert(c.clone());
        }
    }
    marker
        .write(&marker_path)
        .with_context(|| format!("cannot write the marker {}", marker_path.display()))?;
    eprintln!(
        "Extracted {} entries from {} into {}",
        found.entries,
        job.archive.display(),
        job.dir.display()
    );
    if job.remove_archive {
        std::fs::remove_file(&job.archive)
            .with_context(|| format!("cannot remove {}", job.archive.display()))?;
        eprintln!("Removed {}", job.archive.display());
    }
    Ok(Outcome::Extracted { downloaded })
}

/// `<dir>/.xtask-download.done`: which archive was extracted, and whether all of it or which
/// categories. Plain text, one `key value` per line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Marker {
    sha256: String,
    all: bool,
    categories: BTreeSet<String>,
}

impl Marker {
    fn covers(&self, category: Option<&str>) -> bool {
        match category {
            _ if self.all => true,
            None => false,
            Some(c) => self.categories.contains(c),
        }
    }

    fn read(path: &Path) -> Result<Option<Marker>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let mut marker = Marker {
            sha256: String::new(),
            all: false,
            categories: BTreeSet::new(),
        };
        for line in text.lines().map(str::trim) {
            match line.split_once(' ') {
                Some(("sha256", v)) => marker.sha256 = v.trim().to_ascii_lowercase(),
                Some(("category", v)) => {
                    marker.categories.insert(v.trim().to_string());
                }
                None if line == "all" => marker.all = true,
                _ => {}
            }
        }
        // An unreadable marker counts as absent: the work is redone, which is safe.
        Ok((!marker.sha256.is_empty()).then_some(marker))
    }

    fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut text = String::from(
            "# Written by `cargo xtask download` after a verified extraction; delete to redo.\n",
        );
        text.push_str(&format!("sha256 {}\n", self.sha256));
        if self.all {
            text.push_str("all\n");
        }
        for c in &self.categories {
            text.push_str(&format!("category {c}\n"));
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trips_and_covers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MARKER_FILE);
        assert_eq!(Marker::read(&path).unwrap(), None);
        let m = Marker {
            sha256: "ab".repeat(32),
            all: false,
            categories: ["bottle".to_string()].into(),
        };
        m.write(&path).unwrap();
        let back = Marker::read(&path).unwrap().unwrap();
        assert_eq!(back, m);
        assert!(back.covers(Some("bottle")));
        assert!(!back.covers(Some("cable")));
        assert!(!back.covers(None));
        let all = Marker { all: true, ..m };
        assert!(all.covers(None) && all.covers(Some("cable")));
    }

    #[test]
    fn official_specs_are_well_formed() {
        for d in [MVTEC_AD, VISA] {
            let spec = d.spec(None);
            assert_eq!(spec.expected_sha256().unwrap(), d.sha256);
            assert!(spec.url.ends_with(d.file_name), "{}", spec.url);
            assert_eq!(d.spec(Some("http://m/x")).url, "http://m/x");
        }
        assert!(MVTEC_AD.licence.contains("CC BY-NC-SA 4.0"));
        assert!(MVTEC_AD.licence.contains("non-commercial"));
    }
}
