//! The fast kernels (fused eval convolutions and deconvolutions, max-pool, the training ops)
//! equal the reference Candle path within the parity tolerances: features 1e-4·max|ref|, maps 1e-4.

use candle_core::{DType, Device, Tensor};
use rd_anomaly_map::MapMode;
use rd_backbone::fast::{self, with_reference, Affine};
use rd_backbone::{Backbone, Teacher};
use rd_model::{ModelConfig, ReverseDistillation, Student, Variant};
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

fn affine(c: usize, seed: u64) -> Affine {
    let s: Vec<f32> = noise(&[c], seed, 0.5).to_vec1().unwrap();
    let t: Vec<f32> = noise(&[c], seed + 1, 0.3).to_vec1().unwrap();
    Affine {
        scale: s.iter().map(|v| v + 1.0).collect(),
        shift: t,
    }
}

fn apply_affine(y: &Tensor, a: &Affine) -> Tensor {
    let c = a.scale.len();
    let s = Tensor::from_slice(&a.scale, (1, c, 1, 1), &Device::Cpu).unwrap();
    let t = Tensor::from_slice(&a.shift, (1, c, 1, 1), &Device::Cpu).unwrap();
    y.broadcast_mul(&s).unwrap().broadcast_add(&t).unwrap()
}

#[test]
fn fused_conv_equals_candle_conv() {
    for (i, &(b, ci, co, hw, k, stride, pad)) in [
        (2, 5, 7, 11, 3, 1, 1),
        (2, 6, 4, 12, 3, 2, 1),
        (1, 3, 8, 16, 7, 2, 3),
        (3, 9, 5, 8, 1, 1, 0),
        (2, 9, 5, 8, 1, 2, 0),
    ]
    .iter()
    .enumerate()
    {
        let seed = 10 * i as u64;
        let x = noise(&[b, ci, hw, hw], seed, 1.0);
        let w = noise(&[co, ci, k, k], seed + 1, 0.5);
        let bn = affine(co, seed + 2);
        let want = apply_affine(&x.conv2d(&w, pad, stride, 1, 1).unwrap(), &bn);
        let res = noise(want.dims(), seed + 3, 1.0);
        let want = (want + &res).unwrap().relu().unwrap();
        let got = fast::conv2d_fused(&x, &w, Some(&bn), stride, pad, Some(&res), true).unwrap();
        assert!(
            max_abs(&got, &want) < 1e-5,
            "case {i}: {}",
            max_abs(&got, &want)
        );
    }
}

#[test]
fn deconv_paths_equal_candle_conv_transpose() {
    let x = noise(&[2, 6, 5, 7], 1, 1.0);
    let w = noise(&[6, 4, 2, 2], 2, 0.5);
    let want = x.conv_transpose2d(&w, 0, 0, 2, 1).unwrap();
    let bn = affine(4, 3);
    let got = fast::deconv2x2_fused(&x, &w, Some(&bn), None, false).unwrap();
    assert!(max_abs(&got, &apply_affine(&want, &bn)) < 1e-5);
    let res = noise(want.dims(), 6, 1.0);
    let got = fast::deconv2x2_fused(&x, &w, Some(&bn), Some(&res), true).unwrap();
    let want_res = (apply_affine(&want, &bn) + &res).unwrap().relu().unwrap();
    assert!(max_abs(&got, &want_res) < 1e-5);
}

fn model(backbone: Backbone, size: usize) -> ReverseDistillation {
    let dev = Device::Cpu;
    let config = ModelConfig {
        backbone,
        variant: Variant::Anomalib,
        image_size: (size, size),
        map_mode: MapMode::Add,
    };
    let teacher = Teacher::seeded(backbone, 3, &dev).unwrap();
    let student = Student::seeded(backbone, config.variant, 4, &dev).unwrap();
    ReverseDistillation::new(config, teacher, student).unwrap()
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

    // Training mode: the differentiable fast ops of `rd_backbone::train_ops` give the
    // same loss and gradients.
    let lf = m.loss(&x).unwrap();
    let lr = with_reference(|| m.loss(&x).unwrap());
    let (vf, vr) = (lf.value().unwrap(), lr.value().unwrap());
    assert!(
        (vf - vr).abs() < 1e-5 * vr.abs().max(1.0),
        "loss {vf} vs {vr}"
    );
    let gf = lf.total.backward().unwrap();
    let gr = with_reference(|| lr.total.backward().unwrap());
    // Training-mode BatchNorm over a few values per channel is ill-conditioned in float32 (see
    // the parity test): the limit is 1e-3·max|ref| or, when larger, four times how far the
    // reference gradient itself moves when the input moves by one float32 ulp.
    let nudged = (&x * (1.0 + f32::EPSILON as f64)).unwrap();
    let gn = with_reference(|| m.loss(&nudged).unwrap().total.backward().unwrap());
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

#[test]
fn fused_max_pool_equals_candle_padding_and_pool() {
    for (i, &(b, c, h, w)) in [(2, 3, 16, 16), (1, 2, 15, 9), (1, 1, 2, 3)]
        .iter()
        .enumerate()
    {
        // all negative, so a zero padding would win and be caught
        let x = (noise(&[b, c, h, w], 40 + i as u64, 1.0) - 2.0).unwrap();
        let want = x
            .pad_with_same(3, 1, 1)
            .unwrap()
            .pad_with_same(2, 1, 1)
            .unwrap()
            .max_pool2d_with_stride(3, 2)
            .unwrap();
        let got = fast::max_pool3x3_s2_p1(&x).unwrap();
        assert_eq!(got.dims(), want.dims(), "case {i}");
        assert_eq!(max_abs(&got, &want), 0.0, "case {i}");
    }
}
