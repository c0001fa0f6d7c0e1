//! The differentiable convolution.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::scratch::{transpose_into, transpose_scratch, Scratch};
use crate::eval::{conv2d_wide, scatter_planes, BATCH_BELOW_PIXELS};
use crate::gemm::{self, gemm_acc, Batch, Dense, Im2colRows, MatRef};
use crate::tensor::{check_len, ensure_cpu_f32, f32_slice, from_vec, with_f32};
use crate::ConvGeom;
use crate::Epilogue;

/// Least GEMM depth (pixels summed over) of a weight-gradient GEMM, reached by grouping images.
const DW_MIN_DEPTH: usize = 512;

/// Output pixels per image below which (or at a stride above 1) the weight gradient runs as
/// one GEMM with `col(X)ᵀ` packed from the images ([`Im2colRows`], 16 taps × 16 pixels
/// transposed in registers): there the explicit im2col matrices, their grouping and the
/// transposes cost more than the GEMM (batch 8, summed over a step's layers of one shape:
/// resnet18 128² 16×16 maps of 128 channels 15.0–16.8 → 11.5–12.1 ms; wide_resnet50_2 128²
/// 16×16 of 256 channels 54–56 → 44–46 ms), while on maps of 32×32 and more the explicit
/// matrices' GEMM keeps its packed operand in the caches and wins (resnet18's 64 channels:
/// 13.2–13.8 ms explicit against 15.0–16.3).
const DIRECT_DW_BELOW_PIXELS: usize = 1024;

/// Output pixels per image below which the input gradient runs as [`grad_input_direct`]: on the
/// 4×4 maps reading `W` transposed dominates (resnet18, 128², batch 8: 9.6 → 5.4 ms per 512-channel
/// layer, the OCBE's 768-channel one 13.3 → 7.5 ms); from 8×8 up the scatter from pixel-major
/// rows costs more than it saves (8×8, 256 channels: 7.3 → 8.8–15 ms).
const DIRECT_DX_BELOW_PIXELS: usize = 64;

/// Convolution without bias, square kernel, zero padding (see [`conv2d`]).
struct Conv2dOp {
    stride: usize,
    pad: usize,
}

/// The training convolution's forward pass on raw data: `out` (b, co, ho, wo) = `x` (b, ci, h,
/// w) ∗ `w` (co, ci, k, k), overwriting `out`. Small maps go through one GEMM for the batch, as
/// in eval mode (the same sums).
///
/// # Panics
///
/// When a slice's length differs from what `g` says.
pub fn conv2d_forward(g: &ConvGeom, x: &[f32], w: &[f32], out: &mut [f32]) {
    crate::kernel_call("convolution forward", || {
        check_len(
            "conv2d_forward",
            &[(x, g.b * g.in_len()), (w, g.co * g.kdim())],
        );
        check_len("conv2d_forward", &[(out, g.b * g.out_len())]);
        forward(g, x, w, out)
    })
}

/// [`conv2d_forward`] after its checks.
fn forward(g: &ConvGeom, x: &[f32], w: &[f32], out: &mut [f32]) {
    let (kd, n) = (g.kdim(), g.n());
    if g.b > 1 && n < BATCH_BELOW_PIXELS {
        if let Some(wide) = conv2d_wide(x, w, g, &Epilogue::default()) {
            scatter_planes(&wide, out, (g.b, g.co, n), &Epilogue::default());
            return;
        }
    }
    let mut buf = Vec::new();
    let plain = Epilogue::default();
    for (bi, dst) in out.chunks_exact_mut(g.co * n).enumerate() {
        let img = &x[bi * g.in_len()..][..g.in_len()];
        // Packed straight from the image where the AVX-512 GEMM runs (no im2col buffer), and
        // stored over `dst` (no zeroing pass before, no read of it in the first k block).
        let lhs = MatRef::rows(w, kd);
        let shape = (g.co, n, kd);
        let packed = if g.pointwise() {
            gemm::try_fused(dst, lhs, &Dense { data: img, n }, shape, &plain)
        } else {
            gemm::try_fused(dst, lhs, &g.im2col_source(img), shape, &plain)
        };
        if !packed {
            dst.fill(0.0);
            buf.resize(if g.pointwise() { 0 } else { kd * n }, 0.0);
            let col = g.col(img, &mut buf);
            gemm_acc(dst, w, col, g.co, n, kd);
        }
    }
}

