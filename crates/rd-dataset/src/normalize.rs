//! Per-channel normalisation, `(x - mean) / std`, as torchvision's `Normalize` computes it.

use crate::image::RgbImage32;

/// Per-channel mean and standard deviation for RGB images.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalization {
    /// Mean of each channel (R, G, B).
    pub mean: [f32; 3],
    /// Standard deviation of each channel (R, G, B).
    pub std: [f32; 3],
}

impl Normalization {
    /// The ImageNet statistics used by the teacher backbones (and by anomalib by default).
    pub const IMAGENET: Normalization = Normalization {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };

    /// Normalises a channel-first RGB buffer (`3 * plane` values) in place.
    pub fn apply_planes(&self, data: &mut [f32]) {
        let plane = data.len() / 3;
        for (c, chunk) in data.chunks_exact_mut(plane.max(1)).take(3).enumerate() {
            let (m, s) = (self.mean[c], self.std[c]);
            for v in chunk {
                *v = (*v - m) / s;
            }
        }
    }

    /// Normalises an image in place.
    pub fn apply(&self, image: &mut RgbImage32) {
        self.apply_planes(&mut image.data);
    }

    /// Undoes [`Normalization::apply_planes`] (for display), `x * std + mean`.
    pub fn invert_planes(&self, data: &mut [f32]) {
        let plane = data.len() / 3;
        for (c, chunk) in data.chunks_exact_mut(plane.max(1)).take(3).enumerate() {
            let (m, s) = (self.mean[c], self.std[c]);
            for v in chunk {
                *v = *v * s + m;
            }
        }
    }
}

impl Default for Normalization {
    fn default() -> Self {
        Normalization::IMAGENET
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imagenet_values() {
        let mut img = RgbImage32::new(1, 2, vec![0.485, 1.0, 0.0, 0.456, 0.406, 0.5]).unwrap();
        Normalization::IMAGENET.apply(&mut img);
        let expect = [
            0.0,
            (1.0 - 0.485) / 0.229,
            (0.0 - 0.456) / 0.224,
            0.0,
            0.0,
            (0.5 - 0.406) / 0.225,
        ];
        for (a, b) in img.data.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{:?}", img.data);
        }
        Normalization::IMAGENET.invert_planes(&mut img.data);
        assert!((img.data[1] - 1.0).abs() < 1e-6);
        assert!((img.data[5] - 0.5).abs() < 1e-6);
    }
}
