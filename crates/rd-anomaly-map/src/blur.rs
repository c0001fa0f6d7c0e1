//! anomalib's `GaussianBlur2d`: a normalised sampled Gaussian, PyTorch "reflect" borders.

use candle_core::{Result, Tensor};

/// A separable Gaussian blur of `[B, 1, H, W]` maps with PyTorch-style reflect padding
/// (`…c b | a b c…`: the edge pixel is not repeated, unlike scipy's default).
#[derive(Debug, Clone)]
pub struct GaussianBlur {
    /// The taps as computed; a float32 map uses them rounded once, as anomalib's float32 run does.
    exact: Vec<f64>,
    kernel: Vec<f32>,
}

impl GaussianBlur {
    /// The blur anomalib applies to Reverse Distillation maps: σ = 4, 33 taps.
    pub fn anomalib() -> Self {
        Self::new(4.0)
    }

    /// A blur with standard deviation `sigma` and anomalib's size rule, 2·⌊4σ + 0.5⌋ + 1 taps.
    pub fn new(sigma: f64) -> Self {
        let radius = (4.0 * sigma + 0.5) as i64;
        let g: Vec<f64> = (-radius..=radius)
            .map(|x| (-((x * x) as f64) / (2.0 * sigma * sigma)).exp())
            .collect();
        let sum: f64 = g.iter().sum();
        let exact: Vec<f64> = g.iter().map(|v| v / sum).collect();
        GaussianBlur {
            kernel: exact.iter().map(|&v| v as f32).collect(),
            exact,
        }
    }

    /// The normalised 1-D kernel; the 2-D kernel is its outer product with itself.
    pub fn kernel(&self) -> &[f32] {
        &self.kernel
    }

    /// The 1-D kernel in float64, as a float64 map is blurred with.
    pub fn kernel_f64(&self) -> &[f64] {
        &self.exact
    }

    /// Blurs `[B, 1, H, W]` maps, keeping their size; H and W must exceed the kernel radius.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        let k = self.kernel.len();
        let r = k / 2;
        if c != 1 {
            candle_core::bail!("Gaussian blur expects one-channel maps, got {c} channels");
        }
        self.check_size((h, w))?;
        let kernel = Tensor::from_slice(&self.exact, k, x.device())?.to_dtype(x.dtype())?;
        let x = reflect_pad(x, 3, r)?.conv2d(&kernel.reshape((1, 1, 1, k))?, 0, 1, 1, 1)?;
        reflect_pad(&x, 2, r)?.conv2d(&kernel.reshape((1, 1, k, 1))?, 0, 1, 1, 1)
    }
}

impl GaussianBlur {
    /// Refuses maps whose sides do not exceed the kernel radius (reflect padding needs more).
    pub fn check_size(&self, (h, w): (usize, usize)) -> Result<()> {
        let k = self.kernel.len();
        let r = k / 2;
        if h <= r || w <= r {
            candle_core::bail!(
                "a {h}x{w} map is too small for a {k}-tap blur: reflect padding needs more than {r} pixels per side"
            );
        }
        Ok(())
    }
}

/// PyTorch `F.pad(mode="reflect")` of `p` elements on both sides of `dim`.
fn reflect_pad(x: &Tensor, dim: usize, p: usize) -> Result<Tensor> {
    let n = x.dim(dim)?;
    let idx: Vec<u32> = (1..=p)
        .rev()
        .chain(0..n)
        .chain((0..p).map(|i| n - 2 - i))
        .map(|i| i as u32)
        .collect();
    let idx = Tensor::from_vec(idx, n + 2 * p, x.device())?;
    x.index_select(&idx, dim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn kernel_matches_anomalib_size_and_sums_to_one() {
        let b = GaussianBlur::anomalib();
        assert_eq!(b.kernel().len(), 33);
        let s: f32 = b.kernel().iter().sum();
        assert!((s - 1.0).abs() < 1e-6);
        assert!(
            (b.kernel()[16] - 0.099_739_1).abs() < 1e-6, // 1 / Σ exp(−x²/32), x = −16..16
            "{}",
            b.kernel()[16]
        );
    }

    #[test]
    fn reflect_pad_does_not_repeat_the_edge() {
        let x = Tensor::from_vec(vec![0f32, 1., 2., 3.], (1, 1, 1, 4), &Device::Cpu).unwrap();
        let y: Vec<f32> = reflect_pad(&x, 3, 2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(y, vec![2., 1., 0., 1., 2., 3., 2., 1.]);
    }

    #[test]
    fn constant_map_stays_constant() {
        let x = Tensor::full(0.7f32, (2, 1, 40, 36), &Device::Cpu).unwrap();
        let y: Vec<f32> = GaussianBlur::anomalib()
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(y.len(), 2 * 40 * 36);
        assert!(y.iter().all(|v| (v - 0.7).abs() < 1e-6));
    }

    #[test]
    fn tiny_maps_are_refused() {
        let x = Tensor::zeros((1, 1, 16, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(GaussianBlur::anomalib().forward(&x).is_err());
    }
}
