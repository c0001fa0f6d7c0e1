//! The engine's layers: a convolution (or 2×2 transposed convolution) with its training-mode
//! BatchNorm, optionally joined with a residual and rectified, and the residual blocks built
//! from them. Each forward pass returns a tape of exactly what its backward pass reads.

use std::rc::Rc;

use candle_core::{bail, Result, Tensor};
use rd_backbone::layers::{BatchNorm2d, Conv2d, ConvBn, ResidualBlock};
use rd_kernels::train::{self, BatchStats, DeconvGeom};
use rd_kernels::{with_f32, ConvGeom};

use super::buf::{Buf, Pool};
use super::GradSink;

/// The linear half of a stage.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Linear<'a> {
    /// A convolution without bias.
    Conv(&'a Conv2d),
    /// A k2 s2 transposed convolution, by its weight (in, out, 2, 2).
    Deconv(&'a Tensor),
}

/// The shape of one linear layer applied to one input.
enum Geom {
    Conv(ConvGeom),
    Deconv(DeconvGeom),
}

impl Linear<'_> {
    fn weight(&self) -> &Tensor {
        match self {
            Linear::Conv(c) => c.weight(),
            Linear::Deconv(w) => w,
        }
    }

    fn geom(&self, x: [usize; 4]) -> Result<Geom> {
        Ok(match self {
            Linear::Conv(c) => Geom::Conv(ConvGeom::new(
                &x,
                c.weight().dims(),
                c.stride(),
                c.padding(),
            )?),
            Linear::Deconv(w) => Geom::Deconv(DeconvGeom::new(&x, w.dims())?),
        })
    }
}

impl Geom {
    fn out_dims(&self) -> [usize; 4] {
        match self {
            Geom::Conv(g) => [g.b, g.co, g.ho, g.wo],
            Geom::Deconv(g) => [g.b, g.co, 2 * g.h, 2 * g.w],
        }
    }
}

/// One convolution (or transposed convolution) and its BatchNorm.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stage<'a> {
    pub linear: Linear<'a>,
    pub bn: &'a BatchNorm2d,
}

/// What a stage's backward pass reads.
pub(crate) struct StageTape {
    /// The input (shared with the layer that made it); `None` while it is the previous stage's
    /// output, dropped to be recomputed (see [`Block::forward`]).
    x: Option<Rc<Buf>>,
    /// The linear layer's output, normalised by the BatchNorm.
    z: Buf,
    mean: Vec<f32>,
    invstd: Vec<f32>,
    /// Whether the stage rectifies: its output then masks the gradient.
    relu: bool,
    /// The output, for that mask; `None` where it is not needed or was dropped.
    relu_out: Option<Rc<Buf>>,
    /// Whether a residual joined before the ReLU.
    joined: bool,
}

impl<'a> Stage<'a> {
    /// A torchvision-style convolution and its BatchNorm.
    pub fn conv_bn(c: &'a ConvBn) -> Self {
        Stage {
            linear: Linear::Conv(c.conv()),
            bn: c.bn(),
        }
    }

    /// `act(bn(linear(x)) + residual)`, act ReLU when `relu`; moves the BatchNorm's running
    /// statistics.
    pub fn forward(
        &self,
        x: Rc<Buf>,
        residual: Option<&Buf>,
        relu: bool,
        pool: &Pool,
    ) -> Result<(Rc<Buf>, StageTape)> {
        let geom = self.linear.geom(x.dims())?;
        let dims = geom.out_dims();
        if residual.is_some_and(|r| r.dims() != dims) {
            bail!(
                "engine: residual {:?} vs output {dims:?}",
                residual.map(Buf::dims)
            )
        }
        let mut z = pool.take(dims);
        with_f32(self.linear.weight(), "engine", |w| match &geom {
            Geom::Conv(g) => train::conv2d_forward(g, &x, w, &mut z),
            Geom::Deconv(g) => train::deconv2x2_forward(g, &x, w, &mut z),
        })?;
        let (mean, invstd) = self.bn.train_stats(&z, z.nchw())?;
        let mut tape = StageTape {
            x: Some(x),
            z,
            mean,
            invstd,
            relu,
            relu_out: None,
            joined: residual.is_some(),
        };
        let y = Rc::new(self.normalise(&tape, residual, pool)?);
        tape.relu_out = relu.then(|| y.clone());
        Ok((y, tape))
    }

