//! From teacher and student features to anomaly maps and image scores.

use std::fmt;
use std::str::FromStr;

use candle_core::{CpuStorage, DType, Device, Result, Storage, Tensor};

use crate::{cosine_distance_map, kernels, GaussianBlur};

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

impl AnomalyMaps {
    /// Joins the maps of consecutive parts of a batch into the maps of the whole batch.
    pub fn concat(parts: &[AnomalyMaps]) -> Result<AnomalyMaps> {
        let Some(first) = parts.first() else {
            candle_core::bail!("no anomaly maps to join");
        };
        let cat = |get: &dyn Fn(&AnomalyMaps) -> &Tensor| -> Result<Tensor> {
            Tensor::cat(&parts.iter().map(get).collect::<Vec<_>>(), 0)
        };
        let per_scale = |get: &dyn Fn(&AnomalyMaps) -> &Vec<Tensor>| -> Result<Vec<Tensor>> {
            (0..get(first).len())
                .map(|k| cat(&|m: &AnomalyMaps| &get(m)[k]))
                .collect()
        };
        Ok(AnomalyMaps {
            distances: per_scale(&|m| &m.distances)?,
            upsampled: per_scale(&|m| &m.upsampled)?,
            raw: cat(&|m| &m.raw)?,
            map: cat(&|m| &m.map)?,
            scores: cat(&|m| &m.scores)?,
        })
    }
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

    /// Computes all stages from matching lists of teacher and student features: with the
    /// parallel kernels of [`crate::kernels`] for f32 maps on the CPU, else as
    /// [`compute_reference`](Self::compute_reference).
    pub fn compute(&self, teacher: &[Tensor], student: &[Tensor]) -> Result<AnomalyMaps> {
        self.check(teacher, student)?;
        let cpu_f32 = |t: &Tensor| matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32;
        if teacher.iter().chain(student).all(cpu_f32) {
            self.compute_cpu(teacher, student)
        } else {
            self.compute_reference(teacher, student)
        }
    }

    fn check(&self, teacher: &[Tensor], student: &[Tensor]) -> Result<()> {
        if teacher.len() != student.len() || teacher.is_empty() {
            candle_core::bail!(
                "need the same non-zero number of teacher and student maps, got {} and {}",
                teacher.len(),
                student.len()
            );
        }
        for (t, s) in teacher.iter().zip(student) {
            if t.dims() != s.dims() || t.rank() != 4 {
                candle_core::bail!(
                    "teacher and student maps must be [B, C, h, w] of the same shape, got {:?} and {:?}",
                    t.dims(),
                    s.dims()
                );
            }
        }
        self.blur.check_size(self.size)
    }

