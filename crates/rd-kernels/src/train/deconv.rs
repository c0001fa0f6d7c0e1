//! The differentiable k2 s2 transposed convolution.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::scratch::{transpose_into, Scratch};
use crate::eval::{deconv2x2_data, deconv_dims, scatter_planes, BATCH_BELOW_PIXELS};
use crate::gemm::gemm_acc;
use crate::tensor::{ensure_cpu_f32, f32_slice, from_vec, with_f32};
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
        crate::kernel_call("deconvolution forward", || {
            let (b, ci, co, h, wd) = deconv_dims(xl.dims(), wl.dims())?;
            let (x, w) = (
                f32_slice(xs, xl, "deconv2x2")?,
                f32_slice(ws, wl, "deconv2x2")?,
            );
            let epilogue = Epilogue::default();
            let out = deconv2x2_data(x, w, (b, ci, co), (h, wd), &epilogue);
            Ok((CpuStorage::F32(out), Shape::from((b, co, 2 * h, 2 * wd))))
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        crate::kernel_call("deconvolution backward", || {
            let (b, ci, co, h, wd) = deconv_dims(x.dims(), w.dims())?;
            let (n, c4) = (h * wd, co * 4);
            let (need_dx, need_dw) = (x.track_op(), w.track_op());
            let (dx, dw) = with_f32(x, "deconv2x2", |x| {
                with_f32(w, "deconv2x2", |w| {
                    with_f32(dy, "deconv2x2", |dy| {
                        let mut dx = vec![0f32; if need_dx { b * ci * n } else { 0 }];
                        let mut dw = vec![0f32; if need_dw { ci * c4 } else { 0 }];
                        if b > 1 && n < BATCH_BELOW_PIXELS {
                            let (dims, hw) = ((b, ci, co), (h, wd));
                            Self::backward_batched(x, w, dy, dims, hw, &mut dx, &mut dw);
                            return (dx, dw);
                        }
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
            let dx = need_dx.then(|| from_vec(dx, x.dims())).transpose()?;
            let dw = need_dw.then(|| from_vec(dw, w.dims())).transpose()?;
            Ok((dx, dw))
        })
    }
}

/// Differentiable ConvTranspose2d (kernel 2, stride 2, no padding or bias) of NCHW `x` with
/// `w` (ci, co, 2, 2): one GEMM and a pixel shuffle per image.
pub fn deconv2x2(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    ensure_cpu_f32("train::deconv2x2", &[x, w])?;
    x.contiguous()?.apply_op2(&w.contiguous()?, Deconv2x2Op)
}
