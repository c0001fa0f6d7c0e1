//! rd-kernels against Candle's own ops: the GEMM, the eval kernels, the training ops, and the
//! device/dtype check that keeps every other tensor on the Candle path.

mod enabled;
mod eval;
mod gemm;
mod train;

use candle_core::Tensor;

/// max |t|
fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Asserts `max|got − want| ≤ tol·max|want|`.
fn assert_close(got: &Tensor, want: &Tensor, tol: f32, what: &str) {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes");
    let err = max_abs(&(got - want).unwrap());
    let scale = max_abs(want).max(1e-12);
    assert!(err <= tol * scale, "{what}: error {err} > {tol}·{scale}");
}

/// max |a − b|
fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    max_abs(&(a - b).unwrap())
}
