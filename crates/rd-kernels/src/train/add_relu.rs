//! The residual join `relu(a + b)`.

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::tensor::{ensure_cpu_f32, f32_slice, from_vec, with_f32};

/// Element-wise passes work on chunks of this many values per rayon task.
const CHUNK: usize = 1 << 14;

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
        crate::kernel_call("add + ReLU forward", || {
            if l1.shape() != l2.shape() {
                bail!(
                    "add_relu: shapes {:?} and {:?} differ",
                    l1.shape(),
                    l2.shape()
                )
            }
            let (a, b) = (
                f32_slice(s1, l1, "add_relu")?,
                f32_slice(s2, l2, "add_relu")?,
            );
            let mut out = vec![0f32; a.len()];
            out.par_chunks_mut(CHUNK)
                .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
                .for_each(|(o, (a, b))| {
                    for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
                        *o = (a + b).max(0.0);
                    }
                });
            Ok((CpuStorage::F32(out), l1.shape().clone()))
        })
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        crate::kernel_call("add + ReLU backward", || {
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
            let g = from_vec(g, res.dims())?;
            let ga = a.track_op().then(|| g.clone());
            let gb = b.track_op().then_some(g);
            Ok((ga, gb))
        })
    }
}

/// Differentiable `relu(a + b)` for f32 CPU tensors of one shape (the residual join).
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    ensure_cpu_f32("train::add_relu", &[a, b])?;
    a.contiguous()?.apply_op2(&b.contiguous()?, AddReluOp)
}
