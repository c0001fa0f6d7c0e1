//! rd-backbone: weight files.

mod bad_weights;
