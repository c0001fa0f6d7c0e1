//! The convolution, BatchNorm and residual-block modules shared by the teacher and the student.
//!
//! Names follow torchvision (`conv1`, `bn1`, `downsample.0`, …) so weights load without renaming.
//!
//! The layers own the choice of implementation, so a model file writes its forward pass once:
//! in eval mode a [`ConvBn`] runs the fused kernel of [`rd_kernels::eval`], in training mode the
//! differentiable ops of [`rd_kernels::train`], and wherever [`rd_kernels::enabled`] says no
//! (reference mode, a GPU tensor, f64) Candle's own ops.

use candle_core::{DType, Module, ModuleT, Result, Tensor, Var};
use candle_nn::{Init, VarBuilder};
use rd_kernels::{self as kernels, eval, train, Affine};

use crate::arch::BlockKind;
use crate::params::CONV_INIT;

/// A 2-D convolution without bias (`nn.Conv2d(..., bias=False)`), weight (out, in, k, k).
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    /// Creates the convolution, asking `vb` for `weight` with He-normal fan-out initialisation.
    pub fn new(
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let weight = vb.get_with_hints((c_out, c_in, kernel, kernel), "weight", CONV_INIT)?;
        Ok(Conv2d {
            weight,
            stride,
            padding,
        })
    }

    /// 3×3, padding 1 (`conv3x3` in torchvision).
    pub fn k3(vb: VarBuilder, c_in: usize, c_out: usize, stride: usize) -> Result<Self> {
        Self::new(vb, c_in, c_out, 3, stride, 1)
    }

    /// 1×1, no padding (`conv1x1` in torchvision).
    pub fn k1(vb: VarBuilder, c_in: usize, c_out: usize, stride: usize) -> Result<Self> {
        Self::new(vb, c_in, c_out, 1, stride, 0)
    }

    /// The weight tensor.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The stride.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// The zero padding on each side.
    pub fn padding(&self) -> usize {
        self.padding
    }

    /// The reference forward pass: Candle's `conv2d`.
    pub fn forward_reference(&self, x: &Tensor) -> Result<Tensor> {
        x.conv2d(&self.weight, self.padding, self.stride, 1, 1)
    }
}

impl Module for Conv2d {
    /// Differentiable; on the fast path one fused op (im2col + GEMM, GEMM-based backward), else
    /// Candle's `conv2d`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if kernels::enabled(x) {
            train::conv2d(x, &self.weight, self.stride, self.padding)
        } else {
            self.forward_reference(x)
        }
    }
}

/// `nn.BatchNorm2d(c)` with PyTorch's eps 1e-5 and momentum 0.1.
pub fn batch_norm(vb: VarBuilder, channels: usize) -> Result<BatchNorm2d> {
    Ok(BatchNorm2d {
        weight: vb.get_with_hints(channels, "weight", Init::Const(1.0))?,
        bias: vb.get_with_hints(channels, "bias", Init::Const(0.0))?,
        running_mean: vb.get_with_hints(channels, "running_mean", Init::Const(0.0))?,
        running_var: vb.get_with_hints(channels, "running_var", Init::Const(1.0))?,
    })
}

/// BatchNorm over NCHW maps, as PyTorch computes it on the CPU.
///
/// In training mode the batch mean and variance are accumulated in f64, like PyTorch's CPU kernel
/// (its accumulator type for f32 is double): deep decoders trained on small batches amplify
/// rounding in these statistics, and f32 sums drift visibly from PyTorch's outputs.
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
}

impl BatchNorm2d {
    const EPS: f64 = 1e-5;
    const MOMENTUM: f64 = 0.1;

    fn affine(&self, x: &Tensor, mean: &Tensor, invstd: &Tensor) -> Result<Tensor> {
        let c = self.weight.dim(0)?;
        let shape = (1, c, 1, 1);
        let scale = (invstd * &self.weight)?.reshape(shape)?;
        x.broadcast_sub(&mean.reshape(shape)?)?
            .broadcast_mul(&scale)?
            .broadcast_add(&self.bias.reshape(shape)?)
    }

