//! Training-mode BatchNorm (optionally with ReLU) and its batch statistics.

use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::tensor::{ensure_cpu_f32, f32_slice, from_vec, with_f32};

/// Independent f64 accumulators per channel in the BatchNorm backward sums.
const LANES: usize = 8;

/// Per-channel batch mean and biased variance of NCHW data, in f64, summed exactly as the
/// reference BatchNorm sums them (sequentially over batch, then pixels; two passes).
///
/// Each channel's sum is one chain of dependent f64 adds, which runs at the add's latency (one
/// value every few cycles). Walking [`STAT_GROUP`] channels side by side keeps as many
/// independent chains in flight, so the adds overlap, while every channel still adds its
/// values in the reference's order: the statistics are bit-identical.
pub(crate) fn channel_stats(x: &[f32], b: usize, c: usize, hw: usize) -> (Vec<f64>, Vec<f64>) {
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

/// Training-mode BatchNorm with given batch statistics, optionally followed by ReLU (see
/// [`batch_norm`]).
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
        crate::kernel_call("BatchNorm forward", || {
            let x = f32_slice(xs, xl, "batch_norm")?;
            let (gamma, beta) = (
                f32_slice(gs, gl, "batch_norm")?,
                f32_slice(bs, bl, "batch_norm")?,
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
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        crate::kernel_call("BatchNorm backward", || {
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
            let dx = dx.map(|v| from_vec(v, x.dims())).transpose()?;
            let dg = gamma
                .track_op()
                .then(|| from_vec(as_f32(&sums.dy_xhat), gamma.dims()));
            let db = beta
                .track_op()
                .then(|| from_vec(as_f32(&sums.dy), beta.dims()));
            Ok((dx, dg.transpose()?, db.transpose()?))
        })
    }
}

/// The per-channel f64 batch mean and biased variance of an NCHW f32 tensor (see
/// [`channel_stats`]).
pub fn batch_stats(x: &Tensor) -> Result<(Vec<f64>, Vec<f64>)> {
    ensure_cpu_f32("train::batch_stats", &[x])?;
    let (b, c, h, w) = x.dims4()?;
    crate::kernel_call("BatchNorm statistics", || {
        with_f32(x, "train::batch_stats", |x| channel_stats(x, b, c, h * w))
    })
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
