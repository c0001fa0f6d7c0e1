//! Fast CPU kernels for inference (eval mode), next to the reference path built from Candle ops.
//!
//! Candle's CPU `conv2d` copies NCHW to NHWC on one thread and builds its im2col in small tiles,
//! reaching about a third of its own matmul speed; `conv_transpose2d` has no matmul path at all;
//! and every element-wise op (BatchNorm's sub/mul/add, ReLU, the residual add) is a separate,
//! single-threaded pass over the activations. The fused kernels here do, per layer and image:
//!
//! * one GEMM whose rhs is packed straight from the image ([`crate::sgemm::Im2col`]; the image
//!   itself for 1×1 stride-1 convolutions), with the weights read in place: the AVX-512 kernel of
//!   [`crate::sgemm`] where the CPU has AVX-512F, else im2col and the `gemm` crate;
//! * the eval-mode BatchNorm (`y·γ/σ + β − μ·γ/σ`), the residual add and ReLU applied as the
//!   GEMM stores each output tile ([`crate::sgemm::Epilogue`]).
//!
//! The k2 s2 transposed convolution is one pixel-major GEMM (`xᵀ · w`, the weight streamed as
//! stored) and a pixel shuffle that applies the same epilogue; it also serves as the forward
//! pass of the training op in [`crate::train_ops`]. The stem's max-pool is one parallel pass.
//!
//! These kernels make tensors without an autograd graph, so they only serve eval-mode forward
//! passes; training uses the differentiable ops of [`crate::train_ops`]. [`with_reference`]
//! runs a closure with the reference (pure Candle) path everywhere, which the equivalence tests
//! compare against.

use std::cell::Cell;

use candle_core::{CpuStorage, DType, Device, Result, Storage, Tensor};
use rayon::prelude::*;

use crate::sgemm::{self, Dense, Epilogue, Im2col, Lhs};

thread_local! {
    static REFERENCE: Cell<bool> = const { Cell::new(false) };
}

/// Whether the calling thread is in reference mode (see [`with_reference`]).
pub fn reference_mode() -> bool {
    REFERENCE.with(Cell::get)
}

/// Runs `f` with the reference implementation (Candle ops only) on this thread.
pub fn with_reference<T>(f: impl FnOnce() -> T) -> T {
    let before = REFERENCE.with(|r| r.replace(true));
    let out = f();
    REFERENCE.with(|r| r.set(before));
    out
}

/// Opts this process out of transparent huge pages (Linux; elsewhere a no-op), for binaries.
///
/// mimalloc asks for huge pages on its arenas, and with the common `defrag=madvise` setting
/// every first touch of a 2 MiB page may then compact memory synchronously: right after
/// another large process has exited (fragmented free memory), `rd predict` on
/// wide_resnet50_2 took 1.15 s instead of 0.4 s. Small pages cost no measurable speed here.
pub fn use_small_pages() {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

/// Whether the fast kernels can run on `x`: not in reference mode, CPU, f32.
pub fn fast_ok(x: &Tensor) -> bool {
    !reference_mode() && matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32
}

/// Runs `f` on the contiguous f32 data of `x` without copying when possible.
fn with_data<T>(x: &Tensor, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
    if x.is_contiguous() {
        let (storage, layout) = x.storage_and_layout();
        if let Storage::Cpu(CpuStorage::F32(v)) = &*storage {
            let start = layout.start_offset();
            return Ok(f(&v[start..start + x.elem_count()]));
        }
    }
    let v = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    Ok(f(&v))
}

/// Eval-mode BatchNorm as a per-channel scale and shift: `y = x·scale + shift`.
#[derive(Debug, Clone)]
pub struct Affine {
    /// γ / √(σ² + ε) per channel.
    pub scale: Vec<f32>,
    /// β − μ·scale per channel.
    pub shift: Vec<f32>,
}

fn gemm_threads() -> gemm::Parallelism {
    let n = rayon::current_num_threads();
    if n > 1 {
        gemm::Parallelism::Rayon(n)
    } else {
        gemm::Parallelism::None
    }
}

/// `dst (m×n) += lhs (m×k) · rhs (k×n)`, all row-major and contiguous: the AVX-512 kernel of
/// [`crate::sgemm`] when the CPU has AVX-512F, else the `gemm` crate (its AVX2/FMA kernel on
/// stable Rust).
pub(crate) fn gemm_acc(dst: &mut [f32], lhs: &[f32], rhs: &[f32], m: usize, n: usize, k: usize) {
    if crate::sgemm::try_sgemm_acc(dst, lhs, rhs, m, n, k) {
        return;
    }
    gemm_crate_acc(dst, lhs, rhs, m, n, k)
}

/// `dst (m×n) += lhs (m×k) · rhs (k×n)`, row-major, through the `gemm` crate only (the fallback
/// where AVX-512 is missing; public for the GEMM benchmark).
pub fn gemm_crate_acc(dst: &mut [f32], lhs: &[f32], rhs: &[f32], m: usize, n: usize, k: usize) {
    gemm_crate_strided(dst, MatRef::rows(lhs, k), MatRef::rows(rhs, n), m, n, k)
}

/// A strided matrix view for [`gemm_strided_acc`]: element (i, j) is `data[i·rs + j·cs]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MatRef<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major matrix with `cols` columns.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        MatRef {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix with `cols` columns (read in place).
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        MatRef {
            data,
            rs: 1,
            cs: cols,
        }
    }
}

