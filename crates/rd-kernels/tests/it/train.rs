//! The differentiable fused training ops of `rd_backbone::train_ops` against the reference Candle
//! ops: forward values and the gradients of input, weight, γ and β, on small random shapes.
//!
//! Forward and backward compare as `max|fast − ref| ≤ 1e-5·max|ref|` (f32 sums of up to a few
//! hundred products, in a different order; the observed errors are ~1e-7). The BatchNorm forward
//! and its running statistics must be bit-identical to the reference; its backward is a closed
//! form with f64 sums against Candle's chain of f32 ops through the batch statistics, which
//! lands within the same bound on these well-conditioned cases (values off-centre, spread ~1).
//! The add + ReLU join must match exactly.

use candle_core::{DType, Device, Module, ModuleT, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rd_backbone::fast::with_reference;
use rd_backbone::layers::{batch_norm, BatchNorm2d, Conv2d};
use rd_backbone::train_ops;
use rd_tests::noise;

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

/// A weighted sum of `y` (so every output element gets its own upstream gradient).
fn weighted_loss(y: &Tensor, seed: u64) -> Tensor {
    (y * noise(y.dims(), seed, 1.0)).unwrap().sum_all().unwrap()
}

/// Forward and gradients (w.r.t. `inputs`) of `f` on the fast path and in reference mode.
fn both_paths(inputs: &[&Var], seed: u64, f: impl Fn() -> Tensor) -> [(Tensor, Vec<Tensor>); 2] {
    let run = || {
        let y = f();
        let grads = weighted_loss(&y, seed).backward().unwrap();
        let g = inputs
            .iter()
            .map(|v| grads.get(v.as_tensor()).expect("no gradient").clone())
            .collect();
        (y, g)
    };
    [run(), with_reference(run)]
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
    ];
    for (i, &(b, ci, co, h, w, k, stride, pad)) in cases.iter().enumerate() {
        let seed = 100 * i as u64;
        let x = Var::from_tensor(&noise(&[b, ci, h, w], seed, 1.0)).unwrap();
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let conv = Conv2d::new(vb, ci, co, k, stride, pad).unwrap();
        let wv = vm.all_vars().pop().unwrap();
        let [(yf, gf), (yr, gr)] = both_paths(&[&x, &wv], seed + 1, || {
            conv.forward(x.as_tensor()).unwrap()
        });
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
    let err = train_ops::conv2d(&x, &w, 1, 1).unwrap_err().to_string();
    assert!(err.contains("does not fit"), "{err}");
}

/// A BatchNorm with random γ and β, and the VarMap holding its variables.
fn random_bn(c: usize, seed: u64) -> (BatchNorm2d, VarMap) {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let bn = batch_norm(vb, c).unwrap();
    let data = vm.data().lock().unwrap();
    data["weight"]
        .set(&(noise(&[c], seed, 0.5) + 1.0).unwrap())
        .unwrap();
    data["bias"].set(&noise(&[c], seed + 1, 0.5)).unwrap();
    drop(data);
    (bn, vm)
}

fn var(vm: &VarMap, name: &str) -> Var {
    vm.data().lock().unwrap()[name].clone()
}

#[test]
fn batch_norm_train_matches_candle() {
    // (b, c, h, w, relu)
    let cases = [
        (2, 3, 5, 7, false),
        (4, 5, 3, 3, true),
        (1, 2, 9, 1, false),
        (3, 4, 6, 6, true),
    ];
    for (i, &(b, c, h, w, relu)) in cases.iter().enumerate() {
        let seed = 10 * i as u64;
        // Off-centre inputs, as after a convolution: the mean matters.
        let x = Var::from_tensor(&(noise(&[b, c, h, w], seed, 2.0) + 0.7).unwrap()).unwrap();
        let (fast, fvm) = random_bn(c, seed + 1);
        let (reference, rvm) = random_bn(c, seed + 1);
        let run = |bn: &BatchNorm2d| {
            if relu {
                bn.forward_t_relu(x.as_tensor(), true).unwrap()
            } else {
                bn.forward_t(x.as_tensor(), true).unwrap()
            }
        };
        let grads = |vm: &VarMap, y: &Tensor| {
            let g = weighted_loss(y, seed + 2).backward().unwrap();
            [
                x.as_tensor(),
                var(vm, "weight").as_tensor(),
                var(vm, "bias").as_tensor(),
            ]
            .map(|t| g.get(t).expect("no gradient").clone())
        };
        let yf = run(&fast);
        let gf = grads(&fvm, &yf);
        let (yr, gr) = with_reference(|| {
            let y = run(&reference);
            let g = grads(&rvm, &y);
            (y, g)
        });
        let what = format!("batch norm case {i}");
        let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(bits(&yf), bits(&yr), "{what}: forward not bit-identical");
        for stat in ["running_mean", "running_var"] {
            let (a, b) = (var(&fvm, stat), var(&rvm, stat));
            assert_eq!(bits(a.as_tensor()), bits(b.as_tensor()), "{what}: {stat}");
        }
        for (k, name) in ["dx", "dγ", "dβ"].iter().enumerate() {
            assert_close(&gf[k], &gr[k], 1e-5, &format!("{what} {name}"));
        }
    }
}

#[test]
fn batch_norm_train_errors_like_reference() {
    let (bn, _vm) = random_bn(2, 1);
    let one = noise(&[1, 2, 1, 1], 2, 1.0);
    let err = bn.forward_t(&one, true).unwrap_err().to_string();
    assert!(err.contains("more than one value per channel"), "{err}");
    // A frozen model: statistics that are plain tensors, not variables.
    let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
    let frozen = batch_norm(vb, 2).unwrap();
    let x = noise(&[2, 2, 3, 3], 3, 1.0);
    let err = frozen.forward_t_relu(&x, true).unwrap_err().to_string();
    assert!(err.contains("frozen model"), "{err}");
}

#[test]
fn add_relu_matches_candle() {
    let a = Var::from_tensor(&noise(&[2, 3, 5, 4], 1, 1.0)).unwrap();
    let b = Var::from_tensor(&noise(&[2, 3, 5, 4], 2, 1.0)).unwrap();
    let [(yf, gf), (yr, gr)] = both_paths(&[&a, &b], 3, || {
        if rd_backbone::fast::fast_ok(a.as_tensor()) {
            train_ops::add_relu(a.as_tensor(), b.as_tensor()).unwrap()
        } else {
            (a.as_tensor() + b.as_tensor()).unwrap().relu().unwrap()
        }
    });
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
        let [(yf, gf), (yr, gr)] = both_paths(&[&x, &wv], seed + 2, || {
            let (x, w) = (x.as_tensor(), wv.as_tensor());
            if rd_backbone::fast::fast_ok(x) {
                train_ops::deconv2x2(x, w).unwrap()
            } else {
                x.conv_transpose2d(w, 0, 0, 2, 1).unwrap()
            }
        });
        let what = format!("deconv case {i}");
        assert_close(&yf, &yr, 1e-5, &format!("{what} forward"));
        assert_close(&gf[0], &gr[0], 1e-5, &format!("{what} dx"));
        assert_close(&gf[1], &gr[1], 1e-5, &format!("{what} dw"));
    }
}
