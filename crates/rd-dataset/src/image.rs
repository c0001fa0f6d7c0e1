//! Decoding image and mask files into plain buffers.
//!
//! Images become [`RgbImage32`]: RGB, `f32` in `[0, 1]`, channel-first. Grayscale is replicated
//! to three channels, alpha is dropped (as PIL's `convert("RGB")` does), palettes are expanded,
//! 8-bit values are scaled by `1/255` and 16-bit values by `1/65535`. Masks become [`Mask`]:
//! one `u8` per pixel, `1` where any colour channel is non-zero.
//!
//! The header is read first and images larger than [`LoadOptions::max_pixels`] are refused
//! before any pixel buffer is allocated.

use std::fs::File;
use std::io::BufReader;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageError, ImageReader, Limits};

use crate::error::{DatasetError, Result};

/// Default limit on the number of pixels of one image: 2^28 (for example 16384 x 16384).
pub const DEFAULT_MAX_PIXELS: u64 = 1 << 28;

/// File extensions recognised as images (compared case-insensitively).
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "tif", "tiff"];

/// Whether `path` has one of the [`IMAGE_EXTENSIONS`] (case-insensitive).
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Options for decoding files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Largest accepted `width * height`; bigger images are refused from their header alone.
    pub max_pixels: u64,
    /// Apply the EXIF orientation tag (JPEG, TIFF). Off by default: anomalib (PIL `Image.open`)
    /// ignores the tag, and a model must see its images as it was trained on them.
    pub apply_orientation: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            max_pixels: DEFAULT_MAX_PIXELS,
            apply_orientation: false,
        }
    }
}

/// An RGB image as `f32`, channel-first (`3 x height x width`).
#[derive(Debug, Clone, PartialEq)]
pub struct RgbImage32 {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// `3 * height * width` values: the red plane, then green, then blue.
    pub data: Vec<f32>,
}

impl RgbImage32 {
    /// Wraps a channel-first buffer; fails if its length is not `3 * height * width`.
    pub fn new(height: usize, width: usize, data: Vec<f32>) -> Result<Self> {
        if data.len() != 3 * height * width {
            return Err(DatasetError::InvalidConfig(format!(
                "an RGB image of {height}x{width} needs {} values, got {}",
                3 * height * width,
                data.len()
            )));
        }
        Ok(RgbImage32 {
            height,
            width,
            data,
        })
    }

    /// The value of channel `c` at row `y`, column `x`.
    pub fn get(&self, c: usize, y: usize, x: usize) -> f32 {
        self.data[(c * self.height + y) * self.width + x]
    }

    /// One channel plane (`height * width` values).
    pub fn channel(&self, c: usize) -> &[f32] {
        let n = self.height * self.width;
        &self.data[c * n..(c + 1) * n]
    }
}

/// A binary mask: one byte per pixel, `0` normal, `1` anomalous, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// `height * width` values, each 0 or 1.
    pub data: Vec<u8>,
}

impl Mask {
    /// The value at row `y`, column `x`.
    pub fn get(&self, y: usize, x: usize) -> u8 {
        self.data[y * self.width + x]
    }

    /// Number of anomalous pixels.
    pub fn count_anomalous(&self) -> usize {
        self.data.iter().filter(|&&v| v != 0).count()
    }
}

/// Reads only the header of `path` and returns `(width, height)` (before EXIF orientation).
pub fn read_dimensions(path: &Path) -> Result<(u32, u32)> {
    let mut reader = open_reader(path)?;
    if reader.format() == Some(image::ImageFormat::Png) {
        if let Some(dims) = png_header_dimensions(path) {
            return Ok(dims);
        }
    }
    reader.no_limits();
    let decoder = reader.into_decoder().map_err(|e| image_error(path, e))?;
    Ok(decoder.dimensions())
}

/// Decodes `path` into an RGB `f32` image in `[0, 1]`.
pub fn load_rgb(path: &Path, options: &LoadOptions) -> Result<RgbImage32> {
    let image = decode(path, options)?;
    Ok(rgb_from_dynamic(&image))
}

/// Decodes `path` as a mask: `1` where any colour channel is non-zero, else `0`.
pub fn load_mask(path: &Path, options: &LoadOptions) -> Result<Mask> {
    let image = decode(path, options)?;
    Ok(mask_from_dynamic(&image))
}

