//! The error type shared by every metric in this crate.

/// Why a metric could not be computed from its inputs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    /// An input that must hold at least one element is empty.
    #[error("{what} is empty")]
    Empty {
        /// Which input.
        what: &'static str,
    },
    /// Two inputs that must have the same length (or a slice and its declared shape) disagree.
    #[error("{what} has {actual} elements but {expected} were expected")]
    LengthMismatch {
        /// Which input has the wrong length.
        what: &'static str,
        /// The length it should have.
        expected: usize,
        /// The length it has.
        actual: usize,
    },
    /// A score is NaN; scores must be totally ordered.
    #[error("{what}[{index}] is NaN")]
    NanScore {
        /// Which input.
        what: &'static str,
        /// Index of the first NaN.
        index: usize,
    },
    /// A label or mask value is neither 0 nor 1.
    #[error("{what}[{index}] is {value}, expected 0 or 1")]
    InvalidLabel {
        /// Which input.
        what: &'static str,
        /// Index of the first invalid value.
        index: usize,
        /// The invalid value.
        value: u8,
    },
    /// The AUPRO false-positive-rate limit is not a positive finite `f32`.
    #[error("FPR limit {0} must be finite and greater than 0 (as an f32)")]
    InvalidFprLimit(f64),
    /// The declared map shape has more pixels than this crate can address.
    #[error("map shape {n}x{h}x{w} is too large")]
    ShapeOverflow {
        /// Number of maps.
        n: usize,
        /// Map height.
        h: usize,
        /// Map width.
        w: usize,
    },
}

/// `Result` with [`MetricsError`].
pub type Result<T> = std::result::Result<T, MetricsError>;
