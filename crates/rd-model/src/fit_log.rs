//! What a training run records: one JSON line per epoch in a log file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{ModelError, Result};

/// One epoch of training, as written to the JSON-lines log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Optimiser steps run so far in the whole run (resumed ones included).
    pub step: usize,
    /// Mean loss over the epoch's images (each step's loss weighted by its batch size).
    pub loss: f64,
    /// The per-scale loss terms, averaged the same way (finest scale first).
    pub loss_terms: [f64; 3],
    /// Images trained on in this epoch.
    pub images: usize,
    /// Training throughput over the epoch.
    pub images_per_sec: f64,
    /// Wall-clock seconds of the epoch (of its part run by this process when resumed mid-epoch).
    pub seconds: f64,
    /// Learning rate used.
    pub lr: f64,
    /// `false` for an epoch cut short (interrupt or step limit); it will be finished on resume.
    pub complete: bool,
}

/// An append-only JSON-lines file, flushed after every line.
pub(crate) struct JsonLog {
    path: PathBuf,
    file: File,
}

impl JsonLog {
    /// Opens (creating) `path` for appending; fails early so no training is lost to a bad path.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| ModelError::Write {
                path: path.to_path_buf(),
                reason: format!("{e}; choose a log file in a writable folder"),
            })?;
        Ok(JsonLog {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends one record as a line.
    pub(crate) fn write(&mut self, record: &EpochRecord) -> Result<()> {
        let err = |reason: String| ModelError::Write {
            path: self.path.clone(),
            reason,
        };
        let mut line = serde_json::to_string(record).map_err(|e| err(e.to_string()))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|e| err(e.to_string()))
    }
}