    /// The reference path: every stage as Candle tensor ops (differentiable, any device).
    pub fn compute_reference(&self, teacher: &[Tensor], student: &[Tensor]) -> Result<AnomalyMaps> {
        self.check(teacher, student)?;
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

    /// Every stage with the parallel kernels, for f32 CPU tensors (no autograd graph).
    fn compute_cpu(&self, teacher: &[Tensor], student: &[Tensor]) -> Result<AnomalyMaps> {
        let (h, w) = self.size;
        let dev = &Device::Cpu;
        let b = teacher[0].dim(0)?;
        let mut distances = Vec::with_capacity(teacher.len());
        let mut upsampled = Vec::with_capacity(teacher.len());
        let mut raw: Option<Vec<f32>> = None;
        for (t, s) in teacher.iter().zip(student) {
            let (_, c, th, tw) = t.dims4()?;
            let d = with_f32(t, |tv| {
                with_f32(s, |sv| kernels::cosine_distance(tv, sv, b, c, th * tw))
            })??;
            let u = kernels::upsample_align_corners(&d, b, (th, tw), (h, w));
            raw = Some(match raw {
                None => u.clone(),
                Some(mut acc) => {
                    match self.mode {
                        MapMode::Add => acc.iter_mut().zip(&u).for_each(|(a, v)| *a += v),
                        MapMode::Multiply => acc.iter_mut().zip(&u).for_each(|(a, v)| *a *= v),
                    }
                    acc
                }
            });
            distances.push(Tensor::from_vec(d, (b, 1, th, tw), dev)?);
            upsampled.push(Tensor::from_vec(u, (b, 1, h, w), dev)?);
        }
        let raw = raw.unwrap_or_default();
        let map = kernels::blur_reflect(&raw, b, (h, w), self.blur.kernel());
        let scores = kernels::max_per_image(&map, b);
        Ok(AnomalyMaps {
            distances,
            upsampled,
            raw: Tensor::from_vec(raw, (b, 1, h, w), dev)?,
            map: Tensor::from_vec(map, (b, 1, h, w), dev)?,
            scores: Tensor::from_vec(scores, b, dev)?,
        })
    }
}

/// Runs `f` on the f32 CPU data of `x` in row-major order, without a copy when it is contiguous.
fn with_f32<T>(x: &Tensor, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
    if let Some((start, end)) = x.layout().contiguous_offsets() {
        let (storage, _) = x.storage_and_layout();
        if let Storage::Cpu(CpuStorage::F32(v)) = &*storage {
            return Ok(f(&v[start..end]));
        }
    }
    let v = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    Ok(f(&v))
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

    fn noise(shape: &[usize], seed: u64) -> Tensor {
        rd_tests::noise(shape, seed, 1.0)
    }

    fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn cpu_kernels_equal_the_reference_path() {
        // odd sizes, a zero pixel in the student (distance 1), non-square output
        let shapes = [(2, 5, 9, 7), (2, 6, 5, 4), (2, 3, 3, 2)];
        let teacher: Vec<Tensor> = shapes
            .iter()
            .enumerate()
            .map(|(i, &(b, c, h, w))| noise(&[b, c, h, w], i as u64))
            .collect();
        let mut student: Vec<Tensor> = shapes
            .iter()
            .enumerate()
            .map(|(i, &(b, c, h, w))| noise(&[b, c, h, w], 10 + i as u64))
            .collect();
        student[1] = student[1]
            .slice_assign(
                &[0..1, 0..6, 0..1, 0..1],
                &Tensor::zeros((1, 6, 1, 1), DType::F32, &Device::Cpu).unwrap(),
            )
            .unwrap();
        for mode in [MapMode::Add, MapMode::Multiply] {
            let g = AnomalyMapGenerator::with_blur((37, 41), mode, GaussianBlur::new(2.0));
            let fast = g.compute(&teacher, &student).unwrap();
            let want = g.compute_reference(&teacher, &student).unwrap();
            for k in 0..3 {
                assert!(
                    max_abs(&fast.distances[k], &want.distances[k]) < 1e-6,
                    "{mode} d{k}"
                );
                assert!(
                    max_abs(&fast.upsampled[k], &want.upsampled[k]) < 1e-6,
                    "{mode} u{k}"
                );
            }
            assert!(max_abs(&fast.raw, &want.raw) < 1e-6, "{mode} raw");
            assert!(max_abs(&fast.map, &want.map) < 1e-6, "{mode} map");
            assert!(max_abs(&fast.scores, &want.scores) < 1e-6, "{mode} scores");
            assert!(fast.scores.to_vec1::<f32>().unwrap()[0] > 0.1);
        }
    }

    #[test]
    fn mismatched_maps_are_refused() {
        let g = AnomalyMapGenerator::new((64, 64), MapMode::Add);
        let t = noise(&[1, 4, 8, 8], 1);
        let s = noise(&[1, 3, 8, 8], 2);
        assert!(g
            .compute(std::slice::from_ref(&t), std::slice::from_ref(&s))
            .is_err());
        assert!(g.compute_reference(&[t], &[s]).is_err());
    }
}
