//! Fused eval-mode kernels (no autograd graph): convolution and the k2 s2 transposed
//! convolution with their BatchNorm, residual and ReLU, and the stem's max-pool.
//!
//! Candle's CPU `conv2d` copies NCHW to NHWC on one thread and builds its im2col in small tiles,
//! reaching about a third of its own matmul speed; `conv_transpose2d` has no matmul path at all;
//! and every element-wise op (BatchNorm's sub/mul/add, ReLU, the residual add) is a separate,
//! single-threaded pass over the activations. The kernels here do, per layer and image:
//!
//! * one GEMM whose rhs is packed straight from the image ([`crate::gemm::Im2col`]; the image
//!   itself for 1×1 stride-1 convolutions), with the weights read in place: the AVX-512 kernel
//!   where the CPU has AVX-512F, else im2col and the `gemm` crate;
//! * the eval-mode BatchNorm (`y·γ/σ + β − μ·γ/σ`), the residual add and ReLU applied as the
//!   GEMM stores each output tile ([`Epilogue`]).
//!
//! The k2 s2 transposed convolution is one pixel-major GEMM (`xᵀ · w`, the weight streamed as
//! stored) and a pixel shuffle that applies the same epilogue; it also serves as the forward
//! pass of the training op [`crate::train::deconv2x2`]. The stem's max-pool is one parallel
//! pass. Every function takes f32 CPU tensors only (see [`crate::enabled`]).

use candle_core::{bail, Result, Tensor};
use rayon::prelude::*;

use crate::gemm::{self, gemm_crate_acc, gemm_strided_acc, Batch, Dense, MatRef};
use crate::geom::ConvGeom;
use crate::tensor::{ensure_cpu_f32, from_vec, with_f32, with_f32_opt};
use crate::{count_call, Affine, Epilogue};

/// `act(conv2d(x, w)·scale + shift + residual)` for NCHW `x` and square kernels `w`
/// (c_out, c_in, k, k), with zero padding; a fresh tensor without autograd graph.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    bn: Option<&Affine>,
    stride: usize,
    padding: usize,
    residual: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    ensure_cpu_f32("eval::conv2d", &[x, w])?;
    count_call();
    let g = ConvGeom::new(x.dims(), w.dims(), stride, padding)?;
    check_residual("eval::conv2d", residual, g.out_dims())?;
    if let Some(bn) = bn {
        check_affine("eval::conv2d", bn, g.co)?;
    }
    let (k, n) = (g.kdim(), g.n());
    if g.b > 1 && n < BATCH_BELOW_PIXELS {
        if let Some(out) = conv2d_batched(x, w, &g, bn, residual, relu)? {
            return Ok(out);
        }
    }
    let mut out = vec![0f32; g.b * g.out_len()];
    let fused = with_f32_opt(residual, "eval::conv2d", |rv| {
        with_f32(w, "eval::conv2d", |wv| {
            with_f32(x, "eval::conv2d", |xv| {
                (0..g.b).all(|bi| {
                    let img = &xv[bi * g.in_len()..][..g.in_len()];
                    let dst = &mut out[bi * g.out_len()..][..g.out_len()];
                    let epilogue = Epilogue {
                        affine: bn,
                        residual: rv.map(|r| &r[bi * g.out_len()..][..g.out_len()]),
                        relu,
                    };
                    let lhs = MatRef::rows(wv, k);
                    if g.pointwise() {
                        let rhs = Dense { data: img, n };
                        return gemm::try_fused(dst, lhs, &rhs, (g.co, n, k), &epilogue);
                    }
                    // Packed straight from the image: no im2col buffer.
                    let rhs = g.im2col_source(img);
                    gemm::try_fused(dst, lhs, &rhs, (g.co, n, k), &epilogue)
                })
            })
        })
    })???;
    if !fused {
        // No AVX-512: im2col and the `gemm` crate, then the epilogue as a separate pass.
        with_f32(w, "eval::conv2d", |wv| {
            with_f32(x, "eval::conv2d", |xv| {
                let mut col = vec![0f32; if g.pointwise() { 0 } else { k * n }];
                for bi in 0..g.b {
                    let img = &xv[bi * g.in_len()..][..g.in_len()];
                    let dst = &mut out[bi * g.out_len()..][..g.out_len()];
                    gemm_crate_acc(dst, wv, g.col(img, &mut col), g.co, n, k);
                }
            })
        })??;
        with_f32_opt(residual, "eval::conv2d", |rv| {
            let epilogue = Epilogue {
                affine: bn,
                residual: rv,
                relu,
            };
            apply_planes(&mut out, n, g.co, &epilogue);
        })?;
    }
    let (b, co, ho, wo) = g.out_dims();
    from_vec(out, (b, co, ho, wo))
}

