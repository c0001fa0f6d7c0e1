//! The models of the model folder, kept in step with it: a file added or replaced (atomically
//! renamed, as `rd train` writes them) is loaded beside the old one and swapped in; requests
//! already holding the old model finish on it. A removed file stops being served.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use candle_core::Device;
use rd_model::Predictor;

use crate::error::{Result, ServeError};
use crate::metrics::Metrics;

/// The extension of model files.
const MODEL_EXTENSION: &str = "safetensors";

/// What identifies one version of a file: a rename gives a new inode, a rewrite a new size or time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode,
        }
    }

    /// A short version string for the KServe metadata.
    pub fn version(&self) -> String {
        let secs = self
            .modified
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        format!("{secs}-{:x}", self.inode)
    }
}

/// One served model: a loaded file under its name.
#[derive(Debug)]
pub(crate) struct ServedModel {
    /// The file stem it is served under.
    pub name: String,
    /// The file it was loaded from.
    pub path: PathBuf,
    /// The model and its thresholds.
    pub predictor: Predictor,
    pub(crate) stamp: Stamp,
}

/// The served models by name.
#[derive(Debug)]
pub(crate) struct Registry {
    dir: PathBuf,
    device: Device,
    models: RwLock<BTreeMap<String, Arc<ServedModel>>>,
    /// Files that failed to load, so an unchanged broken file is not retried every scan.
    failed: Mutex<HashMap<PathBuf, Stamp>>,
    metrics: Metrics,
}

impl Registry {
    /// An empty registry for `dir`; fails when the folder cannot be read.
    pub fn new(dir: &Path, device: Device, metrics: Metrics) -> Result<Self> {
        std::fs::read_dir(dir).map_err(|source| ServeError::ModelsDir {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Registry {
            dir: dir.to_path_buf(),
            device,
            models: RwLock::new(BTreeMap::new()),
            failed: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// The model served as `name`.
    pub fn get(&self, name: &str) -> Option<Arc<ServedModel>> {
        read(&self.models).get(name).cloned()
    }

    /// All served models, by name.
    pub fn all(&self) -> Vec<Arc<ServedModel>> {
        read(&self.models).values().cloned().collect()
    }

    /// Whether any model is served.
    pub fn is_empty(&self) -> bool {
        read(&self.models).is_empty()
    }

    /// Brings the registry in step with the folder: loads new and changed files, drops removed
    /// ones. `initial` only changes how loads are counted in the metrics.
    pub fn scan(&self, initial: bool) {
        let files = match self.model_files() {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "cannot scan the model folder; keeping the loaded models");
                return;
            }
        };
        let current: HashMap<String, Stamp> = read(&self.models)
            .iter()
            .map(|(n, m)| (n.clone(), m.stamp))
            .collect();
        for (name, (path, stamp)) in &files {
            if current.get(name) == Some(stamp) {
                continue;
            }
            if lock(&self.failed).get(path) == Some(stamp) {
                continue;
            }
            let started = std::time::Instant::now();
            match Predictor::load(path, &self.device) {
                Ok(predictor) => {
                    lock(&self.failed).remove(path);
                    let model = Arc::new(ServedModel {
                        name: name.clone(),
                        path: path.clone(),
                        predictor,
                        stamp: *stamp,
                    });
                    let replaced = write(&self.models).insert(name.clone(), model).is_some();
                    if !initial {
                        self.metrics.reloads.with_label_values(&["ok"]).inc();
                    }
                    tracing::info!(
                        model = %name,
                        file = %path.display(),
                        seconds = started.elapsed().as_secs_f64(),
                        "{}",
                        if replaced { "model reloaded" } else { "model loaded" }
                    );
                }
                Err(e) => {
                    lock(&self.failed).insert(path.clone(), *stamp);
                    self.metrics.reloads.with_label_values(&["failed"]).inc();
                    tracing::warn!(
                        model = %name,
                        file = %path.display(),
                        error = %e,
                        "cannot load the model file; {}",
                        if current.contains_key(name) {
                            "still serving the previous version"
                        } else {
                            "not serving it"
                        }
                    );
                }
            }
        }
        let mut models = write(&self.models);
        models.retain(|name, _| {
            let keep = files.contains_key(name);
            if !keep {
                tracing::info!(model = %name, "model file removed; no longer served");
            }
            keep
        });
        self.metrics.models_loaded.set(models.len() as i64);
    }

    /// `NAME.safetensors` files of the folder (hidden ones, such as `rd train`'s temporary
    /// files, left out) with their stamps.
    fn model_files(&self) -> std::io::Result<BTreeMap<String, (PathBuf, Stamp)>> {
        let mut out = BTreeMap::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let is_model = path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case(MODEL_EXTENSION));
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if !is_model || stem.starts_with('.') || stem.is_empty() {
                continue;
            }
            // A file can vanish between listing and stat; the next scan sees the new state.
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_file() {
                out.insert(stem.to_string(), (path, Stamp::of(&meta)));
            }
        }
        Ok(out)
    }
}

// A panic while a lock is held cannot leave these maps half-updated (every update is one
// insert, remove or retain), so a poisoned lock is used as it is.
fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn lock<T>(l: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(|e| e.into_inner())
}
