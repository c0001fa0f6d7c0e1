//! Shared helpers for the workspace's tests: locating the reference fixtures in `$RD_SHARED`, and
//! seeded random tensors.
//!
//! Fixtures are made by anomalib itself and live beside the repository (`../shared`), never in it.
//! A test that needs them calls [`fixture_dir`]; on a user's fresh clone (no `shared/`) the test is
//! skipped with a printed reason, while CI sets `RD_REQUIRE_SHARED=1` so a missing fixture fails.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

/// The shared reference folder: `$RD_SHARED`, else `shared/` beside the repository root.
pub fn shared_root() -> PathBuf {
    match std::env::var_os("RD_SHARED") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("..")
            .join("shared"),
    }
}

/// Whether a missing fixture must fail the test instead of skipping it (`RD_REQUIRE_SHARED=1`).
pub fn shared_required() -> bool {
    std::env::var("RD_REQUIRE_SHARED").is_ok_and(|v| v == "1")
}

/// The sub-folders of `$RD_SHARED/<kind>` (e.g. `parity`, `metrics`), sorted; each is one case.
///
/// Returns `None` (after printing why) when the folder is absent and fixtures are not required;
/// panics when they are required, so CI cannot pass by skipping.
pub fn fixture_cases(kind: &str) -> Option<Vec<PathBuf>> {
    let dir = shared_root().join(kind);
    let cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            let mut v: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .collect();
            v.sort();
            v
        })
        .unwrap_or_default();
    if cases.is_empty() {
        let why = format!(
            "no fixture cases in {} (set RD_SHARED to the shared reference folder)",
            dir.display()
        );
        if shared_required() {
            panic!("RD_REQUIRE_SHARED=1 but {why}");
        }
        eprintln!("SKIPPED: {why}");
        return None;
    }
    Some(cases)
}

/// A CPU tensor of uniform values in [-scale, scale) from a small deterministic generator
/// (xorshift seeded by `seed`), the same on every machine.
pub fn noise(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("the shape matches the values")
}

/// The device the tests run models on: `$RD_DEVICE` (`cpu`, `cuda`, `cuda:N`, `metal`,
/// `metal:N`), else the CPU. A GPU needs the workspace built with its feature (`--features
/// cuda`); asking for one that cannot be had panics with the reason, so a GPU run never passes
/// silently on the CPU.
pub fn device() -> Device {
    let spec = std::env::var("RD_DEVICE").unwrap_or_default();
    let (kind, ordinal) = match spec.split_once(':') {
        Some((k, n)) => (
            k,
            n.parse::<usize>()
                .unwrap_or_else(|_| panic!("RD_DEVICE={spec}: the ordinal must be a number")),
        ),
        None => (spec.as_str(), 0),
    };
    let device = match kind {
        "" | "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(ordinal),
        "metal" => Device::new_metal(ordinal),
        _ => panic!("RD_DEVICE={spec}: expected cpu, cuda[:N] or metal[:N]"),
    };
    device.unwrap_or_else(|e| panic!("RD_DEVICE={spec}: {e}"))
}