    fn forward_train(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let n = (b * h * w) as f64;
        if n < 2.0 {
            candle_core::bail!(
                "BatchNorm in training mode needs more than one value per channel, got {x:?}"
            );
        }
        let xd = x
            .to_dtype(DType::F64)?
            .transpose(0, 1)?
            .reshape((c, b * h * w))?;
        let mean = xd.mean_keepdim(1)?;
        let var = xd.broadcast_sub(&mean)?.sqr()?.mean(1)?;
        let mean = mean.squeeze(1)?;
        self.update_running(&mean, &var, n)?;
        let invstd = (var + Self::EPS)?.sqrt()?.recip()?.to_dtype(x.dtype())?;
        self.affine(x, &mean.to_dtype(x.dtype())?, &invstd)
    }

    /// Folds the batch mean and biased variance (f64, over `n` values) into the running
    /// statistics, with PyTorch's momentum and unbiased variance.
    fn update_running(&self, mean: &Tensor, var: &Tensor, n: f64) -> Result<()> {
        let update = |stat: &Tensor, batch: Tensor| -> Result<()> {
            if !stat.is_variable() {
                candle_core::bail!("BatchNorm of a frozen model cannot run in training mode");
            }
            // A variable's Var shares its storage, so `set` updates the statistic in place.
            let stat = Var::from_tensor(stat)?;
            let batch = batch.detach().to_dtype(stat.dtype())?;
            stat.set(&((stat.as_tensor() * (1.0 - Self::MOMENTUM))? + (batch * Self::MOMENTUM)?)?)
        };
        update(&self.running_mean, mean.clone())?;
        update(&self.running_var, (var * (n / (n - 1.0)))?)
    }

    /// Training mode on the fast path: the same statistics and running-statistic update as
    /// [`Self::forward_train`], the normalisation (and ReLU) as one fused, differentiable op.
    fn forward_train_fast(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let (mean, invstd) =
            kernels::with_f32(x, "BatchNorm2d", |v| self.train_stats(v, (b, c, h * w)))??;
        train::batch_norm(x, &self.weight, &self.bias, mean, invstd, relu)
    }

    /// The training-mode statistics of an f32 NCHW batch `x` laid out as (images, channels,
    /// pixels per plane): moves the running statistics, and returns the batch mean and
    /// `1/√(var + ε)` as the normalisation uses them (f32; summed in f64 exactly as
    /// [`Self::forward_t`] sums them, so both paths normalise with the same numbers).
    pub fn train_stats(
        &self,
        x: &[f32],
        (b, c, hw): (usize, usize, usize),
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let n = (b * hw) as f64;
        if n < 2.0 {
            candle_core::bail!(
                "BatchNorm in training mode needs more than one value per channel, got {b} \
                 images of {hw} pixels"
            );
        }
        if self.weight.dim(0)? != c {
            candle_core::bail!("BatchNorm of {} channels given {c}", self.weight.dim(0)?);
        }
        let (mean, var) = train::channel_stats(x, (b, c, hw));
        let dev = self.weight.device();
        let mean = Tensor::from_vec(mean, c, dev)?;
        let var = Tensor::from_vec(var, c, dev)?;
        self.update_running(&mean, &var, n)?;
        // The same f64 ops as the reference path, so the f32 statistics are identical.
        let invstd = (var + Self::EPS)?.sqrt()?.recip()?.to_dtype(DType::F32)?;
        Ok((mean.to_dtype(DType::F32)?.to_vec1()?, invstd.to_vec1()?))
    }

