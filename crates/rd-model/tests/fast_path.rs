//! The whole model on the kernels (fused eval convolutions and deconvolutions, max-pool, and a
//! training step through the explicit training engine) equals the reference Candle path within
//! the parity tolerances: features 1e-4·max|ref|, maps 1e-4. The kernels one by one are tested
//! in rd-kernels; the engine against Candle's autograd over the same kernels in `engine.rs`.

mod common;

use candle_core::{DType, Device, Tensor};
use rd_anomaly_map::MapMode;
use rd_backbone::{Backbone, Teacher};
use rd_kernels::with_reference;
use rd_model::{AdamConfig, ReverseDistillation, Student, Trainer, Variant};
use rd_tests::noise;

/// max |a − b| / max |b|
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    let m = b.abs().unwrap().max_all().unwrap();
    d.to_scalar::<f32>().unwrap() / m.to_scalar::<f32>().unwrap().max(1e-12)
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn model(backbone: Backbone, size: usize) -> ReverseDistillation {
    common::seeded(backbone, size, (3, 4))
}

fn check_model(backbone: Backbone, size: usize) {
    let m = model(backbone, size);
    let x = noise(&[2, 3, size, size], 7, 2.0);
    // One training-mode pass moves the student's running statistics away from 0 and 1, so the
    // folded BatchNorm is not trivial.
    with_reference(|| m.loss(&x).unwrap());
    let fast_f = m.features(&x, false).unwrap();
    let ref_f = with_reference(|| m.features(&x, false).unwrap());
    for k in 0..3 {
        let e = rel_err(&fast_f.teacher[k], &ref_f.teacher[k]);
        assert!(e < 1e-4, "{backbone} teacher {k}: {e}");
        let e = rel_err(&fast_f.student[k], &ref_f.student[k]);
        assert!(e < 1e-4, "{backbone} student {k}: {e}");
    }
    let e = rel_err(&fast_f.bottleneck, &ref_f.bottleneck);
    assert!(e < 1e-4, "{backbone} bottleneck: {e}");
    let fast_m = m.anomaly_maps(&x).unwrap();
    let ref_m = with_reference(|| m.anomaly_maps(&x).unwrap());
    assert!(max_abs(&fast_m.map, &ref_m.map) < 1e-4);
    assert!(max_abs(&fast_m.scores, &ref_m.scores) < 1e-4);

    // Training mode: the explicit training engine (on the kernels of `rd_kernels::train`) gives
    // the pure-Candle path's loss and gradients.
    let trainer = Trainer::new(m, AdamConfig::anomalib());
    let m = trainer.model();
    let before = rd_kernels::calls();
    let lf = trainer.compute(&x).unwrap();
    assert!(rd_kernels::calls() > before, "the engine runs the kernels");
    let lr = with_reference(|| trainer.compute_with_graph(&x).unwrap());
    let (vf, vr) = (lf.loss.value().unwrap(), lr.loss.value().unwrap());
    assert!(
        (vf - vr).abs() < 1e-5 * vr.abs().max(1.0),
        "loss {vf} vs {vr}"
    );
    let (gf, gr) = (lf.grads, lr.grads);
    // Training-mode BatchNorm over a few values per channel is ill-conditioned in float32 (see
    // the parity test): the limit is 1e-3·max|ref| or, when larger, four times how far the
    // reference gradient itself moves when the input moves by one float32 ulp.
    let nudged = (&x * (1.0 + f32::EPSILON as f64)).unwrap();
    let gn = with_reference(|| trainer.compute_with_graph(&nudged).unwrap().grads);
    for (name, var) in m.student_params().trainable_vars() {
        let (Some(a), Some(b), Some(n)) = (
            gf.get(var.as_tensor()),
            gr.get(var.as_tensor()),
            gn.get(var.as_tensor()),
        ) else {
            continue;
        };
        let scale = b.abs().unwrap().max_all().unwrap();
        let scale = scale.to_scalar::<f32>().unwrap();
        let limit = (1e-3 * scale.max(1e-6)).max(4.0 * max_abs(n, b));
        let e = max_abs(a, b);
        assert!(
            e <= limit,
            "{backbone} grad {name}: {e} > {limit} (max {scale})"
        );
    }
    assert_eq!(fast_f.teacher[0].dtype(), DType::F32);
}

#[test]
fn fast_model_equals_reference_resnet18() {
    check_model(Backbone::Resnet18, 64);
}

#[test]
fn fast_model_equals_reference_wide_resnet50_2() {
    check_model(Backbone::WideResnet50_2, 64);
}

