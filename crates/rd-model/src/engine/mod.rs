//! The explicit training engine: the student's forward and backward passes on the CPU, layer by
//! layer, without Candle's autograd graph.
//!
//! Candle's autograd keeps every intermediate of the forward pass alive until the whole backward
//! pass ends, allocates a fresh zeroed tensor for every gradient, and sums the gradients of values
//! used twice (each block's input feeds its first convolution and its shortcut) as separate ops.
//! Here each layer ([`stage::Stage`], [`stage::Block`]) knows its backward pass: its forward pass
//! returns a tape of exactly what that backward reads (the input, the linear output, the batch
//! statistics, the ReLU output where one masks the gradient), the backward pass frees each tape as
//! it is consumed, and every activation and gradient lives in a buffer from one [`buf::Pool`]
//! that the next layer and the next step reuse. The kernels are those of
//! [`rd_kernels::train`], on raw data.
//!
//! The loss and its gradient for the student's features are one kernel per scale
//! ([`rd_kernels::train::cosine_loss`], sums in f64): through Candle ([`crate::rd_loss`], which
//! the graph path differentiates) its cosines built and differentiated a dozen full-size
//! intermediates, 650 MB for wide_resnet50_2 at 256², batch 8.
//!
//! The engine runs where [`rd_kernels::enabled`] says the kernels can (f32 on the CPU, not in
//! reference mode); everything else (CUDA, Metal, f64, reference mode) keeps Candle's autograd,
//! which stays the reference: `tests/engine.rs` holds the two equal.

pub(crate) mod buf;
pub(crate) mod stage;

use std::rc::Rc;

use candle_core::{Result, Tensor};
use rayon::prelude::*;
use rd_backbone::FeatureMaps;
use rd_kernels::train;

use crate::Student;
use buf::{Buf, Pool};
use stage::{blocks_backward, blocks_forward, Block, BlockTape, Stage, StageTape};

/// Where the backward pass hands each parameter's gradient, as soon as it is complete: a
/// [`crate::Gradients`] collecting them, or the optimiser updating the parameter at once (the
/// parameter is not read again in that backward pass).
pub(crate) type GradSink<'a> = dyn FnMut(&Tensor, &[f32]) -> Result<()> + 'a;

/// The explicit training engine; holds the buffers it reuses from step to step.
#[derive(Debug, Default)]
pub struct Engine {
    pool: Pool,
}

/// A forward pass of the student through the engine, ready for its backward pass.
pub(crate) struct Pass {
    /// The OCBE embedding.
    pub bottleneck: Rc<Buf>,
    /// Student features, finest first (matched to teacher layer1, layer2, layer3).
    pub features: [Rc<Buf>; 3],
    ocbe: OcbeTape,
    decoder: [Vec<BlockTape>; 3],
}

/// What the OCBE's backward pass reads.
struct OcbeTape {
    down1: [StageTape; 2],
    down2: StageTape,
    /// Channels of the two fused inputs that get gradients (the teacher's layer3 does not).
    split: [usize; 2],
    blocks: Vec<BlockTape>,
}

