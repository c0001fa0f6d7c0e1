//! `--device cpu|cuda[:N]|metal` to a Candle device.

use std::str::FromStr;

use anyhow::{bail, Context, Result};
use candle_core::Device;

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceArg {
    /// The CPU (all cores; `RAYON_NUM_THREADS` limits them).
    Cpu,
    /// An NVIDIA GPU by index (needs a build with `--features cuda`).
    Cuda(usize),
    /// The Apple GPU (needs a build with `--features metal`).
    Metal,
}

impl FromStr for DeviceArg {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceArg::Cpu),
            "cuda" | "gpu" => Ok(DeviceArg::Cuda(0)),
            "metal" => Ok(DeviceArg::Metal),
            other => match other.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(n)) => Ok(DeviceArg::Cuda(n)),
                _ => Err(format!(
                    "unknown device `{s}`: use cpu, cuda, cuda:N or metal"
                )),
            },
        }
    }
}

impl DeviceArg {
    /// Opens the device, explaining how to get support compiled in when it is missing.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceArg::Cpu => Ok(Device::Cpu),
            DeviceArg::Cuda(n) => {
                if !candle_core::utils::cuda_is_available() {
                    bail!("this rd was built without CUDA; rebuild with `cargo build --release -p rd-cli --features cuda`");
                }
                Device::new_cuda(n).with_context(|| format!("cannot open CUDA device {n}"))
            }
            DeviceArg::Metal => {
                if !candle_core::utils::metal_is_available() {
                    bail!("this rd was built without Metal; rebuild with `cargo build --release -p rd-cli --features metal` on macOS");
                }
                Device::new_metal(0).context("cannot open the Metal device")
            }
        }
    }
}
