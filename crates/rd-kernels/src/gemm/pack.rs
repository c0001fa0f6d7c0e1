//! Right-hand sides that the GEMM's packing pass reads piecewise: a dense matrix, or the im2col
//! matrix of an image read straight from the image (no im2col buffer).

use super::avx512::{gather_segment, pack_im2col, pack_im2col_rows, zero_segment};
use super::NR;

/// The right-hand side of a GEMM as a k × n matrix that the packing pass reads piecewise, so a
/// convolution can be packed straight from its input image without an im2col buffer.
pub trait RhsSource: Sync {
    /// Writes rows `p0 .. p0 + kc`, columns `j0 .. j0 + w` (`w ≤ NR`) into `panel`, row `p`
    /// at `panel[p·NR ..][.. w]` (`panel` may end right after the last row's `w` values); the
    /// caller zeroes columns `w ..`.
    fn pack_panel(&self, p0: usize, kc: usize, j0: usize, w: usize, panel: &mut [f32]);
}

/// A dense row-major k × n matrix.
#[derive(Debug, Clone, Copy)]
pub struct Dense<'a> {
    /// The values, row-major.
    pub data: &'a [f32],
    /// Columns per row.
    pub n: usize,
}

impl RhsSource for Dense<'_> {
    fn pack_panel(&self, p0: usize, kc: usize, j0: usize, w: usize, panel: &mut [f32]) {
        if w == NR {
            // A constant length: an inline copy, where a call would cost more than the copy.
            for p in 0..kc {
                let src = &self.data[(p0 + p) * self.n + j0..][..NR];
                panel[p * NR..][..NR].copy_from_slice(src);
            }
            return;
        }
        for p in 0..kc {
            let src = &self.data[(p0 + p) * self.n + j0..][..w];
            gather_segment(&mut panel[p * NR..][..w], src, 0, 1);
        }
    }
}

/// The im2col matrix of one NCHW image for a square-kernel convolution, read in place: row
/// `(c, ky, kx)`, column `(oy, ox)` holds `img[c][oy·s + ky − pad][ox·s + kx − pad]` (0 outside).
#[derive(Debug, Clone, Copy)]
pub struct Im2col<'a> {
    /// One image, `c × h × w`.
    pub img: &'a [f32],
    /// Input height and width.
    pub hw: (usize, usize),
    /// Kernel side.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub pad: usize,
    /// Output width.
    pub wo: usize,
}

impl Im2col<'_> {
    /// Fills `seg` with output pixels `(oy, ox ..)` of kernel tap `(ky, kx)` from `plane`.
    fn segment(
        &self,
        plane: &[f32],
        (ky, kx): (usize, usize),
        (oy, ox): (usize, usize),
        seg: &mut [f32],
    ) {
        let (h, w) = self.hw;
        let (s, pad) = (self.stride as isize, self.pad as isize);
        let iy = oy as isize * s + ky as isize - pad;
        if iy < 0 || iy >= h as isize {
            return zero_segment(seg);
        }
        let row = &plane[iy as usize * w..][..w];
        let x0 = ox as isize * s + kx as isize - pad;
        gather_segment(seg, row, x0, self.stride);
    }
}

impl RhsSource for Im2col<'_> {
    fn pack_panel(&self, p0: usize, kc: usize, j0: usize, w: usize, panel: &mut [f32]) {
        if pack_im2col(self, p0, kc, (j0, w), panel) {
            return;
        }
        let (h, wi) = self.hw;
        // The panel's columns as runs within output rows: (oy, ox, length, offset).
        let mut runs = [(0usize, 0usize, 0usize, 0usize); NR];
        let mut n_runs = 0;
        let mut off = 0;
        while off < w {
            let q = j0 + off;
            let (oy, ox) = (q / self.wo, q % self.wo);
            let len = (self.wo - ox).min(w - off);
            runs[n_runs] = (oy, ox, len, off);
            n_runs += 1;
            off += len;
        }
        for (p, (c, ky, kx)) in kernel_taps(p0, self.kernel).take(kc).enumerate() {
            let row = &mut panel[p * NR..];
            let plane = &self.img[c * h * wi..][..h * wi];
            for &(oy, ox, len, off) in &runs[..n_runs] {
                self.segment(plane, (ky, kx), (oy, ox), &mut row[off..off + len]);
            }
        }
    }
}

