//! The one-class bottleneck embedding: multi-scale fusion plus a ResNet layer (SPEC §2.2).

use candle_core::{ModuleT, Result, Tensor};
use candle_nn::VarBuilder;
use rd_backbone::layers::{batch_norm, Conv2d, ConvBn, ResLayer};
use rd_backbone::{Backbone, FeatureMaps};

use crate::engine::stage::{Block, Stage};
use crate::Variant;

/// OCBE: fuses layer1..3 teacher features into one `[B, 512e, H/32, W/32]` embedding.
#[derive(Debug, Clone)]
pub struct Ocbe {
    /// `conv1`/`bn1` and `conv2`/`bn2`: layer1 features down to layer3's resolution.
    down1: [ConvBn; 2],
    /// `conv3`/`bn3`: layer2 features down to layer3's resolution.
    down2: ConvBn,
    bn_layer: ResLayer,
}

impl Ocbe {
    /// Builds the OCBE under anomalib's names (`conv1..4`, `bn1..4`, `bn_layer.*`).
    ///
    /// `conv4`/`bn4` are created (so checkpoints round-trip and parameter counts match anomalib)
    /// but, as in anomalib and the official code, never used.
    pub fn new(vb: VarBuilder, backbone: Backbone, variant: Variant) -> Result<Self> {
        let kind = backbone.block();
        let e = kind.expansion();
        let stage = |i: usize, c_in: usize, c_out: usize| -> Result<ConvBn> {
            Ok(ConvBn::new(
                Conv2d::k3(vb.pp(format!("conv{i}")), c_in, c_out, 2)?,
                batch_norm(vb.pp(format!("bn{i}")), c_out)?,
            ))
        };
        let down1 = [stage(1, 64 * e, 128 * e)?, stage(2, 128 * e, 256 * e)?];
        let down2 = stage(3, 128 * e, 256 * e)?;
        Conv2d::k1(vb.pp("conv4"), 1024 * e, 512 * e, 1)?;
        batch_norm(vb.pp("bn4"), 512 * e)?;
        let bn_layer = ResLayer::new(
            vb.pp("bn_layer"),
            kind,
            3 * 256 * e,
            512,
            variant.ocbe_blocks(backbone),
            2,
            variant.ocbe_base_width(backbone),
        )?;
        Ok(Ocbe {
            down1,
            down2,
            bn_layer,
        })
    }

    /// The layers as the training engine walks them: the two stages from layer1, the stage
    /// from layer2, and the ResNet layer after the fusion.
    pub(crate) fn engine_layers(&self) -> ([Stage<'_>; 2], Stage<'_>, Vec<Block<'_>>) {
        let down1 = [
            Stage::conv_bn(&self.down1[0]),
            Stage::conv_bn(&self.down1[1]),
        ];
        let blocks = self.bn_layer.blocks().iter().map(Block::residual).collect();
        (down1, Stage::conv_bn(&self.down2), blocks)
    }

    /// The embedding of teacher features; `train` selects batch-statistics BatchNorm2d.
    pub fn forward_t(&self, f: &FeatureMaps, train: bool) -> Result<Tensor> {
        let l1 = self.down1[0].forward(&f[0], None, true, train)?;
        let l1 = self.down1[1].forward(&l1, None, true, train)?;
        let l2 = self.down2.forward(&f[1], None, true, train)?;
        let fused = Tensor::cat(&[&l1, &l2, &f[2]], 1)?;
        self.bn_layer.forward_t(&fused, train)
    }
}