/// Output pixels per image below which the images of a batch share one GEMM: on small maps a
/// layer's weights (up to 14 MiB in the OCBE) outweigh an image's activations, and one GEMM per
/// image would stream them from memory once per image. Every output element sums in the same
/// order either way, so the results are bit-identical.
pub(crate) const BATCH_BELOW_PIXELS: usize = 1024;

/// [`conv2d`] as one GEMM over the whole batch (the images' im2col matrices side by side), then
/// a scatter into NCHW that adds the residual and applies ReLU. `None` without AVX-512.
fn conv2d_batched(
    x: &Tensor,
    w: &Tensor,
    g: &ConvGeom,
    bn: Option<&Affine>,
    residual: Option<&Tensor>,
    relu: bool,
) -> Result<Option<Tensor>> {
    const OP: &str = "eval::conv2d";
    // The affine (and ReLU when nothing is added after it) as the GEMM stores its tiles.
    let epilogue = Epilogue {
        affine: bn,
        residual: None,
        relu: relu && residual.is_none(),
    };
    let wide = with_f32(w, OP, |wv| {
        with_f32(x, OP, |xv| conv2d_wide(xv, wv, g, &epilogue))
    })??;
    let Some(wide) = wide else {
        return Ok(None);
    };
    let mut out = vec![0f32; g.b * g.out_len()];
    with_f32_opt(residual, OP, |rv| {
        let after = Epilogue {
            affine: None,
            residual: rv,
            relu: relu && rv.is_some(),
        };
        scatter_planes(&wide, &mut out, (g.b, g.co, g.n()), &after);
    })?;
    let (b, co, ho, wo) = g.out_dims();
    Ok(Some(from_vec(out, (b, co, ho, wo))?))
}

/// The convolution of a whole batch as one GEMM, channel-major (`co × b·n`: row `i` holds
/// channel `i` of every image, see [`scatter_planes`]), `epilogue` (no residual) applied as
/// tiles are stored. `None` without AVX-512.
pub(crate) fn conv2d_wide(
    x: &[f32],
    w: &[f32],
    g: &ConvGeom,
    epilogue: &Epilogue,
) -> Option<Vec<f32>> {
    let (k, n, b) = (g.kdim(), g.n(), g.b);
    let mut wide = vec![0f32; g.co * b * n];
    let lhs = MatRef::rows(w, k);
    let images = x.chunks_exact(g.in_len());
    let shape = (g.co, b * n, k);
    let fused = if g.pointwise() {
        let images: Vec<Dense> = images.map(|data| Dense { data, n }).collect();
        let rhs = Batch { images: &images, n };
        gemm::try_fused(&mut wide, lhs, &rhs, shape, epilogue)
    } else {
        let images: Vec<_> = images.map(|img| g.im2col_source(img)).collect();
        let rhs = Batch { images: &images, n };
        gemm::try_fused(&mut wide, lhs, &rhs, shape, epilogue)
    };
    fused.then_some(wide)
}

/// Copies channel-major `wide` (`co × b × n`: row `i` holds channel `i` of every image) into
/// NCHW `out` (`b × co × n`), applying `epilogue` (its residual laid out like `out`) per plane.
pub(crate) fn scatter_planes(
    wide: &[f32],
    out: &mut [f32],
    (b, co, n): (usize, usize, usize),
    epilogue: &Epilogue,
) {
    let planes_per_task = (1 << 14) / n.max(1) + 1;
    out.par_chunks_mut(n)
        .with_min_len(planes_per_task)
        .enumerate()
        .for_each(|(plane, dst)| {
            let (bi, i) = (plane / co, plane % co);
            dst.copy_from_slice(&wide[(i * b + bi) * n..][..n]);
            let res = epilogue.residual.map(|r| &r[plane * n..][..n]);
            epilogue.apply(i, dst, res);
        });
}

/// Fails unless `residual` (when given) has the output's shape.
fn check_residual(
    op: &str,
    residual: Option<&Tensor>,
    out: (usize, usize, usize, usize),
) -> Result<()> {
    if let Some(r) = residual {
        let (b, c, h, w) = out;
        if r.dims() != [b, c, h, w] {
            bail!("{op}: residual {:?} vs output {:?}", r.dims(), [b, c, h, w]);
        }
        ensure_cpu_f32(op, &[r])?;
    }
    Ok(())
}

/// Fails unless the affine has one scale and shift per output channel.
fn check_affine(op: &str, bn: &Affine, channels: usize) -> Result<()> {
    if bn.scale.len() != channels || bn.shift.len() != channels {
        bail!(
            "{op}: {} output channels but a BatchNorm of {} scales and {} shifts",
            channels,
            bn.scale.len(),
            bn.shift.len()
        );
    }
    Ok(())
}

