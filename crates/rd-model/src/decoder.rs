//! The student decoder: a ResNet run backwards, upsampling with 2×2 transposed convolutions
//! (SPEC §2.3).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use rd_backbone::layers::{batch_norm, BatchNorm2d, Conv2d, ConvBn};
use rd_backbone::params::conv_transpose_init;
use rd_backbone::{Backbone, BlockKind, FeatureMaps};
use rd_kernels::{self as kernels, eval, train};

use crate::engine::stage as engine;

/// `nn.ConvTranspose2d(c_in, c_out, kernel_size=2, stride=2, bias=False)`, weight (in, out, 2, 2).
#[derive(Debug, Clone)]
pub struct Deconv2x2 {
    weight: Tensor,
}

impl Deconv2x2 {
    /// Creates the layer with PyTorch's default initialisation.
    pub fn new(vb: VarBuilder, c_in: usize, c_out: usize) -> Result<Self> {
        let weight =
            vb.get_with_hints((c_in, c_out, 2, 2), "weight", conv_transpose_init(c_out, 2))?;
        Ok(Deconv2x2 { weight })
    }

    /// The weight, (in, out, 2, 2).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The reference forward pass: Candle's `conv_transpose2d` (direct loops, no matmul).
    pub fn forward_reference(&self, x: &Tensor) -> Result<Tensor> {
        x.conv_transpose2d(&self.weight, 0, 0, 2, 1)
    }
}

impl Module for Deconv2x2 {
    /// Differentiable: on the fast path one GEMM plus a pixel shuffle per image (the same
    /// numbers as `conv_transpose2d`, many times faster on the CPU).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if kernels::enabled(x) {
            train::deconv2x2(x, &self.weight)
        } else {
            self.forward_reference(x)
        }
    }
}

/// A transposed convolution followed by its BatchNorm.
#[derive(Debug, Clone)]
struct DeconvBn {
    deconv: Deconv2x2,
    bn: BatchNorm2d,
}

impl DeconvBn {
    /// `act(bn(deconv(x)) + residual)`, as [`ConvBn::forward`]: one fused kernel in eval mode
    /// where [`rd_kernels::enabled`], else the training or reference ops.
    fn forward(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        relu: bool,
        train: bool,
    ) -> Result<Tensor> {
        if !train && kernels::enabled(x) {
            let bn = self.bn.eval_affine()?;
            return eval::deconv2x2(x, &self.deconv.weight, Some(&bn), residual, relu);
        }
        self.bn
            .forward_join(&self.deconv.forward(x)?, residual, relu, train)
    }
}

impl DeconvBn {
    /// The training engine's view of it.
    fn engine(&self) -> engine::Stage<'_> {
        engine::Stage {
            linear: engine::Linear::Deconv(&self.deconv.weight),
            bn: &self.bn,
        }
    }
}

/// A decoder stage: a convolution, or the upsampling transposed one, with its BatchNorm.
#[derive(Debug, Clone)]
enum Stage {
    Conv(ConvBn),
    Up(DeconvBn),
}

impl Stage {
    fn forward(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        relu: bool,
        train: bool,
    ) -> Result<Tensor> {
        match self {
            Stage::Conv(c) => c.forward(x, residual, relu, train),
            Stage::Up(d) => d.forward(x, residual, relu, train),
        }
    }
}

/// anomalib's `DecoderBasicBlock` or `DecoderBottleneck`.
#[derive(Debug, Clone)]
struct DecoderBlock {
    stages: Vec<Stage>,
    upsample: Option<DeconvBn>,
}