/// `dst (m×n, row-major) += lhs (m×k) · rhs (k×n)` for strided (e.g. transposed) operands:
/// the row-major case goes to [`gemm_acc`], the others to the `gemm` crate.
pub(crate) fn gemm_strided_acc(
    dst: &mut [f32],
    lhs: MatRef,
    rhs: MatRef,
    m: usize,
    n: usize,
    k: usize,
) {
    if lhs.cs == 1 && lhs.rs == k && rhs.cs == 1 && rhs.rs == n {
        return gemm_acc(dst, lhs.data, rhs.data, m, n, k);
    }
    gemm_crate_strided(dst, lhs, rhs, m, n, k)
}

/// `dst (m×n, row-major) += lhs · rhs` through the `gemm` crate, any strides.
fn gemm_crate_strided(dst: &mut [f32], lhs: MatRef, rhs: MatRef, m: usize, n: usize, k: usize) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let last = |a: MatRef, r: usize, c: usize| (r - 1) * a.rs + (c - 1) * a.cs;
    assert!(
        dst.len() >= m * n && last(lhs, m, k) < lhs.data.len() && last(rhs, k, n) < rhs.data.len()
    );
    // SAFETY: the assert above bounds every element gemm reads or writes with these strides.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            true,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm_threads(),
        )
    }
}

/// `out = act(out·scale + shift + residual)` per channel plane (`n` values each, `co` channels
/// per image), in parallel: the BatchNorm is applied to the GEMM result rather than folded into
/// the weights, so the weights are read in place instead of copied on every call.
fn epilogue(
    out: &mut [f32],
    n: usize,
    co: usize,
    bn: Option<&Affine>,
    residual: Option<&[f32]>,
    relu: bool,
) {
    let planes_per_task = (1 << 14) / n.max(1) + 1;
    out.par_chunks_mut(n)
        .with_min_len(planes_per_task)
        .enumerate()
        .for_each(|(i, plane)| {
            let (scale, shift) = bn.map_or((1.0, 0.0), |bn| (bn.scale[i % co], bn.shift[i % co]));
            if bn.is_some() {
                plane.iter_mut().for_each(|v| *v = *v * scale + shift);
            }
            if let Some(r) = residual {
                plane
                    .iter_mut()
                    .zip(&r[i * n..][..n])
                    .for_each(|(v, r)| *v += r);
            }
            if relu {
                plane.iter_mut().for_each(|v| *v = v.max(0.0));
            }
        });
}

