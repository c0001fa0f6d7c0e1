//! The layers against Candle's ops: training-mode BatchNorm on the fused op versus the reference
//! path (forward bit-identical, gradients within 1e-5·max|ref|), and the one dispatch of every
//! layer: eval kernels, training ops, or Candle ops when [`rd_kernels::enabled`] says no
//! (reference mode, f64; on a GPU the same check routes to Candle), without a kernel call.

use candle_core::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rd_backbone::layers::{batch_norm, max_pool3x3_s2, BatchNorm2d, ResLayer};
use rd_backbone::{Backbone, BlockKind, Teacher};
use rd_kernels::{calls, with_reference};
use rd_tests::noise;

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Asserts `max|got − want| ≤ tol·max|want|` (comparing in f32).
fn assert_close(got: &Tensor, want: &Tensor, tol: f32, what: &str) {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes");
    let (got, want) = (
        got.to_dtype(DType::F32).unwrap(),
        want.to_dtype(DType::F32).unwrap(),
    );
    let err = max_abs(&(&got - &want).unwrap());
    let scale = max_abs(&want).max(1e-12);
    assert!(err <= tol * scale, "{what}: error {err} > {tol}·{scale}");
}

/// A weighted sum of `y` (so every output element gets its own upstream gradient).
fn weighted_loss(y: &Tensor, seed: u64) -> Tensor {
    let w = noise(y.dims(), seed, 1.0).to_dtype(y.dtype()).unwrap();
    (y * w).unwrap().sum_all().unwrap()
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
        // More channels than the kernel sums side by side, and not a multiple of them.
        (2, 19, 4, 5, true),
    ];
    for (i, &(b, c, h, w, relu)) in cases.iter().enumerate() {
        let seed = 10 * i as u64;
        // Off-centre inputs, as after a convolution: the mean matters.
        let x = Var::from_tensor(&(noise(&[b, c, h, w], seed, 2.0) + 0.7).unwrap()).unwrap();
        let (fast, fvm) = random_bn(c, seed + 1);
        let (reference, rvm) = random_bn(c, seed + 1);
        let run = |bn: &BatchNorm2d| {
            if relu {
                bn.forward_join(x.as_tensor(), None, true, true).unwrap()
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
    let err = frozen
        .forward_join(&x, None, true, true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("frozen model"), "{err}");
}

/// The same variables in f64 (fresh `Var`s, so training one copy leaves the other alone).
fn to_f64(vm: &VarMap) -> VarMap {
    let out = VarMap::new();
    {
        let src = vm.data().lock().unwrap();
        let mut dst = out.data().lock().unwrap();
        for (name, var) in src.iter() {
            let t = var.as_tensor().to_dtype(DType::F64).unwrap();
            dst.insert(name.clone(), Var::from_tensor(&t).unwrap());
        }
    }
    out
}

/// A ResNet stage of either block kind, on the eval kernels, the training ops, in reference mode
/// and in f64: the same outputs, and neither reference mode nor f64 reaches a kernel.
#[test]
fn every_path_of_a_stage_agrees_and_only_f32_cpu_reaches_the_kernels() {
    for (kind, c_in, planes, base_width) in [
        (BlockKind::Basic, 8, 8, 64),
        (BlockKind::Bottleneck, 16, 4, 128),
    ] {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let layer = ResLayer::new(vb, kind, c_in, planes, 2, 2, base_width).unwrap();
        let x = (noise(&[3, c_in, 10, 10], 1, 2.0) + 0.3).unwrap();
        let vm64 = to_f64(&vm);
        let vb64 = VarBuilder::from_varmap(&vm64, DType::F64, &Device::Cpu);
        let layer64 = ResLayer::new(vb64, kind, c_in, planes, 2, 2, base_width).unwrap();
        let x64 = x.to_dtype(DType::F64).unwrap();
        for train in [false, true] {
            let what = format!("{kind:?} train={train}");
            let before = calls();
            let fast = layer.forward_t(&x, train).unwrap();
            assert!(
                calls() > before,
                "{what}: the f32 CPU path must run the kernels"
            );
            let before = calls();
            let reference = with_reference(|| layer.forward_t(&x, train).unwrap());
            let f64_out = layer64.forward_t(&x64, train).unwrap();
            let grads = weighted_loss(&f64_out, 9).backward().unwrap();
            assert_eq!(
                calls(),
                before,
                "{what}: reference mode or f64 reached a kernel"
            );
            assert_eq!(f64_out.dtype(), DType::F64);
            let has_grad = vm64
                .all_vars()
                .iter()
                .any(|v| grads.get(v.as_tensor()).is_some());
            assert!(has_grad, "{what}: no gradient in f64");
            assert_close(
                &fast,
                &reference,
                1e-4,
                &format!("{what} fast vs reference"),
            );
            assert_close(
                &f64_out,
                &reference,
                1e-4,
                &format!("{what} f64 vs reference"),
            );
        }
    }
}

/// The teacher in f64 (stem, max-pool, three stages) takes Candle's ops all the way and agrees
/// with the f32 kernels.
#[test]
fn teacher_in_f64_calls_no_kernel() {
    let vm = VarMap::new();
    let teacher = Teacher::new(
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
        Backbone::Resnet18,
    )
    .unwrap();
    let vm64 = to_f64(&vm);
    let vb64 = VarBuilder::from_varmap(&vm64, DType::F64, &Device::Cpu);
    let teacher64 = Teacher::new(vb64, Backbone::Resnet18).unwrap();
    let x = noise(&[2, 3, 32, 32], 5, 2.0);
    let fast = teacher.forward(&x).unwrap();
    let before = calls();
    let f64_maps = teacher64.forward(&x.to_dtype(DType::F64).unwrap()).unwrap();
    assert_eq!(calls(), before, "the f64 teacher reached a kernel");
    for k in 0..3 {
        assert_eq!(f64_maps[k].dtype(), DType::F64);
        assert_close(
            &fast[k],
            &f64_maps[k],
            1e-4,
            &format!("teacher layer{}", k + 1),
        );
    }
}

#[test]
fn max_pool_paths_agree() {
    let x = (noise(&[2, 3, 9, 8], 3, 1.0) - 2.0).unwrap();
    let fast = max_pool3x3_s2(&x).unwrap();
    let before = calls();
    let reference = with_reference(|| max_pool3x3_s2(&x).unwrap());
    let f64_out = max_pool3x3_s2(&x.to_dtype(DType::F64).unwrap()).unwrap();
    assert_eq!(calls(), before);
    assert_close(&fast, &reference, 0.0, "max-pool");
    assert_close(&f64_out, &reference, 0.0, "max-pool f64");
}