/// Decodes `path` into an [`image::DynamicImage`], checking size limits and, if asked, applying
/// the EXIF orientation.
pub fn decode(path: &Path, options: &LoadOptions) -> Result<DynamicImage> {
    // A decoder bug must not take the whole training run down: report it as a bad file.
    match catch_unwind(AssertUnwindSafe(|| decode_inner(path, options))) {
        Ok(result) => result,
        Err(_) => Err(DatasetError::Decode {
            path: path.to_path_buf(),
            message: "the image decoder crashed on this file".into(),
        }),
    }
}

fn open_reader(path: &Path) -> Result<ImageReader<BufReader<File>>> {
    let file = File::open(path).map_err(|e| DatasetError::io(path, e))?;
    let meta = file.metadata().map_err(|e| DatasetError::io(path, e))?;
    if meta.is_dir() {
        return Err(DatasetError::Decode {
            path: path.to_path_buf(),
            message: "this is a folder, not an image file".into(),
        });
    }
    if meta.len() == 0 {
        return Err(DatasetError::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    // The format is decided by content only: a PNG named `.jpg` still loads, text named `.png` not.
    let reader = ImageReader::new(BufReader::new(file))
        .with_guessed_format()
        .map_err(|e| DatasetError::io(path, e))?;
    if reader.format().is_none() {
        return Err(DatasetError::UnknownFormat {
            path: path.to_path_buf(),
        });
    }
    Ok(reader)
}

/// Width and height from a PNG's IHDR, read directly so that a header-only file claiming a
/// huge size is refused as too large rather than as malformed.
fn png_header_dimensions(path: &Path) -> Option<(u32, u32)> {
    use std::io::Read;
    let mut head = [0u8; 24];
    File::open(path).ok()?.read_exact(&mut head).ok()?;
    if &head[..8] != b"\x89PNG\r\n\x1a\n" || &head[12..16] != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(&head[16..20]), be(&head[20..24])))
}

fn check_pixels(path: &Path, width: u32, height: u32, options: &LoadOptions) -> Result<()> {
    if u64::from(width) * u64::from(height) > options.max_pixels {
        return Err(DatasetError::TooLarge {
            path: path.to_path_buf(),
            width,
            height,
            max_pixels: options.max_pixels,
        });
    }
    Ok(())
}

fn decode_inner(path: &Path, options: &LoadOptions) -> Result<DynamicImage> {
    let mut reader = open_reader(path)?;
    if reader.format() == Some(image::ImageFormat::Png) {
        if let Some((width, height)) = png_header_dimensions(path) {
            check_pixels(path, width, height, options)?;
        }
    }
    let mut limits = Limits::default();
    // Room for the largest pixel type (RGBA f32) of an image at the pixel limit.
    limits.max_alloc = Some(options.max_pixels.saturating_mul(16).max(1 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| image_error(path, e))?;
    let (width, height) = decoder.dimensions();
    check_pixels(path, width, height, options)?;
    if width == 0 || height == 0 {
        return Err(DatasetError::Decode {
            path: path.to_path_buf(),
            message: format!("the header gives an empty size {width}x{height}"),
        });
    }
    let orientation = if options.apply_orientation {
        decoder
            .orientation()
            .unwrap_or(image::metadata::Orientation::NoTransforms)
    } else {
        image::metadata::Orientation::NoTransforms
    };
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| image_error(path, e))?;
    image.apply_orientation(orientation);
    Ok(image)
}

fn image_error(path: &Path, error: ImageError) -> DatasetError {
    let message = match &error {
        ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the file ends early (truncated)".to_string()
        }
        ImageError::Limits(e) => format!("the image exceeds the decoder's memory limit ({e})"),
        ImageError::Unsupported(e) => format!("unsupported image variant ({e})"),
        other => other.to_string(),
    };
    DatasetError::Decode {
        path: path.to_path_buf(),
        message,
    }
}

/// Scale for 8-bit samples, as torchvision's `to_dtype(..., scale=True)` applies it (`x * (1/255)`).
const SCALE_U8: f32 = 1.0 / 255.0;
/// Scale for 16-bit samples.
const SCALE_U16: f32 = 1.0 / 65535.0;

