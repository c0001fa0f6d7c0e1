//! The crate's error type.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = DatasetError> = std::result::Result<T, E>;

/// Everything that can go wrong while finding, reading or writing dataset files.
///
/// Every variant that concerns a file names it, and the message says what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatasetError {
    /// A file or folder could not be read or written.
    #[error("cannot access {}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A file has zero bytes.
    #[error("{} is empty (0 bytes): copy it again or remove it from the dataset", path.display())]
    EmptyFile {
        /// The empty file.
        path: PathBuf,
    },

    /// A file's content is not a PNG, JPEG, BMP or TIFF image.
    #[error(
        "{} is not a PNG, JPEG, BMP or TIFF image (its first bytes match none of these formats): \
         replace it with a real image or remove it from the dataset",
        path.display()
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },

    /// The image decoder rejected the file (truncated, corrupt or an unsupported variant).
    #[error("cannot decode {}: {message}; the file is probably truncated or corrupt, re-export or remove it", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        message: String,
    },

    /// The image header announces more pixels than allowed; nothing was allocated.
    #[error(
        "{} claims to be {width}x{height} pixels, more than the limit of {max_pixels} pixels: \
         downscale the image or raise `LoadOptions::max_pixels`",
        path.display()
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// The configured limit.
        max_pixels: u64,
    },

    /// A mask has a different size from its image.
    #[error(
        "mask {} is {mask_width}x{mask_height} but its image {} is {image_width}x{image_height}: \
         masks must have exactly the image's size",
        mask.display(),
        image.display()
    )]
    MaskSizeMismatch {
        /// The image.
        image: PathBuf,
        /// The mask.
        mask: PathBuf,
        /// Image width.
        image_width: u32,
        /// Image height.
        image_height: u32,
        /// Mask width.
        mask_width: u32,
        /// Mask height.
        mask_height: u32,
    },

    /// A defective image has no ground-truth mask.
    #[error(
        "defective image {} has no mask: expected {}; add the mask or move the image out of the test set",
        image.display(),
        expected.display()
    )]
    MissingMask {
        /// The defective image.
        image: PathBuf,
        /// Where its mask was looked for.
        expected: PathBuf,
    },

    /// Sorted images and masks do not pair up (the image stem is not part of the mask stem).
    #[error(
        "image {} is paired with mask {} by sorted order, but the mask's name does not contain \
         the image's name: rename the masks so that `NNN.png` goes with `NNN_mask.png`",
        image.display(),
        mask.display()
    )]
    MaskPairing {
        /// The image.
        image: PathBuf,
        /// The mask it was paired with.
        mask: PathBuf,
    },

    /// A mask folder holds masks that belong to no image.
    #[error(
        "{} holds {count} mask(s) with no matching image, first {}: remove them or add their images",
        dir.display(),
        first.display()
    )]
    UnpairedMasks {
        /// The mask folder.
        dir: PathBuf,
        /// How many masks are unpaired.
        count: usize,
        /// The first unpaired mask.
        first: PathBuf,
    },

    /// An expected folder does not exist.
    #[error("{} does not exist or is not a folder (expected {what})", path.display())]
    MissingFolder {
        /// The folder.
        path: PathBuf,
        /// What it should contain.
        what: String,
    },

    /// A folder holds no image files.
    #[error(
        "{} contains no images (looked for .png, .jpg, .jpeg, .bmp, .tif, .tiff): check the path",
        path.display()
    )]
    EmptyFolder {
        /// The folder.
        path: PathBuf,
    },

    /// A category or object was asked for that the dataset root does not contain.
    #[error("{} has no category {category:?}; available: {}", root.display(), available.join(", "))]
    CategoryNotFound {
        /// The dataset root.
        root: PathBuf,
        /// The requested category.
        category: String,
        /// Categories that do exist.
        available: Vec<String>,
    },

    /// A split file (CSV) is malformed or points to a missing file.
    #[error("{}, line {line}: {message}", path.display())]
    Csv {
        /// The CSV file.
        path: PathBuf,
        /// 1-based line number (0 when the whole file is concerned).
        line: usize,
        /// What is wrong.
        message: String,
    },

    /// An option has a value that cannot work.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// An image could not be encoded while writing a dataset.
    #[error("cannot write image {}: {message}", path.display())]
    Encode {
        /// The file being written.
        path: PathBuf,
        /// What the encoder said.
        message: String,
    },

    /// The background loading thread stopped unexpectedly.
    #[error("the background image loader stopped unexpectedly: {0}")]
    LoaderStopped(String),
}

impl DatasetError {
    /// Builds an [`DatasetError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DatasetError::Io {
            path: path.into(),
            source,
        }
    }

    /// The file this error is about, if it concerns a single file (the image for pair errors).
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            DatasetError::Io { path, .. }
            | DatasetError::EmptyFile { path }
            | DatasetError::UnknownFormat { path }
            | DatasetError::Decode { path, .. }
            | DatasetError::TooLarge { path, .. }
            | DatasetError::MissingFolder { path, .. }
            | DatasetError::EmptyFolder { path }
            | DatasetError::Csv { path, .. }
            | DatasetError::Encode { path, .. } => Some(path),
            DatasetError::MaskSizeMismatch { image, .. }
            | DatasetError::MissingMask { image, .. }
            | DatasetError::MaskPairing { image, .. } => Some(image),
            DatasetError::UnpairedMasks { first, .. } => Some(first),
            DatasetError::CategoryNotFound { root, .. } => Some(root),
            DatasetError::InvalidConfig(_) | DatasetError::LoaderStopped(_) => None,
        }
    }
}
