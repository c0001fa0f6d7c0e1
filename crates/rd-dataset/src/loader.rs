//! Batches decoded in parallel on a background thread, a bounded number ahead of the consumer.
//!
//! A [`Loader`] is an iterator of `Result<Batch>`. One background thread walks the samples
//! (in order, or shuffled from a seed), decodes each batch's files in parallel with rayon and
//! puts finished batches into a bounded channel, so at most [`LoaderConfig::prefetch`] batches
//! wait in memory. Dropping the loader stops the thread.
//!
//! Bad files: with [`LoaderConfig::skip_bad`] they are recorded ([`Loader::skipped`]) and
//! replaced by the next samples, so batches stay full; without it, the first bad file (in
//! sample order) ends the iteration with its error.

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rayon::prelude::*;

use crate::error::{DatasetError, Result};
use crate::layout::{Label, Sample};
use crate::preprocess::{Preprocess, Processed};
use crate::rng::shuffled_indices;

/// Settings of a [`Loader`].
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    /// Per-sample pipeline (target size, normalisation, decoding limits).
    pub preprocess: Preprocess,
    /// Samples per batch (the last batch may be smaller unless `drop_last`).
    pub batch_size: usize,
    /// Shuffle the samples with this seed; `None` keeps their order.
    pub shuffle_seed: Option<u64>,
    /// Record and skip unreadable files instead of stopping at the first one.
    pub skip_bad: bool,
    /// How many finished batches may wait for the consumer.
    pub prefetch: usize,
    /// Drop a last batch smaller than `batch_size`.
    pub drop_last: bool,
    /// Decode on a private rayon pool of this many threads (`None`: the global pool).
    pub num_threads: Option<usize>,
}

impl LoaderConfig {
    /// In-order batches of `batch_size` images resized to `height x width`, ImageNet-normalised,
    /// two batches of prefetch, stopping at the first bad file.
    pub fn new(height: usize, width: usize, batch_size: usize) -> Self {
        LoaderConfig {
            preprocess: Preprocess::new(height, width),
            batch_size,
            shuffle_seed: None,
            skip_bad: false,
            prefetch: 2,
            drop_last: false,
            num_threads: None,
        }
    }
}

/// A batch of preprocessed samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `N x 3 x H x W` values, channel-first, normalised as configured.
    pub images: Vec<f32>,
    /// `N x H x W` binary masks (0/1); `Some` when any of the loader's samples has a mask
    /// (samples without one get zeros).
    pub masks: Option<Vec<u8>>,
    /// Label of each sample.
    pub labels: Vec<Label>,
    /// Image file of each sample.
    pub paths: Vec<PathBuf>,
    /// Defect type of each sample (`good` for normal ones).
    pub defects: Vec<String>,
    /// Image height `H`.
    pub height: usize,
    /// Image width `W`.
    pub width: usize,
}

impl Batch {
    /// Number of samples `N`.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the batch has no samples (never true for batches a [`Loader`] yields).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// `[N, 3, H, W]`.
    pub fn image_shape(&self) -> [usize; 4] {
        [self.len(), 3, self.height, self.width]
    }

    /// Labels as 0 (normal) / 1 (anomalous).
    pub fn labels_u8(&self) -> Vec<u8> {
        self.labels.iter().map(|l| l.as_u8()).collect()
    }
}

/// A file that was skipped because it could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedFile {
    /// The sample's image (the error may concern its mask; see `reason`).
    pub path: PathBuf,
    /// The error message, naming the file and the problem.
    pub reason: String,
}

/// Iterator of batches loaded on a background thread; see the module docs.
pub struct Loader {
    rx: Option<Receiver<Result<Batch>>>,
    handle: Option<JoinHandle<()>>,
    skipped: Arc<Mutex<Vec<SkippedFile>>>,
    num_samples: usize,
    num_batches: usize,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("num_samples", &self.num_samples)
            .field("num_batches", &self.num_batches)
            .finish_non_exhaustive()
    }
}

