//! Adam exactly as `torch.optim.Adam` (L2 weight decay, bias correction), with saveable state.
//!
//! Candle's own `AdamW` keeps its moments private, so a resumed run would restart them; this one
//! exposes its state as named tensors that go into checkpoints.

use std::collections::HashMap;

use candle_core::{
    CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Tensor, TensorId, Var,
};
use rayon::prelude::*;

use crate::Gradients;

/// Adam hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// L2 penalty added to the gradient (PyTorch `Adam`, not decoupled).
    pub weight_decay: f64,
}

impl AdamConfig {
    /// The paper's and official code's settings: lr 0.005, betas (0.5, 0.999).
    pub fn paper() -> Self {
        AdamConfig {
            lr: 0.005,
            beta1: 0.5,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }

    /// anomalib's hard-coded settings: lr 0.005, betas (0.5, 0.99).
    pub fn anomalib() -> Self {
        AdamConfig {
            beta2: 0.99,
            ..Self::paper()
        }
    }
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self::paper()
    }
}

/// Moments of one parameter, created at its first gradient (as PyTorch does).
#[derive(Debug, Clone)]
struct Moments {
    m: Tensor,
    v: Tensor,
    step: u32,
}

/// The optimiser over named parameters.
#[derive(Debug)]
pub struct Adam {
    config: AdamConfig,
    params: Vec<(String, Var)>,
    state: Vec<Option<Moments>>,
    /// Each parameter's position in `params`, by tensor.
    index: HashMap<TensorId, usize>,
}