/// `act(conv2d(x, w)·scale + shift + residual)` for NCHW `x` and square kernels `w`
/// (c_out, c_in, k, k), with zero padding; a fresh tensor without autograd graph.
pub fn conv2d_fused(
    x: &Tensor,
    w: &Tensor,
    bn: Option<&Affine>,
    stride: usize,
    padding: usize,
    residual: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    let (b, ci, h, wd) = x.dims4()?;
    let (co, ci_w, kh, kw) = w.dims4()?;
    if ci != ci_w {
        candle_core::bail!("conv2d_fused: input has {ci} channels, kernel expects {ci_w}");
    }
    let ho = (h + 2 * padding - kh) / stride + 1;
    let wo = (wd + 2 * padding - kw) / stride + 1;
    let (k, n) = (ci * kh * kw, ho * wo);
    if let Some(r) = residual {
        if r.dims() != [b, co, ho, wo] {
            candle_core::bail!(
                "conv2d_fused: residual {:?} vs output {:?}",
                r.dims(),
                [b, co, ho, wo]
            );
        }
    }
    let mut out = vec![0f32; b * co * n];
    let direct = kh == 1 && kw == 1 && stride == 1 && padding == 0;
    let fused = with_opt_data(residual, |rv| {
        with_data2(w, x, |wv, xv| {
            (0..b).all(|bi| {
                let img = &xv[bi * ci * h * wd..(bi + 1) * ci * h * wd];
                let dst = &mut out[bi * co * n..(bi + 1) * co * n];
                let epilogue = Epilogue {
                    affine: bn.map(|bn| (&bn.scale[..], &bn.shift[..])),
                    residual: rv.map(|r| &r[bi * co * n..][..co * n]),
                    relu,
                };
                let lhs = Lhs::row_major(wv, k);
                if direct {
                    let rhs = Dense { data: img, n };
                    return sgemm::try_sgemm_fused(dst, lhs, &rhs, (co, n, k), &epilogue);
                }
                // Packed straight from the image: no im2col buffer.
                let rhs = Im2col {
                    img,
                    hw: (h, wd),
                    kernel: kh,
                    stride,
                    pad: padding,
                    wo,
                };
                sgemm::try_sgemm_fused(dst, lhs, &rhs, (co, n, k), &epilogue)
            })
        })
    })??;
    if !fused {
        // No AVX-512: im2col and the `gemm` crate, then the epilogue as a separate pass.
        with_data2(w, x, |wv, xv| {
            let mut col = Vec::new();
            for bi in 0..b {
                let img = &xv[bi * ci * h * wd..(bi + 1) * ci * h * wd];
                let dst = &mut out[bi * co * n..(bi + 1) * co * n];
                if direct {
                    gemm_crate_acc(dst, wv, img, co, n, k);
                } else {
                    col.resize(k * n, 0.0);
                    im2col(img, &mut col, h, wd, kh, kw, stride, padding, ho, wo);
                    gemm_crate_acc(dst, wv, &col, co, n, k);
                }
            }
        })?;
        with_opt_data(residual, |rv| epilogue(&mut out, n, co, bn, rv, relu))?;
    }
    Tensor::from_vec(out, (b, co, ho, wo), x.device())
}

