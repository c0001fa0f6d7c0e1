//! Errors of the teacher crate, each saying what went wrong and what to do.

use std::path::PathBuf;

/// Anything that can go wrong building or running the teacher or loading weights.
#[derive(Debug, thiserror::Error)]
pub enum BackboneError {
    /// The backbone name is not one we know.
    #[error(
        "unknown backbone `{0}`: expected one of resnet18, resnet34, resnet50, resnet101, \
         wide_resnet50_2, wide_resnet101_2 (optionally with a timm tag, e.g. wide_resnet50_2.tv_in1k)"
    )]
    UnknownBackbone(String),

    /// An input image size the encoder and decoder cannot line up on.
    #[error(
        "input size {height}x{width} is not supported: height and width must be multiples of 32 \
         (e.g. 256x256 or 224x224) so that encoder and decoder feature maps line up"
    )]
    InputSize {
        /// Requested height.
        height: usize,
        /// Requested width.
        width: usize,
    },

    /// A weights file could not be opened or parsed as safetensors.
    #[error("cannot read weights file {path}: {reason}")]
    WeightsFile {
        /// The file.
        path: PathBuf,
        /// What went wrong, in words.
        reason: String,
    },

    /// A tensor the model needs is absent from the weights.
    #[error("weights file {path} has no tensor `{name}` (needed as `{canonical}`){hint}")]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The name looked up in the file.
        name: String,
        /// The model's own name for it.
        canonical: String,
        /// A hint on the likely cause, possibly empty.
        hint: String,
    },

    /// A tensor in the weights has the wrong shape for this architecture.
    #[error(
        "tensor `{name}` in {path} has shape {found:?} but the model needs {expected:?}: \
         the file is for another backbone or variant"
    )]
    ShapeMismatch {
        /// The file.
        path: PathBuf,
        /// The tensor's name in the file.
        name: String,
        /// The shape in the file.
        found: Vec<usize>,
        /// The shape the model needs.
        expected: Vec<usize>,
    },

    /// The weights hold tensors this model has no place for.
    #[error("weights file {path} has {count} unexpected tensor(s) for this model, e.g. `{example}`{hint}")]
    UnexpectedTensors {
        /// The file.
        path: PathBuf,
        /// How many.
        count: usize,
        /// The first one.
        example: String,
        /// A hint on the likely cause, possibly empty.
        hint: String,
    },

    /// No teacher weights were found anywhere we looked.
    #[error(
        "no pretrained weights for {id}: wanted `model.safetensors` from the Hugging Face repository `{repo}`; \
         looked in the cache at {cache} (not there); {download}. \
         Pass a local file instead (e.g. `--teacher-weights model.safetensors`), or fetch it on a \
         machine with internet with `cargo xtask download weights {id}` and copy the cache folder"
    )]
    WeightsNotFound {
        /// The backbone and tag.
        id: String,
        /// The repository id, `timm/<model>.<tag>`.
        repo: String,
        /// The cache folder searched.
        cache: PathBuf,
        /// What happened to the download attempt.
        download: String,
    },

    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result with [`BackboneError`].
pub type Result<T, E = BackboneError> = std::result::Result<T, E>;