/// The weight gradient of the training convolution: `dw` (co, ci·k·k) = `Σ_b dY_b·col(X_b)ᵀ`,
/// overwriting `dw`.
///
/// # Panics
///
/// When a slice's length differs from what `g` says.
pub fn conv2d_grad_weight(g: &ConvGeom, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    crate::kernel_call("convolution weight gradient", || {
        check_len(
            "conv2d_grad_weight",
            &[(x, g.b * g.in_len()), (dy, g.b * g.out_len())],
        );
        check_len("conv2d_grad_weight", &[(dw, g.co * g.kdim())]);
        grad_weight(g, x, dy, dw)
    })
}

/// The input gradient of the training convolution: `dx` (b, ci, h, w) = `col2im(Wᵀ·dY_b)`,
/// overwriting `dx`.
///
/// # Panics
///
/// When a slice's length differs from what `g` says.
pub fn conv2d_grad_input(g: &ConvGeom, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    crate::kernel_call("convolution input gradient", || {
        check_len(
            "conv2d_grad_input",
            &[(w, g.co * g.kdim()), (dy, g.b * g.out_len())],
        );
        check_len("conv2d_grad_input", &[(dx, g.b * g.in_len())]);
        grad_input(g, w, dy, dx)
    })
}

/// `dW` (co, ci·k·k) = `dY·col(X)ᵀ` as one GEMM whose depth is the whole batch's pixels: `dY`
/// with the images side by side as the lhs, `col(X)ᵀ` packed straight from the images
/// ([`Im2colRows`]). `false` (nothing written) without AVX-512.
fn grad_weight_direct(g: &ConvGeom, x: &[f32], dy: &[f32], dw: &mut [f32]) -> bool {
    let (kd, n, co, b) = (g.kdim(), g.n(), g.co, g.b);
    let depth = b * n;
    let dys = ChannelRows::of(dy, b, co, n);
    let lhs = dys.rows();
    let rhs = Im2colRows {
        x,
        in_len: g.in_len(),
        hw: (g.h, g.w),
        kernel: g.k,
        stride: g.stride,
        pad: g.pad,
        wo: g.wo,
        n,
    };
    dw.fill(0.0);
    gemm::try_acc_from(dw, MatRef::rows(lhs, depth), &rhs, co, kd, depth)
}

/// An NCHW gradient as a `co × b·n` matrix (row `o` holds channel `o` of every image, side by
/// side): the batch's `dY` as one GEMM operand. A batch of one is its own.
struct ChannelRows<'a> {
    dy: &'a [f32],
    stacked: Option<Scratch>,
}

impl<'a> ChannelRows<'a> {
    fn of(dy: &'a [f32], b: usize, co: usize, n: usize) -> Self {
        if b == 1 {
            return ChannelRows { dy, stacked: None };
        }
        let mut rows = Scratch::take(co * b * n);
        rows.par_chunks_mut(b * n).enumerate().for_each(|(o, row)| {
            for (bi, dst) in row.chunks_exact_mut(n).enumerate() {
                dst.copy_from_slice(&dy[(bi * co + o) * n..][..n]);
            }
        });
        ChannelRows {
            dy,
            stacked: Some(rows),
        }
    }

    fn rows(&self) -> &[f32] {
        self.stacked.as_deref().unwrap_or(self.dy)
    }
}

/// `dW` (co, ci·k·k) = `(Σ_b col(X_b)·dY_bᵀ)ᵀ`, or [`grad_weight_direct`] where that is faster.
fn grad_weight(g: &ConvGeom, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let direct = g.n() < DIRECT_DW_BELOW_PIXELS || g.stride > 1;
    if direct && grad_weight_direct(g, x, dy, dw) {
        return;
    }
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
    transpose_into(&dwt, kd, co, dw);
}

