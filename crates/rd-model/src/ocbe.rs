//! The one-class bottleneck embedding: multi-scale fusion plus a ResNet layer (SPEC §2.2).

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::VarBuilder;
use rd_backbone::layers::{batch_norm, BatchNorm2d, Conv2d, ResLayer};
use rd_backbone::{Backbone, FeatureMaps};

use crate::Variant;

/// OCBE: fuses layer1..3 teacher features into one `[B, 512e, H/32, W/32]` embedding.
#[derive(Debug, Clone)]
pub struct Ocbe {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    conv3: Conv2d,
    bn3: BatchNorm2d,
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
        let conv1 = Conv2d::k3(vb.pp("conv1"), 64 * e, 128 * e, 2)?;
        let bn1 = batch_norm(vb.pp("bn1"), 128 * e)?;
        let conv2 = Conv2d::k3(vb.pp("conv2"), 128 * e, 256 * e, 2)?;
        let bn2 = batch_norm(vb.pp("bn2"), 256 * e)?;
        let conv3 = Conv2d::k3(vb.pp("conv3"), 128 * e, 256 * e, 2)?;
        let bn3 = batch_norm(vb.pp("bn3"), 256 * e)?;
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
            conv1,
            bn1,
            conv2,
            bn2,
            conv3,
            bn3,
            bn_layer,
        })
    }

    /// The embedding of teacher features; `train` selects batch-statistics BatchNorm2d.
    pub fn forward_t(&self, f: &FeatureMaps, train: bool) -> Result<Tensor> {
        if !train && rd_backbone::fast::fast_ok(&f[0]) {
            let fused = |c: &Conv2d, bn: &BatchNorm2d, x: &Tensor| -> Result<Tensor> {
                c.forward_fused(x, Some(&bn.eval_affine()?), None, true)
            };
            let l1 = fused(&self.conv1, &self.bn1, &f[0])?;
            let l1 = fused(&self.conv2, &self.bn2, &l1)?;
            let l2 = fused(&self.conv3, &self.bn3, &f[1])?;
            let cat = Tensor::cat(&[&l1, &l2, &f[2]], 1)?;
            return self.bn_layer.forward_t(&cat, train);
        }
        let l1 = self
            .bn1
            .forward_t_relu(&self.conv1.forward(&f[0])?, train)?;
        let l1 = self.bn2.forward_t_relu(&self.conv2.forward(&l1)?, train)?;
        let l2 = self
            .bn3
            .forward_t_relu(&self.conv3.forward(&f[1])?, train)?;
        let fused = Tensor::cat(&[&l1, &l2, &f[2]], 1)?;
        self.bn_layer.forward_t(&fused, train)
    }
}