    /// γ, the per-channel scale.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// β, the per-channel shift.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// `act(bn(y) + residual)` on the training path (`train`: batch statistics, fused ops where
    /// [`rd_kernels::enabled`]) or Candle's ops; `act` is ReLU when `relu`.
    pub fn forward_join(
        &self,
        y: &Tensor,
        residual: Option<&Tensor>,
        relu: bool,
        train: bool,
    ) -> Result<Tensor> {
        match residual {
            None if relu && train && kernels::enabled(y) => self.forward_train_fast(y, true),
            None if relu => self.forward_t(y, train)?.relu(),
            None => self.forward_t(y, train),
            Some(r) => {
                let h = self.forward_t(y, train)?;
                match relu {
                    true if kernels::enabled(y) => train::add_relu(&h, r),
                    true => (h + r)?.relu(),
                    false => h + r,
                }
            }
        }
    }

    /// The eval-mode normalisation as a per-channel scale and shift (computed in f64), for
    /// folding into the preceding convolution.
    pub fn eval_affine(&self) -> Result<Affine> {
        let get = |t: &Tensor| -> Result<Vec<f64>> { t.to_dtype(DType::F64)?.to_vec1::<f64>() };
        let (g, b) = (get(&self.weight)?, get(&self.bias)?);
        let (m, v) = (get(&self.running_mean)?, get(&self.running_var)?);
        let scale: Vec<f64> = g
            .iter()
            .zip(&v)
            .map(|(g, v)| g / (v + Self::EPS).sqrt())
            .collect();
        Ok(Affine {
            shift: b
                .iter()
                .zip(&m)
                .zip(&scale)
                .map(|((b, m), s)| (b - m * s) as f32)
                .collect(),
            scale: scale.into_iter().map(|s| s as f32).collect(),
        })
    }

    fn forward_eval(&self, x: &Tensor) -> Result<Tensor> {
        let invstd = (self.running_var.detach() + Self::EPS)?.sqrt()?.recip()?;
        self.affine(x, &self.running_mean.detach(), &invstd)
    }
}

impl ModuleT for BatchNorm2d {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if train && kernels::enabled(x) {
            self.forward_train_fast(x, false)
        } else if train {
            self.forward_train(x)
        } else {
            self.forward_eval(x)
        }
    }
}

/// A convolution followed by its BatchNorm (`downsample = Sequential(conv, bn)`).
#[derive(Debug, Clone)]
pub struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl ConvBn {
    /// Pairs a convolution with the BatchNorm that follows it.
    pub fn new(conv: Conv2d, bn: BatchNorm2d) -> Self {
        ConvBn { conv, bn }
    }

    /// The convolution.
    pub fn conv(&self) -> &Conv2d {
        &self.conv
    }

    /// The BatchNorm after it.
    pub fn bn(&self) -> &BatchNorm2d {
        &self.bn
    }

    /// `act(bn(conv(x)) + residual)`, ReLU when `relu`; `train` selects batch-statistics
    /// BatchNorm. Eval mode on the kernels is one fused pass without autograd graph.
    pub fn forward(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        relu: bool,
        train: bool,
    ) -> Result<Tensor> {
        if !train && kernels::enabled(x) {
            let bn = self.bn.eval_affine()?;
            let c = &self.conv;
            return eval::conv2d(x, &c.weight, Some(&bn), c.stride, c.padding, residual, relu);
        }
        self.bn
            .forward_join(&self.conv.forward(x)?, residual, relu, train)
    }
}

/// A torchvision `BasicBlock` or `Bottleneck` (ResNet v1.5: stride on the 3×3 conv).
#[derive(Debug, Clone)]
pub struct ResidualBlock {
    stages: Vec<ConvBn>,
    downsample: Option<ConvBn>,
}

