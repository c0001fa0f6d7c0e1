//! The AVX-512 GEMM against a naive f64-accumulated reference.
//!
//! Skipped (passes trivially) on CPUs without AVX-512F. Its speed against the `gemm` crate is
//! `cargo xtask bench --gemm`.

use rd_kernels::gemm;
use rd_kernels::{Affine, Epilogue};

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

/// Checks `try_acc` on one shape (with a non-zero initial `dst`) within f32 rounding:
/// per element, |ours − ref| ≤ 1e-5 · (|c₀| + Σ_p |a_ip·b_pj|).
fn check(m: usize, n: usize, k: usize) {
    let mut a = vec![0f32; m * k];
    let mut b = vec![0f32; k * n];
    let mut c = vec![0f32; m * n];
    fill(&mut a, (m * 31 + n * 7 + k) as u64);
    fill(&mut b, (m + n * 13 + k * 3) as u64 + 1);
    fill(&mut c, (m * n + k) as u64 + 2);
    let c0 = c.clone();
    assert!(gemm::try_acc(&mut c, &a, &b, m, n, k));
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
fn matches_f64_reference() {
    if !gemm::avx512_available() {
        eprintln!("no AVX-512F: skipped");
        return;
    }
    for &(m, n, k) in SHAPES {
        check(m, n, k);
    }
}

#[test]
fn matches_on_one_thread() {
    if !gemm::avx512_available() {
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
fn empty_shapes_are_no_ops() {
    if !gemm::avx512_available() {
        return;
    }
    let mut c = vec![1f32; 6];
    assert!(gemm::try_acc(&mut c, &[], &[], 2, 3, 0));
    assert_eq!(c, vec![1f32; 6]);
    assert!(gemm::try_acc(&mut c, &[], &[0.5; 12], 0, 3, 4));
}

/// `Im2col` segments (crossing output rows, at every border) equal the im2col definition.
#[test]
fn im2col_source_matches_the_definition() {
    use gemm::RhsSource;
    for &(c, h, w, kernel, stride, pad) in &[
        (2, 5, 7, 3, 1, 1),
        (3, 8, 6, 3, 2, 1),
        (1, 9, 9, 7, 2, 3),
        (2, 4, 5, 1, 2, 0),
        (1, 40, 40, 3, 1, 1),
        (1, 70, 70, 3, 2, 1),
        (2, 9, 9, 3, 3, 1),
        (1, 3, 3, 3, 1, 1),
    ] {
        let mut img = vec![0f32; c * h * w];
        fill(&mut img, (c * h * w) as u64);
        let ho = (h + 2 * pad - kernel) / stride + 1;
        let wo = (w + 2 * pad - kernel) / stride + 1;
        let src = gemm::Im2col {
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
                for len in [1, 3, wo + 1, gemm::NR, n - j0] {
                    let len = len.min(n - j0).min(gemm::NR);
                    let mut got = vec![f32::NAN; gemm::NR];
                    src.pack_panel(p, 1, j0, len, &mut got);
                    assert_eq!(
                        got[..len],
                        want[j0..j0 + len],
                        "row {p} from {j0}, {len} long"
                    );
                    assert!(
                        got[len..].iter().all(|v| v.is_nan()),
                        "row {p} from {j0}, {len} long: wrote past its columns"
                    );
                }
            }
            // a whole panel of rows at once walks (c, ky, kx) correctly
            let kc = c * kernel * kernel - p;
            let mut panel = vec![f32::NAN; kc * gemm::NR];
            let len = n.min(gemm::NR);
            src.pack_panel(p, kc, 0, len, &mut panel);
            for (i, row) in panel.chunks_exact(gemm::NR).enumerate() {
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

/// The transposed im2col of a batch, packed from the images, equals its definition for every
/// panel: runs that cross output rows and images, padding on every side, strides 1 and 2,
/// partial panels (fewer than 16 or 32 columns), and nothing written past a panel's columns.
#[test]
fn im2col_rows_source_matches_the_definition() {
    use gemm::RhsSource;
    // (images, channels, h, w, kernel, stride, pad)
    for &(b, c, h, w, kernel, stride, pad) in &[
        (2, 3, 5, 7, 3, 1, 1),
        (3, 2, 8, 6, 3, 2, 1),
        (2, 40, 4, 4, 3, 1, 1),
        (2, 5, 9, 9, 1, 1, 0),
        (1, 4, 18, 17, 3, 1, 1),
        (2, 3, 20, 21, 3, 2, 1),
        (2, 2, 3, 3, 3, 1, 1),
        (1, 3, 9, 9, 3, 3, 1),
    ] {
        let in_len = c * h * w;
        let mut x = vec![0f32; b * in_len];
        fill(&mut x, (b * in_len + kernel) as u64);
        let ho = (h + 2 * pad - kernel) / stride + 1;
        let wo = (w + 2 * pad - kernel) / stride + 1;
        let n = ho * wo;
        let src = gemm::Im2colRows {
            x: &x,
            in_len,
            hw: (h, w),
            kernel,
            stride,
            pad,
            wo,
            n,
        };
        let (rows, cols) = (b * n, c * kernel * kernel);
        let want = |r: usize, col: usize| {
            let (img, q) = (r / n, r % n);
            let (ch, ky, kx) = (
                col / (kernel * kernel),
                (col / kernel) % kernel,
                col % kernel,
            );
            let iy = ((q / wo) * stride + ky) as isize - pad as isize;
            let ix = ((q % wo) * stride + kx) as isize - pad as isize;
            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                0.0
            } else {
                x[img * in_len + ch * h * w + iy as usize * w + ix as usize]
            }
        };
        for j0 in (0..cols).step_by(5) {
            for width in [1, 7, 16, 17, gemm::NR] {
                let width = width.min(cols - j0);
                for (p0, kc) in [(0, rows), (1, rows - 1), (rows / 3, rows / 2 + 1)] {
                    let kc = kc.min(rows - p0);
                    let mut panel = vec![f32::NAN; kc * gemm::NR];
                    src.pack_panel(p0, kc, j0, width, &mut panel);
                    for (i, row) in panel.chunks_exact(gemm::NR).enumerate() {
                        for (j, &v) in row.iter().enumerate() {
                            let what = format!(
                                "{b}×{c}×{h}×{w} k{kernel} s{stride}: row {} column {}",
                                p0 + i,
                                j0 + j
                            );
                            if j < width {
                                assert_eq!(v, want(p0 + i, j0 + j), "{what}");
                            } else {
                                assert!(v.is_nan(), "{what}: written past the panel's columns");
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `try_fused` equals the accumulating GEMM followed by the epilogue, bit for bit, with
/// one and several k blocks, every epilogue part, ragged edges and an empty k.
#[test]
fn fused_epilogue_equals_separate_passes() {
    if !gemm::avx512_available() {
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
        assert!(gemm::try_acc(&mut plain, &a, &b, m, n, k));
        for (affine, residual, relu) in [
            (true, true, true),
            (true, false, true),
            (false, true, false),
        ] {
            let bn = Affine {
                scale: scale.clone(),
                shift: shift.clone(),
            };
            let epilogue = Epilogue {
                affine: affine.then_some(&bn),
                residual: residual.then_some(&res[..]),
                relu,
            };
            let mut got = vec![f32::NAN; m * n];
            let lhs = gemm::MatRef::rows(&a, k);
            let rhs = gemm::Dense { data: &b, n };
            assert!(gemm::try_fused(&mut got, lhs, &rhs, (m, n, k), &epilogue));
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
