//! The AVX-512 GEMM of `rd_backbone::sgemm` against a naive f64-accumulated reference.
//!
//! Skipped (passes trivially) on CPUs without AVX-512F. The `#[ignore]` test
//! `sgemm_gflops` is a micro-benchmark against the `gemm` crate:
//! `cargo test --release -p rd-backbone --test sgemm -- --ignored --nocapture`.

use rd_backbone::{fast, sgemm};

/// A small deterministic generator (xorshift) for values in [-1, 1).
fn fill(v: &mut [f32], seed: u64) {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for x in v.iter_mut() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        *x = ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
    }
}

/// Checks `try_sgemm_acc` on one shape (with a non-zero initial `dst`) within f32 rounding:
/// per element, |ours − ref| ≤ 1e-5 · (|c₀| + Σ_p |a_ip·b_pj|).
fn check(m: usize, n: usize, k: usize) {
    let mut a = vec![0f32; m * k];
    let mut b = vec![0f32; k * n];
    let mut c = vec![0f32; m * n];
    fill(&mut a, (m * 31 + n * 7 + k) as u64);
    fill(&mut b, (m + n * 13 + k * 3) as u64 + 1);
    fill(&mut c, (m * n + k) as u64 + 2);
    let c0 = c.clone();
    assert!(sgemm::try_sgemm_acc(&mut c, &a, &b, m, n, k));
    let mut bt = vec![0f32; n * k];
    for p in 0..k {
        for j in 0..n {
            bt[j * k + p] = b[p * n + j];
        }
    }
    for i in 0..m {
        let ar = &a[i * k..(i + 1) * k];
        for j in 0..n {
            let br = &bt[j * k..(j + 1) * k];
            let (mut s, mut mag) = (c0[i * n + j] as f64, c0[i * n + j].abs() as f64);
            for (&x, &y) in ar.iter().zip(br) {
                s += x as f64 * y as f64;
                mag += (x as f64 * y as f64).abs();
            }
            let got = c[i * n + j] as f64;
            assert!(
                (got - s).abs() <= 1e-5 * mag.max(1e-30),
                "{m}×{n}×{k}: c[{i}][{j}] = {got}, reference {s} (magnitude {mag})"
            );
        }
    }
}

const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (1, 1, 7),
    (1, 33, 1),
    (2, 3, 4),
    (8, 32, 16),
    (7, 31, 9),
    (9, 33, 17),
    (17, 5, 33),
    (16, 16, 16),
    (15, 47, 255),
    (33, 64, 256),
    (31, 65, 257),
    (65, 300, 130),
    (64, 1024, 64),
    (129, 257, 513),
    (200, 100, 600),
    (3, 4200, 5),
    (9, 4129, 20),
    (12, 70, 4608),
    (64, 64, 4608),
    (33, 47, 4608),
    (17, 1100, 2100),
];

#[test]
fn sgemm_matches_f64_reference() {
    if !sgemm::available() {
        eprintln!("no AVX-512F: skipped");
        return;
    }
    for &(m, n, k) in SHAPES {
        check(m, n, k);
    }
}

