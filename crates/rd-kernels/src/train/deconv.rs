//! The differentiable k2 s2 transposed convolution.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::scratch::{transpose_into, Scratch};
use crate::eval::{deconv2x2_into, deconv_dims, scatter_planes, BATCH_BELOW_PIXELS};
use crate::gemm::gemm_acc;
use crate::tensor::{check_len, ensure_cpu_f32, f32_slice, from_vec, with_f32};
use crate::Epilogue;

/// ConvTranspose2d with kernel 2, stride 2, no padding or bias (see [`deconv2x2`]).
struct Deconv2x2Op;

impl Deconv2x2Op {
    /// The inverse of the forward pixel shuffle: output-plane gradients back into rows
    /// `(o, dy, dx)`.
    fn unshuffle(grad: &[f32], rows: &mut [f32], h: usize, w: usize) {
        let n = h * w;
        rows.par_chunks_mut(n).enumerate().for_each(|(r, dst)| {
            Self::unshuffle_row(grad, r, dst, h, w);
        });
    }

    /// Row `r = (o, dy, dx)` of [`Self::unshuffle`]: one value per input pixel.
    fn unshuffle_row(grad: &[f32], r: usize, dst: &mut [f32], h: usize, w: usize) {
        let n = h * w;
        let (o, dy, dx) = (r / 4, (r / 2) % 2, r % 2);
        let plane = &grad[o * 4 * n..][..4 * n];
        for (y, dst) in dst.chunks_exact_mut(w).enumerate() {
            let row = &plane[(2 * y + dy) * 2 * w..][..2 * w];
            for (x, d) in dst.iter_mut().enumerate() {
                *d = row[2 * x + dx];
            }
        }
    }

    /// The backward pass as two GEMMs over the whole batch (its images' pixels side by side),
    /// for small maps: per image, `dW += X_b·U_bᵀ` is a GEMM `n` deep that rewrites all of `dW`
    /// (up to 8 MiB) for 16 or 64 pixels, and `dX_b = W·U_b` streams `W` once per image.
    #[allow(clippy::too_many_arguments)]
    fn backward_batched(
        x: &[f32],
        w: &[f32],
        dy: &[f32],
        (b, ci, co): (usize, usize, usize),
        (h, wd): (usize, usize),
        dx: &mut [f32],
        dw: &mut [f32],
    ) {
        let (n, c4) = (h * wd, co * 4);
        let bn = b * n;
        // U (c4 × b·n): row (o, dy, dx) holds that tap's gradient for every pixel of the batch.
        let mut u = Scratch::take(c4 * bn);
        u.par_chunks_mut(bn).enumerate().for_each(|(r, row)| {
            for (bi, dst) in row.chunks_exact_mut(n).enumerate() {
                Self::unshuffle_row(&dy[bi * c4 * n..][..c4 * n], r, dst, h, wd);
            }
        });
        if !dx.is_empty() {
            let mut wide = Scratch::zeroed(ci * bn);
            gemm_acc(&mut wide, w, &u, ci, bn, c4);
            scatter_planes(&wide, dx, (b, ci, n), &Epilogue::default());
        }
        if !dw.is_empty() {
            let mut ut = Scratch::take(bn * c4);
            transpose_into(&u, c4, bn, &mut ut);
            let mut xw = Scratch::take(ci * bn);
            xw.par_chunks_mut(bn).enumerate().for_each(|(c, row)| {
                for (bi, dst) in row.chunks_exact_mut(n).enumerate() {
                    dst.copy_from_slice(&x[(bi * ci + c) * n..][..n]);
                }
            });
            gemm_acc(dw, &xw, &ut, ci, c4, bn);
        }
    }
}

/// The sizes of a k2 s2 transposed convolution: images, input and output channels, and the
/// input map's height and width (the output's are twice those).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeconvGeom {
    /// Images.
    pub b: usize,
    /// Input channels.
    pub ci: usize,
    /// Output channels.
    pub co: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
}

impl DeconvGeom {
    /// Checks `x (b, ci, h, w)` against `w (ci, co, 2, 2)`.
    pub fn new(x: &[usize], w: &[usize]) -> Result<Self> {
        let (b, ci, co, h, w) = deconv_dims(x, w)?;
        Ok(DeconvGeom { b, ci, co, h, w })
    }

    /// Input values of the batch.
    pub fn in_len(&self) -> usize {
        self.b * self.ci * self.h * self.w
    }

