//! The frozen teacher: a ResNet truncated after layer3, returning layer1..3 (SPEC §2.1).

use std::sync::Arc;

use candle_core::{Device, ModuleT, Tensor};
use candle_nn::VarBuilder;

use crate::layers::{batch_norm, max_pool3x3_s2, Conv2d, ConvBn, ResLayer};
use crate::params::{NameMap, ParamStore, WeightFile};
use crate::{Backbone, BackboneError, Result};

/// Three feature maps at strides 4, 8 and 16 (layer1, layer2, layer3), each NCHW.
#[derive(Debug, Clone)]
pub struct FeatureMaps(pub [Tensor; 3]);

impl FeatureMaps {
    /// The maps, finest first.
    pub fn iter(&self) -> impl Iterator<Item = &Tensor> {
        self.0.iter()
    }
}

impl std::ops::Index<usize> for FeatureMaps {
    type Output = Tensor;
    fn index(&self, i: usize) -> &Tensor {
        &self.0[i]
    }
}

/// Checks that an input batch is `[B, 3, H, W]` with H and W multiples of 32.
pub fn check_input(x: &Tensor) -> Result<()> {
    let dims = x.dims();
    if dims.len() != 4 || dims[1] != 3 {
        return Err(BackboneError::Candle(candle_core::Error::Msg(format!(
            "expected an image batch of shape [batch, 3, height, width], got {dims:?}"
        ))));
    }
    let (height, width) = (dims[2], dims[3]);
    if height % 32 != 0 || width % 32 != 0 || height == 0 || width == 0 {
        return Err(BackboneError::InputSize { height, width });
    }
    Ok(())
}

/// Prefixes under which a teacher's torchvision names may sit in a file: a timm/torchvision file,
/// an anomalib model state dict, or an anomalib Lightning checkpoint.
const TEACHER_PREFIXES: [&str; 3] = [
    "",
    "encoder.feature_extractor.",
    "model.encoder.feature_extractor.",
];

/// Tensors of a full ResNet file the teacher never uses.
fn unused_by_teacher(name: &str) -> bool {
    name.ends_with("num_batches_tracked")
        || name.contains("layer4.")
        || name.starts_with("fc.")
        || name.contains(".fc.")
}

/// A frozen ResNet teacher (eval-mode BatchNorm2d).
#[derive(Debug, Clone)]
pub struct Teacher {
    backbone: Backbone,
    /// `conv1` and `bn1`.
    stem: ConvBn,
    layers: [ResLayer; 3],
}

impl Teacher {
    /// Builds the teacher from a var builder using torchvision names (`conv1`, `bn1`, `layer1..3`).
    pub fn new(vb: VarBuilder, backbone: Backbone) -> candle_core::Result<Self> {
        let kind = backbone.block();
        let blocks = backbone.blocks();
        let width = backbone.base_width();
        let stem = ConvBn::new(
            Conv2d::new(vb.pp("conv1"), 3, 64, 7, 2, 3)?,
            batch_norm(vb.pp("bn1"), 64)?,
        );
        let mut c_in = 64;
        let mut layer = |i: usize, planes: usize, stride: usize| {
            let l = ResLayer::new(
                vb.pp(format!("layer{}", i + 1)),
                kind,
                c_in,
                planes,
                blocks[i],
                stride,
                width,
            );
            c_in = planes * kind.expansion();
            l
        };
        let layers = [layer(0, 64, 1)?, layer(1, 128, 2)?, layer(2, 256, 2)?];
        Ok(Teacher {
            backbone,
            stem,
            layers,
        })
    }

    /// Loads the teacher from a weights file: timm/torchvision names, optionally under anomalib's
    /// `encoder.feature_extractor.` (or Lightning's `model.encoder.feature_extractor.`) prefix.
    /// Returns the teacher and the store holding its tensors.
    pub fn load(
        file: Arc<WeightFile>,
        backbone: Backbone,
        device: &Device,
    ) -> Result<(Self, ParamStore)> {
        let prefix = file
            .detect_prefix(&TEACHER_PREFIXES, "conv1.weight")
            .unwrap_or("");
        let hint = format!(
            " (is it a torchvision/timm {backbone} file, or an anomalib model of that backbone?)"
        );
        let store = ParamStore::from_file(file, NameMap::prefixed(prefix), &hint, false, device);
        let teacher = Self::new(store.var_builder(), backbone).map_err(|e| store.explain(e))?;
        store.check_unused("", unused_by_teacher)?;
        Ok((teacher, store))
    }

    /// A randomly initialised teacher (timm's scheme) from a seed, for runs without pretrained
    /// weights and for tests.
    pub fn seeded(backbone: Backbone, seed: u64, device: &Device) -> Result<(Self, ParamStore)> {
        let store = ParamStore::seeded(seed, false, device);
        let teacher = Self::new(store.var_builder(), backbone).map_err(|e| store.explain(e))?;
        Ok((teacher, store))
    }

    /// The architecture.
    pub fn backbone(&self) -> Backbone {
        self.backbone
    }

    /// layer1..layer3 features of an ImageNet-normalised batch `[B, 3, H, W]`.
    ///
    /// A batch of large images goes through one image at a time on the kernels (see
    /// [`rd_kernels::per_image`]).
    pub fn forward(&self, x: &Tensor) -> Result<FeatureMaps> {
        check_input(x)?;
        let b = x.dim(0)?;
        if rd_kernels::per_image(x) {
            let parts = (0..b)
                .map(|i| self.forward_batch(&x.narrow(0, i, 1)?))
                .collect::<Result<Vec<_>>>()?;
            let cat = |k: usize| Tensor::cat(&parts.iter().map(|f| &f[k]).collect::<Vec<_>>(), 0);
            return Ok(FeatureMaps([cat(0)?, cat(1)?, cat(2)?]));
        }
        self.forward_batch(x)
    }

    /// [`forward`](Self::forward) on the whole batch at once.
    fn forward_batch(&self, x: &Tensor) -> Result<FeatureMaps> {
        let h = max_pool3x3_s2(&self.stem.forward(x, None, true, false)?)?;
        let f1 = self.layers[0].forward_t(&h, false)?;
        let f2 = self.layers[1].forward_t(&f1, false)?;
        let f3 = self.layers[2].forward_t(&f2, false)?;
        Ok(FeatureMaps([f1, f2, f3]))
    }
}
