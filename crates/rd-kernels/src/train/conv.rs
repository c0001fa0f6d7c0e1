//! Differentiable fused CPU kernels for training: convolution, training-mode BatchNorm (with an
//! optional ReLU), the residual add + ReLU, and the k2 s2 transposed convolution.
//!
//! Candle builds these layers from many small single-threaded ops (BatchNorm alone is a dozen f64
//! passes forward and as many backward) and runs the input gradient of a convolution through its
//! direct-loop `conv_transpose2d`. Here each layer is one Candle custom op whose forward and
//! backward are parallel loops plus GEMMs on the AVX-512 kernel of [`crate::sgemm`]:
//!
//! * convolution: forward `Y_b = W·col(X_b)`; backward `dWᵀ = Σ_b col(X_b)·dY_bᵀ` and
//!   `dX_b = col2im(Wᵀ·dY_b)` (every GEMM row-major: transposing `dY_b` or `W` explicitly is
//!   cheaper than a strided GEMM);
//! * BatchNorm: the batch statistics in f64 exactly as the reference path sums them, so the
//!   forward pass is bit-identical; the backward pass is the closed-form full gradient (through
//!   the mean and variance) with its sums in f64.
//!
//! The ops only run on contiguous f32 CPU tensors (see [`crate::fast::fast_ok`]); the callers keep
//! the pure-Candle reference path for everything else. Backward passes compute first-order
//! gradients only.

use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor,
};
use rayon::prelude::*;
use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

use crate::fast::{deconv2x2_data, gemm_acc, im2col, DeconvEpilogue};
use crate::sgemm::{try_sgemm_acc_from, try_sgemm_fused, Dense, Epilogue, Im2col, Lhs};

/// Independent f64 accumulators per channel in the BatchNorm backward sums.
const LANES: usize = 8;

/// Least GEMM depth (pixels summed over) of a weight-gradient GEMM, reached by grouping images.
const DW_MIN_DEPTH: usize = 512;

/// Element-wise passes work on chunks of this many values per rayon task.
const CHUNK: usize = 1 << 14;

/// The contiguous f32 data behind a custom op's input.
fn f32_data<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("{op}: expected f32 data, got {:?}", s.dtype())
    };
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("{op}: expected a contiguous input, got {:?}", l.shape())
    };
    Ok(&v[start..end])
}

/// Runs `f` on the contiguous f32 data of a CPU tensor (copying only when it is not).
fn with_f32<T>(t: &Tensor, op: &str, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
    let t = t.to_dtype(DType::F32)?.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(s) = &*storage else {
        bail!("{op}: runs on the CPU only")
    };
    Ok(f(f32_data(s, layout, op)?))
}

/// A fresh f32 tensor on the CPU.
fn tensor(v: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(v, shape, &candle_core::Device::Cpu)
}

thread_local! {
    /// Buffers for intermediates (im2col matrices, transposes), reused across calls on this
    /// thread: fresh multi-MiB allocations per layer cost a page fault per 4 KiB on every call.
    static SCRATCH: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer from this thread's scratch pool, of unspecified content; back to the pool on drop.
struct Scratch {
    buf: Vec<f32>,
    len: usize,
}

impl Scratch {
    /// A buffer of `len` values (not zeroed).
    fn take(len: usize) -> Self {
        let mut buf = SCRATCH.with(|s| s.borrow_mut().pop()).unwrap_or_default();
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        Scratch { buf, len }
    }

    /// A buffer of `len` zeros.
    fn zeroed(len: usize) -> Self {
        let mut s = Self::take(len);
        s.fill(0.0);
        s
    }
}

impl Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[..self.len]
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[..self.len]
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        SCRATCH.with(|s| s.borrow_mut().push(buf));
    }
}

/// `src` (rows×cols, row-major) transposed into a fresh cols×rows buffer.
fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * cols];
    transpose_into(src, rows, cols, &mut out);
    out
}

/// `src` (rows×cols, row-major) transposed into a scratch buffer.
fn transpose_scratch(src: &[f32], rows: usize, cols: usize) -> Scratch {
    let mut out = Scratch::take(rows * cols);
    transpose_into(src, rows, cols, &mut out);
    out
}