impl Loader {
    /// Starts loading `samples` in the background.
    pub fn new(samples: Vec<Sample>, config: LoaderConfig) -> Result<Self> {
        config.preprocess.validate()?;
        if config.batch_size == 0 {
            return Err(DatasetError::InvalidConfig(
                "batch_size must be at least 1".into(),
            ));
        }
        if samples.is_empty() {
            return Err(DatasetError::InvalidConfig(
                "there are no samples to load".into(),
            ));
        }
        let pool = match config.num_threads {
            Some(n) => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(|i| format!("rd-dataset-{i}"))
                    .build()
                    .map_err(|e| DatasetError::LoaderStopped(e.to_string()))?,
            ),
            None => None,
        };
        let num_samples = samples.len();
        let num_batches = if config.drop_last {
            num_samples / config.batch_size
        } else {
            num_samples.div_ceil(config.batch_size)
        };
        let skipped = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = sync_channel(config.prefetch);
        let worker = Worker {
            samples,
            config,
            skipped: Arc::clone(&skipped),
            tx,
        };
        let handle = std::thread::Builder::new()
            .name("rd-dataset-loader".into())
            .spawn(move || match pool {
                Some(pool) => pool.install(|| worker.run()),
                None => worker.run(),
            })
            .map_err(|e| DatasetError::LoaderStopped(e.to_string()))?;
        Ok(Loader {
            rx: Some(rx),
            handle: Some(handle),
            skipped,
            num_samples,
            num_batches,
        })
    }

    /// Files skipped so far (complete once the iterator is exhausted).
    pub fn skipped(&self) -> Vec<SkippedFile> {
        self.skipped.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Number of samples given to the loader.
    pub fn num_samples(&self) -> usize {
        self.num_samples
    }

    /// Number of batches if no file is skipped.
    pub fn num_batches(&self) -> usize {
        self.num_batches
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        let rx = self.rx.as_ref()?;
        match rx.recv() {
            Ok(item) => {
                if item.is_err() {
                    self.rx = None;
                }
                Some(item)
            }
            Err(_) => {
                // The worker is gone: either it finished, or it panicked.
                self.rx = None;
                let handle = self.handle.take()?;
                match handle.join() {
                    Ok(()) => None,
                    Err(panic) => {
                        let msg = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "unknown panic".into());
                        Some(Err(DatasetError::LoaderStopped(msg)))
                    }
                }
            }
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the channel makes the worker's next send fail, so it stops.
        self.rx = None;
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

struct Worker {
    samples: Vec<Sample>,
    config: LoaderConfig,
    skipped: Arc<Mutex<Vec<SkippedFile>>>,
    tx: SyncSender<Result<Batch>>,
}

impl Worker {
    fn run(self) {
        let n = self.samples.len();
        let bs = self.config.batch_size;
        let order = match self.config.shuffle_seed {
            Some(seed) => shuffled_indices(n, seed),
            None => (0..n).collect(),
        };
        let with_masks = self.samples.iter().any(|s| s.mask.is_some());
        let pre = self.config.preprocess;
        let mut pending: Vec<(usize, Processed)> = Vec::with_capacity(bs);
        for chunk in order.chunks(bs) {
            let results: Vec<Result<Processed>> = chunk
                .par_iter()
                .map(|&i| pre.sample(&self.samples[i], with_masks))
                .collect();
            for (&i, result) in chunk.iter().zip(results) {
                match result {
                    Ok(p) => pending.push((i, p)),
                    Err(e) if self.config.skip_bad => {
                        if let Ok(mut s) = self.skipped.lock() {
                            s.push(SkippedFile {
                                path: self.samples[i].image.clone(),
                                reason: e.to_string(),
                            });
                        }
                    }
                    Err(e) => {
                        let _ = self.tx.send(Err(e));
                        return;
                    }
                }
            }
            while pending.len() >= bs {
                let rest = pending.split_off(bs);
                let full = std::mem::replace(&mut pending, rest);
                if self.tx.send(Ok(self.assemble(full, with_masks))).is_err() {
                    return; // The consumer is gone.
                }
            }
        }
        if !pending.is_empty() && !self.config.drop_last {
            let _ = self.tx.send(Ok(self.assemble(pending, with_masks)));
        }
    }

    fn assemble(&self, items: Vec<(usize, Processed)>, with_masks: bool) -> Batch {
        let (h, w) = (self.config.preprocess.height, self.config.preprocess.width);
        let mut images = Vec::with_capacity(items.len() * 3 * h * w);
        let mut masks = with_masks.then(|| Vec::with_capacity(items.len() * h * w));
        let mut labels = Vec::with_capacity(items.len());
        let mut paths = Vec::with_capacity(items.len());
        let mut defects = Vec::with_capacity(items.len());
        for (i, p) in items {
            images.extend_from_slice(&p.image.data);
            if let (Some(all), Some(m)) = (masks.as_mut(), p.mask.as_ref()) {
                all.extend_from_slice(&m.data);
            }
            let s = &self.samples[i];
            labels.push(s.label);
            paths.push(s.image.clone());
            defects.push(s.defect.clone());
        }
        Batch {
            images,
            masks,
            labels,
            paths,
            defects,
            height: h,
            width: w,
        }
    }
}