/// The student's layers as the engine walks them.
struct Layers<'a> {
    down1: [Stage<'a>; 2],
    down2: Stage<'a>,
    ocbe: Vec<Block<'a>>,
    decoder: [Vec<Block<'a>>; 3],
}

impl<'a> Layers<'a> {
    fn of(student: &'a Student) -> Self {
        let (down1, down2, ocbe) = student.ocbe().engine_layers();
        Layers {
            down1,
            down2,
            ocbe,
            decoder: student.decoder().engine_layers(),
        }
    }
}

impl Engine {
    /// An engine with no buffers yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the engine can train on the batch `x`: where [`rd_kernels::enabled`].
    pub fn supports(x: &Tensor) -> bool {
        rd_kernels::enabled(x)
    }

    /// The student's forward pass in training mode on teacher features `f` (f32 CPU tensors);
    /// moves the BatchNorm running statistics as the graph path does.
    pub(crate) fn forward(&self, student: &Student, f: &FeatureMaps) -> Result<Pass> {
        let pool = &self.pool;
        let l = Layers::of(student);
        let input = |k: usize| -> Result<Rc<Buf>> { Ok(Rc::new(pool.copy_of(&f[k])?)) };
        let (l1, d1a) = l.down1[0].forward(input(0)?, None, true, pool)?;
        let (l1, d1b) = l.down1[1].forward(l1, None, true, pool)?;
        let (l2, d2) = l.down2.forward(input(1)?, None, true, pool)?;
        let l3 = input(2)?;
        let split = [l1.dims()[1], l2.dims()[1]];
        let fused = Rc::new(concat_channels(&[&l1, &l2, &l3], pool)?);
        drop((l1, l2, l3));
        let (z, blocks) = blocks_forward(&l.ocbe, fused, pool)?;
        let (a, da) = blocks_forward(&l.decoder[0], z.clone(), pool)?;
        let (b, db) = blocks_forward(&l.decoder[1], a.clone(), pool)?;
        let (c, dc) = blocks_forward(&l.decoder[2], b.clone(), pool)?;
        Ok(Pass {
            bottleneck: z,
            features: [c, b, a],
            ocbe: OcbeTape {
                down1: [d1a, d1b],
                down2: d2,
                split,
                blocks,
            },
            decoder: [da, db, dc],
        })
    }

    /// The loss terms of `pass` against the teacher features `f` (finest scale first: mean over
    /// the batch of `1 − cos` of each sample's flattened maps, the sums in f64) and each term's
    /// gradient for its student feature map.
    pub(crate) fn loss(&self, f: &FeatureMaps, pass: &Pass) -> Result<([f64; 3], [Buf; 3])> {
        let mut terms = [0f64; 3];
        let grads = (0..3).map(|k| -> Result<Buf> {
            let s = &pass.features[k];
            let [b, c, h, w] = s.dims();
            if f[k].dims() != [b, c, h, w] {
                candle_core::bail!(
                    "engine: teacher features {k} are {:?}, the student's {:?}",
                    f[k].dims(),
                    s.dims()
                )
            }
            let mut ds = self.pool.take(s.dims());
            terms[k] = rd_kernels::with_f32(&f[k], "engine loss", |t| {
                train::cosine_loss(t, s, (b, c * h * w), &mut ds)
            })?;
            Ok(ds)
        });
        let grads = grads.collect::<Result<Vec<Buf>>>()?;
        let Ok(grads) = <[Buf; 3]>::try_from(grads) else {
            candle_core::bail!("engine: the loss has three scales")
        };
        Ok((terms, grads))
    }

    /// The backward pass of `pass` from the loss's gradients `d` of the student features
    /// (finest first): every trainable parameter's gradient to `sink`.
    pub(crate) fn backward(
        &self,
        student: &Student,
        pass: Pass,
        d: [Buf; 3],
        sink: &mut GradSink,
    ) -> Result<()> {
        let pool = &self.pool;
        let l = Layers::of(student);
        let Pass {
            bottleneck,
            features,
            ocbe,
            decoder: [ta, tb, tc],
        } = pass;
        drop((bottleneck, features));
        // Each decoder layer's output feeds the loss and the next layer: two gradients.
        let [mut g, d1, d2] = d;
        for ((blocks, tape), from_loss) in [(&l.decoder[2], tc), (&l.decoder[1], tb)]
            .into_iter()
            .zip([d1, d2])
        {
            let Some(mut up) = blocks_backward(blocks, tape, g, true, sink, pool)? else {
                candle_core::bail!("engine: the decoder gave no input gradient")
            };
            stage::add_assign(&mut up, &from_loss);
            g = up;
        }
        let Some(dz) = blocks_backward(&l.decoder[0], ta, g, true, sink, pool)? else {
            candle_core::bail!("engine: the decoder gave no bottleneck gradient")
        };
        let OcbeTape {
            down1: [t1a, t1b],
            down2: t2,
            split,
            blocks,
        } = ocbe;
        let Some(dfused) = blocks_backward(&l.ocbe, blocks, dz, true, sink, pool)? else {
            candle_core::bail!("engine: the OCBE gave no gradient for its fused input")
        };
        let [dl1, dl2] = split_channels(&dfused, split, pool);
        drop(dfused);
        let (Some(dl1), _) = l.down1[1].backward(t1b, dl1, true, sink, pool)? else {
            candle_core::bail!("engine: no gradient for the OCBE's first stage")
        };
        l.down1[0].backward(t1a, dl1, false, sink, pool)?;
        l.down2.backward(t2, dl2, false, sink, pool)?;
        Ok(())
    }
}

/// NCHW maps of one batch and size side by side along the channels.
fn concat_channels(parts: &[&Buf], pool: &Pool) -> Result<Buf> {
    let [b, _, h, w] = parts[0].dims();
    if parts
        .iter()
        .any(|p| p.dims()[0] != b || p.dims()[2..] != [h, w])
    {
        let dims: Vec<_> = parts.iter().map(|p| p.dims()).collect();
        candle_core::bail!("engine: cannot concatenate maps of shapes {dims:?}")
    }
    let c: usize = parts.iter().map(|p| p.dims()[1]).sum();
    let mut out = pool.take([b, c, h, w]);
    let per_image = c * h * w;
    out.par_chunks_mut(per_image)
        .enumerate()
        .for_each(|(bi, dst)| {
            let mut at = 0;
            for p in parts {
                let len = p.dims()[1] * h * w;
                dst[at..at + len].copy_from_slice(&p[bi * len..][..len]);
                at += len;
            }
        });
    Ok(out)
}

/// The first two channel groups (`split[0]`, then `split[1]` channels) of an NCHW map.
fn split_channels(x: &Buf, split: [usize; 2], pool: &Pool) -> [Buf; 2] {
    let [b, c, h, w] = x.dims();
    let plane = h * w;
    let mut at = 0;
    split.map(|cs| {
        let mut out = pool.take([b, cs, h, w]);
        let len = cs * plane;
        out.par_chunks_mut(len).enumerate().for_each(|(bi, dst)| {
            dst.copy_from_slice(&x[(bi * c) * plane + at..][..len]);
        });
        at += len;
        out
    })
}