/// `src` (rows×cols, row-major) transposed into `out` (cols×rows), in parallel.
fn transpose_into(src: &[f32], rows: usize, cols: usize, out: &mut [f32]) {
    // Each task writes a band of output rows, reading the matching short run of every input row.
    const BAND: usize = 16;
    if rows == 0 || cols == 0 {
        return;
    }
    out.par_chunks_mut(BAND * rows)
        .enumerate()
        .for_each(|(band, dst)| {
            let j0 = band * BAND;
            let width = dst.len() / rows;
            for (i, row) in src.chunks_exact(cols).enumerate() {
                for (jj, &v) in row[j0..j0 + width].iter().enumerate() {
                    dst[jj * rows + i] = v;
                }
            }
        });
}

/// The sizes of one convolution `x (b, ci, h, w) ∗ w (co, ci, k, k)`.
#[derive(Debug, Clone, Copy)]
struct ConvGeom {
    b: usize,
    ci: usize,
    h: usize,
    w: usize,
    co: usize,
    k: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl ConvGeom {
    /// Checks the shapes of input and kernel and derives the output size.
    fn new(x: &[usize], w: &[usize], stride: usize, pad: usize) -> Result<Self> {
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
    fn kdim(&self) -> usize {
        self.ci * self.k * self.k
    }

    /// Output pixels per image.
    fn n(&self) -> usize {
        self.ho * self.wo
    }

    /// Input values per image.
    fn in_len(&self) -> usize {
        self.ci * self.h * self.w
    }

    /// 1×1, stride 1, no padding: the image itself is its im2col matrix.
    fn pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }

    /// The im2col matrix of one image: the image itself when pointwise, else built in `buf`
    /// (a scratch buffer of `kdim·n` values).
    fn col<'a>(&self, img: &'a [f32], buf: &'a mut [f32]) -> &'a [f32] {
        if self.pointwise() {
            return img;
        }
        let (h, w, k, s, p, ho, wo) = (
            self.h,
            self.w,
            self.k,
            self.stride,
            self.pad,
            self.ho,
            self.wo,
        );
        im2col(img, buf, h, w, k, k, s, p, ho, wo);
        buf
    }

    /// The im2col matrix of one image as a GEMM source read in place.
    fn im2col_source<'a>(&self, img: &'a [f32]) -> Im2col<'a> {
        Im2col {
            img,
            hw: (self.h, self.w),
            kernel: self.k,
            stride: self.stride,
            pad: self.pad,
            wo: self.wo,
        }
    }

    /// Adds the im2col-shaped gradient `dcol` back onto the image gradient `dimg` (zeroed),
    /// in parallel over input channels so that no two tasks write the same value.
    fn col2im(&self, dcol: &[f32], dimg: &mut [f32]) {
        let (kk, n, plane) = (self.k * self.k, self.n(), self.h * self.w);
        dimg.par_chunks_mut(plane).enumerate().for_each(|(c, img)| {
            for r in 0..kk {
                let row = &dcol[(c * kk + r) * n..][..n];
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

/// Convolution without bias, square kernel, zero padding (see [`conv2d`]).
struct Conv2dOp {
    stride: usize,
    pad: usize,
}

impl Conv2dOp {
    /// `dW` (co, ci·k·k) = `(Σ_b col(X_b)·dY_bᵀ)ᵀ`.
    fn grad_weight(&self, g: &ConvGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
        let (kd, n, co) = (g.kdim(), g.n(), g.co);
        // On small maps one image gives a shallow GEMM (depth = its pixels, 64 on an 8×8 map),
        // which spends its time storing tiles: images go in groups of at least DW_MIN_DEPTH
        // pixels, their im2col matrices side by side and their transposed dY stacked.
        let group = (DW_MIN_DEPTH / n).clamp(1, g.b);
        let mut dwt = Scratch::zeroed(kd * co);
        let mut buf = Scratch::take(if g.pointwise() { 0 } else { kd * n });
        let mut colg = Scratch::take(if group > 1 { kd * group * n } else { 0 });
        let mut dyt = Scratch::take(group * n * co);
        for b0 in (0..g.b).step_by(group) {
            let gb = group.min(g.b - b0);
            let depth = gb * n;
            for j in 0..gb {
                let dyb = &dy[(b0 + j) * co * n..][..co * n];
                transpose_into(dyb, co, n, &mut dyt[j * n * co..][..n * co]);
            }
            let image = |j: usize| &x[(b0 + j) * g.in_len()..][..g.in_len()];
            if gb == 1 {
                let col = g.col(image(0), &mut buf);
                gemm_acc(&mut dwt, col, &dyt[..depth * co], kd, co, depth);
                continue;
            }
            for j in 0..gb {
                let col = g.col(image(j), &mut buf);
                colg[..kd * depth]
                    .par_chunks_mut(depth)
                    .zip(col.par_chunks(n))
                    .for_each(|(dst, src)| dst[j * n..(j + 1) * n].copy_from_slice(src));
            }
            gemm_acc(
                &mut dwt,
                &colg[..kd * depth],
                &dyt[..depth * co],
                kd,
                co,
                depth,
            );
        }
        transpose(&dwt, kd, co)
    }

    /// `dX_b = col2im(Wᵀ·dY_b)`.
    fn grad_input(&self, g: &ConvGeom, w: &[f32], dy: &[f32]) -> Vec<f32> {
        let (kd, n, co) = (g.kdim(), g.n(), g.co);
        // Wᵀ (kd × co) read in place by the AVX-512 GEMM: element (i, p) is w[p·kd + i].
        let wt_view = Lhs {
            data: w,
            row_stride: 1,
            col_stride: kd,
        };
        let mut wt = None;
        let mut dx = vec![0f32; g.b * g.in_len()];
        let mut dcol = Scratch::take(if g.pointwise() { 0 } else { kd * n });
        for (bi, dxb) in dx.chunks_exact_mut(g.in_len()).enumerate() {
            let dyb = &dy[bi * co * n..][..co * n];
            let target: &mut [f32] = if g.pointwise() { dxb } else { &mut dcol };
            // Overwrites the target (no zeroing pass).
            let rhs = Dense { data: dyb, n };
            if !try_sgemm_fused(target, wt_view, &rhs, (kd, n, co), &Epilogue::default()) {
                let wt = wt.get_or_insert_with(|| transpose_scratch(w, co, kd));
                target.fill(0.0);
                gemm_acc(target, wt, dyb, kd, n, co);
            }
            if !g.pointwise() {
                g.col2im(&dcol, dxb);
            }
        }
        dx
    }
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "rd-conv2d"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = ConvGeom::new(xl.dims(), wl.dims(), self.stride, self.pad)?;
        let (x, w) = (f32_data(xs, xl, "conv2d")?, f32_data(ws, wl, "conv2d")?);
        let (kd, n) = (g.kdim(), g.n());
        let mut out = vec![0f32; g.b * g.co * n];
        let mut buf = Vec::new();
        for (bi, dst) in out.chunks_exact_mut(g.co * n).enumerate() {
            let img = &x[bi * g.in_len()..][..g.in_len()];
            // Packed straight from the image where the AVX-512 GEMM runs (no im2col buffer).
            let lhs = Lhs::row_major(w, kd);
            let packed = if g.pointwise() {
                try_sgemm_acc_from(dst, lhs, &Dense { data: img, n }, g.co, n, kd)
            } else {
                try_sgemm_acc_from(dst, lhs, &g.im2col_source(img), g.co, n, kd)
            };
            if !packed {
                buf.resize(if g.pointwise() { 0 } else { kd * n }, 0.0);
                let col = g.col(img, &mut buf);
                gemm_acc(dst, w, col, g.co, n, kd);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((g.b, g.co, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = ConvGeom::new(x.dims(), w.dims(), self.stride, self.pad)?;
        let dx = if x.track_op() {
            let v = with_f32(w, "conv2d", |w| {
                with_f32(dy, "conv2d", |dy| self.grad_input(&g, w, dy))
            })??;
            Some(tensor(v, x.dims())?)
        } else {
            None
        };
        let dw = if w.track_op() {
            let v = with_f32(x, "conv2d", |x| {
                with_f32(dy, "conv2d", |dy| self.grad_weight(&g, x, dy))
            })??;
            Some(tensor(v, w.dims())?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// Differentiable `conv2d(x, w)` without bias: `x` (b, ci, h, w) and a square kernel
/// `w` (co, ci, k, k), zero padding `pad` on every side, stride `stride`; f32 on the CPU.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&w.contiguous()?, Conv2dOp { stride, pad })
}

/// Per-channel batch mean and biased variance of NCHW data, in f64, summed exactly as the
/// reference BatchNorm sums them (sequentially over batch, then pixels; two passes).
pub fn channel_stats(x: &[f32], b: usize, c: usize, hw: usize) -> (Vec<f64>, Vec<f64>) {
    let n = b * hw;
    let scale = 1f64 / n as f64;
    let planes = |ch: usize| (0..b).map(move |bi| &x[(bi * c + ch) * hw..][..hw]);
    (0..c)
        .into_par_iter()
        .map(|ch| {
            // `v * scale + 0.0` is how Candle's `mean` scales its sum.
            let mut sum = 0f64;
            planes(ch).flatten().for_each(|&v| sum += v as f64);
            let mean = sum * scale + 0.0;
            let mut sq = 0f64;
            planes(ch).flatten().for_each(|&v| {
                let d = v as f64 - mean;
                sq += d * d;
            });
            (mean, sq * scale + 0.0)
        })
        .unzip()
}

/// Training-mode BatchNorm with given batch statistics, optionally followed by ReLU (see
/// [`batch_norm_train`]).
struct BatchNormOp {
    mean: Vec<f32>,
    invstd: Vec<f32>,
    relu: bool,
}

/// Per-channel sums of the backward pass, in f64: `Σdy` and `Σdy·x̂`.
struct BnSums {
    dy: Vec<f64>,
    dy_xhat: Vec<f64>,
}

impl BatchNormOp {
    /// `dy` masked by the ReLU (`y > 0`) when there is one.
    fn masked(&self, dy: f32, y: f32) -> f32 {
        if !self.relu || y > 0.0 {
            dy
        } else {
            0.0
        }
    }

    /// The per-channel sums over batch and pixels.
    fn sums(&self, x: &[f32], y: &[f32], dy: &[f32], b: usize, hw: usize) -> BnSums {
        let c = self.mean.len();
        let (sdy, sdyx) = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mut s1, mut s2) = ([0f64; LANES], [0f64; LANES]);
                for bi in 0..b {
                    let r = (bi * c + ch) * hw..(bi * c + ch + 1) * hw;
                    self.plane_sums(&x[r.clone()], &y[r.clone()], &dy[r], ch, &mut s1, &mut s2);
                }
                let is = self.invstd[ch] as f64;
                (s1.iter().sum::<f64>(), s2.iter().sum::<f64>() * is)
            })
            .unzip();
        BnSums {
            dy: sdy,
            dy_xhat: sdyx,
        }
    }

    /// Adds one plane's `Σdy` and `Σdy·(x − mean)` to per-lane f64 accumulators (independent
    /// lanes, so the loop vectorises instead of waiting on one chain of dependent adds).
    fn plane_sums(
        &self,
        x: &[f32],
        y: &[f32],
        dy: &[f32],
        ch: usize,
        s1: &mut [f64; LANES],
        s2: &mut [f64; LANES],
    ) {
        let m = self.mean[ch] as f64;
        let mut add = |x: &[f32], y: &[f32], dy: &[f32]| {
            for l in 0..x.len().min(LANES) {
                let g = self.masked(dy[l], y[l]) as f64;
                s1[l] += g;
                s2[l] += g * (x[l] as f64 - m);
            }
        };
        let (xs, ys, ds) = (
            x.chunks_exact(LANES),
            y.chunks_exact(LANES),
            dy.chunks_exact(LANES),
        );
        let rest = (xs.remainder(), ys.remainder(), ds.remainder());
        for ((x, y), dy) in xs.zip(ys).zip(ds) {
            add(x, y, dy);
        }
        add(rest.0, rest.1, rest.2);
    }

    /// `dx = γ·invstd·(dy − Σdy/n − x̂·Σ(dy·x̂)/n)`, as `a·dy + b·(x − mean) + c` per channel.
    #[allow(clippy::too_many_arguments)]
    fn grad_input(
        &self,
        x: &[f32],
        y: &[f32],
        dy: &[f32],
        gamma: &[f32],
        s: &BnSums,
        b: usize,
    ) -> Vec<f32> {
        let c = self.mean.len();
        let hw = x.len() / (b * c);
        let n = (b * hw) as f64;
        let coef: Vec<(f32, f32, f32)> = (0..c)
            .map(|ch| {
                let (is, ga) = (self.invstd[ch] as f64, gamma[ch] as f64);
                let a = ga * is;
                (
                    a as f32,
                    (-a * is * s.dy_xhat[ch] / n) as f32,
                    (-a * s.dy[ch] / n) as f32,
                )
            })
            .collect();
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(hw).enumerate().for_each(|(p, out)| {
            let ch = p % c;
            let (a, bb, cc) = coef[ch];
            let m = self.mean[ch];
            let o = p * hw;
            for (i, d) in out.iter_mut().enumerate() {
                let g = self.masked(dy[o + i], y[o + i]);
                *d = a * g + bb * (x[o + i] - m) + cc;
            }
        });
        dx
    }
}

impl CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        "rd-batch-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(xs, xl, "batch_norm")?;
        let (gamma, beta) = (
            f32_data(gs, gl, "batch_norm")?,
            f32_data(bs, bl, "batch_norm")?,
        );
        let &[_, c, h, w] = xl.dims() else {
            bail!("batch_norm: expected an NCHW input, got {:?}", xl.shape())
        };
        if gamma.len() != c || beta.len() != c || self.mean.len() != c {
            bail!("batch_norm: {} channels but {} weights", c, gamma.len())
        }
        // Same operations in the same order as the reference: (x − mean)·(invstd·γ) + β.
        let scale: Vec<f32> = self.invstd.iter().zip(gamma).map(|(i, g)| i * g).collect();
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(h * w)
            .zip(x.par_chunks(h * w))
            .enumerate()
            .for_each(|(p, (o, x))| {
                let ch = p % c;
                let (m, s, b) = (self.mean[ch], scale[ch], beta[ch]);
                for (o, &x) in o.iter_mut().zip(x) {
                    let v = (x - m) * s + b;
                    *o = if self.relu { v.max(0.0) } else { v };
                }
            });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, _, h, w) = x.dims4()?;
        let gv = gamma.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let need_dx = x.track_op();
        let (sums, dx) = with_f32(x, "batch_norm", |x| {
            with_f32(res, "batch_norm", |y| {
                with_f32(dy, "batch_norm", |dy| {
                    let sums = self.sums(x, y, dy, b, h * w);
                    let dx = need_dx.then(|| self.grad_input(x, y, dy, &gv, &sums, b));
                    (sums, dx)
                })
            })
        })???;
        let as_f32 = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
        let dx = dx.map(|v| tensor(v, x.dims())).transpose()?;
        let dg = gamma
            .track_op()
            .then(|| tensor(as_f32(&sums.dy_xhat), gamma.dims()));
        let db = beta
            .track_op()
            .then(|| tensor(as_f32(&sums.dy), beta.dims()));
        Ok((dx, dg.transpose()?, db.transpose()?))
    }
}

/// The per-channel f64 batch mean and biased variance of an NCHW f32 tensor (see
/// [`channel_stats`]).
pub fn batch_stats(x: &Tensor) -> Result<(Vec<f64>, Vec<f64>)> {
    let (b, c, h, w) = x.dims4()?;
    with_f32(x, "batch_norm", |x| channel_stats(x, b, c, h * w))
}

/// Differentiable training-mode BatchNorm `(x − mean)·(invstd·γ) + β` of NCHW `x` with the
/// given batch statistics (f32, per channel), followed by ReLU when `relu`.
///
/// The gradient flows through the statistics too, as if they had been computed from `x` (they
/// must be `x`'s batch mean and 1/√(var + ε)).
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: Vec<f32>,
    invstd: Vec<f32>,
    relu: bool,
) -> Result<Tensor> {
    let op = BatchNormOp { mean, invstd, relu };
    x.contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)
}

/// `relu(a + b)` (see [`add_relu`]).
struct AddReluOp;

impl CustomOp2 for AddReluOp {
    fn name(&self) -> &'static str {
        "rd-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            bail!(
                "add_relu: shapes {:?} and {:?} differ",
                l1.shape(),
                l2.shape()
            )
        }
        let (a, b) = (f32_data(s1, l1, "add_relu")?, f32_data(s2, l2, "add_relu")?);
        let mut out = vec![0f32; a.len()];
        out.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(o, (a, b))| {
                for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
                    *o = (a + b).max(0.0);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = with_f32(res, "add_relu", |y| {
            with_f32(dy, "add_relu", |dy| {
                let mut g = vec![0f32; y.len()];
                g.par_chunks_mut(CHUNK)
                    .zip(y.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
                    .for_each(|(g, (y, dy))| {
                        for ((g, y), dy) in g.iter_mut().zip(y).zip(dy) {
                            *g = if *y > 0.0 { *dy } else { 0.0 };
                        }
                    });
                g
            })
        })??;
        let g = tensor(g, res.dims())?;
        let ga = a.track_op().then(|| g.clone());
        let gb = b.track_op().then_some(g);
        Ok((ga, gb))
    }
}

/// Differentiable `relu(a + b)` for f32 CPU tensors of one shape (the residual join).
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.contiguous()?.apply_op2(&b.contiguous()?, AddReluOp)
}

