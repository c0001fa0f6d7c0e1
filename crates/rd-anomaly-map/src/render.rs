//! Visualisation of anomaly maps on plain buffers, in the style of anomalib's `ImageVisualizer`.
//!
//! * [`heatmap_overlay`]: the map, normalised to `[0, 1]`, coloured with anomalib's 9-stop "jet"
//!   palette and alpha-blended at 0.5 over the image;
//! * [`mask_image`]: the predicted mask (`255` where the map is above the threshold, else `0`);
//! * [`contour_overlay`]: a mask's boundary drawn over the image (red for predictions, white for
//!   ground truth in anomalib).
//!
//! Maps are row-major `f32` buffers at model resolution ([`MapView`]); images are RGB8 at their
//! original size. Maps are resized to the image with bilinear interpolation, `align_corners=false`
//! (torch's `F.interpolate(mode="bilinear")`).

use image::{GrayImage, Luma, Rgb, RgbImage};

/// Errors raised by the rendering and `.npy` functions.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A buffer's length does not match the shape it was given with.
    #[error("buffer of {len} values does not match shape {height}×{width}")]
    BufferSize {
        /// Number of values in the buffer.
        len: usize,
        /// Height the buffer was said to have.
        height: usize,
        /// Width the buffer was said to have.
        width: usize,
    },
    /// A map, image or mask has a zero side.
    #[error("empty shape {height}×{width}")]
    EmptyShape {
        /// Height given.
        height: usize,
        /// Width given.
        width: usize,
    },
    /// Two images that must have the same size do not.
    #[error("size mismatch: expected {expected:?} (width, height), got {got:?}")]
    SizeMismatch {
        /// The size required (width, height).
        expected: (u32, u32),
        /// The size found (width, height).
        got: (u32, u32),
    },
    /// A palette was built from fewer than two stops.
    #[error("a colormap needs at least 2 stops, got {0}")]
    TooFewStops(usize),
    /// Writing a file failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Result type of this module.
pub type RenderResult<T> = std::result::Result<T, RenderError>;

/// anomalib's 9 "jet" stops, from dark blue (0) to dark red (1).
pub const JET_STOPS: [[u8; 3]; 9] = [
    [0, 0, 143],
    [0, 0, 255],
    [0, 127, 255],
    [0, 255, 255],
    [127, 255, 127],
    [255, 255, 0],
    [255, 127, 0],
    [255, 0, 0],
    [127, 0, 0],
];

/// Opacity of the heat map over the image (anomalib's default).
pub const HEATMAP_ALPHA: f32 = 0.5;

/// Contour colour of predicted masks (anomalib: red).
pub const PRED_CONTOUR_COLOUR: Rgb<u8> = Rgb([255, 0, 0]);

/// Contour colour of ground-truth masks (anomalib: white).
pub const GT_CONTOUR_COLOUR: Rgb<u8> = Rgb([255, 255, 255]);

/// A palette of evenly spaced colour stops over `[0, 1]`, linearly interpolated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Colormap {
    stops: Vec<[u8; 3]>,
}

impl Default for Colormap {
    fn default() -> Self {
        Self::jet()
    }
}

impl Colormap {
    /// anomalib's 9-stop "jet" palette ([`JET_STOPS`]).
    pub fn jet() -> Self {
        Self {
            stops: JET_STOPS.to_vec(),
        }
    }

    /// A palette from at least two stops; stop `k` of `n` sits at `k / (n − 1)`.
    pub fn from_stops(stops: &[[u8; 3]]) -> RenderResult<Self> {
        if stops.len() < 2 {
            return Err(RenderError::TooFewStops(stops.len()));
        }
        Ok(Self {
            stops: stops.to_vec(),
        })
    }

    /// The stops of this palette.
    pub fn stops(&self) -> &[[u8; 3]] {
        &self.stops
    }

    /// The colour of `value`; values outside `[0, 1]` clamp and NaN maps to 0.
    pub fn color(&self, value: f32) -> Rgb<u8> {
        interpolate(&self.stops, value)
    }
}

/// The colour of `value` in anomalib's "jet" palette (see [`Colormap::color`]).
pub fn jet(value: f32) -> Rgb<u8> {
    interpolate(&JET_STOPS, value)
}