/// The same variables in f64 (fresh `Var`s, so training one copy leaves the other alone).
fn to_f64(vm: &candle_nn::VarMap) -> candle_nn::VarMap {
    let out = candle_nn::VarMap::new();
    {
        let src = vm.data().lock().unwrap();
        let mut dst = out.data().lock().unwrap();
        for (name, var) in src.iter() {
            let t = var.as_tensor().to_dtype(DType::F64).unwrap();
            dst.insert(name.clone(), candle_core::Var::from_tensor(&t).unwrap());
        }
    }
    out
}

/// The whole model in f64 (teacher, OCBE, decoder; eval features, anomaly maps, and a training
/// loss with its backward pass) and in reference mode reaches no kernel, and agrees with the f32
/// kernels: the device/dtype check of every fast path, shown on the CPU where f64 stands in for
/// a GPU tensor.
#[test]
fn f64_and_reference_mode_reach_no_kernel() {
    use candle_nn::{VarBuilder, VarMap};
    use rd_anomaly_map::AnomalyMapGenerator;
    use rd_kernels::calls;
    use rd_model::rd_loss;

    let (backbone, size) = (Backbone::Resnet18, 64);
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let teacher = Teacher::new(vb.pp("t"), backbone).unwrap();
    let student = Student::new(vb.pp("s"), backbone, Variant::Anomalib).unwrap();
    let vm64 = to_f64(&vm);
    let vb64 = VarBuilder::from_varmap(&vm64, DType::F64, &dev);
    let teacher64 = Teacher::new(vb64.pp("t"), backbone).unwrap();
    let student64 = Student::new(vb64.pp("s"), backbone, Variant::Anomalib).unwrap();
    let maps = AnomalyMapGenerator::new((size, size), MapMode::Add);
    let x = noise(&[2, 3, size, size], 7, 2.0);
    let x64 = x.to_dtype(DType::F64).unwrap();

    // The teacher is frozen (as a loaded one is: plain tensors, not variables).
    let run = |t: &Teacher, s: &Student, x: &Tensor, train: bool| {
        let f = rd_backbone::FeatureMaps(t.forward(x).unwrap().0.map(|f| f.detach()));
        let (_, sf) = s.forward_t(&f, train).unwrap();
        (f, sf)
    };
    // eval: features and maps
    let before = calls();
    let (tf, sf) = run(&teacher, &student, &x, false);
    assert!(calls() > before, "the f32 CPU path must run the kernels");
    let fast_map = maps.compute(&tf.0, &sf.0).unwrap();
    let before = calls();
    let (tr, sr) = with_reference(|| run(&teacher, &student, &x, false));
    let (t64, s64) = run(&teacher64, &student64, &x64, false);
    let map64 = maps.compute(&t64.0, &s64.0).unwrap();
    assert_eq!(
        calls(),
        before,
        "reference mode or f64 reached a kernel in eval mode"
    );
    for k in 0..3 {
        assert_eq!(s64[k].dtype(), DType::F64);
        let f32_of = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        assert!(
            rel_err(&tf[k], &tr[k]) < 1e-4,
            "teacher {k} fast vs reference"
        );
        assert!(
            rel_err(&sf[k], &sr[k]) < 1e-4,
            "student {k} fast vs reference"
        );
        assert!(rel_err(&f32_of(&t64[k]), &tr[k]) < 1e-4, "teacher {k} f64");
        assert!(rel_err(&f32_of(&s64[k]), &sr[k]) < 1e-4, "student {k} f64");
    }
    let map64 = map64.map.to_dtype(DType::F32).unwrap();
    assert!(max_abs(&map64, &fast_map.map) < 1e-4);

    // training: the loss and its backward pass (student BatchNorm in training mode)
    let (t64, s64) = run(&teacher64, &student64, &x64, true);
    let loss64 = rd_loss(&t64, &s64).unwrap();
    let grads = loss64.total.backward().unwrap();
    let lr = with_reference(|| {
        let (t, s) = run(&teacher, &student, &x, true);
        let loss = rd_loss(&t, &s).unwrap();
        loss.total.backward().unwrap();
        loss.value().unwrap()
    });
    assert_eq!(
        calls(),
        before,
        "reference mode or f64 reached a kernel in training"
    );
    let v64 = loss64.total.to_scalar::<f64>().unwrap();
    assert!(
        (v64 - lr as f64).abs() < 1e-4 * v64.abs().max(1.0),
        "loss {v64} vs {lr}"
    );
    let w = vm64.data().lock().unwrap()["s.decoder.layer3.0.conv1.weight"].clone();
    assert!(
        grads.get(w.as_tensor()).is_some(),
        "no gradient for the decoder in f64"
    );
}
