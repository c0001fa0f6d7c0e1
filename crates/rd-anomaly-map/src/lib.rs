//! Reverse Distillation anomaly maps, exactly as anomalib 2.7 computes them (SPEC §5.1–5.3).
//!
//! For each scale: 1 − cosine similarity over channels between teacher and student features,
//! bilinearly upsampled (align_corners) to the input size; the scales are added (or multiplied),
//! blurred with a σ = 4, 33-tap Gaussian with PyTorch-style reflect padding, and the image score is
//! the map's maximum. Every stage is exposed through [`AnomalyMaps`].
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use rd_anomaly_map::{AnomalyMapGenerator, MapMode};
//!
//! # fn main() -> candle_core::Result<()> {
//! let dev = Device::Cpu;
//! let t = Tensor::ones((1, 8, 16, 16), candle_core::DType::F32, &dev)?;
//! let generator = AnomalyMapGenerator::new((64, 64), MapMode::Add);
//! let maps = generator.compute(&[t.clone(), t.clone(), t.clone()], &[t.clone(), t.clone(), t])?;
//! // identical features: distance 0 everywhere
//! assert!(maps.scores.to_vec1::<f32>()?[0].abs() < 1e-6);
//! # Ok(()) }
//! ```

mod blur;
mod cosine;
mod map;

pub use blur::GaussianBlur;
pub use cosine::{cosine_distance_map, cosine_similarity, COSINE_EPS};
pub use map::{AnomalyMapGenerator, AnomalyMaps, MapMode};
