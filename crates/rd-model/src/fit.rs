//! Training a Reverse Distillation model on a list of images: epochs of seeded, shuffled batches
//! through the prefetching loader, checkpoints that can always be resumed, a JSON-lines log,
//! progress reports after every step ([`Fit::run_with`]) and a clean stop on Ctrl-C.
//!
//! * **Order.** Epoch `e` (0-based) shuffles the samples with [`epoch_seed`]`(seed, e)`, a
//!   function of the seed and the epoch only. The last, smaller batch is kept, as in anomalib and
//!   the official code (see [`crate::batches`] for the one-image-batch rule at 32×32).
//! * **Checkpoints** ([`TrainConfig::checkpoint`]) are model files ([`ReverseDistillation::save`],
//!   written atomically) with `ModelMeta::training` filled and the optimiser state as extra
//!   tensors; they are written every [`TrainConfig::checkpoint_every`] epochs, at the end, on an
//!   interrupt and, when possible, before returning an error. A run killed at any moment loses
//!   at most the steps since the last checkpoint and never leaves a torn file.
//! * **Resume** ([`Fit::resume`]) restores weights, BatchNorm statistics, optimiser moments,
//!   step counts and any unfinished epoch (see [`crate::checkpoint`]), so the final weights are
//!   bit-identical to an uninterrupted run with the same seed and data on the same device.
//! * **Interrupt** ([`Interrupt`]): the flag is checked after every step and before every
//!   epoch; the run then saves the current state as a mid-epoch checkpoint and returns
//!   [`FitOutcome::Interrupted`] instead of exiting the process.
//!
//! Training invalidates thresholds: the post-processing statistics in the metadata are cleared,
//! to be fitted again on validation data (see [`crate::evaluate`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use candle_core::{Device, Tensor};
use rd_dataset::{Loader, LoaderConfig, Normalization, Sample, SkippedFile};

use crate::batches::{batch_to_tensor, single_image_is_degenerate, EpochBatches};
use crate::checkpoint::{EpochProgress, PARTIAL_EPOCH_TENSOR};
use crate::fit_log::{EpochRecord, JsonLog};
use crate::teacher_cache::TeacherCache;
use crate::{
    AdamConfig, Interrupt, ModelError, ModelMeta, PostStats, Progress, Result, ReverseDistillation,
    Trainer, TrainingSummary,
};

pub use crate::batches::epoch_seed;

/// How to train.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Epochs to reach in total (a resumed run counts the epochs its checkpoint already did).
    pub epochs: usize,
    /// Also stop after this many optimiser steps in total, even mid-epoch (Lightning's
    /// `max_steps`); `None`: no step limit.
    pub max_steps: Option<usize>,
    /// Images per step.
    pub batch_size: usize,
    /// Optimiser settings ([`AdamConfig::paper`] by default; [`AdamConfig::anomalib`] for
    /// anomalib's betas).
    pub adam: AdamConfig,
    /// Seed of the per-epoch shuffles (the model's initialisation seed is the caller's).
    pub seed: u64,
    /// The checkpoint file, rewritten as training goes.
    pub checkpoint: PathBuf,
    /// Write a checkpoint every this many epochs (0: only at the end, on interrupt or error).
    pub checkpoint_every: usize,
    /// Append one JSON line per epoch ([`EpochRecord`]) to this file.
    pub log: Option<PathBuf>,
    /// Skip unreadable images (reported in [`FitReport::skipped`]) instead of stopping.
    pub skip_bad: bool,
    /// How the run learns it should stop early.
    pub interrupt: Interrupt,
    /// Decode images on this many threads (`None`: rayon's global pool).
    pub loader_threads: Option<usize>,
    /// Let a new run ([`Fit::new`]) replace an existing file at `checkpoint`.
    pub overwrite: bool,
    /// Keep up to this many bytes of the frozen teacher's features of the training images from
    /// their first epoch for the later ones ([`TrainConfig::DEFAULT_TEACHER_CACHE`]; 0: recompute
    /// them every epoch). The steps are bit-identical either way; the cache saves the teacher's
    /// forward pass at the cost of this much memory, and assumes the images do not change
    /// during the run.
    pub teacher_cache: usize,
}

