//! The Reverse Distillation loss term of one scale and its gradient, on raw data.

use rayon::prelude::*;

use crate::tensor::check_len;

/// PyTorch's default `eps` of `F.cosine_similarity` (rd-anomaly-map's `COSINE_EPS`).
const EPS: f64 = 1e-8;

/// `mean_b (1 − cos(t_b, s_b))` over `b` samples of `len` values each (the teacher's `t` and
/// the student's `s`, each sample's maps flattened), with the cosine of rd-anomaly-map,
/// `t·s / max(‖t‖²‖s‖², ε²)^½`, summed in f64; writes the term's gradient for `s` into `ds`.
///
/// # Panics
///
/// When a slice does not hold `b·len` values.
pub fn cosine_loss(t: &[f32], s: &[f32], (b, len): (usize, usize), ds: &mut [f32]) -> f64 {
    crate::kernel_call("loss", || {
        check_len("cosine_loss", &[(t, b * len), (s, b * len), (ds, b * len)]);
        let inv_b = 1.0 / b as f64;
        let cosines: Vec<f64> = t
            .par_chunks(len)
            .zip(s.par_chunks(len))
            .zip(ds.par_chunks_mut(len))
            .map(|((t, s), ds)| {
                let (dot, tt, ss) = sums(t, s);
                let p = tt * ss;
                let den = p.max(EPS * EPS).sqrt();
                let cos = dot / den;
                // d cos / ds = t/den − (dot·‖t‖²/den³)·s while the clamp is inactive.
                let a = -inv_b / den;
                let c = if p > EPS * EPS {
                    inv_b * dot * tt / (den * den * den)
                } else {
                    0.0
                };
                let (a, c) = (a as f32, c as f32);
                ds.par_chunks_mut(1 << 14)
                    .zip(t.par_chunks(1 << 14).zip(s.par_chunks(1 << 14)))
                    .for_each(|(d, (t, s))| {
                        for ((d, t), s) in d.iter_mut().zip(t).zip(s) {
                            *d = a * t + c * s;
                        }
                    });
                cos
            })
            .collect();
        1.0 - cosines.iter().sum::<f64>() * inv_b
    })
}

/// `Σ t·s`, `Σ t²` and `Σ s²` in f64, in independent lanes per chunk; the chunks' sums are
/// added in order, so the result never depends on how rayon split the work.
fn sums(t: &[f32], s: &[f32]) -> (f64, f64, f64) {
    let parts: Vec<(f64, f64, f64)> = t
        .par_chunks(1 << 14)
        .zip(s.par_chunks(1 << 14))
        .map(|(t, s)| {
            const L: usize = 8;
            let (mut d, mut a, mut b) = ([0f64; L], [0f64; L], [0f64; L]);
            let (tc, sc) = (t.chunks_exact(L), s.chunks_exact(L));
            let rest = (tc.remainder(), sc.remainder());
            for (t, s) in tc.zip(sc) {
                for l in 0..L {
                    let (x, y) = (t[l] as f64, s[l] as f64);
                    d[l] += x * y;
                    a[l] += x * x;
                    b[l] += y * y;
                }
            }
            for (x, y) in rest.0.iter().zip(rest.1) {
                let (x, y) = (*x as f64, *y as f64);
                d[0] += x * y;
                a[0] += x * x;
                b[0] += y * y;
            }
            let sum = |v: [f64; L]| v.iter().sum::<f64>();
            (sum(d), sum(a), sum(b))
        })
        .collect();
    parts
        .into_iter()
        .fold((0.0, 0.0, 0.0), |x, y| (x.0 + y.0, x.1 + y.1, x.2 + y.2))
}
