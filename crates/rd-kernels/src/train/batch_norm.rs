//! Training-mode BatchNorm (optionally with ReLU) and its batch statistics.

use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::tensor::{check_len, ensure_cpu_f32, f32_slice, from_vec, with_f32};

/// Independent f64 accumulators per channel in the BatchNorm backward sums.
const LANES: usize = 8;

/// Per-channel batch mean and biased variance of NCHW data, in f64, summed exactly as the
/// reference BatchNorm sums them (sequentially over batch, then pixels; two passes).
///
/// Each channel's sum is one chain of dependent f64 adds, which runs at the add's latency (one
/// value every few cycles). Walking [`STAT_GROUP`] channels side by side keeps as many
/// independent chains in flight, so the adds overlap, while every channel still adds its
/// values in the reference's order: the statistics are bit-identical.
///
/// # Panics
///
/// When `x` does not hold `b·c·hw` values.
pub fn channel_stats(x: &[f32], (b, c, hw): Nchw) -> (Vec<f64>, Vec<f64>) {
    crate::kernel_call("BatchNorm statistics", || {
        check_len("channel_stats", &[(x, b * c * hw)]);
        stats_of(x, b, c, hw)
    })
}

/// [`channel_stats`] after its checks.
fn stats_of(x: &[f32], b: usize, c: usize, hw: usize) -> (Vec<f64>, Vec<f64>) {
    let n = b * hw;
    let scale = 1f64 / n as f64;
    let groups: Vec<Vec<(f64, f64)>> = (0..c.div_ceil(STAT_GROUP))
        .into_par_iter()
        .map(|g| {
            let ch0 = g * STAT_GROUP;
            let k = STAT_GROUP.min(c - ch0);
            // Channel `ch0 + j`, image `bi`, pixel `i` is x[(bi·c + ch0 + j)·hw + i].
            let planes = |bi: usize| &x[(bi * c + ch0) * hw..][..k * hw];
            let mut sum = [0f64; STAT_GROUP];
            for bi in 0..b {
                let p = planes(bi);
                for i in 0..hw {
                    for (j, s) in sum[..k].iter_mut().enumerate() {
                        *s += p[j * hw + i] as f64;
                    }
                }
            }
            // `v * scale + 0.0` is how Candle's `mean` scales its sum.
            let mean = sum.map(|s| s * scale + 0.0);
            let mut sq = [0f64; STAT_GROUP];
            for bi in 0..b {
                let p = planes(bi);
                for i in 0..hw {
                    for (j, s) in sq[..k].iter_mut().enumerate() {
                        let d = p[j * hw + i] as f64 - mean[j];
                        *s += d * d;
                    }
                }
            }
            (0..k).map(|j| (mean[j], sq[j] * scale + 0.0)).collect()
        })
        .collect();
    groups.into_iter().flatten().unzip()
}

/// Channels whose statistics [`channel_stats`] sums side by side.
const STAT_GROUP: usize = 8;

/// A training-mode BatchNorm's batch statistics as f32, per channel: what its forward and
/// backward passes normalise with.
#[derive(Debug, Clone, Copy)]
pub struct BatchStats<'a> {
    /// The batch mean.
    pub mean: &'a [f32],
    /// `1/√(var + ε)` of the biased batch variance.
    pub invstd: &'a [f32],
}

/// The layout of an NCHW batch: images, channels, pixels per channel plane.
pub type Nchw = (usize, usize, usize);

/// Training-mode BatchNorm on raw data: `out = act((z − mean)·(invstd·γ) + β + residual)`, with
/// `act` ReLU when `relu` and the residual (laid out like `z`) only when given; the same f32
/// operations in the same order as the BatchNorm op followed by the residual join.
///
/// # Panics
///
/// When a slice's length differs from what `dims` says.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_forward(
    z: &[f32],
    (b, c, hw): Nchw,
    stats: BatchStats,
    gamma: &[f32],
    beta: &[f32],
    residual: Option<&[f32]>,
    relu: bool,
    out: &mut [f32],
) {
    crate::kernel_call("BatchNorm forward", || {
        let len = b * c * hw;
        check_len("batch_norm_forward", &[(z, len), (out, len)]);
        let per_channel = [gamma, beta, stats.mean, stats.invstd];
        check_len("batch_norm_forward", &per_channel.map(|v| (v, c)));
        if let Some(r) = residual {
            check_len("batch_norm_forward", &[(r, len)]);
        }
        // Same operations in the same order as the reference: (x − mean)·(invstd·γ) + β.
        let scale: Vec<f32> = stats.invstd.iter().zip(gamma).map(|(i, g)| i * g).collect();
        out.par_chunks_mut(hw)
            .zip(z.par_chunks(hw))
            .enumerate()
            .for_each(|(p, (o, z))| {
                let ch = p % c;
                let (m, s, bb) = (stats.mean[ch], scale[ch], beta[ch]);
                for (o, &x) in o.iter_mut().zip(z) {
                    *o = (x - m) * s + bb;
                }
                if let Some(r) = residual {
                    o.iter_mut()
                        .zip(&r[p * hw..][..hw])
                        .for_each(|(o, r)| *o += r);
                }
                if relu {
                    o.iter_mut().for_each(|o| *o = o.max(0.0));
                }
            });
    })
}