/// The im2col rows `(channel, ky, kx)` from row `p0` on, for a `k × k` kernel, in order
/// (counted up, not divided out per row: the packing loops run once per row of 4–32 values).
pub(crate) fn kernel_taps(p0: usize, k: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    let first = (p0 / (k * k), (p0 / k) % k, p0 % k);
    std::iter::successors(Some(first), move |&(c, ky, kx)| {
        Some(match (ky + 1 == k, kx + 1 == k) {
            (_, false) => (c, ky, kx + 1),
            (false, true) => (c, ky + 1, 0),
            (true, true) => (c + 1, 0, 0),
        })
    })
}

/// Several images' matrices side by side, `n` columns each: column `b·n + j` is column `j` of
/// `images[b]`. One GEMM then covers a whole batch, reading the weights once instead of once
/// per image (which dominates on small feature maps).
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a, S> {
    /// One source per image, each k × `n`.
    pub images: &'a [S],
    /// Columns per image.
    pub n: usize,
}

impl<S: RhsSource> RhsSource for Batch<'_, S> {
    fn pack_panel(&self, p0: usize, kc: usize, j0: usize, w: usize, panel: &mut [f32]) {
        let mut off = 0;
        while off < w {
            let (b, j) = ((j0 + off) / self.n, (j0 + off) % self.n);
            let len = (self.n - j).min(w - off);
            self.images[b].pack_panel(p0, kc, j, len, &mut panel[off..]);
            off += len;
        }
    }
}

/// The im2col matrices of a batch, transposed and stacked, read in place: row `b·n + q` is
/// output pixel `q` of image `b`, column `(c, ky, kx)` holds `img_b[c][oy·s + ky − pad][ox·s +
/// kx − pad]` (0 outside). The rhs of a weight gradient `dW = dY·col(X)ᵀ` whose depth is the
/// whole batch's pixels: no im2col matrix, no transposes.
#[derive(Debug, Clone, Copy)]
pub struct Im2colRows<'a> {
    /// The batch, `b × c × h × w`.
    pub x: &'a [f32],
    /// Values per image (`c·h·w`).
    pub in_len: usize,
    /// Input height and width.
    pub hw: (usize, usize),
    /// Kernel side.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub pad: usize,
    /// Output width.
    pub wo: usize,
    /// Output pixels per image.
    pub n: usize,
}

impl RhsSource for Im2colRows<'_> {
    fn pack_panel(&self, p0: usize, kc: usize, j0: usize, w: usize, panel: &mut [f32]) {
        if pack_im2col_rows(self, p0, kc, (j0, w), panel) {
            return;
        }
        let (h, wi) = self.hw;
        let (k, pad) = (self.kernel, self.pad as isize);
        // Each column's plane offset and tap offsets, decoded once per panel.
        let mut taps = [(0usize, 0isize, 0isize); NR];
        for (t, tap) in taps[..w].iter_mut().enumerate() {
            let r = j0 + t;
            let (c, ky, kx) = (r / (k * k), (r / k) % k, r % k);
            *tap = (c * h * wi, ky as isize - pad, kx as isize - pad);
        }
        for p in 0..kc {
            let row = p0 + p;
            let (b, q) = (row / self.n, row % self.n);
            let img = &self.x[b * self.in_len..][..self.in_len];
            let by = ((q / self.wo) * self.stride) as isize;
            let bx = ((q % self.wo) * self.stride) as isize;
            let dst = &mut panel[p * NR..][..w];
            for (d, &(off, dy, dx)) in dst.iter_mut().zip(&taps[..w]) {
                let (iy, ix) = (by + dy, bx + dx);
                *d = if iy >= 0 && iy < h as isize && ix >= 0 && ix < wi as isize {
                    img[off + iy as usize * wi + ix as usize]
                } else {
                    0.0
                };
            }
        }
    }
}
