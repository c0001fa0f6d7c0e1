//! Errors of the model crate.

use rd_backbone::BackboneError;

/// Anything that can go wrong building, loading, running or training the model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Teacher construction or weight loading failed.
    #[error(transparent)]
    Backbone(Box<BackboneError>),

    /// The parts do not fit together (e.g. a teacher of another backbone).
    #[error("invalid model configuration: {0}")]
    Config(String),

    /// A model file is unusable.
    #[error("cannot use model file {path}: {reason}")]
    ModelFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong, in words.
        reason: String,
    },

    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// The device was asked for, but this program was compiled without its Candle backend.
    #[error(
        "this program was built without {name}: rebuild it with `--features {feature}` \
         (the README's \"GPU\" section says how)"
    )]
    DeviceNotBuilt {
        /// The backend, e.g. `CUDA`.
        name: &'static str,
        /// The Cargo feature that compiles it in.
        feature: &'static str,
    },

    /// The device is compiled in but cannot be opened (no GPU, no driver, a bad index).
    #[error("cannot open {device} (is there such a GPU, with its driver?): {reason}")]
    DeviceOpen {
        /// The device asked for.
        device: crate::DeviceSpec,
        /// Candle's reason, without the backtrace it adds when `RUST_BACKTRACE` is set.
        reason: String,
    },

    /// Images could not be listed, read or decoded.
    #[error(transparent)]
    Dataset(Box<rd_dataset::DatasetError>),

    /// A metric or post-processing statistic could not be computed from the collected outputs.
    #[error("cannot compute metrics: {0}")]
    Metrics(#[from] rd_metrics::MetricsError),

    /// Training cannot start or go on (invalid settings, a checkpoint that does not fit, a
    /// diverging loss); the message says what to change.
    #[error("training: {0}")]
    Training(String),

    /// A file besides the model file (e.g. the training log) could not be written.
    #[error("cannot write {path}: {reason}")]
    Write {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },

    /// Training stopped on an error after saving its progress to a checkpoint.
    #[error(
        "{source}\ntraining progress ({progress}) is saved in {checkpoint}; fix the problem and \
         resume from that file"
    )]
    Stopped {
        /// Why training stopped.
        source: Box<ModelError>,
        /// The checkpoint holding the progress.
        checkpoint: std::path::PathBuf,
        /// What the checkpoint holds, in words (e.g. `3 epochs and 5 steps`).
        progress: String,
    },
}

/// Result with [`ModelError`].
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl From<BackboneError> for ModelError {
    fn from(e: BackboneError) -> Self {
        ModelError::Backbone(Box::new(e))
    }
}

impl From<rd_dataset::DatasetError> for ModelError {
    fn from(e: rd_dataset::DatasetError) -> Self {
        ModelError::Dataset(Box::new(e))
    }
}