/// The backward pass of [`batch_norm_forward`] without residual: from the gradient `dy` of its
/// output, masked where `relu_out` (the forward's ReLU output, when it had one) is not positive,
/// the gradient of `z` (written to `dz` when given; through the batch statistics too) and of γ
/// and β (returned, in that order). The sums are in f64.
///
/// # Panics
///
/// When a slice's length differs from what `dims` says.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward(
    z: &[f32],
    relu_out: Option<&[f32]>,
    dy: &[f32],
    (b, c, hw): Nchw,
    stats: BatchStats,
    gamma: &[f32],
    dz: Option<&mut [f32]>,
) -> (Vec<f32>, Vec<f32>) {
    crate::kernel_call("BatchNorm backward", || {
        let len = b * c * hw;
        check_len("batch_norm_backward", &[(z, len), (dy, len)]);
        check_len(
            "batch_norm_backward",
            &[(gamma, c), (stats.mean, c), (stats.invstd, c)],
        );
        if let Some(y) = relu_out {
            check_len("batch_norm_backward", &[(y, len)]);
        }
        let bn = Backward {
            stats,
            mask: relu_out,
        };
        let sums = bn.sums(z, dy, b, hw);
        if let Some(dz) = dz {
            check_len("batch_norm_backward", &[(dz, len)]);
            bn.grad_input(z, dy, gamma, &sums, b, dz);
        }
        let as_f32 = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
        (as_f32(&sums.dy_xhat), as_f32(&sums.dy))
    })
}

/// Per-channel sums of the backward pass, in f64: `Σdy` and `Σdy·x̂`.
struct BnSums {
    dy: Vec<f64>,
    dy_xhat: Vec<f64>,
}

/// The backward pass of one BatchNorm: its statistics and the ReLU mask, if any.
struct Backward<'a> {
    stats: BatchStats<'a>,
    mask: Option<&'a [f32]>,
}

impl Backward<'_> {
    /// The per-channel sums over batch and pixels.
    fn sums(&self, x: &[f32], dy: &[f32], b: usize, hw: usize) -> BnSums {
        let c = self.stats.mean.len();
        let (sdy, sdyx) = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mut s1, mut s2) = ([0f64; LANES], [0f64; LANES]);
                for bi in 0..b {
                    let o = (bi * c + ch) * hw;
                    self.plane_sums(x, dy, o..o + hw, ch, &mut s1, &mut s2);
                }
                let is = self.stats.invstd[ch] as f64;
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
        dy: &[f32],
        plane: std::ops::Range<usize>,
        ch: usize,
        s1: &mut [f64; LANES],
        s2: &mut [f64; LANES],
    ) {
        let m = self.stats.mean[ch] as f64;
        let (x, dy) = (&x[plane.clone()], &dy[plane.clone()]);
        // The mask's presence is decided once per plane, so each loop below is branch-free
        // straight-line code over fixed-size chunks.
        match self.mask.map(|y| &y[plane]) {
            Some(y) => lane_sums(x, dy, |i| y[i] > 0.0, m, s1, s2),
            None => lane_sums(x, dy, |_| true, m, s1, s2),
        }
    }

    /// `dx = γ·invstd·(dy − Σdy/n − x̂·Σ(dy·x̂)/n)`, as `a·dy + b·(x − mean) + c` per channel.
    fn grad_input(
        &self,
        x: &[f32],
        dy: &[f32],
        gamma: &[f32],
        s: &BnSums,
        b: usize,
        dx: &mut [f32],
    ) {
        let c = self.stats.mean.len();
        let hw = x.len() / (b * c);
        let n = (b * hw) as f64;
        let coef: Vec<(f32, f32, f32)> = (0..c)
            .map(|ch| {
                let (is, ga) = (self.stats.invstd[ch] as f64, gamma[ch] as f64);
                let a = ga * is;
                (
                    a as f32,
                    (-a * is * s.dy_xhat[ch] / n) as f32,
                    (-a * s.dy[ch] / n) as f32,
                )
            })
            .collect();
        dx.par_chunks_mut(hw).enumerate().for_each(|(p, out)| {
            let ch = p % c;
            let (a, bb, cc) = coef[ch];
            let m = self.stats.mean[ch];
            let span = p * hw..(p + 1) * hw;
            let values = out.iter_mut().zip(&x[span.clone()]).zip(&dy[span.clone()]);
            match self.mask {
                Some(y) => {
                    for (((d, x), g), y) in values.zip(&y[span]) {
                        let g = if *y > 0.0 { *g } else { 0.0 };
                        *d = a * g + bb * (x - m) + cc;
                    }
                }
                None => {
                    for ((d, x), g) in values {
                        *d = a * g + bb * (x - m) + cc;
                    }
                }
            }
        });
    }
}

