//! Where the model runs: `cpu`, `cuda`, `cuda:N` or `metal`, as the command-line tools spell it.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use crate::{ModelError, Result};

/// A device by name; [`DeviceSpec::open`] turns it into a Candle [`Device`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The CPU (all cores; `RAYON_NUM_THREADS` limits them).
    #[default]
    Cpu,
    /// An NVIDIA GPU by index (needs a build with `--features cuda`).
    Cuda(usize),
    /// The Apple GPU (needs a build with `--features metal`).
    Metal,
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            "metal" => Ok(DeviceSpec::Metal),
            other => match other.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
                _ => Err(format!(
                    "unknown device `{s}`: use cpu, cuda, cuda:N or metal"
                )),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Metal => f.write_str("metal"),
        }
    }
}

impl DeviceSpec {
    /// Whether this program was compiled with support for the device (the CPU always is).
    pub fn is_built(self) -> bool {
        match self {
            DeviceSpec::Cpu => true,
            DeviceSpec::Cuda(_) => candle_core::utils::cuda_is_available(),
            DeviceSpec::Metal => candle_core::utils::metal_is_available(),
        }
    }

    /// Opens the device: an error says how to get support compiled in when it is missing, or
    /// that the device is not there.
    pub fn open(self) -> Result<Device> {
        if !self.is_built() {
            let (name, feature) = match self {
                DeviceSpec::Metal => ("Metal", "metal"),
                _ => ("CUDA", "cuda"),
            };
            return Err(ModelError::DeviceNotBuilt { name, feature });
        }
        let opened = match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => Device::new_cuda(n),
            DeviceSpec::Metal => Device::new_metal(0),
        };
        opened.map_err(|e| ModelError::DeviceOpen {
            device: self,
            reason: without_backtrace(e),
        })
    }
}

/// Candle's message alone: with `RUST_BACKTRACE` set, its errors carry a backtrace that reads as
/// a crash in a message meant for users.
fn without_backtrace(e: candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(*inner),
        e => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_spelling() {
        for (s, want) in [
            ("cpu", DeviceSpec::Cpu),
            ("CUDA", DeviceSpec::Cuda(0)),
            ("gpu", DeviceSpec::Cuda(0)),
            ("cuda:3", DeviceSpec::Cuda(3)),
            ("metal", DeviceSpec::Metal),
        ] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap(), want, "{s}");
        }
        assert_eq!(DeviceSpec::Cuda(3).to_string(), "cuda:3");
        for bad in ["cuda:", "cuda:x", "tpu", ""] {
            let err = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(err.contains("cpu, cuda, cuda:N or metal"), "{bad}: {err}");
        }
    }

    #[test]
    fn device_errors_drop_candles_backtrace() {
        let e = candle_core::Error::WithBacktrace {
            inner: Box::new(candle_core::Error::Msg("no GPU".into())),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        assert_eq!(without_backtrace(e), "no GPU");
    }

    #[test]
    fn a_device_not_compiled_in_says_which_feature_to_build() {
        assert!(matches!(DeviceSpec::Cpu.open(), Ok(Device::Cpu)));
        for (spec, feature) in [(DeviceSpec::Cuda(0), "cuda"), (DeviceSpec::Metal, "metal")] {
            if spec.is_built() {
                continue;
            }
            let err = spec.open().unwrap_err().to_string();
            assert!(err.contains(&format!("--features {feature}")), "{err}");
        }
    }
}