impl Adam {
    /// An optimiser for `params` (name, variable), all starting without state.
    pub fn new(params: Vec<(String, Var)>, config: AdamConfig) -> Self {
        let state = vec![None; params.len()];
        let index = params
            .iter()
            .enumerate()
            .map(|(i, (_, v))| (v.as_tensor().id(), i))
            .collect();
        Adam {
            config,
            params,
            state,
            index,
        }
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamConfig {
        &self.config
    }

    /// Changes the learning rate (for schedules).
    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    /// One update from `grads`; parameters without a gradient are left alone, moments included.
    pub fn step(&mut self, grads: &Gradients) -> Result<()> {
        for i in 0..self.params.len() {
            if let Some(g) = grads.get(self.params[i].1.as_tensor()) {
                self.update_at(i, g)?;
            }
        }
        Ok(())
    }

    /// The update of one parameter from its gradient, exactly as [`Adam::step`] makes it: for a
    /// caller that has the gradients one at a time (the training engine's fused step). Fails
    /// for a tensor that is not one of the optimiser's parameters.
    pub fn update(&mut self, param: &Tensor, grad: &Tensor) -> Result<()> {
        let Some(&i) = self.index.get(&param.id()) else {
            candle_core::bail!("Adam: a gradient for a tensor that is not one of its parameters")
        };
        self.update_at(i, grad)
    }

    /// [`Adam::update`] from a gradient in an f32 slice laid out like `param` (the training
    /// engine's, which lives in its recycled buffers): no tensor is made of it on the CPU.
    pub fn update_from_slice(&mut self, param: &Tensor, grad: &[f32]) -> Result<()> {
        let Some(&i) = self.index.get(&param.id()) else {
            candle_core::bail!("Adam: a gradient for a tensor that is not one of its parameters")
        };
        let p = self.params[i].1.as_tensor();
        if grad.len() != p.elem_count() {
            candle_core::bail!(
                "Adam: a gradient of {} values for a parameter of {}",
                grad.len(),
                p.elem_count()
            )
        }
        let (p, c) = (p.detach(), self.config);
        let s = self.moments(i)?;
        if fused_ok(&[&p, &s.m, &s.v]) {
            s.step += 1;
            return step_fused(&c, &p, grad, s);
        }
        let g = Tensor::from_slice(grad, p.shape(), p.device())?;
        self.update_at(i, &g)
    }

    /// Parameter `i`'s moments, zero before its first update.
    fn moments(&mut self, i: usize) -> Result<&mut Moments> {
        let p = self.params[i].1.as_tensor();
        Ok(match &mut self.state[i] {
            Some(s) => s,
            state => state.insert(Moments {
                m: p.zeros_like()?,
                v: p.zeros_like()?,
                step: 0,
            }),
        })
    }

    fn update_at(&mut self, i: usize, g: &Tensor) -> Result<()> {
        let c = self.config;
        let p = self.params[i].1.as_tensor().detach();
        let mut g = g.detach();
        let s = self.moments(i)?;
        s.step += 1;
        if fused_ok(&[&p, &g, &s.m, &s.v]) {
            // The fused pass adds the weight decay itself.
            return rd_kernels::with_f32(&g, "adam", |gv| step_fused(&c, &p, gv, s))?;
        }
        if c.weight_decay != 0.0 {
            g = (g + (&p * c.weight_decay)?)?;
        }
        s.m = ((&s.m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
        s.v = ((&s.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
        let bias1 = 1.0 - c.beta1.powi(s.step as i32);
        let bias2_sqrt = (1.0 - c.beta2.powi(s.step as i32)).sqrt();
        let denom = ((s.v.sqrt()? / bias2_sqrt)? + c.eps)?;
        let update = ((&s.m / denom)? * (c.lr / bias1))?;
        self.params[i].1.set(&(p - update)?)
    }

    /// The state as named tensors: `adam.m.<param>`, `adam.v.<param>`, `adam.step.<param>`.
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for ((name, _), s) in self.params.iter().zip(&self.state) {
            if let Some(s) = s {
                out.push((format!("adam.m.{name}"), s.m.clone()));
                out.push((format!("adam.v.{name}"), s.v.clone()));
                let step = Tensor::new(&[s.step], s.m.device())?;
                out.push((format!("adam.step.{name}"), step));
            }
        }
        Ok(out)
    }

    /// Restores state saved by [`Adam::state_tensors`]; parameters absent from it start fresh.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        for ((name, var), state) in self.params.iter().zip(self.state.iter_mut()) {
            let get = |kind: &str| tensors.get(&format!("adam.{kind}.{name}"));
            *state = match (get("m"), get("v"), get("step")) {
                (Some(m), Some(v), Some(step)) => {
                    let shape = var.as_tensor().shape();
                    if m.shape() != shape || v.shape() != shape {
                        candle_core::bail!(
                            "optimiser state for `{name}` has shape {:?}, the parameter {:?}",
                            m.dims(),
                            shape.dims()
                        );
                    }
                    let step = step.to_dtype(DType::U32)?.flatten_all()?.to_vec1::<u32>()?;
                    // Copies: the moments are updated in place, and these tensors are the
                    // caller's.
                    Some(Moments {
                        m: m.to_dtype(DType::F32)?.copy()?,
                        v: v.to_dtype(DType::F32)?.copy()?,
                        step: step.first().copied().unwrap_or(0),
                    })
                }
                _ => None,
            };
        }
        Ok(())
    }
}

/// Whether the fused update can run on `tensors` (parameter, moments, and the gradient when it
/// is a tensor): not in reference mode, contiguous f32 CPU tensors.
fn fused_ok(tensors: &[&Tensor]) -> bool {
    tensors
        .iter()
        .all(|t| rd_kernels::enabled(t) && t.is_contiguous())
}

/// The per-element constants of one update, as f32 exactly as Candle's `affine` casts them.
#[derive(Clone, Copy)]
struct Coefs {
    b1: f32,
    one_minus_b1: f32,
    b2: f32,
    one_minus_b2: f32,
    inv_bias2_sqrt: f32,
    eps: f32,
    lr_over_bias1: f32,
    weight_decay: Option<f32>,
}

/// One parameter's update, bit-identical to the Candle-op sequence in [`Adam::step`] (the same
/// f32 operations in the same order, `x·a + 0` included), in three parallel in-place passes
/// (moments, then the parameter) instead of the dozen full-size temporaries that sequence
/// allocates: no allocation, no page faults, and each array is read or written as few times as
/// one output buffer per pass allows.
fn step_fused(c: &AdamConfig, p: &Tensor, g: &[f32], s: &mut Moments) -> Result<()> {
    let k = Coefs {
        b1: c.beta1 as f32,
        one_minus_b1: (1.0 - c.beta1) as f32,
        b2: c.beta2 as f32,
        one_minus_b2: (1.0 - c.beta2) as f32,
        inv_bias2_sqrt: (1.0 / (1.0 - c.beta2.powi(s.step as i32)).sqrt()) as f32,
        eps: c.eps as f32,
        lr_over_bias1: (c.lr / (1.0 - c.beta1.powi(s.step as i32))) as f32,
        weight_decay: (c.weight_decay != 0.0).then_some(c.weight_decay as f32),
    };
    s.m.inplace_op2(
        p,
        &MomentPass {
            k: &k,
            g,
            second: false,
        },
    )?;
    s.v.inplace_op2(
        p,
        &MomentPass {
            k: &k,
            g,
            second: true,
        },
    )?;
    // `p` shares the variable's storage: updating it in place updates the variable.
    p.inplace_op3(&s.m, &s.v, &ParamPass { k: &k })
}

/// The f32 slice of a contiguous CPU storage.
fn slice<'a>(st: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match (st, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("adam: expected contiguous f32 CPU tensors"),
    }
}