/// ConvTranspose2d with kernel 2, stride 2, no padding or bias (see [`deconv2x2`]).
struct Deconv2x2Op;

/// The sizes of `x (b, ci, h, w)` against `w (ci, co, 2, 2)`: (b, ci, co, h, w).
fn deconv_dims(x: &[usize], w: &[usize]) -> Result<(usize, usize, usize, usize, usize)> {
    match (x, w) {
        (&[b, ci, h, wd], &[ci_w, co, 2, 2]) if ci == ci_w => Ok((b, ci, co, h, wd)),
        _ => bail!("deconv2x2: kernel {w:?} does not fit input {x:?} (want (in, out, 2, 2))"),
    }
}

impl Deconv2x2Op {
    /// The inverse of the forward pixel shuffle: output-plane gradients back into rows
    /// `(o, dy, dx)`.
    fn unshuffle(grad: &[f32], rows: &mut [f32], h: usize, w: usize) {
        let n = h * w;
        rows.par_chunks_mut(n).enumerate().for_each(|(r, dst)| {
            let (o, dy, dx) = (r / 4, (r / 2) % 2, r % 2);
            let plane = &grad[o * 4 * n..][..4 * n];
            for (y, dst) in dst.chunks_exact_mut(w).enumerate() {
                let row = &plane[(2 * y + dy) * 2 * w..][..2 * w];
                for (x, d) in dst.iter_mut().enumerate() {
                    *d = row[2 * x + dx];
                }
            }
        });
    }
}