/// Linear interpolation between evenly spaced `stops` (at least two).
fn interpolate(stops: &[[u8; 3]], value: f32) -> Rgb<u8> {
    let v = if value.is_nan() {
        0.0
    } else {
        value.clamp(0.0, 1.0)
    };
    let last = stops.len() - 1;
    let pos = v * last as f32;
    let i = (pos.floor() as usize).min(last - 1);
    let f = pos - i as f32;
    let (a, b) = (stops[i], stops[i + 1]);
    Rgb(std::array::from_fn(|c| {
        (a[c] as f32 + (b[c] as f32 - a[c] as f32) * f)
            .round()
            .clamp(0.0, 255.0) as u8
    }))
}

/// A borrowed row-major `height × width` anomaly map.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MapView<'a> {
    data: &'a [f32],
    height: usize,
    width: usize,
}

impl<'a> MapView<'a> {
    /// Wraps `data` as a `height × width` map; the length must be `height · width`, both non-zero.
    pub fn new(data: &'a [f32], height: usize, width: usize) -> RenderResult<Self> {
        if height == 0 || width == 0 {
            return Err(RenderError::EmptyShape { height, width });
        }
        if height.checked_mul(width) != Some(data.len()) {
            return Err(RenderError::BufferSize {
                len: data.len(),
                height,
                width,
            });
        }
        Ok(Self {
            data,
            height,
            width,
        })
    }

    /// The values, row-major.
    pub fn data(&self) -> &'a [f32] {
        self.data
    }

    /// Number of rows.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Number of columns.
    pub fn width(&self) -> usize {
        self.width
    }
}

/// How a map is brought to `[0, 1]` before colouring.
///
/// For anomalib's normalisation with the validation statistics, normalise with
/// `rd_metrics::Normalizer` and pass [`Normalization::Identity`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Normalization {
    /// `(x − min) / (max − min)` with the map's own finite minimum and maximum; a flat map gives 0.
    #[default]
    MapMinMax,
    /// The values are used as they are (already normalised; the palette clamps).
    Identity,
}

impl Normalization {
    /// The normalised copy of `values`.
    pub fn apply(&self, values: &[f32]) -> Vec<f32> {
        match *self {
            Normalization::Identity => values.to_vec(),
            Normalization::MapMinMax => {
                // no finite value leaves (lo, hi) = (+inf, -inf), caught below
                let (lo, hi) = values
                    .iter()
                    .filter(|v| v.is_finite())
                    .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                        (lo.min(v), hi.max(v))
                    });
                if hi <= lo {
                    return vec![0.0; values.len()];
                }
                let range = hi - lo;
                values
                    .iter()
                    .map(|&x| ((x - lo) / range).clamp(0.0, 1.0))
                    .collect()
            }
        }
    }
}

/// Bilinear resize to `out_height × out_width`, as torch `F.interpolate(mode="bilinear",
/// align_corners=False)`; a map already at that size is copied unchanged.
pub fn resize_bilinear(map: MapView<'_>, out_height: usize, out_width: usize) -> Vec<f32> {
    if out_height == map.height && out_width == map.width {
        return map.data.to_vec();
    }
    let rows = source_taps(map.height, out_height);
    let cols = source_taps(map.width, out_width);
    let mut out = Vec::with_capacity(out_height * out_width);
    for &(y0, y1, fy) in &rows {
        let r0 = &map.data[y0 * map.width..(y0 + 1) * map.width];
        let r1 = &map.data[y1 * map.width..(y1 + 1) * map.width];
        for &(x0, x1, fx) in &cols {
            let top = r0[x0] * (1.0 - fx) + r0[x1] * fx;
            let bottom = r1[x0] * (1.0 - fx) + r1[x1] * fx;
            out.push(top * (1.0 - fy) + bottom * fy);
        }
    }
    out
}

/// For each output index along one axis: the two source indices and the weight of the second.
fn source_taps(in_len: usize, out_len: usize) -> Vec<(usize, usize, f32)> {
    let scale = in_len as f32 / out_len as f32;
    (0..out_len)
        .map(|o| {
            let src = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src as usize).min(in_len - 1);
            let i1 = (i0 + 1).min(in_len - 1);
            (i0, i1, src - i0 as f32)
        })
        .collect()
}