    /// The stage's output from its tape: `act(bn(z) + residual)`.
    fn normalise(&self, tape: &StageTape, residual: Option<&Buf>, pool: &Pool) -> Result<Buf> {
        let z = &tape.z;
        let mut y = pool.take(z.dims());
        let stats = BatchStats {
            mean: &tape.mean,
            invstd: &tape.invstd,
        };
        with_f32(self.bn.weight(), "engine", |gamma| {
            with_f32(self.bn.bias(), "engine", |beta| {
                let r = residual.map(|r| &r[..]);
                train::batch_norm_forward(z, z.nchw(), stats, gamma, beta, r, tape.relu, &mut y)
            })
        })??;
        Ok(y)
    }

    /// From the gradient `dy` of the output: each parameter's gradient to `sink`, and the
    /// gradients of the input (when `need_dx`) and of the residual (when one joined).
    pub fn backward(
        &self,
        tape: StageTape,
        mut dy: Buf,
        need_dx: bool,
        sink: &mut GradSink,
        pool: &Pool,
    ) -> Result<(Option<Buf>, Option<Buf>)> {
        let StageTape {
            x,
            z,
            mean,
            invstd,
            relu,
            relu_out,
            joined,
        } = tape;
        let (Some(x), true) = (x, relu == relu_out.is_some()) else {
            bail!("engine: a stage's tape lacks its input or its output")
        };
        if dy.dims() != z.dims() {
            bail!("engine: gradient {:?} vs output {:?}", dy.dims(), z.dims())
        }
        // With a residual, the ReLU's gradient is also the residual's: mask it once, here.
        let mask = match (&relu_out, joined) {
            (Some(y), true) => {
                relu_mask(&mut dy, y);
                None
            }
            (y, _) => y.as_deref().map(|y| &y[..]),
        };
        let stats = BatchStats {
            mean: &mean,
            invstd: &invstd,
        };
        let mut dz = pool.take(z.dims());
        let (dgamma, dbeta) = with_f32(self.bn.weight(), "engine", |gamma| {
            train::batch_norm_backward(&z, mask, &dy, z.nchw(), stats, gamma, Some(&mut dz))
        })?;
        drop(relu_out);
        sink(self.bn.weight(), &dgamma)?;
        sink(self.bn.bias(), &dbeta)?;
        let w = self.linear.weight();
        let mut dx = need_dx.then(|| pool.take(x.dims()));
        let &[a, b, c, d] = w.dims() else {
            bail!("engine: a weight of {:?}, not 4-d", w.dims())
        };
        // From the pool like the activations: a fresh array per layer, tens of MiB for the
        // largest, would sit in the allocator's free lists at the memory peak. The kernels
        // overwrite it.
        let mut dw = pool.take([a, b, c, d]);
        let geom = self.linear.geom(x.dims())?;
        with_f32(w, "engine", |wv| match geom {
            Geom::Conv(g) => {
                train::conv2d_grad_weight(&g, &x, &dz, &mut dw);
                if let Some(dx) = dx.as_mut() {
                    train::conv2d_grad_input(&g, wv, &dz, dx);
                }
            }
            Geom::Deconv(g) => {
                let dx = dx.as_deref_mut();
                train::deconv2x2_backward(&g, &x, wv, &dz, dx, Some(&mut dw));
            }
        })?;
        sink(w, &dw)?;
        Ok((dx, joined.then_some(dy)))
    }
}

/// Zeroes `g` where the ReLU output `y` is not positive (the ReLU's backward pass).
fn relu_mask(g: &mut [f32], y: &[f32]) {
    use rayon::prelude::*;
    g.par_chunks_mut(1 << 14)
        .zip(y.par_chunks(1 << 14))
        .for_each(|(g, y)| {
            for (g, y) in g.iter_mut().zip(y) {
                if *y <= 0.0 {
                    *g = 0.0;
                }
            }
        });
}

/// `a += b`, element-wise (the two gradients of a value used twice).
pub(crate) fn add_assign(a: &mut [f32], b: &[f32]) {
    use rayon::prelude::*;
    a.par_chunks_mut(1 << 14)
        .zip(b.par_chunks(1 << 14))
        .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
}

/// A residual block: stages that each end in ReLU, the last after joining the shortcut (the
/// input itself, or a stage without ReLU).
#[derive(Debug, Clone)]
pub(crate) struct Block<'a> {
    pub stages: Vec<Stage<'a>>,
    pub shortcut: Option<Stage<'a>>,
}

/// What a block's backward pass reads.
pub(crate) struct BlockTape {
    stages: Vec<StageTape>,
    shortcut: Option<StageTape>,
}

