//! The differentiable training ops of `rd_kernels::train` against Candle's own ops: forward
//! values and the gradients of input and weight, on small random shapes.
//!
//! Forward and backward compare as `max|fast − ref| ≤ 1e-5·max|ref|` (f32 sums of up to a few
//! hundred products, in a different order; the observed errors are ~1e-7). The add + ReLU join
//! must match exactly. (The BatchNorm op is tested through its layer in rd-backbone, which owns
//! the statistics.)

use candle_core::{DType, Tensor, Var};
use rd_kernels::{calls, train};
use rd_tests::noise;

use crate::assert_close;

/// A weighted sum of `y` (so every output element gets its own upstream gradient).
fn weighted_loss(y: &Tensor, seed: u64) -> Tensor {
    (y * noise(y.dims(), seed, 1.0)).unwrap().sum_all().unwrap()
}

/// Forward and gradients (w.r.t. `inputs`) of the kernel `fast` and of Candle's `reference`.
fn both_paths(
    inputs: &[&Var],
    seed: u64,
    fast: impl Fn() -> Tensor,
    reference: impl Fn() -> Tensor,
) -> [(Tensor, Vec<Tensor>); 2] {
    let run = |f: &dyn Fn() -> Tensor| {
        let y = f();
        let grads = weighted_loss(&y, seed).backward().unwrap();
        let g = inputs
            .iter()
            .map(|v| grads.get(v.as_tensor()).expect("no gradient").clone())
            .collect();
        (y, g)
    };
    [run(&fast), run(&reference)]
}

#[test]
fn conv2d_matches_candle() {
    // (b, ci, co, h, w, k, stride, pad)
    let cases = [
        (2, 3, 4, 7, 9, 3, 1, 1),
        (2, 5, 6, 8, 8, 3, 2, 1),
        (1, 4, 3, 7, 7, 3, 2, 1),
        (2, 3, 2, 6, 5, 3, 1, 0),
        (1, 4, 3, 5, 5, 1, 1, 0),
        (3, 4, 5, 9, 7, 1, 2, 0),
        (2, 6, 4, 11, 11, 3, 2, 1),
        // Under 64 output pixels the input gradient is dYᵀ·W and a pixel-major col2im (the
        // cases above), from 64 at stride 1 the forward convolution of dY with the flipped
        // kernel, at stride 2 Wᵀ·dY and col2im; 1024 and more at stride 1: the weight
        // gradient from explicit im2col matrices (smaller maps and strided ones pack col(X)ᵀ
        // straight from the images).
        (2, 3, 4, 17, 16, 3, 1, 1),
        (3, 4, 5, 16, 16, 1, 1, 0),
        // One image, and maps of 1024 pixels and more: the input gradient image by image.
        (1, 3, 4, 12, 12, 3, 1, 1),
        (2, 2, 3, 33, 32, 3, 1, 1),
        (2, 3, 4, 32, 33, 1, 1, 0),
        (2, 3, 4, 20, 18, 3, 2, 1),
        (1, 3, 4, 20, 18, 3, 2, 1),
    ];
    for (i, &(b, ci, co, h, w, k, stride, pad)) in cases.iter().enumerate() {
        let seed = 100 * i as u64;
        let x = Var::from_tensor(&noise(&[b, ci, h, w], seed, 1.0)).unwrap();
        let wv = Var::from_tensor(&noise(&[co, ci, k, k], seed + 5, 0.5)).unwrap();
        let (xt, wt) = (x.as_tensor(), wv.as_tensor());
        let [(yf, gf), (yr, gr)] = both_paths(
            &[&x, &wv],
            seed + 1,
            || train::conv2d(xt, wt, stride, pad).unwrap(),
            || xt.conv2d(wt, pad, stride, 1, 1).unwrap(),
        );
        let what = format!("conv case {i}");
        assert_close(&yf, &yr, 1e-5, &format!("{what} forward"));
        assert_close(&gf[0], &gr[0], 1e-5, &format!("{what} dx"));
        assert_close(&gf[1], &gr[1], 1e-5, &format!("{what} dw"));
    }
}

#[test]
fn conv2d_rejects_mismatched_kernel() {
    let x = noise(&[1, 3, 5, 5], 1, 1.0);
    let w = noise(&[2, 4, 3, 3], 2, 1.0);
    let err = train::conv2d(&x, &w, 1, 1).unwrap_err().to_string();
    assert!(err.contains("does not fit"), "{err}");
}

#[test]
fn add_relu_matches_candle() {
    let a = Var::from_tensor(&noise(&[2, 3, 5, 4], 1, 1.0)).unwrap();
    let b = Var::from_tensor(&noise(&[2, 3, 5, 4], 2, 1.0)).unwrap();
    let (at, bt) = (a.as_tensor(), b.as_tensor());
    let [(yf, gf), (yr, gr)] = both_paths(
        &[&a, &b],
        3,
        || train::add_relu(at, bt).unwrap(),
        || (at + bt).unwrap().relu().unwrap(),
    );
    assert_close(&yf, &yr, 0.0, "add_relu forward");
    assert_close(&gf[0], &gr[0], 0.0, "add_relu da");
    assert_close(&gf[1], &gr[1], 0.0, "add_relu db");
}