/// Adds `Σg` and `Σg·(x − m)` over one plane to per-lane accumulators, `g` being `dy` where
/// `keep(i)` and 0 elsewhere; value `i` goes to lane `i mod LANES`.
#[inline(always)]
fn lane_sums(
    x: &[f32],
    dy: &[f32],
    keep: impl Fn(usize) -> bool,
    m: f64,
    s1: &mut [f64; LANES],
    s2: &mut [f64; LANES],
) {
    let full = x.len() / LANES * LANES;
    for i0 in (0..full).step_by(LANES) {
        let (xc, dc) = (&x[i0..i0 + LANES], &dy[i0..i0 + LANES]);
        for l in 0..LANES {
            let g = if keep(i0 + l) { dc[l] as f64 } else { 0.0 };
            s1[l] += g;
            s2[l] += g * (xc[l] as f64 - m);
        }
    }
    for i in full..x.len() {
        let g = if keep(i) { dy[i] as f64 } else { 0.0 };
        s1[i - full] += g;
        s2[i - full] += g * (x[i] as f64 - m);
    }
}

/// Training-mode BatchNorm with given batch statistics, optionally followed by ReLU (see
/// [`batch_norm`]).
struct BatchNormOp {
    mean: Vec<f32>,
    invstd: Vec<f32>,
    relu: bool,
}

impl BatchNormOp {
    fn stats(&self) -> BatchStats<'_> {
        BatchStats {
            mean: &self.mean,
            invstd: &self.invstd,
        }
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
        let x = f32_slice(xs, xl, "batch_norm")?;
        let (gamma, beta) = (
            f32_slice(gs, gl, "batch_norm")?,
            f32_slice(bs, bl, "batch_norm")?,
        );
        let &[b, c, h, w] = xl.dims() else {
            bail!("batch_norm: expected an NCHW input, got {:?}", xl.shape())
        };
        if gamma.len() != c || beta.len() != c || self.mean.len() != c {
            bail!("batch_norm: {} channels but {} weights", c, gamma.len())
        }
        let mut out = vec![0f32; x.len()];
        let dims = (b, c, h * w);
        batch_norm_forward(
            x,
            dims,
            self.stats(),
            gamma,
            beta,
            None,
            self.relu,
            &mut out,
        );
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
        let (b, c, h, w) = x.dims4()?;
        let gv = gamma.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let mut dx = x.track_op().then(|| vec![0f32; x.elem_count()]);
        let (dg, db) = with_f32(x, "batch_norm", |x| {
            with_f32(res, "batch_norm", |y| {
                with_f32(dy, "batch_norm", |dy| {
                    let mask = self.relu.then_some(y);
                    let dims = (b, c, h * w);
                    let dx = dx.as_deref_mut();
                    batch_norm_backward(x, mask, dy, dims, self.stats(), &gv, dx)
                })
            })
        })???;
        let dx = dx.map(|v| from_vec(v, x.dims())).transpose()?;
        let dg = gamma.track_op().then(|| from_vec(dg, gamma.dims()));
        let db = beta.track_op().then(|| from_vec(db, beta.dims()));
        Ok((dx, dg.transpose()?, db.transpose()?))
    }
}

/// The per-channel f64 batch mean and biased variance of an NCHW f32 tensor (see
/// [`channel_stats`]).
pub fn batch_stats(x: &Tensor) -> Result<(Vec<f64>, Vec<f64>)> {
    ensure_cpu_f32("train::batch_stats", &[x])?;
    let (b, c, h, w) = x.dims4()?;
    with_f32(x, "train::batch_stats", |x| channel_stats(x, (b, c, h * w)))
}

/// Differentiable training-mode BatchNorm `(x − mean)·(invstd·γ) + β` of NCHW `x` with the
/// given batch statistics (f32, per channel), followed by ReLU when `relu`.
///
/// The gradient flows through the statistics too, as if they had been computed from `x` (they
/// must be `x`'s batch mean and 1/√(var + ε)).
pub fn batch_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: Vec<f32>,
    invstd: Vec<f32>,
    relu: bool,
) -> Result<Tensor> {
    ensure_cpu_f32("train::batch_norm", &[x, gamma, beta])?;
    let op = BatchNormOp { mean, invstd, relu };
    x.contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)
}
