//! Differentiable fused CPU kernels for training: convolution, training-mode BatchNorm (with an
//! optional ReLU), the residual add + ReLU, and the k2 s2 transposed convolution.
//!
//! Candle builds these layers from many small single-threaded ops (BatchNorm alone is a dozen f64
//! passes forward and as many backward) and runs the input gradient of a convolution through its
//! direct-loop `conv_transpose2d`. Here each layer is one Candle custom op whose forward and
//! backward are parallel loops plus GEMMs on [`crate::gemm`]:
//!
//! * convolution: forward `Y_b = W·col(X_b)`; backward `dWᵀ = Σ_b col(X_b)·dY_bᵀ` and
//!   `dX_b = col2im(Wᵀ·dY_b)` (every GEMM row-major: transposing `dY_b` or `W` explicitly is
//!   cheaper than a strided GEMM);
//! * BatchNorm: the batch statistics in f64 exactly as the reference path sums them, so the
//!   forward pass is bit-identical; the backward pass is the closed-form full gradient (through
//!   the mean and variance) with its sums in f64.
//!
//! Each layer also has raw-data entry points (`conv2d_forward`, `conv2d_grad_input`,
//! `conv2d_grad_weight`, `batch_norm_forward`/`_backward`, `channel_stats`,
//! `deconv2x2_forward`/`_backward`, and the loss term with its gradient, `cosine_loss`) over
//! slices the caller owns: the custom ops wrap them, and
//! the explicit training engine of `rd-model` calls them on its own recycled buffers.
//!
//! A custom op has only a CPU implementation: every function here refuses tensors that are not
//! f32 on the CPU (before an op is built on them), so callers check [`crate::enabled`] and keep
//! the pure-Candle reference path for everything else. Backward passes compute first-order
//! gradients only.

mod add_relu;
mod batch_norm;
mod conv;
mod deconv;
mod loss;
mod scratch;

pub use add_relu::add_relu;
pub use batch_norm::{
    batch_norm, batch_norm_backward, batch_norm_forward, batch_stats, channel_stats, BatchStats,
    Nchw,
};
pub use conv::{conv2d, conv2d_forward, conv2d_grad_input, conv2d_grad_weight};
pub use deconv::{deconv2x2, deconv2x2_backward, deconv2x2_forward, DeconvGeom};
pub use loss::cosine_loss;