/// Converts any decoded image to channel-first RGB `f32` in `[0, 1]`.
pub fn rgb_from_dynamic(image: &DynamicImage) -> RgbImage32 {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let u8f = |v: u8| f32::from(v) * SCALE_U8;
    let u16f = |v: u16| f32::from(v) * SCALE_U16;
    let f32f = |v: f32| if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) };
    let data = match image {
        DynamicImage::ImageLuma8(b) => planes(b.as_raw(), 1, h, w, u8f),
        DynamicImage::ImageLumaA8(b) => planes(b.as_raw(), 2, h, w, u8f),
        DynamicImage::ImageRgb8(b) => planes(b.as_raw(), 3, h, w, u8f),
        DynamicImage::ImageRgba8(b) => planes(b.as_raw(), 4, h, w, u8f),
        DynamicImage::ImageLuma16(b) => planes(b.as_raw(), 1, h, w, u16f),
        DynamicImage::ImageLumaA16(b) => planes(b.as_raw(), 2, h, w, u16f),
        DynamicImage::ImageRgb16(b) => planes(b.as_raw(), 3, h, w, u16f),
        DynamicImage::ImageRgba16(b) => planes(b.as_raw(), 4, h, w, u16f),
        DynamicImage::ImageRgb32F(b) => planes(b.as_raw(), 3, h, w, f32f),
        DynamicImage::ImageRgba32F(b) => planes(b.as_raw(), 4, h, w, f32f),
        other => planes(other.to_rgb32f().as_raw(), 3, h, w, f32f),
    };
    RgbImage32 {
        height: h,
        width: w,
        data,
    }
}

/// Converts any decoded image to a binary mask (`1` where any colour channel is non-zero).
pub fn mask_from_dynamic(image: &DynamicImage) -> Mask {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let data = match image {
        DynamicImage::ImageLuma8(b) => mask_plane(b.as_raw(), 1, |v| v != 0),
        DynamicImage::ImageLumaA8(b) => mask_plane(b.as_raw(), 2, |v| v != 0),
        DynamicImage::ImageRgb8(b) => mask_plane(b.as_raw(), 3, |v| v != 0),
        DynamicImage::ImageRgba8(b) => mask_plane(b.as_raw(), 4, |v| v != 0),
        DynamicImage::ImageLuma16(b) => mask_plane(b.as_raw(), 1, |v| v != 0),
        DynamicImage::ImageLumaA16(b) => mask_plane(b.as_raw(), 2, |v| v != 0),
        DynamicImage::ImageRgb16(b) => mask_plane(b.as_raw(), 3, |v| v != 0),
        DynamicImage::ImageRgba16(b) => mask_plane(b.as_raw(), 4, |v| v != 0),
        other => mask_plane(other.to_rgb32f().as_raw(), 3, |v| v > 0.0),
    };
    Mask {
        height: h,
        width: w,
        data,
    }
}

/// Interleaved samples (`channels` per pixel: 1 = gray, 2 = gray+alpha, 3 = RGB, 4 = RGBA)
/// to three planes.
fn planes<T: Copy>(
    raw: &[T],
    channels: usize,
    h: usize,
    w: usize,
    f: impl Fn(T) -> f32,
) -> Vec<f32> {
    let n = h * w;
    let mut out = vec![0.0f32; 3 * n];
    let (r, rest) = out.split_at_mut(n);
    let (g, b) = rest.split_at_mut(n);
    for (i, px) in raw.chunks_exact(channels).take(n).enumerate() {
        if channels >= 3 {
            r[i] = f(px[0]);
            g[i] = f(px[1]);
            b[i] = f(px[2]);
        } else {
            let v = f(px[0]);
            r[i] = v;
            g[i] = v;
            b[i] = v;
        }
    }
    out
}

fn mask_plane<T: Copy>(raw: &[T], channels: usize, nonzero: impl Fn(T) -> bool) -> Vec<u8> {
    let colour = if channels >= 3 { 3 } else { 1 };
    raw.chunks_exact(channels)
        .map(|px| u8::from(px[..colour].iter().any(|&v| nonzero(v))))
        .collect()
}
