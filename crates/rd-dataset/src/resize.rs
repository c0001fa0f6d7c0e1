//! Resizing exactly as anomalib's default pre-processing does it.
//!
//! Images: torchvision v2 `Resize((H, W), antialias=True)` on a float tensor, which is PyTorch's
//! `_upsample_bilinear2d_aa` (the same scheme as PIL's bilinear `ImagingResample`):
//!
//! * per axis, `scale = in / out` and output pixel `i` is centred at `scale * (i + 0.5)` in input
//!   coordinates (`align_corners=False`);
//! * the triangle filter `max(0, 1 - |x|)` has support 1 when upscaling and `scale` when
//!   downscaling (the filter is stretched by `scale`, which is the anti-aliasing);
//! * input pixels `xmin .. xmin + xsize` whose centres fall within the support are weighted
//!   and the weights are normalised to sum to one for every output pixel;
//! * the width is resampled first, then the height; an axis whose size does not change is
//!   left alone, and an image already at the target size is returned unchanged.
//!
//! Weights are computed with PyTorch's mix of `f32` and `f64` arithmetic and accumulated in
//! `f32` in the same order, so results agree with PyTorch's CPU kernel to float rounding.
//!
//! Masks: torch `nearest` (`src = min(floor(dst * in / out), in - 1)`).

use crate::image::{Mask, RgbImage32};

/// Interpolation weights of one axis.
#[derive(Debug, Clone, PartialEq)]
pub struct AxisWeights {
    /// First input index used by each output index.
    pub starts: Vec<usize>,
    /// Number of input indices used by each output index.
    pub sizes: Vec<usize>,
    /// `stride` weights per output index (only the first `sizes[i]` are meaningful).
    pub weights: Vec<f32>,
    /// Distance between the weight rows of consecutive output indices.
    pub stride: usize,
}

impl AxisWeights {
    /// The weights of output index `i`.
    pub fn of(&self, i: usize) -> &[f32] {
        &self.weights[i * self.stride..i * self.stride + self.sizes[i]]
    }
}

fn triangle(x: f32) -> f32 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Antialiased bilinear weights for resizing an axis from `input` to `output` samples
/// (PyTorch `_compute_indices_min_size_weights_aa` with the float path's precision).
///
/// Panics if a size is zero.
pub fn bilinear_aa_weights(input: usize, output: usize) -> AxisWeights {
    assert!(input > 0 && output > 0, "resize sizes must be positive");
    let scale = input as f32 / output as f32;
    let (support, invscale) = if scale >= 1.0 {
        (scale, (1.0f64 / f64::from(scale)) as f32)
    } else {
        (1.0f32, 1.0f32)
    };
    let stride = support.ceil() as usize * 2 + 1;
    let mut starts = Vec::with_capacity(output);
    let mut sizes = Vec::with_capacity(output);
    let mut weights = vec![0.0f32; output * stride];
    for i in 0..output {
        let center = (f64::from(scale) * (i as f64 + 0.5)) as f32;
        let xmin = ((f64::from(center - support) + 0.5) as i64).max(0);
        let xmax = ((f64::from(center + support) + 0.5) as i64).min(input as i64);
        let xsize = (xmax - xmin).clamp(0, stride as i64) as usize;
        let row = &mut weights[i * stride..i * stride + xsize];
        let mut total = 0.0f32;
        for (j, w) in row.iter_mut().enumerate() {
            let x = (f64::from((j as i64 + xmin) as f32 - center) + 0.5) * f64::from(invscale);
            *w = triangle(x as f32);
            total += *w;
        }
        if total != 0.0 {
            for w in row.iter_mut() {
                *w /= total;
            }
        }
        starts.push(xmin as usize);
        sizes.push(xsize);
    }
    AxisWeights {
        starts,
        sizes,
        weights,
        stride,
    }
}

