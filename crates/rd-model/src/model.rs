//! The whole Reverse Distillation model: frozen teacher, trainable OCBE + decoder, anomaly maps.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use rd_anomaly_map::{AnomalyMapGenerator, AnomalyMaps, MapMode};
use rd_backbone::{
    check_input, Backbone, BackboneError, FeatureMaps, NameMap, ParamStore, Teacher, WeightFile,
};

use crate::loss::{rd_loss, Loss};
use crate::{Decoder, ModelError, Ocbe, Result, Variant};

/// The student: OCBE bottleneck and decoder, under anomalib's names `bottleneck.*`, `decoder.*`.
#[derive(Debug, Clone)]
pub struct Student {
    ocbe: Ocbe,
    decoder: Decoder,
}

/// Prefixes under which a student may sit in a file: an anomalib model state dict, or a
/// Lightning checkpoint's.
const STUDENT_PREFIXES: [&str; 2] = ["", "model."];

impl Student {
    /// Builds the student from a var builder.
    pub fn new(vb: VarBuilder, backbone: Backbone, variant: Variant) -> candle_core::Result<Self> {
        Ok(Student {
            ocbe: Ocbe::new(vb.pp("bottleneck"), backbone, variant)?,
            decoder: Decoder::new(vb.pp("decoder"), backbone)?,
        })
    }

    /// A freshly initialised, trainable student (SPEC §2.5 scheme) from a seed.
    pub fn seeded(
        backbone: Backbone,
        variant: Variant,
        seed: u64,
        device: &Device,
    ) -> Result<(Self, ParamStore)> {
        let store = ParamStore::seeded(seed, true, device);
        let student =
            Self::new(store.var_builder(), backbone, variant).map_err(|e| store.explain(e))?;
        Ok((student, store))
    }

    /// Loads a trainable student from anomalib names (`bottleneck.*`, `decoder.*`, optionally under
    /// Lightning's `model.`) or the official RD4AD names (`bn.*`, `decoder.*`).
    pub fn load(
        file: Arc<WeightFile>,
        backbone: Backbone,
        variant: Variant,
        device: &Device,
    ) -> Result<(Self, ParamStore)> {
        let names =
            if let Some(p) = file.detect_prefix(&STUDENT_PREFIXES, "bottleneck.conv1.weight") {
                NameMap::prefixed(p)
            } else if let Some(p) = file.detect_prefix(&STUDENT_PREFIXES, "bn.conv1.weight") {
                NameMap::identity()
                    .rule("bottleneck.", &format!("{p}bn."))
                    .rule("decoder.", &format!("{p}decoder."))
            } else {
                NameMap::identity()
            };
        let hint = format!(
            " (expected a {backbone} Reverse Distillation student in the `{variant}` variant; an \
             official RD4AD checkpoint needs the `official` variant, an anomalib one `anomalib`)"
        );
        let store = ParamStore::from_file(file, names, &hint, true, device);
        let student =
            Self::new(store.var_builder(), backbone, variant).map_err(|e| store.explain(e))?;
        let ignore = |n: &str| n.ends_with("num_batches_tracked");
        store.check_unused("bottleneck.", ignore)?;
        store.check_unused("decoder.", ignore)?;
        Ok((student, store))
    }

    /// The OCBE bottleneck.
    pub fn ocbe(&self) -> &Ocbe {
        &self.ocbe
    }

    /// The decoder.
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// The bottleneck embedding and the student features for teacher features `f`.
    pub fn forward_t(&self, f: &FeatureMaps, train: bool) -> Result<(Tensor, FeatureMaps)> {
        let z = self.ocbe.forward_t(f, train)?;
        let s = self.decoder.forward_t(&z, train)?;
        Ok((z, s))
    }
}

/// What the model's architecture and anomaly map are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelConfig {
    /// The teacher architecture.
    pub backbone: Backbone,
    /// Which OCBE flavour.
    pub variant: Variant,
    /// Input (height, width); multiples of 32.
    pub image_size: (usize, usize),
    /// How scales combine in the anomaly map.
    pub map_mode: MapMode,
}

/// Teacher, bottleneck and student features of one batch.
#[derive(Debug, Clone)]
pub struct Features {
    /// Frozen teacher features (layer1..3).
    pub teacher: FeatureMaps,
    /// The OCBE embedding.
    pub bottleneck: Tensor,
    /// Student features, matched to the teacher's.
    pub student: FeatureMaps,
}

/// A Reverse Distillation model ready for inference or training.
#[derive(Debug, Clone)]
pub struct ReverseDistillation {
    config: ModelConfig,
    teacher: Teacher,
    student: Student,
    teacher_params: ParamStore,
    student_params: ParamStore,
    maps: AnomalyMapGenerator,
}