#[test]
fn deconv2x2_matches_candle() {
    for (i, &(b, ci, co, h, w)) in [(2, 6, 4, 5, 7), (1, 3, 5, 4, 4), (3, 2, 3, 1, 3)]
        .iter()
        .enumerate()
    {
        let seed = 7 * i as u64;
        let x = Var::from_tensor(&noise(&[b, ci, h, w], seed, 1.0)).unwrap();
        let wv = Var::from_tensor(&noise(&[ci, co, 2, 2], seed + 1, 0.5)).unwrap();
        let (xt, wt) = (x.as_tensor(), wv.as_tensor());
        let [(yf, gf), (yr, gr)] = both_paths(
            &[&x, &wv],
            seed + 2,
            || train::deconv2x2(xt, wt).unwrap(),
            || xt.conv_transpose2d(wt, 0, 0, 2, 1).unwrap(),
        );
        let what = format!("deconv case {i}");
        assert_close(&yf, &yr, 1e-5, &format!("{what} forward"));
        assert_close(&gf[0], &gr[0], 1e-5, &format!("{what} dx"));
        assert_close(&gf[1], &gr[1], 1e-5, &format!("{what} dw"));
    }
}

/// Forward values and the gradients of `x` and `w` for the upstream gradient `u`.
fn with_grads(
    x: &Tensor,
    w: &Tensor,
    u: &Tensor,
    op: &dyn Fn(&Tensor, &Tensor) -> Tensor,
) -> (Tensor, Tensor, Tensor) {
    let (xv, wv) = (Var::from_tensor(x).unwrap(), Var::from_tensor(w).unwrap());
    let y = op(xv.as_tensor(), wv.as_tensor());
    let grads = (&y * u).unwrap().sum_all().unwrap().backward().unwrap();
    let g = |v: &Var| grads.get(v.as_tensor()).expect("no gradient").clone();
    (y, g(&xv), g(&wv))
}

/// On small maps the ops run a batch as one GEMM per layer: forward values and input gradients
/// equal those of its images run one at a time bit for bit (every value sums in the same
/// order); the weight gradient sums over the batch in another order.
#[test]
fn a_batch_equals_its_images() {
    type Op = Box<dyn Fn(&Tensor, &Tensor) -> Tensor>;
    let conv =
        |stride, pad| -> Op { Box::new(move |x, w| train::conv2d(x, w, stride, pad).unwrap()) };
    // (op, x dims per image, w dims)
    let cases: [(Op, [usize; 3], [usize; 4]); 5] = [
        (conv(1, 1), [5, 8, 8], [6, 5, 3, 3]),
        (conv(2, 1), [3, 9, 9], [4, 3, 3, 3]),
        (conv(1, 0), [4, 6, 6], [7, 4, 1, 1]),
        (conv(2, 0), [4, 6, 6], [5, 4, 1, 1]),
        (
            Box::new(|x, w| train::deconv2x2(x, w).unwrap()),
            [6, 4, 5],
            [6, 3, 2, 2],
        ),
    ];
    let b = 3;
    for (i, (op, [c, h, wd], wdims)) in cases.iter().enumerate() {
        let seed = 40 * i as u64;
        let x = noise(&[b, *c, *h, *wd], seed, 1.0);
        let w = noise(wdims, seed + 1, 0.5);
        let y_dims = op(&x, &w).dims().to_vec();
        let u = noise(&y_dims, seed + 2, 1.0);
        let (y, dx, dw) = with_grads(&x, &w, &u, op.as_ref());
        let mut dw_sum = w.zeros_like().unwrap();
        for bi in 0..b {
            let one = |t: &Tensor| t.narrow(0, bi, 1).unwrap();
            let (y1, dx1, dw1) = with_grads(&one(&x), &w, &one(&u), op.as_ref());
            let what = format!("case {i} image {bi}");
            assert_close(&one(&y), &y1, 0.0, &format!("{what} forward"));
            assert_close(&one(&dx), &dx1, 0.0, &format!("{what} dx"));
            dw_sum = (dw_sum + dw1).unwrap();
        }
        assert_close(&dw, &dw_sum, 1e-5, &format!("case {i} dw"));
    }
}

/// Every training op refuses a tensor that is not f32 on the CPU before it builds a custom op
/// (which has only a CPU implementation), and counts no kernel call.
#[test]
fn ops_refuse_other_dtypes_without_calling_a_kernel() {
    let x = noise(&[2, 3, 4, 4], 1, 1.0).to_dtype(DType::F64).unwrap();
    let w = noise(&[3, 3, 3, 3], 2, 1.0).to_dtype(DType::F64).unwrap();
    let w2 = noise(&[3, 2, 2, 2], 3, 1.0).to_dtype(DType::F64).unwrap();
    let g = Tensor::ones(3, DType::F64, x.device()).unwrap();
    let before = calls();
    let errors = [
        train::conv2d(&x, &w, 1, 1).unwrap_err(),
        train::deconv2x2(&x, &w2).unwrap_err(),
        train::add_relu(&x, &x).unwrap_err(),
        train::batch_norm(&x, &g, &g, vec![0.0; 3], vec![1.0; 3], true).unwrap_err(),
        train::batch_stats(&x).unwrap_err(),
    ];
    for e in errors {
        let e = e.to_string();
        assert!(
            e.contains("f32 CPU tensors only") && e.contains("F64"),
            "{e}"
        );
    }
    assert_eq!(calls(), before);
    // the f32 op does count
    let xf = x.to_dtype(DType::F32).unwrap();
    train::add_relu(&xf, &xf).unwrap();
    assert_eq!(calls(), before + 1);
}
