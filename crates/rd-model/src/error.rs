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
}

/// Result with [`ModelError`].
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl From<BackboneError> for ModelError {
    fn from(e: BackboneError) -> Self {
        ModelError::Backbone(Box::new(e))
    }
}
