//! Parallel CPU kernels for the anomaly-map stages, next to the reference path built from Candle
//! ops in [`crate::map`].
//!
//! Each stage of the Candle path is several single-threaded passes (the cosine alone is six ops;
//! the blur is two `index_select` paddings and two im2col convolutions of a one-channel map). Here
//! each stage is one parallel pass over plain `f32` buffers, with the same formulas: PyTorch's
//! cosine (`a·b / max(‖a‖²‖b‖², ε²)^½`), PyTorch's align-corners bilinear weights, and the
//! separable σ-blur with reflect borders.

use rayon::prelude::*;

use crate::COSINE_EPS;

/// Pixels per parallel task of the cosine pass.
const COSINE_CHUNK: usize = 1024;

/// `1 − cos` over the channels of two `[b, c, n]` buffers, as `[b, n]`.
pub fn cosine_distance(t: &[f32], s: &[f32], b: usize, c: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; b * n];
    let eps2 = (COSINE_EPS * COSINE_EPS) as f32;
    out.par_chunks_mut(n).enumerate().for_each(|(bi, img)| {
        let (t, s) = (&t[bi * c * n..][..c * n], &s[bi * c * n..][..c * n]);
        img.par_chunks_mut(COSINE_CHUNK)
            .enumerate()
            .for_each(|(j, dst)| {
                let p0 = j * COSINE_CHUNK;
                let len = dst.len();
                let mut dot = vec![0f32; len];
                let mut aa = vec![0f32; len];
                let mut bb = vec![0f32; len];
                for ch in 0..c {
                    let tr = &t[ch * n + p0..][..len];
                    let sr = &s[ch * n + p0..][..len];
                    for i in 0..len {
                        dot[i] += tr[i] * sr[i];
                        aa[i] += tr[i] * tr[i];
                        bb[i] += sr[i] * sr[i];
                    }
                }
                for i in 0..len {
                    dst[i] = 1.0 - dot[i] / (aa[i] * bb[i]).max(eps2).sqrt();
                }
            });
    });
    out
}

/// One axis of an align-corners bilinear resize: for each output index, the two source indices
/// and the weight of the second, as PyTorch computes them (`scale = (in − 1)/(out − 1)` in f32).
fn linear_taps(n_in: usize, n_out: usize) -> Vec<(usize, usize, f32)> {
    let scale = if n_out > 1 {
        (n_in - 1) as f32 / (n_out - 1) as f32
    } else {
        0.0
    };
    (0..n_out)
        .map(|o| {
            let src = scale * o as f32;
            let i0 = (src as usize).min(n_in - 1);
            let i1 = (i0 + 1).min(n_in - 1);
            (i0, i1, src - i0 as f32)
        })
        .collect()
}

/// Bilinear resize with `align_corners = true` of `[b, h, w]` maps to `[b, oh, ow]`.
pub fn upsample_align_corners(
    src: &[f32],
    b: usize,
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
) -> Vec<f32> {
    let (ty, tx) = (linear_taps(h, oh), linear_taps(w, ow));
    let mut out = vec![0f32; b * oh * ow];
    out.par_chunks_mut(ow).enumerate().for_each(|(r, row)| {
        let (bi, y) = (r / oh, r % oh);
        let (y0, y1, ly) = ty[y];
        let plane = &src[bi * h * w..][..h * w];
        let (r0, r1) = (&plane[y0 * w..][..w], &plane[y1 * w..][..w]);
        for (o, &(x0, x1, lx)) in row.iter_mut().zip(&tx) {
            let top = (1.0 - lx) * r0[x0] + lx * r0[x1];
            let bottom = (1.0 - lx) * r1[x0] + lx * r1[x1];
            *o = (1.0 - ly) * top + ly * bottom;
        }
    });
    out
}

/// PyTorch reflect index of `i − r` in `0..n` (the edge is not repeated); needs `r < n`.
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    let j = if i < 0 { -i } else { i };
    (if j >= n { 2 * (n - 1) - j } else { j }) as usize
}

/// Separable blur of `[b, h, w]` maps with a `(2r + 1)`-tap kernel and reflect padding: rows
/// first, then columns (the order of the reference path).
pub fn blur_reflect(src: &[f32], b: usize, (h, w): (usize, usize), kernel: &[f32]) -> Vec<f32> {
    let r = kernel.len() / 2;
    let mut tmp = vec![0f32; b * h * w];
    tmp.par_chunks_mut(w)
        .zip(src.par_chunks(w))
        .for_each(|(dst, row)| {
            let padded: Vec<f32> = (0..w + 2 * r)
                .map(|i| row[reflect(i as isize - r as isize, w)])
                .collect();
            for (x, d) in dst.iter_mut().enumerate() {
                let win = &padded[x..x + kernel.len()];
                *d = win.iter().zip(kernel).fold(0.0, |acc, (v, k)| acc + v * k);
            }
        });
    let mut out = vec![0f32; b * h * w];
    out.par_chunks_mut(w).enumerate().for_each(|(rr, dst)| {
        let (bi, y) = (rr / h, rr % h);
        let plane = &tmp[bi * h * w..][..h * w];
        dst.fill(0.0);
        for (t, k) in kernel.iter().enumerate() {
            let sy = reflect(y as isize + t as isize - r as isize, h);
            let srow = &plane[sy * w..][..w];
            for (d, v) in dst.iter_mut().zip(srow) {
                *d += v * k;
            }
        }
    });
    out
}

/// The maximum of each of `b` equal parts of `v`.
pub fn max_per_image(v: &[f32], b: usize) -> Vec<f32> {
    let n = v.len() / b.max(1);
    v.par_chunks(n.max(1))
        .map(|img| img.iter().copied().fold(f32::NEG_INFINITY, f32::max))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_matches_torch() {
        // n = 4, r = 2: padded = [2 1 | 0 1 2 3 | 2 1]
        let idx: Vec<usize> = (-2..6).map(|i| reflect(i, 4)).collect();
        assert_eq!(idx, [2, 1, 0, 1, 2, 3, 2, 1]);
    }

    #[test]
    fn upsample_keeps_corners_and_interpolates_midpoints() {
        let src = [0.0, 1.0, 2.0, 3.0];
        let out = upsample_align_corners(&src, 1, (2, 2), (3, 3));
        assert_eq!(out, [0.0, 0.5, 1.0, 1.0, 1.5, 2.0, 2.0, 2.5, 3.0]);
    }

    #[test]
    fn cosine_of_parallel_and_zero_vectors() {
        // two pixels, two channels: (1, 2) vs (2, 4) → 0; (0, 0) vs (1, 1) → 1
        let t = [1.0, 0.0, 2.0, 0.0];
        let s = [2.0, 1.0, 4.0, 1.0];
        let d = cosine_distance(&t, &s, 1, 2, 2);
        assert!(d[0].abs() < 1e-6 && (d[1] - 1.0).abs() < 1e-6, "{d:?}");
    }
}
