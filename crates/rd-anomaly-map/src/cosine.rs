//! Cosine similarity in the form PyTorch uses, safe for zero vectors in both directions.

use candle_core::{Result, Tensor};

/// PyTorch's default `eps` for `F.cosine_similarity`.
pub const COSINE_EPS: f64 = 1e-8;

/// Cosine similarity of `a` and `b` along `dim` (removed from the result), as `a·b / max(‖a‖‖b‖, ε²)^½`.
///
/// Taking the square root of the clamped product, rather than of each squared norm, keeps the
/// gradient finite when a norm is zero (a ReLU can zero a whole pixel); `√0` would give NaN.
pub fn cosine_similarity(a: &Tensor, b: &Tensor, dim: usize) -> Result<Tensor> {
    let dot = (a * b)?.sum(dim)?;
    let aa = a.sqr()?.sum(dim)?;
    let bb = b.sqr()?.sum(dim)?;
    let den = (aa * bb)?
        .clamp(COSINE_EPS * COSINE_EPS, f64::INFINITY)?
        .sqrt()?;
    dot / den
}

/// Per-pixel distance `1 − cos` over the channels of two `[B, C, h, w]` maps, as `[B, 1, h, w]`.
pub fn cosine_distance_map(teacher: &Tensor, student: &Tensor) -> Result<Tensor> {
    cosine_similarity(teacher, student, 1)?
        .affine(-1.0, 1.0)?
        .unsqueeze(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn zero_vector_gives_distance_one_and_finite_gradient() {
        let dev = Device::Cpu;
        let a = Var::from_vec(vec![0f32, 0., 0., 0.], (1, 2, 1, 2), &dev).unwrap();
        let b = Tensor::from_vec(vec![1f32, 2., 3., 4.], (1, 2, 1, 2), &dev).unwrap();
        let d = cosine_distance_map(a.as_tensor(), &b).unwrap();
        assert_eq!(
            d.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![1.0, 1.0]
        );
        let g = d.sum_all().unwrap().backward().unwrap();
        let ga: Vec<f32> = g.get(&a).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert!(ga.iter().all(|v| v.is_finite()), "{ga:?}");
    }

    #[test]
    fn orthogonal_and_parallel() {
        let dev = Device::Cpu;
        let a = Tensor::from_vec(vec![1f32, 0., 2., 2.], (2, 2), &dev).unwrap();
        let b = Tensor::from_vec(vec![0f32, 3., 1., 1.], (2, 2), &dev).unwrap();
        let c: Vec<f32> = cosine_similarity(&a, &b, 1).unwrap().to_vec1().unwrap();
        assert!(c[0].abs() < 1e-7 && (c[1] - 1.0).abs() < 1e-6, "{c:?}");
    }
}