/// `dX = col2im(dcolᵀ)` with `dcolᵀ (b·n × ci·k·k) = dYᵀ·W` as one GEMM: the batch's `dY`
/// read transposed in place (consecutive pixels, a short stride between channels) and `W` packed
/// as it is stored, where `Wᵀ·dY` reads `W` transposed (a new page every step of the depth).
/// `false` (nothing written) without AVX-512.
fn grad_input_direct(g: &ConvGeom, w: &[f32], dy: &[f32], dx: &mut [f32]) -> bool {
    let (kd, n, co, b) = (g.kdim(), g.n(), g.co, g.b);
    let bn = b * n;
    let dys = ChannelRows::of(dy, b, co, n);
    let mut dcol = Scratch::zeroed(bn * kd);
    let lhs = MatRef::transposed(dys.rows(), bn);
    if !gemm::try_acc_from(&mut dcol, lhs, &Dense { data: w, n: kd }, bn, kd, co) {
        return false;
    }
    let (kk, plane) = (g.k * g.k, g.h * g.w);
    let (s, pad) = (g.stride as isize, g.pad as isize);
    dx.par_chunks_mut(plane).enumerate().for_each(|(p, img)| {
        let (bi, c) = (p / g.ci, p % g.ci);
        img.fill(0.0);
        for q in 0..n {
            let (oy, ox) = ((q / g.wo) as isize, (q % g.wo) as isize);
            let taps = &dcol[(bi * n + q) * kd + c * kk..][..kk];
            for (t, v) in taps.iter().enumerate() {
                let iy = oy * s + (t / g.k) as isize - pad;
                let ix = ox * s + (t % g.k) as isize - pad;
                if iy >= 0 && iy < g.h as isize && ix >= 0 && ix < g.w as isize {
                    img[iy as usize * g.w + ix as usize] += v;
                }
            }
        }
    });
    true
}

/// The input gradient of a stride-1 convolution as a forward convolution: `dY` convolved with
/// the kernel transposed (in ↔ out) and flipped, with padding `k − 1 − pad`. Packed straight
/// from `dY` like any forward pass, and `Σ` over the output channels and taps runs inside the
/// GEMM: no im2col-shaped intermediate (9× the input for 3×3 kernels, written then read back by
/// col2im), and a depth of `co·k²` instead of `co`. resnet18, batch 8, summed over a step's
/// layers of one shape: 128² 16×16 maps 17.7–28.1 → 14.7–17.7 ms, 32×32 19.4–21.5 → 17.1–18.4
/// ms; 256² 32×32 73.6–76.4 → 60.9–62.7 ms, 64×64 74–76 → 59–75 ms.
fn grad_input_as_conv(g: &ConvGeom, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    let (ci, co, kk) = (g.ci, g.co, g.k * g.k);
    let mut flipped = Scratch::take(ci * co * kk);
    flipped
        .par_chunks_mut(co * kk)
        .enumerate()
        .for_each(|(c, dst)| {
            for (o, taps) in dst.chunks_exact_mut(kk).enumerate() {
                let src = &w[(o * ci + c) * kk..][..kk];
                for (t, v) in taps.iter_mut().enumerate() {
                    *v = src[kk - 1 - t];
                }
            }
        });
    let transposed = ConvGeom {
        b: g.b,
        ci: co,
        h: g.ho,
        w: g.wo,
        co: ci,
        k: g.k,
        stride: 1,
        pad: g.k - 1 - g.pad,
        ho: g.h,
        wo: g.w,
    };
    forward(&transposed, dy, &flipped, dx);
}