impl ReverseDistillation {
    /// Puts the parts together, checking they agree with `config`.
    pub fn new(
        config: ModelConfig,
        (teacher, teacher_params): (Teacher, ParamStore),
        (student, student_params): (Student, ParamStore),
    ) -> Result<Self> {
        if teacher.backbone() != config.backbone {
            return Err(ModelError::Config(format!(
                "the teacher is a {} but the model is configured for {}",
                teacher.backbone(),
                config.backbone
            )));
        }
        let (h, w) = config.image_size;
        if h == 0 || w == 0 || h % 32 != 0 || w % 32 != 0 {
            return Err(BackboneError::InputSize {
                height: h,
                width: w,
            }
            .into());
        }
        Ok(ReverseDistillation {
            maps: AnomalyMapGenerator::new(config.image_size, config.map_mode),
            config,
            teacher,
            student,
            teacher_params,
            student_params,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The frozen teacher.
    pub fn teacher(&self) -> &Teacher {
        &self.teacher
    }

    /// The trainable student.
    pub fn student(&self) -> &Student {
        &self.student
    }

    /// The teacher's tensors (frozen).
    pub fn teacher_params(&self) -> &ParamStore {
        &self.teacher_params
    }

    /// The student's tensors (trainable parameters and BatchNorm statistics).
    pub fn student_params(&self) -> &ParamStore {
        &self.student_params
    }

    /// Checks a batch is `[B, 3, H, W]` at the configured size.
    pub(crate) fn check_batch(&self, x: &Tensor) -> Result<()> {
        check_input(x)?;
        let (_, _, h, w) = x.dims4()?;
        if (h, w) != self.config.image_size {
            return Err(ModelError::Config(format!(
                "the model takes {}x{} images but got a {h}x{w} batch; resize inputs to the model size",
                self.config.image_size.0, self.config.image_size.1
            )));
        }
        Ok(())
    }

    /// Checks `teacher` is what the teacher gives for one batch at the configured size: three
    /// maps of the backbone's channels at strides 4, 8 and 16, with one batch size.
    pub(crate) fn check_teacher_features(&self, teacher: &FeatureMaps) -> Result<()> {
        let (h, w) = self.config.image_size;
        let channels = self.config.backbone.feature_channels();
        let batch = teacher.0[0].dims().first().copied().unwrap_or(0);
        for (k, t) in teacher.0.iter().enumerate() {
            let want = [batch, channels[k], h >> (k + 2), w >> (k + 2)];
            if batch == 0 || t.dims() != want {
                return Err(ModelError::Config(format!(
                    "layer{} teacher features of a {h}x{w} {} model must be [images, {}, {}, {}]                      with the same number of images in all three maps, but got {:?}; pass what                      Teacher::forward gives for a batch of that size",
                    k + 1,
                    self.config.backbone,
                    want[1],
                    want[2],
                    want[3],
                    t.dims()
                )));
            }
        }
        Ok(())
    }

    /// All features of an ImageNet-normalised batch; `train` puts the student's BatchNorm in
    /// training mode (batch statistics, running statistics updated). The teacher is always frozen.
    pub fn features(&self, x: &Tensor, train: bool) -> Result<Features> {
        self.check_batch(x)?;
        let teacher = self.teacher.forward(x)?;
        let (bottleneck, student) = self.student.forward_t(&teacher, train)?;
        Ok(Features {
            teacher,
            bottleneck,
            student,
        })
    }

    /// Eval-mode anomaly maps and scores of a batch.
    ///
    /// On the kernels, large images go through the whole model one at a time: one image's
    /// activations stay in the caches from layer to layer, where a whole batch's (33 MiB per
    /// wide_resnet50_2 layer at batch 8, 256²) would not; small ones go as a batch, whose
    /// small-map layers then share one GEMM (see [`rd_kernels::per_image`]).
    pub fn anomaly_maps(&self, x: &Tensor) -> Result<AnomalyMaps> {
        // Only the CPU kernels use the pool; a GPU model stays on the caller's thread.
        if rd_kernels::enabled(x) {
            return rd_kernels::on_pool(|| self.anomaly_maps_here(x));
        }
        self.anomaly_maps_here(x)
    }

    fn anomaly_maps_here(&self, x: &Tensor) -> Result<AnomalyMaps> {
        let b = x.dim(0)?;
        if rd_kernels::per_image(x) {
            let parts = (0..b)
                .map(|i| self.maps_from(&self.features(&x.narrow(0, i, 1)?, false)?))
                .collect::<Result<Vec<_>>>()?;
            return Ok(AnomalyMaps::concat(&parts)?);
        }
        let f = self.features(x, false)?;
        self.maps_from(&f)
    }

    /// Anomaly maps from already computed features.
    pub fn maps_from(&self, f: &Features) -> Result<AnomalyMaps> {
        let (t, s) = (&f.teacher.0, &f.student.0);
        Ok(if rd_kernels::reference_mode() {
            self.maps.compute_reference(t, s)?
        } else {
            self.maps.compute(t, s)?
        })
    }

    /// The training loss of a batch (student in training mode).
    pub fn loss(&self, x: &Tensor) -> Result<Loss> {
        let f = self.features(x, true)?;
        Ok(rd_loss(&f.teacher, &f.student)?)
    }
}
