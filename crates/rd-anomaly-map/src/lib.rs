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
//!
//! # Visualisation
//!
//! Rendering works on plain buffers, like anomalib's `ImageVisualizer`: [`heatmap_overlay`] colours
//! the normalised map with the 9-stop "jet" palette ([`Colormap`]) and blends it at 0.5 over the
//! image, [`mask_image`] thresholds the map into a 0/255 mask and [`contour_overlay`] draws a mask's
//! boundary. Maps are resized to the image with bilinear interpolation ([`resize_bilinear`],
//! `align_corners=false`). [`write_npy`] saves a raw map for NumPy.
//!
//! ```
//! use image::RgbImage;
//! use rd_anomaly_map::{contour_overlay, heatmap_overlay, mask_image, MapView, Normalization};
//! use rd_anomaly_map::PRED_CONTOUR_COLOUR;
//!
//! # fn main() -> Result<(), rd_anomaly_map::RenderError> {
//! let values: Vec<f32> = (0..16).map(|i| i as f32 / 15.0).collect(); // 4×4 model-resolution map
//! let map = MapView::new(&values, 4, 4)?;
//! let image = RgbImage::new(32, 24); // original size
//! // values already normalised (e.g. by rd_metrics::Normalizer with the validation statistics)
//! let overlay = heatmap_overlay(&image, map, &Normalization::Identity);
//! let mask = mask_image(map, 0.5, 32, 24);
//! let contour = contour_overlay(&overlay, &mask, PRED_CONTOUR_COLOUR)?;
//! assert_eq!(contour.dimensions(), (32, 24));
//! # Ok(()) }
//! ```

mod blur;
mod cosine;
pub mod kernels;
mod map;
mod npy;
mod render;

pub use blur::GaussianBlur;
pub use cosine::{cosine_distance_map, cosine_similarity, COSINE_EPS};
pub use map::{AnomalyMapGenerator, AnomalyMaps, MapMode};
pub use npy::{npy_header, write_npy, write_npy_to};
pub use render::{
    blend, contour_overlay, contour_overlay_thick, heatmap, heatmap_overlay, jet, mask_boundary,
    mask_image, resize_bilinear, Colormap, MapView, Normalization, RenderError, RenderResult,
    GT_CONTOUR_COLOUR, HEATMAP_ALPHA, JET_STOPS, PRED_CONTOUR_COLOUR,
};