impl DecoderBlock {
    fn new(
        vb: VarBuilder,
        kind: BlockKind,
        c_in: usize,
        planes: usize,
        upsample: bool,
        base_width: usize,
    ) -> Result<Self> {
        let c_out = planes * kind.expansion();
        let bn = |i: usize, c: usize| batch_norm(vb.pp(format!("bn{i}")), c);
        let conv = |i: usize, conv: Conv2d, c: usize| -> Result<Stage> {
            Ok(Stage::Conv(ConvBn::new(conv, bn(i, c)?)))
        };
        let up_or_3x3 = |i: usize, ci: usize, co: usize| -> Result<Stage> {
            let name = format!("conv{i}");
            if upsample {
                let deconv = Deconv2x2::new(vb.pp(name), ci, co)?;
                Ok(Stage::Up(DeconvBn {
                    deconv,
                    bn: bn(i, co)?,
                }))
            } else {
                conv(i, Conv2d::k3(vb.pp(name), ci, co, 1)?, co)
            }
        };
        let stages = match kind {
            BlockKind::Basic => vec![
                up_or_3x3(1, c_in, planes)?,
                conv(2, Conv2d::k3(vb.pp("conv2"), planes, planes, 1)?, planes)?,
            ],
            BlockKind::Bottleneck => {
                let width = planes * base_width / 64;
                vec![
                    conv(1, Conv2d::k1(vb.pp("conv1"), c_in, width, 1)?, width)?,
                    up_or_3x3(2, width, width)?,
                    conv(3, Conv2d::k1(vb.pp("conv3"), width, c_out, 1)?, c_out)?,
                ]
            }
        };
        let upsample = if upsample || c_in != c_out {
            let vb = vb.pp("upsample");
            Some(DeconvBn {
                deconv: Deconv2x2::new(vb.pp("0"), c_in, c_out)?,
                bn: batch_norm(vb.pp("1"), c_out)?,
            })
        } else {
            None
        };
        Ok(DecoderBlock { stages, upsample })
    }

    /// The training engine's view of the block.
    fn engine(&self) -> engine::Block<'_> {
        let stages = self.stages.iter().map(|s| match s {
            Stage::Conv(c) => engine::Stage::conv_bn(c),
            Stage::Up(d) => d.engine(),
        });
        engine::Block {
            stages: stages.collect(),
            shortcut: self.upsample.as_ref().map(DeconvBn::engine),
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let identity = match &self.upsample {
            Some(up) => up.forward(x, None, false, train)?,
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

/// The reversed ResNet decoder (`ResNetDecoder` in anomalib, `de_resnet` in RD4AD).
#[derive(Debug, Clone)]
pub struct Decoder {
    layers: [Vec<DecoderBlock>; 3],
}

impl Decoder {
    /// Builds the decoder for `backbone` under anomalib's names (`layer1..3.*`).
    pub fn new(vb: VarBuilder, backbone: Backbone) -> Result<Self> {
        let kind = backbone.block();
        let e = kind.expansion();
        let blocks = backbone.blocks();
        let width = backbone.base_width();
        let mut c_in = 512 * e;
        let mut layer = |i: usize, planes: usize| -> Result<Vec<DecoderBlock>> {
            let vb = vb.pp(format!("layer{}", i + 1));
            let layer = (0..blocks[i])
                .map(|b| {
                    let c = if b == 0 { c_in } else { planes * e };
                    DecoderBlock::new(vb.pp(b), kind, c, planes, b == 0, width)
                })
                .collect::<Result<Vec<_>>>()?;
            c_in = planes * e;
            Ok(layer)
        };
        Ok(Decoder {
            layers: [layer(0, 256)?, layer(1, 128)?, layer(2, 64)?],
        })
    }

    /// The three layers as the training engine walks them, coarsest (first run) first.
    pub(crate) fn engine_layers(&self) -> [Vec<engine::Block<'_>>; 3] {
        self.layers
            .each_ref()
            .map(|l| l.iter().map(DecoderBlock::engine).collect())
    }

    /// Student features matched to the teacher's layer1, layer2, layer3 (finest first).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<FeatureMaps> {
        let run = |blocks: &[DecoderBlock], x: &Tensor| -> Result<Tensor> {
            let mut h = x.clone();
            for b in blocks {
                h = b.forward_t(&h, train)?;
            }
            Ok(h)
        };
        let a = run(&self.layers[0], x)?;
        let b = run(&self.layers[1], &a)?;
        let c = run(&self.layers[2], &b)?;
        Ok(FeatureMaps([c, b, a]))
    }
}
