//! rd-backbone: weight files and the layers.

mod bad_weights;
mod layers;