impl<'a> Block<'a> {
    /// torchvision's `BasicBlock` or `Bottleneck`.
    pub fn residual(b: &'a ResidualBlock) -> Self {
        Block {
            stages: b.stages().iter().map(Stage::conv_bn).collect(),
            shortcut: b.downsample().map(Stage::conv_bn),
        }
    }

    /// The block's output. The inner stages' outputs are not kept: each is the next stage's
    /// input and its own ReLU's mask, and the backward pass recomputes it from the stage's
    /// linear output (one BatchNorm pass, bit-identical), which saves a third of the tape of a
    /// bottleneck block's main branch for one extra elementwise pass per stage.
    pub fn forward(&self, x: Rc<Buf>, pool: &Pool) -> Result<(Rc<Buf>, BlockTape)> {
        let (identity, shortcut) = match &self.shortcut {
            Some(s) => {
                let (y, tape) = s.forward(x.clone(), None, false, pool)?;
                (y, Some(tape))
            }
            None => (x.clone(), None),
        };
        let last = self.stages.len() - 1;
        let mut h = x;
        let mut stages = Vec::with_capacity(self.stages.len());
        for (i, stage) in self.stages.iter().enumerate() {
            let residual = (i == last).then_some(&*identity);
            let (y, tape) = stage.forward(h, residual, true, pool)?;
            h = y;
            stages.push(tape);
        }
        for i in 1..stages.len() {
            stages[i - 1].relu_out = None;
            stages[i].x = None;
        }
        Ok((h, BlockTape { stages, shortcut }))
    }

    /// Each parameter's gradient to `sink`; the input's gradient when `need_dx`.
    pub fn backward(
        &self,
        tape: BlockTape,
        dy: Buf,
        need_dx: bool,
        sink: &mut GradSink,
        pool: &Pool,
    ) -> Result<Option<Buf>> {
        let last = self.stages.len() - 1;
        let mut grad = Some(dy);
        let mut joined = None;
        let mut tapes = tape.stages;
        // The output of the stage before the current one, recomputed for the current stage's
        // input and kept for that stage's own backward pass.
        let mut recomputed: Option<Rc<Buf>> = None;
        for (i, stage) in self.stages.iter().enumerate().rev() {
            let (Some(mut t), Some(g)) = (tapes.pop(), grad.take()) else {
                bail!("engine: no tape or gradient for stage {i}")
            };
            if t.relu && t.relu_out.is_none() {
                t.relu_out = recomputed.take();
            }
            if t.x.is_none() {
                let (Some(prev), Some(prev_stage)) = (tapes.last(), i.checked_sub(1)) else {
                    bail!("engine: stage {i} has no input to recompute")
                };
                let y = Rc::new(self.stages[prev_stage].normalise(prev, None, pool)?);
                t.x = Some(y.clone());
                recomputed = Some(y);
            }
            let (dx, dr) = stage.backward(t, g, i > 0 || need_dx, sink, pool)?;
            if i == last {
                joined = dr;
            }
            grad = dx;
        }
        let Some(joined) = joined else {
            bail!("engine: the block's last stage did not join the residual")
        };
        let through_shortcut = match (&self.shortcut, tape.shortcut) {
            (Some(s), Some(t)) => s.backward(t, joined, need_dx, sink, pool)?.0,
            _ => need_dx.then_some(joined),
        };
        Ok(match (grad, through_shortcut) {
            (Some(mut g), Some(s)) => {
                add_assign(&mut g, &s);
                Some(g)
            }
            (g, _) => g,
        })
    }
}

/// A sequence of blocks (a ResNet layer) and its tapes.
pub(crate) fn blocks_forward(
    blocks: &[Block],
    x: Rc<Buf>,
    pool: &Pool,
) -> Result<(Rc<Buf>, Vec<BlockTape>)> {
    let mut h = x;
    let mut tapes = Vec::with_capacity(blocks.len());
    for b in blocks {
        let (y, t) = b.forward(h, pool)?;
        h = y;
        tapes.push(t);
    }
    Ok((h, tapes))
}

/// The backward pass of [`blocks_forward`].
pub(crate) fn blocks_backward(
    blocks: &[Block],
    tapes: Vec<BlockTape>,
    dy: Buf,
    need_dx: bool,
    sink: &mut GradSink,
    pool: &Pool,
) -> Result<Option<Buf>> {
    let mut grad = Some(dy);
    for (i, (b, t)) in blocks.iter().zip(tapes).enumerate().rev() {
        let Some(g) = grad.take() else {
            bail!("engine: no gradient reached block {i}")
        };
        grad = b.backward(t, g, i > 0 || need_dx, sink, pool)?;
    }
    Ok(grad)
}