/// torchvision's stem max-pool (`MaxPool2d(3, stride 2, padding 1)`, padding never wins) of
/// an NCHW f32 tensor, one parallel pass over the channel planes; no autograd graph.
pub fn max_pool3x3_s2_p1(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if h == 0 || w == 0 {
        candle_core::bail!("max_pool3x3_s2_p1: empty input {:?}", x.dims());
    }
    let (ho, wo) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
    let mut out = vec![0f32; b * c * ho * wo];
    with_data(x, |xv| {
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
    Tensor::from_vec(out, (b, c, ho, wo), x.device())
}

/// Rows `(c, ky, kx)` of the im2col matrix of one image, in parallel over rows.
#[allow(clippy::too_many_arguments)]
pub(crate) fn im2col(
    img: &[f32],
    col: &mut [f32],
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
) {
    let n = ho * wo;
    col.par_chunks_mut(n).enumerate().for_each(|(r, row)| {
        let c = r / (kh * kw);
        let ky = (r / kw) % kh;
        let kx = r % kw;
        let plane = &img[c * h * w..(c + 1) * h * w];
        for oy in 0..ho {
            let dst = &mut row[oy * wo..(oy + 1) * wo];
            let iy = (oy * stride + ky) as isize - pad as isize;
            if iy < 0 || iy >= h as isize {
                dst.fill(0.0);
                continue;
            }
            let src = &plane[iy as usize * w..(iy as usize + 1) * w];
            if stride == 1 {
                // ix = ox + kx − pad: a shifted copy with zeros at the borders.
                let shift = kx as isize - pad as isize;
                let lo = (-shift).clamp(0, wo as isize) as usize;
                let hi = ((w as isize - shift).clamp(0, wo as isize)) as usize;
                dst[..lo].fill(0.0);
                if hi > lo {
                    let s0 = (lo as isize + shift) as usize;
                    dst[lo..hi].copy_from_slice(&src[s0..s0 + (hi - lo)]);
                }
                dst[hi.max(lo)..].fill(0.0);
            } else {
                for (ox, d) in dst.iter_mut().enumerate() {
                    let ix = (ox * stride + kx) as isize - pad as isize;
                    *d = if ix < 0 || ix >= w as isize {
                        0.0
                    } else {
                        src[ix as usize]
                    };
                }
            }
        }
    });
}

/// `act(conv_transpose2d(x, w, stride 2)·scale + shift + residual)` for a k2 s2 kernel
/// `w` (c_in, c_out, 2, 2); a fresh tensor without autograd graph.
pub fn deconv2x2_fused(
    x: &Tensor,
    w: &Tensor,
    bn: Option<&Affine>,
    residual: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    let (b, ci, h, wd) = x.dims4()?;
    let (ci_w, co, kh, kw) = w.dims4()?;
    if ci != ci_w || kh != 2 || kw != 2 {
        candle_core::bail!(
            "deconv2x2_fused: kernel {:?} for input {:?}",
            w.dims(),
            x.dims()
        );
    }
    let (ho, wo) = (2 * h, 2 * wd);
    if let Some(r) = residual {
        if r.dims() != [b, co, ho, wo] {
            candle_core::bail!(
                "deconv2x2_fused: residual {:?} vs output {:?}",
                r.dims(),
                [b, co, ho, wo]
            );
        }
    }
    let out = with_opt_data(residual, |rv| {
        with_data2(w, x, |wv, xv| {
            let epilogue = DeconvEpilogue {
                bn,
                residual: rv,
                relu,
            };
            deconv2x2_data(xv, wv, (b, ci, co), (h, wd), &epilogue)
        })
    })??;
    Tensor::from_vec(out, (b, co, ho, wo), x.device())
}

/// What [`deconv2x2_data`] applies to each output value: the BatchNorm affine, then the
/// residual (laid out like the output), then ReLU.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DeconvEpilogue<'a> {
    pub bn: Option<&'a Affine>,
    pub residual: Option<&'a [f32]>,
    pub relu: bool,
}

/// The k2 s2 transposed convolution of `b` NCHW images `x` (ci × h × w each) with `w`
/// (ci × co × 2 × 2), as an output buffer `b × co × 2h × 2w`: per image one GEMM and a pixel
/// shuffle that applies the epilogue.
pub(crate) fn deconv2x2_data(
    x: &[f32],
    w: &[f32],
    (b, ci, co): (usize, usize, usize),
    (h, wd): (usize, usize),
    epilogue: &DeconvEpilogue,
) -> Vec<f32> {
    let n = h * wd;
    let co4 = co * 4;
    let plane_len = 4 * n;
    let mut out = vec![0f32; b * co * plane_len];
    let mut tmp = vec![0f32; n * co4];
    for bi in 0..b {
        tmp.fill(0.0);
        // tmp (pixels × co·4) = xᵀ (pixels × ci, the image read transposed in place)
        // · w (ci × co·4, row-major as stored): the weight streams through the packing
        // pass contiguously, where reading it transposed would touch a new page per step.
        let img = &x[bi * ci * n..][..ci * n];
        let lhs = Lhs {
            data: img,
            row_stride: 1,
            col_stride: n,
        };
        let rhs = Dense { data: w, n: co4 };
        if !sgemm::try_sgemm_acc_from(&mut tmp, lhs, &rhs, n, co4, ci) {
            let lhs = MatRef::transposed(img, n);
            gemm_strided_acc(&mut tmp, lhs, MatRef::rows(w, co4), n, co4, ci);
        }
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
                let (bn, relu) = (epilogue.bn, epilogue.relu);
                shuffle_planes(planes, o0, &tmp, co4, (h, wd), bn, res, relu);
            });
    }
    out
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

/// [`with_data`] for two tensors.
fn with_data2<T>(a: &Tensor, b: &Tensor, f: impl FnOnce(&[f32], &[f32]) -> T) -> Result<T> {
    with_data(a, |av| with_data(b, |bv| f(av, bv)))?
}

/// [`with_data`] for an optional tensor.
fn with_opt_data<T>(x: Option<&Tensor>, f: impl FnOnce(Option<&[f32]>) -> T) -> Result<T> {
    match x {
        Some(x) => with_data(x, |v| f(Some(v))),
        None => Ok(f(None)),
    }
}