/// The same for a storage written in place.
fn slice_mut<'a>(st: &'a mut CpuStorage, l: &Layout) -> Result<&'a mut [f32]> {
    match (st, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("adam: expected contiguous f32 CPU tensors"),
    }
}

/// Elements per parallel task of the in-place passes.
const CHUNK: usize = 1 << 14;

/// The in-place pass of [`step_fused`] over one moment (the first, or with `second` the second),
/// from the gradient `g` and the parameter (its source, for the weight decay).
struct MomentPass<'a> {
    k: &'a Coefs,
    g: &'a [f32],
    second: bool,
}

impl InplaceOp2 for MomentPass<'_> {
    fn name(&self) -> &'static str {
        "rd-adam-moment"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        p: &CpuStorage,
        pl: &Layout,
    ) -> Result<()> {
        let (d, p, g) = (slice_mut(dst, dl)?, slice(p, pl)?, self.g);
        if p.len() != d.len() || g.len() != d.len() {
            candle_core::bail!("adam: parameter, gradient and moments differ in size");
        }
        let (k, second) = (*self.k, self.second);
        d.par_chunks_mut(CHUNK).enumerate().for_each(|(c, d)| {
            let (g, p) = (&g[c * CHUNK..][..d.len()], &p[c * CHUNK..][..d.len()]);
            moment_chunk(&k, d, g, p, second)
        });
        Ok(())
    }
}

/// The last in-place pass of [`step_fused`]: the parameter from the updated moments.
struct ParamPass<'a> {
    k: &'a Coefs,
}

impl InplaceOp3 for ParamPass<'_> {
    fn name(&self) -> &'static str {
        "rd-adam"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        m: &CpuStorage,
        ml: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> Result<()> {
        let (d, m, v) = (slice_mut(dst, dst_l)?, slice(m, ml)?, slice(v, vl)?);
        if m.len() != d.len() || v.len() != d.len() {
            candle_core::bail!("adam: parameter, gradient and moments differ in size");
        }
        let k = *self.k;
        d.par_chunks_mut(CHUNK).enumerate().for_each(|(c, d)| {
            let (m, v) = (&m[c * CHUNK..][..d.len()], &v[c * CHUNK..][..d.len()]);
            param_chunk(&k, d, m, v)
        });
        Ok(())
    }
}

/// One chunk of [`MomentPass`]: `d` is the first moment, or with `second` the second. Slices
/// as arguments (which cannot alias) and the weight decay decided once per chunk let the loops
/// vectorise; decided per element inside a closure, they ran one value at a time.
#[inline(never)]
fn moment_chunk(k: &Coefs, d: &mut [f32], g: &[f32], p: &[f32], second: bool) {
    let k = *k;
    let (g, p) = (&g[..d.len()], &p[..d.len()]);
    match (k.weight_decay, second) {
        (None, false) => d
            .iter_mut()
            .zip(g)
            .for_each(|(m, &g)| *m = new_m(&k, *m, g)),
        (None, true) => d
            .iter_mut()
            .zip(g)
            .for_each(|(v, &g)| *v = new_v(&k, *v, g)),
        (Some(_), false) => d
            .iter_mut()
            .zip(g.iter().zip(p))
            .for_each(|(m, (&g, &p))| *m = new_m(&k, *m, decayed(&k, g, p))),
        (Some(_), true) => d
            .iter_mut()
            .zip(g.iter().zip(p))
            .for_each(|(v, (&g, &p))| *v = new_v(&k, *v, decayed(&k, g, p))),
    }
}

