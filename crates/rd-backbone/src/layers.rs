//! The convolution, BatchNorm and residual-block modules shared by the teacher and the student.
//!
//! Names follow torchvision (`conv1`, `bn1`, `downsample.0`, …) so weights load without renaming.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{BatchNorm, VarBuilder};

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
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.conv2d(&self.weight, self.padding, self.stride, 1, 1)
    }
}

/// `nn.BatchNorm2d(c)` with PyTorch's eps 1e-5 and momentum 0.1.
pub fn batch_norm(vb: VarBuilder, channels: usize) -> Result<BatchNorm> {
    candle_nn::batch_norm(channels, 1e-5, vb)
}

/// A convolution followed by its BatchNorm (`downsample = Sequential(conv, bn)`).
#[derive(Debug, Clone)]
pub struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm,
}

impl ConvBn {
    /// Pairs a convolution with the BatchNorm that follows it.
    pub fn new(conv: Conv2d, bn: BatchNorm) -> Self {
        ConvBn { conv, bn }
    }
}

impl ModuleT for ConvBn {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.conv.forward(x)?.apply_t(&self.bn, train)
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
}

impl ModuleT for ResidualBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let last = self.stages.len() - 1;
        let mut h = x.clone();
        for (i, stage) in self.stages.iter().enumerate() {
            h = stage.forward_t(&h, train)?;
            if i != last {
                h = h.relu()?;
            }
        }
        let identity = match &self.downsample {
            Some(d) => d.forward_t(x, train)?,
            None => x.clone(),
        };
        (h + identity)?.relu()
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
