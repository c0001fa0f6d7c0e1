//! The geometry of a square-kernel convolution, checked once, and the im2col / col2im maps that
//! eval and training kernels share.

use candle_core::{bail, Result};
use rayon::prelude::*;

use crate::gemm::{gather_segment, zero_segment, Im2col};

/// The sizes of one convolution `x (b, ci, h, w) ∗ w (co, ci, k, k)` with zero padding `pad`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeom {
    /// Images.
    pub b: usize,
    /// Input channels.
    pub ci: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub co: usize,
    /// Kernel side.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub pad: usize,
    /// Output height.
    pub ho: usize,
    /// Output width.
    pub wo: usize,
}

impl ConvGeom {
    /// Checks the shapes of input and kernel and derives the output size.
    pub fn new(x: &[usize], w: &[usize], stride: usize, pad: usize) -> Result<Self> {
        let (&[b, ci, h, wd], &[co, ci_w, kh, kw]) = (x, w) else {
            bail!("conv2d: expected NCHW input and (out, in, k, k) kernel, got {x:?} and {w:?}")
        };
        if ci != ci_w || kh != kw || stride == 0 || h + 2 * pad < kh || wd + 2 * pad < kw {
            bail!("conv2d: kernel {w:?} (stride {stride}, padding {pad}) does not fit input {x:?}")
        }
        Ok(ConvGeom {
            b,
            ci,
            h,
            w: wd,
            co,
            k: kh,
            stride,
            pad,
            ho: (h + 2 * pad - kh) / stride + 1,
            wo: (wd + 2 * pad - kw) / stride + 1,
        })
    }

    /// Rows of the im2col matrix: `ci·k·k`.
    pub fn kdim(&self) -> usize {
        self.ci * self.k * self.k
    }

    /// Output pixels per image.
    pub fn n(&self) -> usize {
        self.ho * self.wo
    }

    /// Input values per image.
    pub fn in_len(&self) -> usize {
        self.ci * self.h * self.w
    }

    /// Output values per image.
    pub fn out_len(&self) -> usize {
        self.co * self.n()
    }

    /// The output shape `(b, co, ho, wo)`.
    pub fn out_dims(&self) -> (usize, usize, usize, usize) {
        (self.b, self.co, self.ho, self.wo)
    }

    /// 1×1, stride 1, no padding: the image itself is its im2col matrix.
    pub fn pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }

    /// The im2col matrix of one image: the image itself when pointwise, else built in `buf`
    /// (a scratch buffer of `kdim·n` values).
    pub(crate) fn col<'a>(&self, img: &'a [f32], buf: &'a mut [f32]) -> &'a [f32] {
        if self.pointwise() {
            return img;
        }
        self.im2col(img, buf);
        buf
    }

    /// The im2col matrix of one image as a GEMM source read in place.
    pub(crate) fn im2col_source<'a>(&self, img: &'a [f32]) -> Im2col<'a> {
        Im2col {
            img,
            hw: (self.h, self.w),
            kernel: self.k,
            stride: self.stride,
            pad: self.pad,
            wo: self.wo,
        }
    }

    /// Writes rows `(c, ky, kx)` of the im2col matrix of one image into `col`, in parallel over
    /// rows.
    fn im2col(&self, img: &[f32], col: &mut [f32]) {
        let (h, w, k, stride, pad, ho, wo) = (
            self.h,
            self.w,
            self.k,
            self.stride,
            self.pad,
            self.ho,
            self.wo,
        );
        let n = ho * wo;
        col[..self.kdim() * n]
            .par_chunks_mut(n)
            .enumerate()
            .for_each(|(r, row)| {
                let c = r / (k * k);
                let ky = (r / k) % k;
                let kx = r % k;
                let plane = &img[c * h * w..(c + 1) * h * w];
                for oy in 0..ho {
                    let dst = &mut row[oy * wo..(oy + 1) * wo];
                    let iy = (oy * stride + ky) as isize - pad as isize;
                    if iy < 0 || iy >= h as isize {
                        zero_segment(dst);
                        continue;
                    }
                    let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                    gather_segment(dst, src, kx as isize - pad as isize, stride);
                }
            });
    }

    /// Adds the im2col-shaped gradient `dcol` back onto the image gradient `dimg` (zeroed),
    /// in parallel over input channels so that no two tasks write the same value.
    pub(crate) fn col2im(&self, dcol: &[f32], dimg: &mut [f32]) {
        self.col2im_columns(dcol, self.n(), 0, dimg);
    }

    /// [`Self::col2im`] from columns `col0 .. col0 + n` of a wider matrix whose rows hold `ld`
    /// values (a batch's im2col gradients side by side).
    pub(crate) fn col2im_columns(&self, dcol: &[f32], ld: usize, col0: usize, dimg: &mut [f32]) {
        let (kk, n, plane) = (self.k * self.k, self.n(), self.h * self.w);
        dimg.par_chunks_mut(plane).enumerate().for_each(|(c, img)| {
            for r in 0..kk {
                let row = &dcol[(c * kk + r) * ld + col0..][..n];
                self.col2im_row(row, img, r / self.k, r % self.k);
            }
        });
    }

    /// Adds one im2col row (kernel tap `ky`, `kx`) onto its input plane.
    fn col2im_row(&self, row: &[f32], img: &mut [f32], ky: usize, kx: usize) {
        let (h, w, s, p) = (
            self.h as isize,
            self.w as isize,
            self.stride,
            self.pad as isize,
        );
        for oy in 0..self.ho {
            let iy = (oy * s + ky) as isize - p;
            if iy < 0 || iy >= h {
                continue;
            }
            let dst = &mut img[iy as usize * self.w..][..self.w];
            let src = &row[oy * self.wo..][..self.wo];
            if s == 1 {
                // ix = ox + kx − pad: a shifted slice add, clipped at the borders.
                let shift = kx as isize - p;
                let lo = (-shift).clamp(0, self.wo as isize) as usize;
                let hi = (w - shift).clamp(0, self.wo as isize) as usize;
                if hi > lo {
                    let d0 = (lo as isize + shift) as usize;
                    for (d, v) in dst[d0..d0 + hi - lo].iter_mut().zip(&src[lo..hi]) {
                        *d += v;
                    }
                }
            } else {
                for (ox, v) in src.iter().enumerate() {
                    let ix = (ox * s + kx) as isize - p;
                    if ix >= 0 && ix < w {
                        dst[ix as usize] += v;
                    }
                }
            }
        }
    }
}
