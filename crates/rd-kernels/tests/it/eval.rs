//! The fused eval kernels against Candle's convolutions, transposed convolutions and pooling
//! followed by the separate BatchNorm, residual and ReLU ops.

use candle_core::{Device, Tensor};
use rd_kernels::{eval, Affine};
use rd_tests::noise;

use crate::max_diff as max_abs;

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
        let got = eval::conv2d(&x, &w, Some(&bn), stride, pad, Some(&res), true).unwrap();
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
    let got = eval::deconv2x2(&x, &w, Some(&bn), None, false).unwrap();
    assert!(max_abs(&got, &apply_affine(&want, &bn)) < 1e-5);
    let res = noise(want.dims(), 6, 1.0);
    let got = eval::deconv2x2(&x, &w, Some(&bn), Some(&res), true).unwrap();
    let want_res = (apply_affine(&want, &bn) + &res).unwrap().relu().unwrap();
    assert!(max_abs(&got, &want_res) < 1e-5);
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
        let got = eval::max_pool3x3_s2(&x).unwrap();
        assert_eq!(got.dims(), want.dims(), "case {i}");
        assert_eq!(max_abs(&got, &want), 0.0, "case {i}");
    }
}

/// A batch through the fused kernels equals its images one by one, bit for bit: on small maps
/// the images share one GEMM, on large ones each gets its own, and every sum keeps its order.
#[test]
fn a_batch_equals_its_images_bit_for_bit() {
    let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    // (b, ci, co, hw, k, stride, pad): small maps (one GEMM per batch) and one large map
    for (i, &(b, ci, co, hw, k, stride, pad)) in [
        (3, 5, 7, 11, 3, 1, 1),
        (4, 9, 40, 4, 1, 1, 0),
        (2, 6, 4, 12, 3, 2, 1),
        (2, 3, 4, 34, 3, 1, 1),
    ]
    .iter()
    .enumerate()
    {
        let seed = 100 + 10 * i as u64;
        let x = noise(&[b, ci, hw, hw], seed, 1.0);
        let w = noise(&[co, ci, k, k], seed + 1, 0.5);
        let bn = affine(co, seed + 2);
        let ho = (hw + 2 * pad - k) / stride + 1;
        let res = noise(&[b, co, ho, ho], seed + 3, 1.0);
        for (residual, relu) in [(None, true), (Some(&res), true), (Some(&res), false)] {
            let batch = eval::conv2d(&x, &w, Some(&bn), stride, pad, residual, relu).unwrap();
            for bi in 0..b {
                let one = |t: &Tensor| t.narrow(0, bi, 1).unwrap();
                let r = residual.map(one);
                let single = eval::conv2d(&one(&x), &w, Some(&bn), stride, pad, r.as_ref(), relu);
                assert_eq!(
                    bits(&one(&batch)),
                    bits(&single.unwrap()),
                    "conv case {i} image {bi}"
                );
            }
        }
        // the transposed convolution
        let wd = noise(&[ci, co, 2, 2], seed + 4, 0.5);
        let res = noise(&[b, co, 2 * hw, 2 * hw], seed + 5, 1.0);
        let batch = eval::deconv2x2(&x, &wd, Some(&bn), Some(&res), true).unwrap();
        for bi in 0..b {
            let one = |t: &Tensor| t.narrow(0, bi, 1).unwrap();
            let single = eval::deconv2x2(&one(&x), &wd, Some(&bn), Some(&one(&res)), true);
            assert_eq!(
                bits(&one(&batch)),
                bits(&single.unwrap()),
                "deconv case {i} image {bi}"
            );
        }
    }
}