/// `dX_b = col2im(Wᵀ·dY_b)`, or [`grad_input_direct`] or [`grad_input_as_conv`] where they are
/// faster: what is left for the first is strided convolutions on maps of 8×8 and up.
fn grad_input(g: &ConvGeom, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    let (kd, n, co) = (g.kdim(), g.n(), g.co);
    if n < DIRECT_DX_BELOW_PIXELS && grad_input_direct(g, w, dy, dx) {
        return;
    }
    if g.stride == 1 {
        return grad_input_as_conv(g, w, dy, dx);
    }
    // Wᵀ (kd × co) read in place by the AVX-512 GEMM: element (i, p) is w[p·kd + i].
    let wt_view = MatRef::transposed(w, kd);
    dx.fill(0.0);
    if g.b > 1 && n < BATCH_BELOW_PIXELS && grad_input_batched(g, wt_view, dy, dx) {
        return;
    }
    let mut wt = None;
    let mut dcol = Scratch::take(kd * n);
    for (bi, dxb) in dx.chunks_exact_mut(g.in_len()).enumerate() {
        let dyb = &dy[bi * co * n..][..co * n];
        // Overwrites `dcol` (no zeroing pass).
        let rhs = Dense { data: dyb, n };
        if !gemm::try_fused(&mut dcol, wt_view, &rhs, (kd, n, co), &Epilogue::default()) {
            let wt = wt.get_or_insert_with(|| transpose_scratch(w, co, kd));
            dcol.fill(0.0);
            gemm_acc(&mut dcol, wt, dyb, kd, n, co);
        }
        g.col2im(&dcol, dxb);
    }
}

/// [`grad_input`] as one GEMM over the batch (the images' `dY` side by side), for small maps
/// where one GEMM per image would stream `W` once per image; `dx` must be zeroed. Each value
/// sums in the same order as per image. `false` (nothing written) without AVX-512.
fn grad_input_batched(g: &ConvGeom, wt: MatRef, dy: &[f32], dx: &mut [f32]) -> bool {
    let (kd, n, b) = (g.kdim(), g.n(), g.b);
    let images: Vec<Dense> = dy
        .chunks_exact(g.co * n)
        .map(|data| Dense { data, n })
        .collect();
    let rhs = Batch { images: &images, n };
    let mut wide = Scratch::take(kd * b * n);
    if !gemm::try_fused(&mut wide, wt, &rhs, (kd, b * n, g.co), &Epilogue::default()) {
        return false;
    }
    for (bi, dxb) in dx.chunks_exact_mut(g.in_len()).enumerate() {
        g.col2im_columns(&wide, b * n, bi * n, dxb);
    }
    true
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
        let (x, w) = (f32_slice(xs, xl, "conv2d")?, f32_slice(ws, wl, "conv2d")?);
        let mut out = vec![0f32; g.b * g.out_len()];
        conv2d_forward(&g, x, w, &mut out);
        Ok((CpuStorage::F32(out), Shape::from(g.out_dims())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = ConvGeom::new(x.dims(), w.dims(), self.stride, self.pad)?;
        // One gradient, `f(a, dy, out)` on the f32 data and shaped like `like`, if it needs one.
        type Grad<'a> = &'a dyn Fn(&[f32], &[f32], &mut [f32]);
        let grad = |like: &Tensor, a: &Tensor, f: Grad| {
            if !like.track_op() {
                return Ok(None);
            }
            let mut v = vec![0f32; like.elem_count()];
            with_f32(a, "conv2d", |a| {
                with_f32(dy, "conv2d", |dy| f(a, dy, &mut v))
            })??;
            from_vec(v, like.dims()).map(Some)
        };
        let dx = grad(x, w, &|w, dy, dx| conv2d_grad_input(&g, w, dy, dx))?;
        let dw = grad(w, x, &|x, dy, dw| conv2d_grad_weight(&g, x, dy, dw))?;
        Ok((dx, dw))
    }
}

/// Differentiable `conv2d(x, w)` without bias: `x` (b, ci, h, w) and a square kernel
/// `w` (co, ci, k, k), zero padding `pad` on every side, stride `stride`; f32 on the CPU.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    ensure_cpu_f32("train::conv2d", &[x, w])?;
    x.contiguous()?
        .apply_op2(&w.contiguous()?, Conv2dOp { stride, pad })
}
