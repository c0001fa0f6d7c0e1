//! The trainable half of Reverse Distillation: OCBE bottleneck, reversed-ResNet decoder, the loss
//! and the optimiser, assembled with the frozen teacher into [`ReverseDistillation`].
//!
//! Training on image files is [`Fit`] (seeded epochs, resumable checkpoints, log, [`Progress`]
//! reports, Ctrl-C); evaluation is [`predict()`] (raw scores and maps), [`fit_post_processor`]
//! (anomalib's thresholds and min/max) and [`compute_metrics`] (anomalib's test metrics).
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use rd_anomaly_map::MapMode;
//! use rd_backbone::{Backbone, Teacher};
//! use rd_model::{ModelConfig, ReverseDistillation, Student, Variant};
//!
//! # fn main() -> rd_model::Result<()> {
//! let dev = Device::Cpu;
//! let config = ModelConfig {
//!     backbone: Backbone::Resnet18,
//!     variant: Variant::Anomalib,
//!     image_size: (64, 64),
//!     map_mode: MapMode::Add,
//! };
//! let teacher = Teacher::seeded(config.backbone, 0, &dev)?;
//! let student = Student::seeded(config.backbone, config.variant, 1, &dev)?;
//! let model = ReverseDistillation::new(config, teacher, student)?;
//! let x = Tensor::zeros((1, 3, 64, 64), candle_core::DType::F32, &dev)?;
//! let maps = model.anomaly_maps(&x)?;
//! assert_eq!(maps.map.dims(), &[1, 1, 64, 64]);
//! # Ok(()) }
//! ```

mod adam;
pub mod batches;
pub mod checkpoint;
mod decoder;
mod device;
pub mod engine;
mod error;
pub mod evaluate;
pub mod file;
pub mod fit;
mod fit_log;
mod interrupt;
mod loss;
mod model;
mod ocbe;
pub mod predict;
mod predictor;
mod progress;
mod teacher_cache;
mod train;
mod variant;

pub use adam::{Adam, AdamConfig};
pub use decoder::{Decoder, Deconv2x2};
pub use device::DeviceSpec;
pub use error::{ModelError, Result};
pub use evaluate::{compute_metrics, fit_post_processor, Metrics, MetricsConfig};
pub use file::{LoadedModel, ModelMeta, PostStats, TrainingSummary};
pub use fit::{epoch_seed, Fit, FitOutcome, FitReport, TrainConfig};
pub use fit_log::EpochRecord;
pub use interrupt::{ctrl_c_flag, Interrupt};
pub use loss::{rd_loss, Loss};
pub use model::{Features, ModelConfig, ReverseDistillation, Student};
pub use ocbe::Ocbe;
pub use predict::{predict, predict_with, PredictConfig, Predictions};
pub use predictor::{Predictor, ScoredBatch, Verdict, MASK_THRESHOLD};
pub use progress::Progress;
pub use train::{Backprop, Gradients, StepPhase, StepState, Trainer};
pub use variant::Variant;
