//! Extracting a verified `.tar` / `.tar.xz` archive into a dataset folder.
//!
//! Entries are unpacked into a staging folder inside the target (same file system), then moved
//! into place, so an interrupted extraction never leaves a half-filled category that looks
//! complete. With a category filter, only that top-level folder and the archive's top-level files
//! (licence, readme) are kept.
//!
//! xz decoding uses `liblzma` (the maintained fork of the dormant `xz2`, same API), which binds the
//! reference C implementation from xz-utils: the decoder speed matters for the 4.9 GB MVTec archive,
//! and the reference decoder is the tuned, widely-used one (the pure-Rust `lzma-rs` was not chosen;
//! its speed was not measured here). The `static` feature builds the bundled xz sources, so only a C
//! compiler is needed, not a system liblzma-dev.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::fetch::bytes_bar;

/// The staging folder's name inside the dataset folder.
pub const STAGING_DIR: &str = ".xtask-extract.partial";

/// How an archive is compressed, from its file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain `.tar`.
    None,
    /// `.tar.xz` / `.txz`.
    Xz,
}

impl Compression {
    /// Picks the decoder from the file name.
    pub fn from_file_name(name: &str) -> Result<Compression> {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".tar.xz") || lower.ends_with(".txz") {
            Ok(Compression::Xz)
        } else if lower.ends_with(".tar") {
            Ok(Compression::None)
        } else {
            bail!("cannot extract {name}: only .tar and .tar.xz archives are supported")
        }
    }
}

/// What an extraction found.
#[derive(Debug, Clone, Default)]
pub struct Extracted {
    /// Entries unpacked.
    pub entries: u64,
    /// The archive's top-level folders (all of them, not only the extracted one).
    pub top_level_dirs: BTreeSet<String>,
}