#[test]
fn sgemm_matches_on_one_thread() {
    if !sgemm::available() {
        return;
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    pool.install(|| {
        for &(m, n, k) in &[(17, 5, 33), (65, 300, 130), (129, 257, 513)] {
            check(m, n, k);
        }
    });
}

#[test]
fn sgemm_empty_shapes_are_no_ops() {
    if !sgemm::available() {
        return;
    }
    let mut c = vec![1f32; 6];
    assert!(sgemm::try_sgemm_acc(&mut c, &[], &[], 2, 3, 0));
    assert_eq!(c, vec![1f32; 6]);
    assert!(sgemm::try_sgemm_acc(&mut c, &[], &[0.5; 12], 0, 3, 4));
}

/// GFLOP/s of the AVX-512 kernel vs the `gemm` crate (release build; not a correctness test).
#[test]
#[ignore]
fn sgemm_gflops() {
    let shapes = [
        (512, 1024, 4608),
        (64, 4096, 576),
        (128, 1024, 1152),
        (256, 256, 2304),
        (2048, 256, 1024),
        (512, 64, 4608),
    ];
    for (m, n, k) in shapes {
        let mut a = vec![0f32; m * k];
        let mut b = vec![0f32; k * n];
        fill(&mut a, 1);
        fill(&mut b, 2);
        let mut c = vec![0f32; m * n];
        let flops = 2.0 * (m * n * k) as f64;
        let reps = ((2e10 / flops) as usize).clamp(3, 200);
        let time = |f: &mut dyn FnMut(&mut [f32])| {
            let mut c = c.clone();
            f(&mut c);
            let mut best = f64::MAX;
            for _ in 0..reps {
                let t = std::time::Instant::now();
                f(&mut c);
                best = best.min(t.elapsed().as_secs_f64());
            }
            flops / best / 1e9
        };
        let ours = if sgemm::available() {
            time(&mut |c| {
                sgemm::try_sgemm_acc(c, &a, &b, m, n, k);
            })
        } else {
            f64::NAN
        };
        let theirs = time(&mut |c| fast::gemm_crate_acc(c, &a, &b, m, n, k));
        c[0] = 0.0;
        println!(
            "{m}×{k}·{k}×{n}: avx512 {ours:.1} GFLOP/s, gemm crate {theirs:.1} GFLOP/s ({:.2}×), {} threads",
            ours / theirs,
            rayon::current_num_threads()
        );
    }
}

/// `Im2col` segments (crossing output rows, at every border) equal the im2col definition.
#[test]
fn im2col_source_matches_the_definition() {
    use sgemm::RhsSource;
    for &(c, h, w, kernel, stride, pad) in &[
        (2, 5, 7, 3, 1, 1),
        (3, 8, 6, 3, 2, 1),
        (1, 9, 9, 7, 2, 3),
        (2, 4, 5, 1, 2, 0),
        (1, 40, 40, 3, 1, 1),
        (1, 70, 70, 3, 2, 1),
    ] {
        let mut img = vec![0f32; c * h * w];
        fill(&mut img, (c * h * w) as u64);
        let ho = (h + 2 * pad - kernel) / stride + 1;
        let wo = (w + 2 * pad - kernel) / stride + 1;
        let src = sgemm::Im2col {
            img: &img,
            hw: (h, w),
            kernel,
            stride,
            pad,
            wo,
        };
        let n = ho * wo;
        for p in 0..c * kernel * kernel {
            let (ch, ky, kx) = (p / (kernel * kernel), (p / kernel) % kernel, p % kernel);
            let want: Vec<f32> = (0..n)
                .map(|q| {
                    let iy = ((q / wo) * stride + ky) as isize - pad as isize;
                    let ix = ((q % wo) * stride + kx) as isize - pad as isize;
                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                        0.0
                    } else {
                        img[ch * h * w + iy as usize * w + ix as usize]
                    }
                })
                .collect();
            for j0 in 0..n {
                for len in [1, 3, wo + 1, sgemm::NR, n - j0] {
                    let len = len.min(n - j0).min(sgemm::NR);
                    let mut got = vec![f32::NAN; sgemm::NR];
                    src.pack_panel(p, 1, j0, len, &mut got);
                    assert_eq!(
                        got[..len],
                        want[j0..j0 + len],
                        "row {p} from {j0}, {len} long"
                    );
                }
            }
            // a whole panel of rows at once walks (c, ky, kx) correctly
            let kc = c * kernel * kernel - p;
            let mut panel = vec![f32::NAN; kc * sgemm::NR];
            let len = n.min(sgemm::NR);
            src.pack_panel(p, kc, 0, len, &mut panel);
            for (i, row) in panel.chunks_exact(sgemm::NR).enumerate() {
                let q = p + i;
                let (ch, ky, kx) = (q / (kernel * kernel), (q / kernel) % kernel, q % kernel);
                for (j, v) in row[..len].iter().enumerate() {
                    let iy = ((j / wo) * stride + ky) as isize - pad as isize;
                    let ix = ((j % wo) * stride + kx) as isize - pad as isize;
                    let want = if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                        0.0
                    } else {
                        img[ch * h * w + iy as usize * w + ix as usize]
                    };
                    assert_eq!(*v, want, "panel row {q} column {j}");
                }
            }
        }
    }
}

/// `try_sgemm_fused` equals the accumulating GEMM followed by the epilogue, bit for bit, with
/// one and several k blocks, every epilogue part, ragged edges and an empty k.
#[test]
fn fused_epilogue_equals_separate_passes() {
    if !sgemm::available() {
        return;
    }
    for &(m, n, k) in &[(9, 33, 17), (17, 1100, 2100), (64, 300, 1500), (5, 7, 0)] {
        let mut a = vec![0f32; m * k];
        let mut b = vec![0f32; k * n];
        let mut scale = vec![0f32; m];
        let mut shift = vec![0f32; m];
        let mut res = vec![0f32; m * n];
        fill(&mut a, 1);
        fill(&mut b, 2);
        fill(&mut scale, 3);
        fill(&mut shift, 4);
        fill(&mut res, 5);
        let mut plain = vec![0f32; m * n];
        assert!(sgemm::try_sgemm_acc(&mut plain, &a, &b, m, n, k));
        for (affine, residual, relu) in [
            (true, true, true),
            (true, false, true),
            (false, true, false),
        ] {
            let epilogue = sgemm::Epilogue {
                affine: affine.then_some((&scale[..], &shift[..])),
                residual: residual.then_some(&res[..]),
                relu,
            };
            let mut got = vec![f32::NAN; m * n];
            let lhs = sgemm::Lhs::row_major(&a, k);
            let rhs = sgemm::Dense { data: &b, n };
            assert!(sgemm::try_sgemm_fused(
                &mut got,
                lhs,
                &rhs,
                (m, n, k),
                &epilogue
            ));
            for (idx, (&g, &p)) in got.iter().zip(&plain).enumerate() {
                let i = idx / n;
                let mut want = p;
                if affine {
                    want = want * scale[i] + shift[i];
                }
                if residual {
                    want += res[idx];
                }
                if relu {
                    want = want.max(0.0);
                }
                assert_eq!(
                    g.to_bits(),
                    want.to_bits(),
                    "{m}×{n}×{k} element {idx}: {g} vs {want}"
                );
            }
        }
    }
}
