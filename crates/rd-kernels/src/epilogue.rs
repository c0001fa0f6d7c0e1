//! What a kernel applies to each output value once its sum is complete.

/// Eval-mode BatchNorm as a per-channel scale and shift: `y = x·scale + shift`.
#[derive(Debug, Clone, PartialEq)]
pub struct Affine {
    /// γ / √(σ² + ε) per channel.
    pub scale: Vec<f32>,
    /// β − μ·scale per channel.
    pub shift: Vec<f32>,
}

/// The epilogue of a convolution, in this order: the [`Affine`] of output channel `i`
/// (`v·scale[i] + shift[i]`), `+ residual` (laid out like the output), then `max(v, 0)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// Per-channel (GEMM row) scale and shift, e.g. an eval-mode BatchNorm.
    pub affine: Option<&'a Affine>,
    /// Added after the affine; laid out like the output.
    pub residual: Option<&'a [f32]>,
    /// Clamp at zero last.
    pub relu: bool,
}

impl Epilogue<'_> {
    /// Applies the epilogue to the values of output channel `channel`, whose residual values
    /// (when there is a residual) are `residual`.
    pub(crate) fn apply(&self, channel: usize, values: &mut [f32], residual: Option<&[f32]>) {
        if let Some(a) = self.affine {
            let (s, t) = (a.scale[channel], a.shift[channel]);
            values.iter_mut().for_each(|v| *v = *v * s + t);
        }
        if let Some(r) = residual {
            values.iter_mut().zip(r).for_each(|(v, r)| *v += r);
        }
        if self.relu {
            values.iter_mut().for_each(|v| *v = v.max(0.0));
        }
    }
}