/// One chunk of [`ParamPass`] (slices as arguments, as in [`moment_chunk`]).
#[inline(never)]
fn param_chunk(k: &Coefs, d: &mut [f32], m: &[f32], v: &[f32]) {
    let k = *k;
    let (m, v) = (&m[..d.len()], &v[..d.len()]);
    d.iter_mut()
        .zip(m.iter().zip(v))
        .for_each(|(p, (&m, &v))| *p = new_p(&k, *p, m, v));
}

// Each line below mirrors one Candle op of [`Adam::step`].

/// The gradient with the L2 penalty added.
#[inline(always)]
fn decayed(k: &Coefs, g: f32, p: f32) -> f32 {
    match k.weight_decay {
        Some(wd) => g + (p * wd + 0.0),
        None => g,
    }
}

/// The first moment after one step.
#[inline(always)]
fn new_m(k: &Coefs, m: f32, g: f32) -> f32 {
    (m * k.b1 + 0.0) + (g * k.one_minus_b1 + 0.0)
}

/// The second moment after one step.
#[inline(always)]
fn new_v(k: &Coefs, v: f32, g: f32) -> f32 {
    (v * k.b2 + 0.0) + ((g * g) * k.one_minus_b2 + 0.0)
}

/// The parameter after one step, from the updated moments.
#[inline(always)]
fn new_p(k: &Coefs, p: f32, m: f32, v: f32) -> f32 {
    let denom = (v.sqrt() * k.inv_bias2_sqrt + 0.0) * 1.0 + k.eps;
    let update = (m / denom) * k.lr_over_bias1 + 0.0;
    p - update
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two steps of torch.optim.Adam(lr=0.1, betas=(0.5, 0.99)) on f(p) = Σ p², p0 = [1, -2],
    /// worked by hand: each step moves every coordinate by lr·sign(grad) while the gradient keeps
    /// its sign (m̂/√v̂ = ±1 at step 1; at step 2 close to it).
    #[test]
    fn first_step_moves_by_lr_times_sign() {
        let dev = Device::Cpu;
        let p = Var::from_vec(vec![1f32, -2.0], 2, &dev).unwrap();
        let mut adam = Adam::new(
            vec![("p".into(), p.clone())],
            AdamConfig {
                lr: 0.1,
                ..AdamConfig::anomalib()
            },
        );
        let loss = p.as_tensor().sqr().unwrap().sum_all().unwrap();
        adam.step(&loss.backward().unwrap().into()).unwrap();
        let v: Vec<f32> = p.as_tensor().to_vec1().unwrap();
        assert!(
            (v[0] - 0.9).abs() < 1e-6 && (v[1] + 1.9).abs() < 1e-6,
            "{v:?}"
        );
    }

    /// Four steps against `torch.optim.Adam(lr=0.05, betas=(0.5, 0.99), eps=1e-8,
    /// weight_decay=0.1)` on f(p) = Σ (c·p)² + Σ c·p; the expected values were printed by
    /// PyTorch 2.15 on this machine.
    #[test]
    fn matches_torch_adam_with_weight_decay() {
        let dev = Device::Cpu;
        let p = Var::from_vec(vec![1f32, -2.0, 0.5, 0.0], 4, &dev).unwrap();
        let c = Tensor::from_vec(vec![0.5f32, 1.5, -2.0, 1.0], 4, &dev).unwrap();
        let config = AdamConfig {
            lr: 0.05,
            beta1: 0.5,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut adam = Adam::new(vec![("p".into(), p.clone())], config);
        let expected = [
            [0.949999988f64, -1.950000048, 0.449999988, -0.050000001],
            [0.900231719, -1.900254726, 0.402087480, -0.099014968],
            [0.850834548, -1.850917935, 0.357993841, -0.146354973],
            [0.801924646, -1.802118540, 0.319471717, -0.191377506],
        ];
        for want in expected {
            let cp = (p.as_tensor() * &c).unwrap();
            let loss = (cp.sqr().unwrap().sum_all().unwrap() + cp.sum_all().unwrap()).unwrap();
            adam.step(&loss.backward().unwrap().into()).unwrap();
            let got: Vec<f32> = p.as_tensor().to_vec1().unwrap();
            for (g, w) in got.iter().zip(want) {
                assert!((*g as f64 - w).abs() < 2e-6, "{got:?} vs {want:?}");
            }
        }
    }

    /// The fused update is bit-identical to the Candle-op sequence (reference mode), with and
    /// without weight decay, over steps with changing bias corrections.
    #[test]
    fn fused_step_equals_reference_bitwise() {
        let dev = Device::Cpu;
        for weight_decay in [0.0, 0.01] {
            let init: Vec<f32> = (0..40_000)
                .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
                .collect();
            let config = AdamConfig {
                weight_decay,
                ..AdamConfig::anomalib()
            };
            let run = || {
                let p = Var::from_vec(init.clone(), (200, 200), &dev).unwrap();
                let mut adam = Adam::new(vec![("p".into(), p.clone())], config);
                for _ in 0..3 {
                    let loss = (p.as_tensor().sqr().unwrap() * 0.5)
                        .unwrap()
                        .sum_all()
                        .unwrap();
                    adam.step(&loss.backward().unwrap().into()).unwrap();
                }
                p.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            };
            let fused = run();
            let reference = rd_kernels::with_reference(run);
            assert_ne!(fused, init);
            assert_eq!(fused, reference, "weight decay {weight_decay}");
        }
    }

    /// A gradient handed over as a slice updates exactly as the same gradient as a tensor,
    /// and one of the wrong size is refused with the parameter untouched.
    #[test]
    fn update_from_slice_equals_update() {
        let dev = Device::Cpu;
        let init: Vec<f32> = (0..5_000).map(|i| (i % 97) as f32 * 1e-2 - 0.4).collect();
        let grads: Vec<Vec<f32>> = (0..3)
            .map(|s| init.iter().map(|v| v * (s as f32 + 0.5) - 0.1).collect())
            .collect();
        let config = AdamConfig {
            weight_decay: 0.01,
            ..AdamConfig::anomalib()
        };
        let run = |slices: bool| {
            let p = Var::from_vec(init.clone(), (50, 100), &dev).unwrap();
            let mut adam = Adam::new(vec![("p".into(), p.clone())], config);
            for g in &grads {
                if slices {
                    adam.update_from_slice(p.as_tensor(), g).unwrap();
                } else {
                    let g = Tensor::from_slice(g, (50, 100), &dev).unwrap();
                    adam.update(p.as_tensor(), &g).unwrap();
                }
            }
            let short = adam.update_from_slice(p.as_tensor(), &grads[0][1..]);
            assert!(short.unwrap_err().to_string().contains("4999 values"));
            p.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let from_slices = run(true);
        assert_ne!(from_slices, init);
        assert_eq!(from_slices, run(false));
    }

    #[test]
    fn state_round_trips() {
        let dev = Device::Cpu;
        let p = Var::from_vec(vec![1f32, -2.0], 2, &dev).unwrap();
        let cfg = AdamConfig::paper();
        let mut a = Adam::new(vec![("p".into(), p.clone())], cfg);
        for _ in 0..3 {
            let loss = p.as_tensor().sqr().unwrap().sum_all().unwrap();
            a.step(&loss.backward().unwrap().into()).unwrap();
        }
        let saved: HashMap<String, Tensor> = a.state_tensors().unwrap().into_iter().collect();
        assert_eq!(saved.len(), 3);
        let q = Var::from_tensor(p.as_tensor()).unwrap();
        let mut b = Adam::new(vec![("p".into(), q.clone())], cfg);
        b.load_state(&saved).unwrap();
        for (opt, var) in [(&mut a, &p), (&mut b, &q)] {
            let loss = var.as_tensor().sqr().unwrap().sum_all().unwrap();
            opt.step(&loss.backward().unwrap().into()).unwrap();
        }
        let pa: Vec<f32> = p.as_tensor().to_vec1().unwrap();
        let pb: Vec<f32> = q.as_tensor().to_vec1().unwrap();
        assert_eq!(pa, pb);
    }
}