/// Applies `epilogue` to every channel plane (`n` values each, `co` channels per image), in
/// parallel; its residual is laid out like `out`.
fn apply_planes(out: &mut [f32], n: usize, co: usize, epilogue: &Epilogue) {
    let planes_per_task = (1 << 14) / n.max(1) + 1;
    out.par_chunks_mut(n)
        .with_min_len(planes_per_task)
        .enumerate()
        .for_each(|(i, plane)| {
            let res = epilogue.residual.map(|r| &r[i * n..][..n]);
            epilogue.apply(i % co, plane, res);
        });
}

/// torchvision's stem max-pool (`MaxPool2d(3, stride 2, padding 1)`, padding never wins) of
/// an NCHW f32 tensor, one parallel pass over the channel planes; no autograd graph.
pub fn max_pool3x3_s2(x: &Tensor) -> Result<Tensor> {
    ensure_cpu_f32("eval::max_pool3x3_s2", &[x])?;
    count_call();
    let (b, c, h, w) = x.dims4()?;
    if h == 0 || w == 0 {
        bail!("max_pool3x3_s2: empty input {:?}", x.dims());
    }
    let (ho, wo) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
    let mut out = vec![0f32; b * c * ho * wo];
    with_f32(x, "eval::max_pool3x3_s2", |xv| {
        out.par_chunks_mut(ho * wo)
            .zip(xv.par_chunks(h * w))
            .for_each(|(dst, src)| {
                for (oy, row) in dst.chunks_exact_mut(wo).enumerate() {
                    let rows = (2 * oy).saturating_sub(1)..(2 * oy + 2).min(h);
                    for (ox, d) in row.iter_mut().enumerate() {
                        let cols = (2 * ox).saturating_sub(1)..(2 * ox + 2).min(w);
                        *d = rows
                            .clone()
                            .flat_map(|y| &src[y * w..][cols.clone()])
                            .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                    }
                }
            });
    })?;
    from_vec(out, (b, c, ho, wo))
}

/// The sizes of `x (b, ci, h, w)` against `w (ci, co, 2, 2)`: (b, ci, co, h, w).
pub(crate) fn deconv_dims(x: &[usize], w: &[usize]) -> Result<(usize, usize, usize, usize, usize)> {
    match (x, w) {
        (&[b, ci, h, wd], &[ci_w, co, 2, 2]) if ci == ci_w => Ok((b, ci, co, h, wd)),
        _ => bail!("deconv2x2: kernel {w:?} does not fit input {x:?} (want (in, out, 2, 2))"),
    }
}

/// `act(conv_transpose2d(x, w, stride 2)·scale + shift + residual)` for a k2 s2 kernel
/// `w` (c_in, c_out, 2, 2); a fresh tensor without autograd graph.
pub fn deconv2x2(
    x: &Tensor,
    w: &Tensor,
    bn: Option<&Affine>,
    residual: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    ensure_cpu_f32("eval::deconv2x2", &[x, w])?;
    count_call();
    let (b, ci, co, h, wd) = deconv_dims(x.dims(), w.dims())?;
    check_residual("eval::deconv2x2", residual, (b, co, 2 * h, 2 * wd))?;
    if let Some(bn) = bn {
        check_affine("eval::deconv2x2", bn, co)?;
    }
    let out = with_f32_opt(residual, "eval::deconv2x2", |rv| {
        with_f32(w, "eval::deconv2x2", |wv| {
            with_f32(x, "eval::deconv2x2", |xv| {
                let epilogue = Epilogue {
                    affine: bn,
                    residual: rv,
                    relu,
                };
                let mut out = vec![0f32; b * co * 4 * h * wd];
                deconv2x2_into(xv, wv, (b, ci, co), (h, wd), &epilogue, &mut out);
                out
            })
        })
    })???;
    from_vec(out, (b, co, 2 * h, 2 * wd))
}