/// Resizes `channels` planes of `in_h x in_w` (channel-first) to `out_h x out_w` with
/// antialiased bilinear interpolation (see the module docs).
///
/// Panics if `data.len() != channels * in_h * in_w` or a size is zero.
pub fn resize_planes_bilinear_aa(
    data: &[f32],
    channels: usize,
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
) -> Vec<f32> {
    assert_eq!(data.len(), channels * in_h * in_w, "buffer size mismatch");
    if (in_h, in_w) == (out_h, out_w) {
        return data.to_vec();
    }
    let mut current: Vec<f32>;
    let mut cur_w = in_w;
    let src: &[f32] = if in_w != out_w {
        let wx = bilinear_aa_weights(in_w, out_w);
        current = vec![0.0f32; channels * in_h * out_w];
        for (src_row, dst_row) in data.chunks_exact(in_w).zip(current.chunks_exact_mut(out_w)) {
            for (x, out) in dst_row.iter_mut().enumerate() {
                let start = wx.starts[x];
                let w = wx.of(x);
                let taps = &src_row[start..start + w.len()];
                let mut acc = taps[0] * w[0];
                for (t, wj) in taps.iter().zip(w).skip(1) {
                    acc += t * wj;
                }
                *out = acc;
            }
        }
        cur_w = out_w;
        &current
    } else {
        data
    };
    if in_h == out_h {
        return src.to_vec();
    }
    let wy = bilinear_aa_weights(in_h, out_h);
    let plane_in = in_h * cur_w;
    let plane_out = out_h * cur_w;
    let mut out = vec![0.0f32; channels * plane_out];
    for (src_plane, dst_plane) in src
        .chunks_exact(plane_in)
        .zip(out.chunks_exact_mut(plane_out))
    {
        for (y, dst_row) in dst_plane.chunks_exact_mut(cur_w).enumerate() {
            let start = wy.starts[y];
            let w = wy.of(y);
            let first = &src_plane[start * cur_w..(start + 1) * cur_w];
            for (d, s) in dst_row.iter_mut().zip(first) {
                *d = s * w[0];
            }
            for (j, wj) in w.iter().enumerate().skip(1) {
                let row = &src_plane[(start + j) * cur_w..(start + j + 1) * cur_w];
                for (d, s) in dst_row.iter_mut().zip(row) {
                    *d += s * wj;
                }
            }
        }
    }
    out
}

/// Resizes an RGB image with antialiased bilinear interpolation (torchvision
/// `Resize(antialias=True)`); an image already at the target size is returned unchanged.
pub fn resize_bilinear_aa(image: &RgbImage32, height: usize, width: usize) -> RgbImage32 {
    RgbImage32 {
        height,
        width,
        data: resize_planes_bilinear_aa(&image.data, 3, image.height, image.width, height, width),
    }
}

/// Source indices of torch `nearest` for resizing an axis from `input` to `output` samples.
///
/// Panics if a size is zero.
pub fn nearest_indices(input: usize, output: usize) -> Vec<usize> {
    assert!(input > 0 && output > 0, "resize sizes must be positive");
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|i| ((i as f32 * scale).floor() as usize).min(input - 1))
        .collect()
}