/// Extracts `archive` into `dir`; with `only`, just that top-level folder plus top-level files.
pub fn extract(
    archive: &Path,
    dir: &Path,
    only: Option<&str>,
    progress: bool,
) -> Result<Extracted> {
    let name = archive
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let compression = Compression::from_file_name(&name)?;
    let staging = dir.join(STAGING_DIR);
    remove_dir_if_present(&staging)?;
    std::fs::create_dir_all(&staging)
        .with_context(|| format!("cannot create {}", staging.display()))?;

    eprintln!("Extracting {} into {}", archive.display(), dir.display());
    let result = unpack(archive, compression, &staging, only, progress);
    let found = match result {
        Ok(found) => found,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e.context(format!(
                "extracting {} failed; nothing was moved into {} (the archive passed its SHA-256 \
                 check, so check free disk space and permissions, then run the command again)",
                archive.display(),
                dir.display()
            )));
        }
    };
    if let Some(c) = only {
        if !found.top_level_dirs.contains(c) {
            let _ = std::fs::remove_dir_all(&staging);
            bail!(
                "the archive {} has no folder {c:?}; it has: {}",
                archive.display(),
                found
                    .top_level_dirs
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    merge_move(&staging, dir)
        .with_context(|| format!("cannot move the extracted files into {}", dir.display()))?;
    Ok(found)
}

fn unpack(
    archive: &Path,
    compression: Compression,
    staging: &Path,
    only: Option<&str>,
    progress: bool,
) -> Result<Extracted> {
    let file = File::open(archive).with_context(|| format!("cannot open {}", archive.display()))?;
    // The bar follows the (compressed) bytes read from disk, so its ETA is meaningful.
    let bar = bytes_bar(progress);
    bar.set_length(file.metadata()?.len());
    let raw = bar.wrap_read(BufReader::with_capacity(1 << 20, file));
    let reader: Box<dyn Read> = match compression {
        Compression::None => Box::new(raw),
        // Multi-stream, so archives written by parallel xz tools decode fully.
        Compression::Xz => Box::new(BufReader::with_capacity(
            1 << 20,
            liblzma::read::XzDecoder::new_multi_decoder(raw),
        )),
    };
    let mut tar = tar::Archive::new(reader);
    tar.set_overwrite(true);
    tar.set_preserve_permissions(false);
    let mut found = Extracted::default();
    for entry in tar.entries().context("cannot read the tar stream")? {
        let mut entry = entry.context("cannot read a tar entry")?;
        let path = entry.path().context("bad entry path")?.into_owned();
        let Some(parts) = safe_components(&path) else {
            eprintln!("Skipping unsafe archive path {}", path.display());
            continue;
        };
        let Some(first) = parts.first() else { continue };
        let is_dir = entry.header().entry_type().is_dir();
        if parts.len() > 1 || is_dir {
            found.top_level_dirs.insert(first.clone());
        }
        if let Some(c) = only {
            let top_level_file = parts.len() == 1 && !is_dir;
            if first != c && !top_level_file {
                continue;
            }
        }
        let dest: PathBuf = parts.iter().fold(staging.to_path_buf(), |p, c| p.join(c));
        if is_dir {
            // Created here (not by `unpack_in`) so a read-only mode in the archive cannot stop
            // its files from being written.
            std::fs::create_dir_all(&dest)
                .with_context(|| format!("cannot create {}", dest.display()))?;
        } else if !entry
            .unpack_in(staging)
            .with_context(|| format!("cannot unpack {}", path.display()))?
        {
            eprintln!("Skipping unsafe archive path {}", path.display());
            continue;
        }
        found.entries += 1;
    }
    bar.finish_and_clear();
    Ok(found)
}

/// The entry path as plain names, or `None` if it is absolute or climbs out (`..`).
fn safe_components(path: &Path) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => out.push(s.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Moves every entry of `from` into `to` (merging folders, replacing files), then removes `from`.
fn merge_move(from: &Path, to: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let src_is_dir = entry.file_type()?.is_dir();
        match std::fs::symlink_metadata(&dst) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::rename(&src, &dst)?,
            Err(e) => return Err(e),
            Ok(meta) if src_is_dir && meta.is_dir() => merge_move(&src, &dst)?,
            Ok(meta) => {
                if meta.is_dir() {
                    std::fs::remove_dir_all(&dst)?;
                }
                std::fs::rename(&src, &dst)?;
            }
        }
    }
    std::fs::remove_dir(from)
}

fn remove_dir_if_present(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove the leftover {}", dir.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_from_name() {
        assert_eq!(
            Compression::from_file_name("mvtec_anomaly_detection.tar.xz").unwrap(),
            Compression::Xz
        );
        assert_eq!(
            Compression::from_file_name("VisA_20220922.tar").unwrap(),
            Compression::None
        );
        assert!(Compression::from_file_name("x.zip").is_err());
    }

    #[test]
    fn unsafe_paths_are_refused() {
        assert_eq!(
            safe_components(Path::new("./bottle/train/000.png")),
            Some(vec!["bottle".into(), "train".into(), "000.png".into()])
        );
        assert_eq!(safe_components(Path::new("../etc/passwd")), None);
        assert_eq!(safe_components(Path::new("/etc/passwd")), None);
    }

    #[test]
    fn merge_move_merges_folders_and_replaces_files() {
        let root = tempfile::tempdir().unwrap();
        let from = root.path().join("from");
        let to = root.path().join("to");
        std::fs::create_dir_all(from.join("a/b")).unwrap();
        std::fs::create_dir_all(to.join("a/old")).unwrap();
        std::fs::write(from.join("a/b/f"), "new").unwrap();
        std::fs::write(from.join("top"), "new").unwrap();
        std::fs::write(to.join("top"), "old").unwrap();
        merge_move(&from, &to).unwrap();
        assert!(!from.exists());
        assert_eq!(std::fs::read_to_string(to.join("a/b/f")).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(to.join("top")).unwrap(), "new");
        assert!(to.join("a/old").is_dir());
    }
}
