//! Datasets and image I/O for Reverse Distillation.
//!
//! This crate turns image files into plain `f32` buffers; the model crates turn them into
//! tensors. It knows nothing about Candle.
//!
//! * [`image`]: decode PNG, JPEG, BMP and TIFF (grayscale, RGBA, 16-bit, palette) into RGB `f32`
//!   in `[0, 1]`, channel-first (EXIF orientation ignored, as anomalib does, unless asked for);
//!   absurd sizes are refused from the header.
//! * [`resize`]: anomalib's default resize (torchvision `Resize(antialias=True)`, i.e. PyTorch's
//!   antialiased bilinear), and torch `nearest` for masks.
//! * [`normalize`]: per-channel `(x - mean) / std` ([`Normalization::IMAGENET`]).
//! * [`preprocess`]: the three steps above for one sample, with mask checks.
//! * [`layout`]: MVTec AD, VisA (raw and converted) and plain folders, as lists of [`Sample`]s;
//!   masks are optional (classification-only data).
//! * [`loader`]: batches decoded in parallel on a background thread, with bounded prefetch,
//!   seeded shuffling and optional skipping of bad files.
//! * [`synthetic`]: a deterministic MVTec-layout dataset with exact defect masks.
//!
//! Every failure is a [`DatasetError`] whose message names the file and says what to do.
//!
//! # Example
//!
//! ```no_run
//! use rd_dataset::{layout::mvtec, Loader, LoaderConfig};
//!
//! # fn main() -> Result<(), rd_dataset::DatasetError> {
//! let splits = mvtec::load("data/mvtec".as_ref(), "bottle")?;
//! let mut config = LoaderConfig::new(256, 256, 16);
//! config.shuffle_seed = Some(42);
//! for batch in Loader::new(splits.train, config)? {
//!     let batch = batch?;
//!     assert_eq!(batch.images.len(), batch.len() * 3 * 256 * 256);
//! }
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod error;
pub mod image;
pub mod layout;
pub mod loader;
pub mod normalize;
pub mod preprocess;
pub mod resize;
pub mod rng;
pub mod synthetic;

pub use crate::error::{DatasetError, Result};
pub use crate::image::{
    load_mask, load_rgb, LoadOptions, Mask, RgbImage32, DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS,
};
pub use crate::layout::{Label, Sample, Splits};
pub use crate::loader::{Batch, Loader, LoaderConfig, SkippedFile};
pub use crate::normalize::Normalization;
pub use crate::preprocess::{Preprocess, Processed};
pub use crate::resize::{resize_bilinear_aa, resize_mask_nearest};
pub use crate::synthetic::{DefectKind, SyntheticCategory, SyntheticConfig, SyntheticSummary};
