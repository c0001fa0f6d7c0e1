//! The student decoder: a ResNet run backwards, upsampling with 2×2 transposed convolutions
//! (SPEC §2.3).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use rd_backbone::fast::{self, Affine};
use rd_backbone::layers::{batch_norm, BatchNorm2d, Conv2d};
use rd_backbone::params::conv_transpose_init;
use rd_backbone::train_ops;
use rd_backbone::{Backbone, BlockKind, FeatureMaps};

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

    /// The reference forward pass: Candle's `conv_transpose2d` (direct loops, no matmul).
    pub fn forward_reference(&self, x: &Tensor) -> Result<Tensor> {
        x.conv_transpose2d(&self.weight, 0, 0, 2, 1)
    }

    /// Eval-mode `act(bn(deconv(x)) + residual)` in one fused kernel (no autograd graph).
    pub fn forward_fused(
        &self,
        x: &Tensor,
        bn: Option<&Affine>,
        residual: Option<&Tensor>,
        relu: bool,
    ) -> Result<Tensor> {
        fast::deconv2x2_fused(x, &self.weight, bn, residual, relu)
    }
}

impl Module for Deconv2x2 {
    /// Differentiable: on the fast path one GEMM plus a pixel shuffle per image (the same
    /// numbers as `conv_transpose2d`, many times faster on the CPU).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if fast::fast_ok(x) {
            train_ops::deconv2x2(x, &self.weight)
        } else {
            self.forward_reference(x)
        }
    }
}

/// A decoder convolution: a regular one, or the upsampling transposed one.
#[derive(Debug, Clone)]
enum DecoderConv {
    Conv(Conv2d),
    Up(Deconv2x2),
}

impl Module for DecoderConv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            DecoderConv::Conv(c) => c.forward(x),
            DecoderConv::Up(d) => d.forward(x),
        }
    }
}

impl DecoderConv {
    fn forward_fused(
        &self,
        x: &Tensor,
        bn: &BatchNorm2d,
        residual: Option<&Tensor>,
        relu: bool,
    ) -> Result<Tensor> {
        let bn = bn.eval_affine()?;
        match self {
            DecoderConv::Conv(c) => c.forward_fused(x, Some(&bn), residual, relu),
            DecoderConv::Up(d) => d.forward_fused(x, Some(&bn), residual, relu),
        }
    }
}

/// anomalib's `DecoderBasicBlock` or `DecoderBottleneck`.
#[derive(Debug, Clone)]
struct DecoderBlock {
    stages: Vec<(DecoderConv, BatchNorm2d)>,
    upsample: Option<(Deconv2x2, BatchNorm2d)>,
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
        let up_or_3x3 = |name: &str, ci: usize, co: usize| -> Result<DecoderConv> {
            Ok(if upsample {
                DecoderConv::Up(Deconv2x2::new(vb.pp(name), ci, co)?)
            } else {
                DecoderConv::Conv(Conv2d::k3(vb.pp(name), ci, co, 1)?)
            })
        };
        let bn = |i: usize, c: usize| batch_norm(vb.pp(format!("bn{i}")), c);
        let stages = match kind {
            BlockKind::Basic => vec![
                (up_or_3x3("conv1", c_in, planes)?, bn(1, planes)?),
                (
                    DecoderConv::Conv(Conv2d::k3(vb.pp("conv2"), planes, planes, 1)?),
                    bn(2, planes)?,
                ),
            ],
            BlockKind::Bottleneck => {
                let width = planes * base_width / 64;
                vec![
                    (
                        DecoderConv::Conv(Conv2d::k1(vb.pp("conv1"), c_in, width, 1)?),
                        bn(1, width)?,
                    ),
                    (up_or_3x3("conv2", width, width)?, bn(2, width)?),
                    (
                        DecoderConv::Conv(Conv2d::k1(vb.pp("conv3"), width, c_out, 1)?),
                        bn(3, c_out)?,
                    ),
                ]
            }
        };
        let upsample = if upsample || c_in != c_out {
            let vb = vb.pp("upsample");
            Some((
                Deconv2x2::new(vb.pp("0"), c_in, c_out)?,
                batch_norm(vb.pp("1"), c_out)?,
            ))
        } else {
            None
        };
        Ok(DecoderBlock { stages, upsample })
    }

    /// Eval mode with the fused kernels (BatchNorm folded, ReLU and residual add fused).
    fn forward_fused(&self, x: &Tensor) -> Result<Tensor> {
        let identity = match &self.upsample {
            Some((up, bn)) => up.forward_fused(x, Some(&bn.eval_affine()?), None, false)?,
            None => x.clone(),
        };
        let last = self.stages.len() - 1;
        let mut h = x.clone();
        for (i, (conv, bn)) in self.stages.iter().enumerate() {
            let residual = (i == last).then_some(&identity);
            h = conv.forward_fused(&h, bn, residual, true)?;
        }
        Ok(h)
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !train && fast::fast_ok(x) {
            return self.forward_fused(x);
        }
        let last = self.stages.len() - 1;
        let mut h = x.clone();
        for (i, (conv, bn)) in self.stages.iter().enumerate() {
            let y = conv.forward(&h)?;
            h = if i != last {
                bn.forward_t_relu(&y, train)?
            } else {
                y.apply_t(bn, train)?
            };
        }
        let identity = match &self.upsample {
            Some((up, bn)) => up.forward(x)?.apply_t(bn, train)?,
            None => x.clone(),
        };
        if fast::fast_ok(x) {
            train_ops::add_relu(&h, &identity)
        } else {
            (h + identity)?.relu()
        }
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
