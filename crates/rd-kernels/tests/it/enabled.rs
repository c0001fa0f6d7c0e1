//! `enabled`: the one check that keeps the kernels to f32 CPU tensors outside reference mode.

use candle_core::{DType, Device, Tensor};
use rd_kernels::{calls, enabled, eval, on_pool, reference_mode, with_reference};

#[test]
fn enabled_only_for_f32_cpu_tensors_outside_reference_mode() {
    let x = Tensor::zeros((1, 2, 3, 3), DType::F32, &Device::Cpu).unwrap();
    assert!(enabled(&x));
    for dtype in [DType::F64, DType::F16, DType::BF16, DType::U32] {
        assert!(!enabled(&x.to_dtype(dtype).unwrap()), "{dtype:?}");
    }
    assert!(!reference_mode());
    with_reference(|| {
        assert!(reference_mode());
        assert!(!enabled(&x));
        // nested: the outer reference mode survives the inner one
        with_reference(|| assert!(!enabled(&x)));
        assert!(reference_mode());
    });
    assert!(enabled(&x));
    // reference mode is per thread
    with_reference(|| {
        let other = std::thread::spawn(move || enabled(&x)).join().unwrap();
        assert!(other);
    });
}

/// The eval kernels refuse other dtypes instead of converting (or, for a GPU tensor, copying it
/// to the host), and count no call.
#[test]
fn eval_kernels_refuse_other_dtypes_without_calling_a_kernel() {
    let x = Tensor::zeros((1, 2, 4, 4), DType::F64, &Device::Cpu).unwrap();
    let w = Tensor::zeros((2, 2, 3, 3), DType::F64, &Device::Cpu).unwrap();
    let before = calls();
    let errors = [
        eval::conv2d(&x, &w, None, 1, 1, None, true).unwrap_err(),
        eval::deconv2x2(
            &x,
            &w.narrow(2, 0, 2).unwrap().narrow(3, 0, 2).unwrap(),
            None,
            None,
            false,
        )
        .unwrap_err(),
        eval::max_pool3x3_s2(&x).unwrap_err(),
    ];
    for e in errors {
        assert!(e.to_string().contains("f32 CPU tensors only"), "{e}");
    }
    assert_eq!(calls(), before);
    eval::max_pool3x3_s2(&x.to_dtype(DType::F32).unwrap()).unwrap();
    assert_eq!(calls(), before + 1);
}

/// `on_pool` runs its closure on a pool thread as if on the caller's: the caller's reference
/// mode holds there and is not left behind on the worker, and the kernel calls made there count
/// on the caller's thread (once, also when the caller already is a worker).
#[test]
fn on_pool_carries_reference_mode_and_kernel_calls() {
    let x = Tensor::ones((1, 2, 4, 4), DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::ones((3, 2, 3, 3), DType::F32, &Device::Cpu).unwrap();
    assert!(with_reference(|| on_pool(reference_mode)));
    assert!(!on_pool(reference_mode));
    assert!(with_reference(|| on_pool(|| !enabled(&x))));
    let before = calls();
    on_pool(|| eval::conv2d(&x, &w, None, 1, 1, None, false).unwrap());
    assert_eq!(calls(), before + 1);
    let before = calls();
    on_pool(|| on_pool(|| eval::conv2d(&x, &w, None, 1, 1, None, false).unwrap()));
    assert_eq!(calls(), before + 1);
    // a panic inside leaves the worker and the caller as they were
    let caught = std::panic::catch_unwind(|| with_reference(|| on_pool(|| panic!("inside"))));
    assert!(caught.is_err());
    assert!(!reference_mode());
    assert!(!on_pool(reference_mode));
}