/// The map normalised, resized to `width × height` and coloured with `colormap`.
pub fn heatmap(
    map: MapView<'_>,
    normalization: &Normalization,
    colormap: &Colormap,
    width: u32,
    height: u32,
) -> RgbImage {
    let normalised = normalization.apply(map.data);
    // Normalise at model resolution (as anomalib does), then resize the [0, 1] values.
    let view = MapView {
        data: &normalised,
        ..map
    };
    let resized = resize_bilinear(view, height as usize, width as usize);
    let mut out = RgbImage::new(width, height);
    for (px, &v) in out.pixels_mut().zip(&resized) {
        *px = colormap.color(v);
    }
    out
}

/// `(1 − alpha) · base + alpha · overlay` per channel, rounded; the images must have the same size.
pub fn blend(base: &RgbImage, overlay: &RgbImage, alpha: f32) -> RenderResult<RgbImage> {
    if base.dimensions() != overlay.dimensions() {
        return Err(RenderError::SizeMismatch {
            expected: base.dimensions(),
            got: overlay.dimensions(),
        });
    }
    Ok(blend_same_size(base, overlay, alpha))
}

/// [`blend`] for images known to have the same size.
fn blend_same_size(base: &RgbImage, overlay: &RgbImage, alpha: f32) -> RgbImage {
    let a = alpha.clamp(0.0, 1.0);
    let mut out = base.clone();
    for (o, (&b, &v)) in out.iter_mut().zip(base.iter().zip(overlay.iter())) {
        *o = ((1.0 - a) * b as f32 + a * v as f32)
            .round()
            .clamp(0.0, 255.0) as u8;
    }
    out
}

/// The image with the normalised map coloured in anomalib's "jet" and blended over it at 0.5.
pub fn heatmap_overlay(
    image: &RgbImage,
    map: MapView<'_>,
    normalization: &Normalization,
) -> RgbImage {
    let (w, h) = image.dimensions();
    let colored = heatmap(map, normalization, &Colormap::jet(), w, h);
    blend_same_size(image, &colored, HEATMAP_ALPHA)
}

/// The predicted mask at `width × height`: 255 where the resized map is `> threshold`, else 0.
///
/// `threshold` is in the map's units: the raw pixel threshold for a raw map, 0.5 for a map
/// normalised the anomalib way.
pub fn mask_image(map: MapView<'_>, threshold: f32, width: u32, height: u32) -> GrayImage {
    let resized = resize_bilinear(map, height as usize, width as usize);
    let mut out = GrayImage::new(width, height);
    for (px, &v) in out.pixels_mut().zip(&resized) {
        *px = Luma([if v > threshold { 255 } else { 0 }]);
    }
    out
}

/// The mask's boundary: set pixels (`> 0`) within `thickness` pixels (8-neighbourhood) of an unset
/// pixel or of the image edge; 255 on the boundary, else 0.
pub fn mask_boundary(mask: &GrayImage, thickness: u32) -> GrayImage {
    let (w, h) = mask.dimensions();
    let t = thickness.max(1) as i64;
    let set = |x: i64, y: i64| -> bool {
        x >= 0
            && y >= 0
            && x < w as i64
            && y < h as i64
            && mask.get_pixel(x as u32, y as u32)[0] > 0
    };
    let mut out = GrayImage::new(w, h);
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            if !set(x, y) {
                continue;
            }
            let edge = (-t..=t).any(|dy| (-t..=t).any(|dx| !set(x + dx, y + dy)));
            if edge {
                out.put_pixel(x as u32, y as u32, Luma([255]));
            }
        }
    }
    out
}

/// The image with the mask's 1-pixel boundary (see [`mask_boundary`]) painted in `colour`.
pub fn contour_overlay(
    image: &RgbImage,
    mask: &GrayImage,
    colour: Rgb<u8>,
) -> RenderResult<RgbImage> {
    contour_overlay_thick(image, mask, colour, 1)
}

/// Like [`contour_overlay`] with a boundary `thickness` pixels wide (e.g. 2–3 for 1024² images).
pub fn contour_overlay_thick(
    image: &RgbImage,
    mask: &GrayImage,
    colour: Rgb<u8>,
    thickness: u32,
) -> RenderResult<RgbImage> {
    if image.dimensions() != mask.dimensions() {
        return Err(RenderError::SizeMismatch {
            expected: image.dimensions(),
            got: mask.dimensions(),
        });
    }
    let boundary = mask_boundary(mask, thickness);
    let mut out = image.clone();
    for (px, b) in out.pixels_mut().zip(boundary.pixels()) {
        if b[0] > 0 {
            *px = colour;
        }
    }
    Ok(out)
}
