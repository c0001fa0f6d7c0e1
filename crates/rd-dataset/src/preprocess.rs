//! The per-sample pipeline: decode, resize to the model's input size, normalise; masks are
//! checked against their image's size, resized with nearest neighbour and binarised.

use std::path::Path;

use crate::error::{DatasetError, Result};
use crate::image::{load_mask, load_rgb, LoadOptions, Mask, RgbImage32};
use crate::layout::Sample;
use crate::normalize::Normalization;
use crate::resize::{resize_bilinear_aa, resize_mask_nearest};

/// How a file becomes a model input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preprocess {
    /// Target height in pixels.
    pub height: usize,
    /// Target width in pixels.
    pub width: usize,
    /// Normalisation applied after resizing (`None` keeps values in `[0, 1]`).
    pub normalization: Option<Normalization>,
    /// Decoding options.
    pub load: LoadOptions,
}

/// A preprocessed sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Processed {
    /// The resized (and normalised) image.
    pub image: RgbImage32,
    /// The resized binary mask, when one was asked for.
    pub mask: Option<Mask>,
}

impl Preprocess {
    /// Resize to `height x width` and normalise with ImageNet statistics (anomalib's default).
    pub fn new(height: usize, width: usize) -> Self {
        Preprocess {
            height,
            width,
            normalization: Some(Normalization::IMAGENET),
            load: LoadOptions::default(),
        }
    }

    /// Checks that the target size is usable.
    pub fn validate(&self) -> Result<()> {
        if self.height == 0 || self.width == 0 {
            return Err(DatasetError::InvalidConfig(format!(
                "the target image size must be positive, got {}x{}",
                self.height, self.width
            )));
        }
        Ok(())
    }

    /// Decodes, resizes and normalises one image file.
    pub fn image(&self, path: &Path) -> Result<RgbImage32> {
        self.validate()?;
        let image = load_rgb(path, &self.load)?;
        Ok(self.finish_image(&image))
    }

    /// Resizes and normalises an already decoded image.
    pub fn finish_image(&self, image: &RgbImage32) -> RgbImage32 {
        let mut out = resize_bilinear_aa(image, self.height, self.width);
        if let Some(n) = &self.normalization {
            n.apply(&mut out);
        }
        out
    }

    /// Processes a sample. With `with_mask`, its mask is loaded, checked to have the image's
    /// size, resized and binarised; a sample without mask gets an all-zero mask.
    pub fn sample(&self, sample: &Sample, with_mask: bool) -> Result<Processed> {
        self.validate()?;
        let raw = load_rgb(&sample.image, &self.load)?;
        let mask = match (&sample.mask, with_mask) {
            (Some(mask_path), true) => {
                let m = load_mask(mask_path, &self.load)?;
                if (m.height, m.width) != (raw.height, raw.width) {
                    return Err(DatasetError::MaskSizeMismatch {
                        image: sample.image.clone(),
                        mask: mask_path.clone(),
                        image_width: raw.width as u32,
                        image_height: raw.height as u32,
                        mask_width: m.width as u32,
                        mask_height: m.height as u32,
                    });
                }
                Some(resize_mask_nearest(&m, self.height, self.width))
            }
            (None, true) => Some(Mask {
                height: self.height,
                width: self.width,
                data: vec![0; self.height * self.width],
            }),
            (_, false) => None,
        };
        Ok(Processed {
            image: self.finish_image(&raw),
            mask,
        })
    }
}