impl CustomOp2 for Deconv2x2Op {
    fn name(&self) -> &'static str {
        "rd-deconv2x2"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, ci, co, h, wd) = deconv_dims(xl.dims(), wl.dims())?;
        let (x, w) = (
            f32_data(xs, xl, "deconv2x2")?,
            f32_data(ws, wl, "deconv2x2")?,
        );
        let epilogue = DeconvEpilogue::default();
        let out = deconv2x2_data(x, w, (b, ci, co), (h, wd), &epilogue);
        Ok((CpuStorage::F32(out), Shape::from((b, co, 2 * h, 2 * wd))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (b, ci, co, h, wd) = deconv_dims(x.dims(), w.dims())?;
        let (n, c4) = (h * wd, co * 4);
        let (need_dx, need_dw) = (x.track_op(), w.track_op());
        let (dx, dw) = with_f32(x, "deconv2x2", |x| {
            with_f32(w, "deconv2x2", |w| {
                with_f32(dy, "deconv2x2", |dy| {
                    let mut dx = vec![0f32; if need_dx { b * ci * n } else { 0 }];
                    let mut dw = vec![0f32; if need_dw { ci * c4 } else { 0 }];
                    let (mut u, mut ut) = (Scratch::take(c4 * n), Scratch::take(c4 * n));
                    for bi in 0..b {
                        Self::unshuffle(&dy[bi * c4 * n..][..c4 * n], &mut u, h, wd);
                        if need_dx {
                            gemm_acc(&mut dx[bi * ci * n..][..ci * n], w, &u, ci, n, c4);
                        }
                        if need_dw {
                            transpose_into(&u, c4, n, &mut ut);
                            gemm_acc(&mut dw, &x[bi * ci * n..][..ci * n], &ut, ci, c4, n);
                        }
                    }
                    (dx, dw)
                })
            })
        })???;
        let dx = need_dx.then(|| tensor(dx, x.dims())).transpose()?;
        let dw = need_dw.then(|| tensor(dw, w.dims())).transpose()?;
        Ok((dx, dw))
    }
}

/// Differentiable ConvTranspose2d (kernel 2, stride 2, no padding or bias) of NCHW `x` with
/// `w` (ci, co, 2, 2): one GEMM and a pixel shuffle per image.
pub fn deconv2x2(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, Deconv2x2Op)
}
