//! Fused CPU kernels for Reverse Distillation: an AVX-512 GEMM, eval-mode convolutions with
//! their BatchNorm, residual and ReLU applied as each output tile is stored, and differentiable
//! training ops (convolution, BatchNorm, residual join, 2×2 transposed convolution) as Candle
//! custom ops with GEMM-based backward passes.
//!
//! The kernels only run on contiguous f32 CPU tensors. Callers choose between them and the
//! pure-Candle reference path with [`enabled`], in one place per layer: not in reference mode
//! ([`with_reference`]), on the CPU, in f32. Everything else (CUDA, Metal, f64) takes the
//! reference path, and every public kernel refuses other tensors with an error instead of
//! copying them to the host.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use rd_kernels::{enabled, eval, with_reference, Affine};
//!
//! # fn main() -> candle_core::Result<()> {
//! let x = Tensor::ones((1, 2, 4, 4), candle_core::DType::F32, &Device::Cpu)?;
//! let w = Tensor::ones((3, 2, 3, 3), candle_core::DType::F32, &Device::Cpu)?;
//! let bn = Affine { scale: vec![0.5; 3], shift: vec![-1.0; 3] };
//! assert!(enabled(&x));
//! // conv (padding 1, stride 1) → BatchNorm → ReLU in one pass
//! let y = eval::conv2d(&x, &w, Some(&bn), 1, 1, None, true)?;
//! let centre: f32 = y.get(0)?.get(0)?.get(1)?.get(1)?.to_scalar()?;
//! assert_eq!(centre, 18.0 * 0.5 - 1.0);
//! assert!(!with_reference(|| enabled(&x)));
//! assert!(!enabled(&x.to_dtype(candle_core::DType::F64)?));
//! # Ok(()) }
//! ```
#![deny(missing_docs, unsafe_op_in_unsafe_fn)]

mod epilogue;
pub mod eval;
pub mod gemm;
mod geom;
pub mod profile;
mod runtime;
mod tensor;
pub mod train;

use std::cell::Cell;

use candle_core::{DType, Tensor};

pub use epilogue::{Affine, Epilogue};
pub use geom::ConvGeom;
pub use runtime::{read_ahead, use_small_pages};
pub use tensor::with_f32;

thread_local! {
    static REFERENCE: Cell<bool> = const { Cell::new(false) };
    static CALLS: Cell<u64> = const { Cell::new(0) };
}

/// Whether the calling thread is in reference mode (see [`with_reference`]).
pub fn reference_mode() -> bool {
    REFERENCE.with(Cell::get)
}

/// Runs `f` with the reference implementation (Candle ops only) on this thread.
pub fn with_reference<T>(f: impl FnOnce() -> T) -> T {
    let _mode = ReferenceGuard(REFERENCE.with(|r| r.replace(true)));
    f()
}

/// Whether the kernels can run on `x`: not in reference mode, a CPU tensor, f32.
///
/// The one check every layer makes before it calls a kernel: a GPU tensor (or an f64 one)
/// takes the pure-Candle path instead.
pub fn enabled(x: &Tensor) -> bool {
    !reference_mode() && x.device().is_cpu() && x.dtype() == DType::F32
}

/// Runs `f` on a thread of rayon's global pool (in place when already on one), so that the
/// kernels' parallel sections inside it start from a worker: called from outside the pool,
/// every section would be handed to the pool and waited for, a sleep and a wake-up each (a
/// model runs over a hundred sections; 4–6 % of resnet18 128² inference on two threads).
/// The calling thread's [`with_reference`] mode holds inside `f`, and the kernel calls `f`
/// makes count in this thread's [`calls`].
pub fn on_pool<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    let reference = reference_mode();
    let (out, made) = rayon::scope(|_| {
        // Restored on the way out, a panic included: the worker runs other tasks later.
        let _mode = ReferenceGuard(REFERENCE.with(|r| r.replace(reference)));
        let start = calls();
        let out = f();
        (out, calls() - start)
    });
    CALLS.with(|c| c.set(c.get() + made));
    out
}

/// Puts back a thread's reference mode when dropped (also when a panic unwinds).
struct ReferenceGuard(bool);

impl Drop for ReferenceGuard {
    fn drop(&mut self) {
        REFERENCE.with(|r| r.set(self.0));
    }
}

/// Whether a model should run the batch `x` (NCHW) one image at a time: on the kernels, for
/// images of more than [`PER_IMAGE_ABOVE_PIXELS`]. On large images one image's activations stay
/// in the caches from layer to layer where a whole batch's would not; on small ones a layer's
/// weights outweigh its activations, and the kernels run the whole batch as one GEMM instead.
pub fn per_image(x: &Tensor) -> bool {
    let dims = x.dims();
    enabled(x) && dims.len() == 4 && dims[0] > 1 && dims[2] * dims[3] > PER_IMAGE_ABOVE_PIXELS
}

/// Image pixels (height × width) above which [`per_image`] splits a batch: 256² images go one
/// at a time (measured as fast as a whole batch, with less memory), 128² ones as a batch.
pub const PER_IMAGE_ABOVE_PIXELS: usize = 160 * 160;

/// How many kernel calls (eval kernels, and custom-op forward and backward passes) this thread
/// has made: a probe for tests that a path never reaches the CPU kernels.
pub fn calls() -> u64 {
    CALLS.with(Cell::get)
}

/// Runs one training kernel: counted (see [`calls`]) and timed when [`profile`] records.
fn kernel_call<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    count_call();
    profile::timed(name, f)
}

/// Counts one kernel call on this thread (see [`calls`]).
fn count_call() {
    CALLS.with(|c| c.set(c.get() + 1));
}