impl ResidualBlock {
    /// Builds one block; `base_width` is torchvision's `width_per_group` (64, or 128 when wide).
    pub fn new(
        vb: VarBuilder,
        kind: BlockKind,
        c_in: usize,
        planes: usize,
        stride: usize,
        base_width: usize,
    ) -> Result<Self> {
        let c_out = planes * kind.expansion();
        let stage = |i: usize, conv: Conv2d, channels: usize| -> Result<ConvBn> {
            Ok(ConvBn::new(
                conv,
                batch_norm(vb.pp(format!("bn{i}")), channels)?,
            ))
        };
        let stages = match kind {
            BlockKind::Basic => vec![
                stage(1, Conv2d::k3(vb.pp("conv1"), c_in, planes, stride)?, planes)?,
                stage(2, Conv2d::k3(vb.pp("conv2"), planes, planes, 1)?, planes)?,
            ],
            BlockKind::Bottleneck => {
                let width = planes * base_width / 64;
                vec![
                    stage(1, Conv2d::k1(vb.pp("conv1"), c_in, width, 1)?, width)?,
                    stage(2, Conv2d::k3(vb.pp("conv2"), width, width, stride)?, width)?,
                    stage(3, Conv2d::k1(vb.pp("conv3"), width, c_out, 1)?, c_out)?,
                ]
            }
        };
        let downsample = if stride != 1 || c_in != c_out {
            let vb = vb.pp("downsample");
            Some(ConvBn::new(
                Conv2d::k1(vb.pp("0"), c_in, c_out, stride)?,
                batch_norm(vb.pp("1"), c_out)?,
            ))
        } else {
            None
        };
        Ok(ResidualBlock { stages, downsample })
    }

    /// The main branch's stages, in order; each ends in ReLU, the last after the residual join.
    pub fn stages(&self) -> &[ConvBn] {
        &self.stages
    }

    /// The shortcut's convolution and BatchNorm, when the block changes shape.
    pub fn downsample(&self) -> Option<&ConvBn> {
        self.downsample.as_ref()
    }
}

impl ModuleT for ResidualBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let identity = match &self.downsample {
            Some(d) => d.forward(x, None, false, train)?,
            None => x.clone(),
        };
        let last = self.stages.len() - 1;
        let mut h = x.clone();
        for (i, stage) in self.stages.iter().enumerate() {
            h = stage.forward(&h, (i == last).then_some(&identity), true, train)?;
        }
        Ok(h)
    }
}

/// A ResNet stage (`_make_layer`): the first block takes `c_in` channels and `stride`.
#[derive(Debug, Clone)]
pub struct ResLayer {
    blocks: Vec<ResidualBlock>,
}

impl ResLayer {
    /// Builds `blocks` blocks named `0`, `1`, … under `vb`.
    pub fn new(
        vb: VarBuilder,
        kind: BlockKind,
        c_in: usize,
        planes: usize,
        blocks: usize,
        stride: usize,
        base_width: usize,
    ) -> Result<Self> {
        let c_out = planes * kind.expansion();
        let blocks = (0..blocks)
            .map(|i| {
                let (c, s) = if i == 0 { (c_in, stride) } else { (c_out, 1) };
                ResidualBlock::new(vb.pp(i), kind, c, planes, s, base_width)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ResLayer { blocks })
    }

    /// The blocks, in order.
    pub fn blocks(&self) -> &[ResidualBlock] {
        &self.blocks
    }
}

impl ModuleT for ResLayer {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = x.clone();
        for b in &self.blocks {
            h = b.forward_t(&h, train)?;
        }
        Ok(h)
    }
}

/// torchvision's stem max-pool, `MaxPool2d(3, stride 2, padding 1)`: one parallel kernel pass
/// where [`rd_kernels::enabled`], else Candle's padding and pooling.
pub fn max_pool3x3_s2(x: &Tensor) -> Result<Tensor> {
    if kernels::enabled(x) {
        return eval::max_pool3x3_s2(x);
    }
    // PyTorch pads max-pooling with -inf; repeating the edge gives the same maxima because
    // every window already contains the edge pixel.
    x.pad_with_same(3, 1, 1)?
        .pad_with_same(2, 1, 1)?
        .max_pool2d_with_stride(3, 2)
}
