//! From teacher and student features to anomaly maps and image scores.

use std::fmt;
use std::str::FromStr;

use candle_core::{Result, Tensor};

use crate::{cosine_distance_map, GaussianBlur};

/// How the per-scale distance maps are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MapMode {
    /// Sum of the scales (anomalib's and the paper's default).
    #[default]
    Add,
    /// Product of the scales.
    Multiply,
}

impl fmt::Display for MapMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MapMode::Add => "add",
            MapMode::Multiply => "multiply",
        })
    }
}

impl FromStr for MapMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "add" | "a" => Ok(MapMode::Add),
            "multiply" | "mul" | "m" => Ok(MapMode::Multiply),
            _ => Err(format!(
                "unknown map mode `{s}`: expected `add` or `multiply`"
            )),
        }
    }
}

/// Every stage of the anomaly-map computation for a batch.
#[derive(Debug, Clone)]
pub struct AnomalyMaps {
    /// Per-scale `1 − cos` maps `[B, 1, h_k, w_k]`, finest first.
    pub distances: Vec<Tensor>,
    /// Per-scale maps upsampled to the input size `[B, 1, H, W]`.
    pub upsampled: Vec<Tensor>,
    /// The combined map before blurring `[B, 1, H, W]`.
    pub raw: Tensor,
    /// The blurred anomaly map `[B, 1, H, W]`.
    pub map: Tensor,
    /// Image scores, the maximum of each blurred map `[B]`.
    pub scores: Tensor,
}

/// anomalib's `AnomalyMapGenerator` for Reverse Distillation.
#[derive(Debug, Clone)]
pub struct AnomalyMapGenerator {
    size: (usize, usize),
    mode: MapMode,
    blur: GaussianBlur,
}

impl AnomalyMapGenerator {
    /// A generator for inputs of `size` = (height, width) with anomalib's σ = 4 blur.
    pub fn new(size: (usize, usize), mode: MapMode) -> Self {
        Self::with_blur(size, mode, GaussianBlur::anomalib())
    }

    /// A generator with a custom blur.
    pub fn with_blur(size: (usize, usize), mode: MapMode, blur: GaussianBlur) -> Self {
        AnomalyMapGenerator { size, mode, blur }
    }

    /// The combination mode.
    pub fn mode(&self) -> MapMode {
        self.mode
    }

    /// Computes all stages from matching lists of teacher and student features.
    pub fn compute(&self, teacher: &[Tensor], student: &[Tensor]) -> Result<AnomalyMaps> {
        if teacher.len() != student.len() || teacher.is_empty() {
            candle_core::bail!(
                "need the same non-zero number of teacher and student maps, got {} and {}",
                teacher.len(),
                student.len()
            );
        }
        let (h, w) = self.size;
        let distances = teacher
            .iter()
            .zip(student)
            .map(|(t, s)| cosine_distance_map(t, s))
            .collect::<Result<Vec<_>>>()?;
        let upsampled = distances
            .iter()
            .map(|d| d.upsample_bilinear2d(h, w, true))
            .collect::<Result<Vec<_>>>()?;
        let mut raw = upsampled[0].clone();
        for u in &upsampled[1..] {
            raw = match self.mode {
                MapMode::Add => (raw + u)?,
                MapMode::Multiply => (raw * u)?,
            };
        }
        let map = self.blur.forward(&raw)?;
        let scores = map.flatten_from(1)?.max(1)?;
        Ok(AnomalyMaps {
            distances,
            upsampled,
            raw,
            map,
            scores,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn align_corners_keeps_corner_values() {
        let x = Tensor::from_vec(vec![1f32, 2., 3., 4.], (1, 1, 2, 2), &Device::Cpu).unwrap();
        let y: Vec<Vec<f32>> = x
            .upsample_bilinear2d(4, 4, true)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        assert_eq!(y[0][0], 1.0);
        assert_eq!(y[0][3], 2.0);
        assert_eq!(y[3][0], 3.0);
        assert_eq!(y[3][3], 4.0);
        assert!((y[0][1] - (1.0 + 1.0 / 3.0)).abs() < 1e-6);
    }

    #[test]
    fn modes_parse() {
        assert_eq!("add".parse::<MapMode>().unwrap(), MapMode::Add);
        assert_eq!("Multiply".parse::<MapMode>().unwrap(), MapMode::Multiply);
        assert!("max".parse::<MapMode>().is_err());
    }
}