    /// Output values of the batch.
    pub fn out_len(&self) -> usize {
        self.b * self.co * 4 * self.h * self.w
    }

    /// Weight values.
    pub fn weight_len(&self) -> usize {
        self.ci * self.co * 4
    }
}

/// The training transposed convolution's forward pass on raw data, overwriting `out`.
///
/// # Panics
///
/// When a slice's length differs from what `g` says.
pub fn deconv2x2_forward(g: &DeconvGeom, x: &[f32], w: &[f32], out: &mut [f32]) {
    crate::kernel_call("deconvolution forward", || {
        let lens = [(x, g.in_len()), (w, g.weight_len()), (out, g.out_len())];
        check_len("deconv2x2_forward", &lens);
        let (dims, hw) = ((g.b, g.ci, g.co), (g.h, g.w));
        deconv2x2_into(x, w, dims, hw, &Epilogue::default(), out);
    })
}

/// The backward pass of [`deconv2x2_forward`]: the input gradient into `dx` when given, the
/// weight gradient into `dw` when given (both overwritten).
///
/// # Panics
///
/// When a slice's length differs from what `g` says.
pub fn deconv2x2_backward(
    g: &DeconvGeom,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dw: Option<&mut [f32]>,
) {
    crate::kernel_call("deconvolution backward", || {
        let lens = [(x, g.in_len()), (w, g.weight_len()), (dy, g.out_len())];
        check_len("deconv2x2_backward", &lens);
        let (b, ci, co, h, wd) = (g.b, g.ci, g.co, g.h, g.w);
        let (n, c4) = (h * wd, co * 4);
        let dx = dx.unwrap_or_default();
        let dw = dw.unwrap_or_default();
        if !dx.is_empty() {
            check_len("deconv2x2_backward", &[(dx, g.in_len())]);
            dx.fill(0.0);
        }
        if !dw.is_empty() {
            check_len("deconv2x2_backward", &[(dw, g.weight_len())]);
            dw.fill(0.0);
        }
        if b > 1 && n < BATCH_BELOW_PIXELS {
            let (dims, hw) = ((b, ci, co), (h, wd));
            Deconv2x2Op::backward_batched(x, w, dy, dims, hw, dx, dw);
            return;
        }
        let (mut u, mut ut) = (Scratch::take(c4 * n), Scratch::take(c4 * n));
        for bi in 0..b {
            Deconv2x2Op::unshuffle(&dy[bi * c4 * n..][..c4 * n], &mut u, h, wd);
            if !dx.is_empty() {
                gemm_acc(&mut dx[bi * ci * n..][..ci * n], w, &u, ci, n, c4);
            }
            if !dw.is_empty() {
                transpose_into(&u, c4, n, &mut ut);
                gemm_acc(dw, &x[bi * ci * n..][..ci * n], &ut, ci, c4, n);
            }
        }
    })
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
        let g = DeconvGeom::new(xl.dims(), wl.dims())?;
        let (x, w) = (
            f32_slice(xs, xl, "deconv2x2")?,
            f32_slice(ws, wl, "deconv2x2")?,
        );
        let mut out = vec![0f32; g.out_len()];
        deconv2x2_forward(&g, x, w, &mut out);
        Ok((
            CpuStorage::F32(out),
            Shape::from((g.b, g.co, 2 * g.h, 2 * g.w)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = DeconvGeom::new(x.dims(), w.dims())?;
        let mut dx = x.track_op().then(|| vec![0f32; g.in_len()]);
        let mut dw = w.track_op().then(|| vec![0f32; g.weight_len()]);
        with_f32(x, "deconv2x2", |x| {
            with_f32(w, "deconv2x2", |w| {
                with_f32(dy, "deconv2x2", |dy| {
                    deconv2x2_backward(&g, x, w, dy, dx.as_deref_mut(), dw.as_deref_mut())
                })
            })
        })???;
        let dx = dx.map(|v| from_vec(v, x.dims())).transpose()?;
        let dw = dw.map(|v| from_vec(v, w.dims())).transpose()?;
        Ok((dx, dw))
    }
}

/// Differentiable ConvTranspose2d (kernel 2, stride 2, no padding or bias) of NCHW `x` with
/// `w` (ci, co, 2, 2): one GEMM and a pixel shuffle per image.
pub fn deconv2x2(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    ensure_cpu_f32("train::deconv2x2", &[x, w])?;
    x.contiguous()?.apply_op2(&w.contiguous()?, Deconv2x2Op)
}