/// The k2 s2 transposed convolution of `b` NCHW images `x` (ci × h × w each) with `w`
/// (ci × co × 2 × 2), into `out` (`b × co × 2h × 2w`, overwritten): per image one GEMM and a
/// pixel shuffle that applies the epilogue (whose residual is laid out like the output).
pub(crate) fn deconv2x2_into(
    x: &[f32],
    w: &[f32],
    (b, ci, co): (usize, usize, usize),
    (h, wd): (usize, usize),
    epilogue: &Epilogue,
    out: &mut [f32],
) {
    let n = h * wd;
    let co4 = co * 4;
    if b > 1 && n < BATCH_BELOW_PIXELS && gemm::avx512_available() {
        // One GEMM for the batch (the weight packed once): the images' pixels as rows of one
        // lhs, each image transposed into it (the same values in the same order as reading it
        // transposed in place, so the same sums).
        let mut xt = vec![0f32; b * n * ci];
        xt.par_chunks_mut(n * ci)
            .zip(x.par_chunks(ci * n))
            .for_each(|(dst, img)| {
                for (c, plane) in img.chunks_exact(n).enumerate() {
                    for (pix, v) in plane.iter().enumerate() {
                        dst[pix * ci + c] = *v;
                    }
                }
            });
        let mut tmp = vec![0f32; b * n * co4];
        let rhs = Dense { data: w, n: co4 };
        gemm::try_acc_from(&mut tmp, MatRef::rows(&xt, ci), &rhs, b * n, co4, ci);
        for bi in 0..b {
            let tmp = &tmp[bi * n * co4..][..n * co4];
            shuffle_image(out, tmp, bi, (co, co4), (h, wd), epilogue);
        }
        return;
    }
    let mut tmp = vec![0f32; n * co4];
    for bi in 0..b {
        tmp.fill(0.0);
        // tmp (pixels × co·4) = xᵀ (pixels × ci, the image read transposed in place)
        // · w (ci × co·4, row-major as stored): the weight streams through the packing
        // pass contiguously, where reading it transposed would touch a new page per step.
        let img = &x[bi * ci * n..][..ci * n];
        let lhs = MatRef::transposed(img, n);
        let rhs = Dense { data: w, n: co4 };
        if !gemm::try_acc_from(&mut tmp, lhs, &rhs, n, co4, ci) {
            gemm_strided_acc(&mut tmp, lhs, MatRef::rows(w, co4), n, co4, ci);
        }
        shuffle_image(out, &tmp, bi, (co, co4), (h, wd), epilogue);
    }
}

/// Writes image `bi` of the deconvolution output from its GEMM result `tmp` (pixel-major).
fn shuffle_image(
    out: &mut [f32],
    tmp: &[f32],
    bi: usize,
    (co, co4): (usize, usize),
    (h, wd): (usize, usize),
    epilogue: &Epilogue,
) {
    let plane_len = 4 * h * wd;
    let dst = &mut out[bi * co * plane_len..][..co * plane_len];
    let res = epilogue
        .residual
        .map(|r| &r[bi * co * plane_len..][..co * plane_len]);
    dst.par_chunks_mut(SHUFFLE_PLANES * plane_len)
        .enumerate()
        .for_each(|(j, planes)| {
            let o0 = j * SHUFFLE_PLANES;
            let span = o0 * plane_len..o0 * plane_len + planes.len();
            let res = res.map(|r| &r[span]);
            let (bn, relu) = (epilogue.affine, epilogue.relu);
            shuffle_planes(planes, o0, tmp, co4, (h, wd), bn, res, relu);
        });
}

/// Output channels per task of the pixel shuffle: 4 channels' values for one pixel fill one
/// 64-byte line of the GEMM result.
const SHUFFLE_PLANES: usize = 4;

/// Writes output planes `o0 ..` (each `2h × 2w`) from the GEMM result `tmp` (pixel-major, `co4`
/// values per input pixel, ordered `(o, dy, dx)`), applying the BatchNorm affine, the residual
/// and ReLU: output `(o, 2y + dy, 2x + dx)` is `tmp[(y·w + x)·co4 + o·4 + dy·2 + dx]`.
#[allow(clippy::too_many_arguments)]
fn shuffle_planes(
    planes: &mut [f32],
    o0: usize,
    tmp: &[f32],
    co4: usize,
    (h, w): (usize, usize),
    bn: Option<&Affine>,
    residual: Option<&[f32]>,
    relu: bool,
) {
    let (plane_len, wo) = (4 * h * w, 2 * w);
    let count = planes.len() / plane_len;
    let affine: Vec<(f32, f32)> = (o0..o0 + count)
        .map(|o| bn.map_or((1.0, 0.0), |bn| (bn.scale[o], bn.shift[o])))
        .collect();
    for y in 0..h {
        for x in 0..w {
            let src = &tmp[(y * w + x) * co4 + o0 * 4..][..count * 4];
            for (j, &(scale, shift)) in affine.iter().enumerate() {
                let plane = &mut planes[j * plane_len..][..plane_len];
                for dy in 0..2 {
                    let at = (2 * y + dy) * wo + 2 * x;
                    plane[at] = src[j * 4 + dy * 2] * scale + shift;
                    plane[at + 1] = src[j * 4 + dy * 2 + 1] * scale + shift;
                }
            }
        }
    }
    if let Some(r) = residual {
        planes.iter_mut().zip(r).for_each(|(v, r)| *v += r);
    }
    if relu {
        planes.iter_mut().for_each(|v| *v = v.max(0.0));
    }
}