impl TrainConfig {
    /// The official recipe (SPEC §4): 200 epochs, batch 16, Adam lr 0.005 with betas
    /// (0.5, 0.999), shuffle seed 42, a checkpoint every 10 epochs, stopping at the first bad
    /// image, Ctrl-C handled, never overwriting an existing file.
    pub fn new(checkpoint: impl Into<PathBuf>) -> Self {
        TrainConfig {
            epochs: 200,
            max_steps: None,
            batch_size: 16,
            adam: AdamConfig::paper(),
            seed: 42,
            checkpoint: checkpoint.into(),
            checkpoint_every: 10,
            log: None,
            skip_bad: false,
            interrupt: Interrupt::CtrlC,
            loader_threads: None,
            overwrite: false,
            teacher_cache: Self::DEFAULT_TEACHER_CACHE,
        }
    }

    /// The default [`TrainConfig::teacher_cache`]: 512 MiB, the features of about 1 100 images
    /// for resnet18 at 128² or 290 for wide_resnet50_2 (a quarter of that at 256²).
    pub const DEFAULT_TEACHER_CACHE: usize = 512 << 20;

    /// Checks the settings, and that the checkpoint's folder is writable, before any work.
    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Training(m));
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if self.max_steps == Some(0) {
            return bad("max_steps must be at least 1 (or unset)".into());
        }
        if self.batch_size == 0 {
            return bad("batch size must be at least 1".into());
        }
        let a = self.adam;
        let fine = a.lr.is_finite()
            && a.lr > 0.0
            && (0.0..1.0).contains(&a.beta1)
            && (0.0..1.0).contains(&a.beta2)
            && a.eps.is_finite()
            && a.eps > 0.0
            && a.weight_decay.is_finite()
            && a.weight_decay >= 0.0;
        if !fine {
            return bad(format!(
                "invalid Adam settings {a:?}: lr and eps must be positive, betas in [0, 1), \
                 weight decay at least 0"
            ));
        }
        check_writable(&self.checkpoint)
    }
}

