//! The frozen ImageNet ResNet teacher of Reverse Distillation (Deng & Li, CVPR 2022).
//!
//! The teacher returns layer1, layer2 and layer3 of a torchvision/timm ResNet (strides 4, 8, 16)
//! in eval mode. Weights load from safetensors with torchvision names (f32, f16 or bf16), found
//! through [`WeightsLocator`]: an explicit file, the Hugging Face cache, or a hub download.
//!
//! ```no_run
//! use candle_core::{Device, Tensor};
//! use rd_backbone::{Backbone, Teacher, WeightFile, WeightsLocator};
//!
//! # fn main() -> rd_backbone::Result<()> {
//! let id = "wide_resnet50_2.tv_in1k".parse()?;
//! let path = WeightsLocator::from_env().resolve(&id)?;
//! let (teacher, _params) = Teacher::load(WeightFile::open(path)?.into(), Backbone::WideResnet50_2, &Device::Cpu)?;
//! let x = Tensor::zeros((1, 3, 256, 256), candle_core::DType::F32, &Device::Cpu)?;
//! let features = teacher.forward(&x)?;
//! assert_eq!(features[2].dims(), &[1, 1024, 16, 16]);
//! # Ok(()) }
//! ```

#![deny(unsafe_code)]

mod arch;
mod error;
pub mod layers;
pub mod params;
mod teacher;
pub mod weights;

pub use arch::{Backbone, BackboneId, BlockKind};
pub use error::{BackboneError, Result};
pub use params::{NameMap, ParamStore, WeightFile};
pub use teacher::{check_input, FeatureMaps, Teacher};
pub use weights::{TeacherWeights, WeightsLocator};
