//! The heatmap overlay and predicted mask of one image, as base64 PNGs for a JSON answer.

use std::io::Cursor;

use base64::Engine;
use image::{DynamicImage, ImageFormat, RgbImage};
use rd_anomaly_map::{heatmap_overlay, mask_image, MapView};
use rd_model::{Predictor, MASK_THRESHOLD};

use crate::error::{Result, ServeError};

/// The requested drawings of one image at its own size.
#[derive(Debug, Default)]
pub(crate) struct Drawings {
    /// The jet heatmap blended over the image.
    pub heatmap: Option<String>,
    /// The predicted defect mask (255 anomalous); only for models with pixel statistics.
    pub mask: Option<String>,
}

/// Draws what was asked for from a raw map at model resolution, as `rd predict` draws it.
pub(crate) fn draw(
    predictor: &Predictor,
    original: &RgbImage,
    map: &[f32],
    heatmap: bool,
    mask: bool,
) -> Result<Drawings> {
    let (h, w) = predictor.input_size();
    let (values, how) = predictor.display_map(map);
    let view = MapView::new(&values, h, w).map_err(|e| ServeError::Compute(e.to_string()))?;
    let (iw, ih) = original.dimensions();
    let mut out = Drawings::default();
    if heatmap {
        let overlay = heatmap_overlay(original, view, &how);
        out.heatmap = Some(png_base64(DynamicImage::ImageRgb8(overlay))?);
    }
    if mask && !predictor.pixel_normalizer().is_identity() {
        let m = mask_image(view, MASK_THRESHOLD, iw, ih);
        out.mask = Some(png_base64(DynamicImage::ImageLuma8(m))?);
    }
    Ok(out)
}

fn png_base64(image: DynamicImage) -> Result<String> {
    let mut buf = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut buf), ImageFormat::Png)
        .map_err(|e| ServeError::Compute(format!("cannot encode the PNG: {e}")))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(buf))
}