/// Fails early when no file can be created next to `path`.
fn check_writable(path: &Path) -> Result<()> {
    let err = |reason: String| ModelError::Write {
        path: path.to_path_buf(),
        reason,
    };
    let name = path
        .file_name()
        .ok_or_else(|| err("the checkpoint path has no file name".into()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(err(format!(
            "its folder {} does not exist; create it first",
            dir.display()
        )));
    }
    let probe = dir.join(format!(
        ".{}.probe-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| err(format!("cannot create files in {}: {e}", dir.display())))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// How a call to [`Fit::run`] ended (errors aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FitOutcome {
    /// All epochs are done.
    Completed,
    /// [`TrainConfig::max_steps`] was reached.
    StepLimit,
    /// The interrupt flag was raised; the state is saved and can be resumed.
    Interrupted,
}

/// What a call to [`Fit::run`] did.
#[derive(Debug, Clone)]
pub struct FitReport {
    /// How it ended.
    pub outcome: FitOutcome,
    /// Epochs completed in total (resumed ones included).
    pub epochs_done: usize,
    /// Steps already taken in the next, unfinished epoch (0 at an epoch boundary).
    pub partial_steps: usize,
    /// Optimiser steps taken in total.
    pub steps: usize,
    /// Mean loss of the last completed epoch.
    pub final_loss: Option<f64>,
    /// The checkpoint written last by this call (`None` if there was nothing new to save).
    pub checkpoint: Option<PathBuf>,
    /// One record per epoch run by this call (an unfinished one last, `complete: false`).
    pub history: Vec<EpochRecord>,
    /// Images skipped as unreadable (with [`TrainConfig::skip_bad`]), once each.
    pub skipped: Vec<SkippedFile>,
    /// Wall-clock seconds of this call.
    pub seconds: f64,
}

/// A training run: the model, its optimiser and how far it got.
#[derive(Debug)]
pub struct Fit {
    trainer: Trainer,
    meta: ModelMeta,
    data: String,
    config: TrainConfig,
    epochs_done: usize,
    steps: usize,
    partial: EpochProgress,
    last_loss: Option<f64>,
    /// (epochs, partial steps) of the state last saved, or the starting state of a new run.
    clean: (usize, usize),
    /// The last checkpoint written or resumed from, with its (epochs, partial steps).
    last_checkpoint: Option<(PathBuf, usize, usize)>,
    /// The teacher's features of the training images seen so far (within the budget).
    teacher: TeacherCache,
}

impl Fit {
    /// Starts a new run of `model` described by `meta` (its architecture must match the
    /// model's) on training data described by `data` (for the record, e.g. `mvtec/bottle`).
    pub fn new(
        model: ReverseDistillation,
        mut meta: ModelMeta,
        data: impl Into<String>,
        config: TrainConfig,
    ) -> Result<Self> {
        config.validate()?;
        if meta.config() != *model.config() {
            return Err(ModelError::Config(format!(
                "the metadata describes {:?} but the model is {:?}",
                meta.config(),
                model.config()
            )));
        }
        if !config.overwrite && config.checkpoint.exists() {
            return Err(ModelError::Training(format!(
                "{} already exists (a model or checkpoint of an earlier run); resume from it, \
                 choose another checkpoint path, or allow overwriting",
                config.checkpoint.display()
            )));
        }
        meta.post = PostStats::default();
        meta.training = None;
        Ok(Fit {
            trainer: Trainer::new(model, config.adam),
            meta,
            data: data.into(),
            epochs_done: 0,
            steps: 0,
            partial: EpochProgress::default(),
            last_loss: None,
            clean: (0, 0),
            last_checkpoint: None,
            teacher: TeacherCache::new(config.teacher_cache),
            config,
        })
    }

    /// Continues the run saved in `checkpoint` (loaded on `device`) with `config`, which must
    /// keep the checkpoint's batch size and seed; `config.epochs` is the new total. A changed
    /// Adam setting applies from here on (the saved moments are kept).
    pub fn resume(checkpoint: &Path, device: &Device, config: TrainConfig) -> Result<Self> {
        config.validate()?;
        let loaded = ReverseDistillation::load(checkpoint, device)?;
        let file_err = |reason: String| ModelError::ModelFile {
            path: checkpoint.to_path_buf(),
            reason,
        };
        let mut meta = loaded.meta;
        let training = meta.training.take().ok_or_else(|| {
            file_err(
                "it holds no training record, so it is not a training checkpoint; start a new \
                 run instead"
                    .into(),
            )
        })?;
        if loaded.optimizer_state.is_empty() && training.steps > 0 {
            return Err(file_err(
                "it holds no optimiser state (an exported model, not a training checkpoint); \
                 resume from the checkpoint file written during training"
                    .into(),
            ));
        }
        if training.batch_size != config.batch_size || training.seed != config.seed {
            return Err(file_err(format!(
                "it was trained with batch size {} and seed {}, not {} and {}; resume with the \
                 same settings or start a new run",
                training.batch_size, training.seed, config.batch_size, config.seed
            )));
        }
        let partial = match loaded.optimizer_state.get(PARTIAL_EPOCH_TENSOR) {
            Some(t) => EpochProgress::from_tensor(t)?,
            None => EpochProgress::default(),
        };
        let mut trainer = Trainer::new(loaded.model, config.adam);
        trainer
            .optimizer_mut()
            .load_state(&loaded.optimizer_state)
            .map_err(|e| file_err(format!("its optimiser state does not fit the model: {e}")))?;
        meta.post = PostStats::default();
        Ok(Fit {
            trainer,
            meta,
            data: training.data,
            teacher: TeacherCache::new(config.teacher_cache),
            config,
            epochs_done: training.epochs,
            steps: training.steps,
            partial,
            last_loss: (training.epochs > 0).then_some(f64::from(training.final_loss)),
            clean: (training.epochs, partial.steps),
            last_checkpoint: Some((checkpoint.to_path_buf(), training.epochs, partial.steps)),
        })
    }

    /// The model being trained.
    pub fn model(&self) -> &ReverseDistillation {
        self.trainer.model()
    }

    /// The trainer (model and optimiser).
    pub fn trainer(&self) -> &Trainer {
        &self.trainer
    }

    /// Epochs completed so far.
    pub fn epochs_done(&self) -> usize {
        self.epochs_done
    }

    /// Optimiser steps taken so far.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// The settings.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The metadata as a checkpoint would record it now (training summary filled, no
    /// post-processing statistics).
    pub fn meta(&self) -> ModelMeta {
        let a = self.trainer.optimizer().config();
        let final_loss = self
            .last_loss
            .or_else(|| self.partial.means().map(|m| m.0))
            .unwrap_or(0.0);
        let mut meta = self.meta.clone();
        meta.training = Some(TrainingSummary {
            data: self.data.clone(),
            epochs: self.epochs_done,
            steps: self.steps,
            batch_size: self.config.batch_size,
            seed: self.config.seed,
            final_loss: final_loss as f32,
            adam: [a.lr, a.beta1, a.beta2, a.eps, a.weight_decay],
            validation: String::new(),
            metrics: BTreeMap::new(),
        });
        meta
    }

    /// Ends the run, returning the model and its metadata.
    pub fn into_parts(self) -> (ReverseDistillation, ModelMeta) {
        let meta = self.meta();
        (self.trainer.into_model(), meta)
    }

    /// Writes the current state to the checkpoint file (atomically).
    pub fn save_checkpoint(&mut self) -> Result<()> {
        let mut extra = self.trainer.optimizer().state_tensors()?;
        if self.partial.steps > 0 {
            extra.push((PARTIAL_EPOCH_TENSOR.to_string(), self.partial.to_tensor()?));
        }
        self.trainer
            .model()
            .save(&self.config.checkpoint, &self.meta(), &extra)?;
        self.clean = (self.epochs_done, self.partial.steps);
        self.last_checkpoint = Some((
            self.config.checkpoint.clone(),
            self.epochs_done,
            self.partial.steps,
        ));
        Ok(())
    }

    /// Whether the state differs from the last checkpoint written or resumed from.
    fn dirty(&self) -> bool {
        self.clean != (self.epochs_done, self.partial.steps)
    }

    /// `err`, after saving the progress when there is unsaved progress (the state must be
    /// consistent: no half-applied optimiser step).
    fn rescue(&mut self, err: ModelError) -> ModelError {
        if !self.dirty() {
            return err;
        }
        match self.save_checkpoint() {
            Ok(()) => ModelError::Stopped {
                source: Box::new(err),
                checkpoint: self.config.checkpoint.clone(),
                progress: format!(
                    "{} epochs and {} steps",
                    self.epochs_done, self.partial.steps
                ),
            },
            Err(save) => {
                ModelError::Training(format!("{err}; saving the progress also failed: {save}"))
            }
        }
    }

    /// The loader settings of epoch `epoch`.
    fn loader_config(&self, epoch: usize) -> LoaderConfig {
        let (h, w) = self.trainer.model().config().image_size;
        let mut c = LoaderConfig::new(h, w, self.config.batch_size);
        c.preprocess.load.apply_orientation = self.meta.exif_orientation;
        let n = self.meta.normalization;
        c.preprocess.normalization = Some(Normalization {
            mean: n.mean,
            std: n.std,
        });
        c.shuffle_seed = Some(epoch_seed(self.config.seed, epoch));
        c.skip_bad = self.config.skip_bad;
        c.num_threads = self.config.loader_threads;
        c
    }

    /// Whether the step limit is reached.
    fn at_step_limit(&self) -> bool {
        self.config.max_steps.is_some_and(|m| self.steps >= m)
    }

    /// Forward, backward, loss check and Adam on one batch ([`Trainer::compute`] and
    /// [`Trainer::apply`], as the parity tests drive them); returns the loss and its terms.
    fn step(&mut self, x: &Tensor, paths: &[PathBuf], epoch: usize) -> Result<(f32, [f32; 3])> {
        // The loss is looked at before anything is updated: a non-finite one stops the run
        // with the model as the last step left it.
        let mut seen = None;
        let mut check = |loss: &crate::Loss| -> Result<()> {
            let value = loss.value()?;
            seen = Some((value, loss.term_values()?));
            if value.is_finite() {
                Ok(())
            } else {
                Err(ModelError::Training("the loss is not finite".into()))
            }
        };
        let stepped = match self.teacher.features(&self.trainer, x, paths) {
            Ok(teacher) => self.trainer.step_from_teacher(teacher, &mut check),
            Err(e) => Err(e),
        };
        match (stepped, seen) {
            (Ok(_), Some(seen)) => Ok(seen),
            (Ok(_), None) => Err(ModelError::Training("the step reported no loss".into())),
            // Failed before the update began: the state is whole, save it.
            (Err(e), None) => Err(self.rescue(e)),
            (Err(_), Some((value, _))) if !value.is_finite() => Err(self.diverged(value, epoch)),
            // A failure inside the update may leave it half-applied: no rescue checkpoint then.
            (Err(e), Some(_)) => Err(e),
        }
    }

    /// The error for a loss that became `value` (not finite) in `epoch`.
    fn diverged(&self, value: f32, epoch: usize) -> ModelError {
        let last = match &self.last_checkpoint {
            Some((path, e, s)) => format!(
                "the checkpoint {} ({e} epochs{}) predates it",
                path.display(),
                if *s > 0 {
                    format!(" + {s} steps")
                } else {
                    String::new()
                }
            ),
            None => "no checkpoint was written yet".into(),
        };
        ModelError::Training(format!(
            "the loss became {value} in epoch {} (step {}): training diverged; {last}; lower the \
             learning rate and resume from a checkpoint or start again",
            epoch + 1,
            self.steps + 1
        ))
    }

    /// Trains on `samples` until the configured epochs (or steps) are done or the interrupt
    /// flag is raised; see the module docs.
    pub fn run(&mut self, samples: &[Sample]) -> Result<FitReport> {
        self.run_with(samples, &mut |_| {})
    }

    /// [`Fit::run`], calling `progress` after every optimiser step.
    pub fn run_with(
        &mut self,
        samples: &[Sample],
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<FitReport> {
        let started = Instant::now();
        if samples.is_empty() {
            return Err(ModelError::Training(
                "there are no training images; check the dataset folder".into(),
            ));
        }
        let (h, w) = self.trainer.model().config().image_size;
        let fold = single_image_is_degenerate(h, w);
        if fold && (self.config.batch_size == 1 || samples.len() == 1) {
            return Err(ModelError::Training(format!(
                "at {h}x{w}, BatchNorm needs at least two images per step; use a batch size of \
                 at least 2 (and at least 2 images) or a larger image size"
            )));
        }
        let flag = self.config.interrupt.flag()?;
        let mut log = self.config.log.as_deref().map(JsonLog::open).transpose()?;
        let planned = self.planned_steps(samples.len(), fold);
        let mut done = 0u64;
        let device = self.trainer.model().student_params().device().clone();
        let mut history = Vec::new();
        let mut skipped: BTreeMap<PathBuf, String> = BTreeMap::new();
        let mut outcome = FitOutcome::Completed;
        let mut written = None;

        while self.epochs_done < self.config.epochs {
            if self.at_step_limit() {
                outcome = FitOutcome::StepLimit;
                break;
            }
            if flag.load(Ordering::SeqCst) {
                outcome = FitOutcome::Interrupted;
                break;
            }
            let epoch = self.epochs_done;
            let loader = Loader::new(samples.to_vec(), self.loader_config(epoch))
                .map_err(|e| self.rescue(e.into()))?;
            let mut batches = EpochBatches::new(loader, fold);
            let already = self.partial.steps;
            let before = self.partial;
            let t0 = Instant::now();
            let mut index = 0;
            let mut stop = None;
            for item in batches.by_ref() {
                let mut batch = item.map_err(|e| self.rescue(e))?;
                index += 1;
                if index <= already {
                    continue; // trained on before the checkpoint this run resumed from
                }
                let n = batch.len();
                let x = batch_to_tensor(&mut batch, &device).map_err(|e| self.rescue(e))?;
                let (loss, terms) = self.step(&x, &batch.paths, epoch)?;
                self.partial.add(n, loss, terms);
                self.steps += 1;
                done += 1;
                progress(&Progress {
                    done,
                    total: planned,
                    epoch: Some((epoch + 1, self.config.epochs)),
                    loss: self.partial.means().map(|m| m.0),
                    images_per_sec: (self.partial.images - before.images) as f64
                        / t0.elapsed().as_secs_f64().max(1e-9),
                });
                if flag.load(Ordering::SeqCst) {
                    stop = Some(FitOutcome::Interrupted);
                } else if self.at_step_limit() {
                    stop = Some(FitOutcome::StepLimit);
                }
                if stop.is_some() {
                    break;
                }
            }
            for s in batches.loader().skipped() {
                skipped.entry(s.path).or_insert(s.reason);
            }
            drop(batches);
            if stop.is_none() && index < already {
                return Err(ModelError::Training(format!(
                    "epoch {} now has {index} batches but the checkpoint had already trained on \
                     {already}: the training images changed since; resume with the same images \
                     or start a new run",
                    epoch + 1
                )));
            }
            let record = self.record(epoch, &before, t0, stop.is_none());
            if stop.is_none() {
                self.epochs_done += 1;
                self.last_loss = self.partial.means().map(|m| m.0);
                self.partial = EpochProgress::default();
                let every = self.config.checkpoint_every;
                let due = (every > 0 && self.epochs_done.is_multiple_of(every))
                    || self.epochs_done == self.config.epochs;
                if due {
                    self.save_checkpoint().map_err(|e| self.rescue(e))?;
                    written = Some(self.config.checkpoint.clone());
                }
            }
            if let Some(log) = log.as_mut() {
                log.write(&record).map_err(|e| self.rescue(e))?;
            }
            history.push(record);
            if let Some(s) = stop {
                outcome = s;
                break;
            }
        }
        if self.dirty() {
            self.save_checkpoint()?;
            written = Some(self.config.checkpoint.clone());
        }
        Ok(FitReport {
            outcome,
            epochs_done: self.epochs_done,
            partial_steps: self.partial.steps,
            steps: self.steps,
            final_loss: self.last_loss,
            checkpoint: written,
            history,
            skipped: skipped
                .into_iter()
                .map(|(path, reason)| SkippedFile { path, reason })
                .collect(),
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Steps this call expects to run (for the progress reports).
    fn planned_steps(&self, samples: usize, fold: bool) -> u64 {
        let bs = self.config.batch_size;
        let rem = samples % bs;
        let per_epoch = samples / bs + usize::from(rem > 0 && !(fold && rem == 1));
        let epochs_left = self.config.epochs.saturating_sub(self.epochs_done);
        let mut steps = epochs_left
            .saturating_mul(per_epoch)
            .saturating_sub(self.partial.steps);
        if let Some(m) = self.config.max_steps {
            steps = steps.min(m.saturating_sub(self.steps));
        }
        steps as u64
    }

    /// The log record of epoch `epoch` as it stands.
    fn record(
        &self,
        epoch: usize,
        before: &EpochProgress,
        t0: Instant,
        complete: bool,
    ) -> EpochRecord {
        let (loss, loss_terms) = self.partial.means().unwrap_or((f64::NAN, [f64::NAN; 3]));
        let seconds = t0.elapsed().as_secs_f64();
        let images = self.partial.images - before.images;
        EpochRecord {
            epoch: epoch + 1,
            step: self.steps,
            loss,
            loss_terms,
            images: self.partial.images,
            images_per_sec: images as f64 / seconds.max(1e-9),
            seconds,
            lr: self.trainer.optimizer().config().lr,
            complete,
        }
    }
}