/// Resizes a mask with torch `nearest` and binarises it (`> 0` becomes 1).
pub fn resize_mask_nearest(mask: &Mask, height: usize, width: usize) -> Mask {
    let ys = nearest_indices(mask.height, height);
    let xs = nearest_indices(mask.width, width);
    let mut data = Vec::with_capacity(height * width);
    for &sy in &ys {
        let row = &mask.data[sy * mask.width..(sy + 1) * mask.width];
        data.extend(xs.iter().map(|&sx| u8::from(row[sx] != 0)));
    }
    Mask {
        height,
        width,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn downscale_ramp_4_to_2() {
        // scale 2, support 2: output 0 centred at 1.0 uses inputs 0,1,2 with triangle weights
        // 0.75, 0.75, 0.25 (sum 1.75); output 1 centred at 3.0 uses inputs 1,2,3 with 0.25, 0.75, 0.75.
        let w = bilinear_aa_weights(4, 2);
        assert_eq!(w.starts, vec![0, 1]);
        assert_eq!(w.sizes, vec![3, 3]);
        close(w.of(0), &[0.75 / 1.75, 0.75 / 1.75, 0.25 / 1.75], 1e-7);
        close(w.of(1), &[0.25 / 1.75, 0.75 / 1.75, 0.75 / 1.75], 1e-7);
        let out = resize_planes_bilinear_aa(&[0.0, 1.0, 2.0, 3.0], 1, 1, 4, 1, 2);
        close(&out, &[1.25 / 1.75, 4.0 / 1.75], 1e-6); // 0.714286, 2.285714
    }

    #[test]
    fn upscale_2_to_4_is_plain_bilinear_with_edge_clamp() {
        // scale 0.5, support 1: centres 0.25, 0.75, 1.25, 1.75.
        let out = resize_planes_bilinear_aa(&[0.0, 1.0], 1, 1, 2, 1, 4);
        close(&out, &[0.0, 0.25, 0.75, 1.0], 1e-7);
        // Same along the height.
        let out = resize_planes_bilinear_aa(&[0.0, 1.0], 1, 2, 1, 4, 1);
        close(&out, &[0.0, 0.25, 0.75, 1.0], 1e-7);
    }

    #[test]
    fn downscale_3_to_1_and_6_to_4() {
        // 3 -> 1: centre 1.5, support 3: weights 1-|j+0.5-1.5|/3 = 2/3, 1, 2/3.
        let out = resize_planes_bilinear_aa(&[0.0, 3.0, 6.0], 1, 1, 3, 1, 1);
        close(&out, &[(3.0 + 4.0) / (2.0 / 3.0 + 1.0 + 2.0 / 3.0)], 1e-6);
        // 6 -> 4: scale 1.5. Output 0: centre 0.75, xmin = int(0.75-1.5+0.5)=0, xmax=int(2.75)=2;
        // weights (1-|0.5-0.75|/1.5, 1-|1.5-0.75|/1.5) = (5/6, 1/2).
        let w = bilinear_aa_weights(6, 4);
        assert_eq!(w.starts[0], 0);
        assert_eq!(w.sizes[0], 2);
        close(
            w.of(0),
            &[(5.0 / 6.0) / (4.0 / 3.0), 0.5 / (4.0 / 3.0)],
            1e-6,
        );
        // Output 1: centre 2.25, xmin=int(1.25)=1, xmax=int(4.25)=4: inputs 1,2,3 with
        // 1-|1.5-2.25|/1.5=0.5, 1-|2.5-2.25|/1.5=5/6, 1-|3.5-2.25|/1.5=1/6.
        assert_eq!((w.starts[1], w.sizes[1]), (1, 3));
        close(
            w.of(1),
            &[0.5 / 1.5, (5.0 / 6.0) / 1.5, (1.0 / 6.0) / 1.5],
            1e-6,
        );
    }

    #[test]
    fn constant_image_stays_constant_and_weights_sum_to_one() {
        for (i, o) in [(7, 3), (3, 7), (256, 64), (900, 256), (5, 5)] {
            let w = bilinear_aa_weights(i, o);
            for k in 0..o {
                let s: f32 = w.of(k).iter().sum();
                assert!((s - 1.0).abs() < 1e-5, "{i}->{o} #{k}: {s}");
            }
        }
        let data = vec![0.3f32; 3 * 5 * 9];
        let out = resize_planes_bilinear_aa(&data, 3, 5, 9, 4, 2);
        assert_eq!(out.len(), 3 * 4 * 2);
        close(&out, &[0.3; 24], 1e-6);
    }

    #[test]
    fn non_square_separable_2d() {
        // 2x4 -> 4x2: rows [0,1,2,3] and [4,5,6,7]. Width 4->2 gives [5/7, 16/7] and
        // [4+5/7, 4+16/7]; height 2->4 mixes the two rows with 1, 0.75/0.25, 0.25/0.75, 1.
        let data: Vec<f32> = (0..8).map(|v| v as f32).collect();
        let out = resize_planes_bilinear_aa(&data, 1, 2, 4, 4, 2);
        let a = 1.25f32 / 1.75;
        let b = 4.0f32 / 1.75;
        let expect = [a, b, a + 1.0, b + 1.0, a + 3.0, b + 3.0, a + 4.0, b + 4.0];
        close(&out, &expect, 1e-5);
    }

    #[test]
    fn same_size_is_unchanged() {
        let img = RgbImage32 {
            height: 2,
            width: 3,
            data: (0..18).map(|v| v as f32 * 0.1).collect(),
        };
        assert_eq!(resize_bilinear_aa(&img, 2, 3), img);
    }

    #[test]
    fn nearest_mask() {
        assert_eq!(nearest_indices(4, 2), vec![0, 2]);
        assert_eq!(nearest_indices(2, 4), vec![0, 0, 1, 1]);
        assert_eq!(nearest_indices(3, 2), vec![0, 1]); // floor(1 * 1.5) = 1
        assert_eq!(nearest_indices(5, 3), vec![0, 1, 3]); // floor(2 * 5/3) = 3
        let m = Mask {
            height: 2,
            width: 2,
            data: vec![0, 255, 7, 0],
        };
        let r = resize_mask_nearest(&m, 4, 4);
        assert_eq!(r.data, vec![0, 0, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0]);
    }
}
