//! The Reverse Distillation loss of anomalib and the official code (SPEC §3).

use candle_core::{Result, Tensor};
use rd_anomaly_map::cosine_similarity;
use rd_backbone::FeatureMaps;

/// The loss and its per-scale terms, as scalar tensors (differentiable).
#[derive(Debug, Clone)]
pub struct Loss {
    /// Sum of the three terms.
    pub total: Tensor,
    /// mean over the batch of `1 − cos` of each sample's flattened maps, finest scale first.
    pub terms: [Tensor; 3],
}

impl Loss {
    /// The loss as a number.
    pub fn value(&self) -> Result<f32> {
        self.total.to_scalar::<f32>()
    }

    /// The per-scale terms as numbers.
    pub fn term_values(&self) -> Result<[f32; 3]> {
        Ok([
            self.terms[0].to_scalar::<f32>()?,
            self.terms[1].to_scalar::<f32>()?,
            self.terms[2].to_scalar::<f32>()?,
        ])
    }
}

/// Σ over scales of mean over the batch of `1 − cos(flatten(teacher), flatten(student))`.
///
/// The cosine is over each sample's whole C·H·W vector, not per pixel: what the official code and
/// anomalib train with (hq-deng/RD4AD #22), though the paper describes a per-pixel form.
pub fn rd_loss(teacher: &FeatureMaps, student: &FeatureMaps) -> Result<Loss> {
    let term = |k: usize| -> Result<Tensor> {
        let a = teacher[k].flatten_from(1)?;
        let b = student[k].flatten_from(1)?;
        cosine_similarity(&a, &b, 1)?.affine(-1.0, 1.0)?.mean(0)
    };
    let terms = [term(0)?, term(1)?, term(2)?];
    let total = ((&terms[0] + &terms[1])? + &terms[2])?;
    Ok(Loss { total, terms })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn maps(v: &[f32]) -> FeatureMaps {
        let t = Tensor::from_slice(v, (1, v.len(), 1, 1), &Device::Cpu).unwrap();
        FeatureMaps([t.clone(), t.clone(), t])
    }

    #[test]
    fn identical_is_zero_orthogonal_is_three() {
        let a = maps(&[1.0, 0.0]);
        let b = maps(&[0.0, 2.0]);
        assert!(rd_loss(&a, &a).unwrap().value().unwrap().abs() < 1e-6);
        assert!((rd_loss(&a, &b).unwrap().value().unwrap() - 3.0).abs() < 1e-6);
    }

    #[test]
    fn zero_student_is_finite() {
        let a = maps(&[1.0, 0.0]);
        let z = maps(&[0.0, 0.0]);
        assert!((rd_loss(&a, &z).unwrap().value().unwrap() - 3.0).abs() < 1e-6);
    }
}
