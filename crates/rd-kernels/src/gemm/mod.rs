//! Single-precision GEMM: `dst (m×n) += lhs (m×k) · rhs (k×n)`, on the AVX-512 kernel of this
//! crate where the CPU has AVX-512F, else through the `gemm` crate (its AVX2/FMA kernel on
//! stable Rust).

mod avx512;
mod pack;

pub use avx512::{available as avx512_available, try_acc, try_acc_from, try_fused, NR};
pub(crate) use avx512::{gather_segment, zero_segment};
pub use pack::{Batch, Dense, Im2col, Im2colRows, RhsSource};

use std::sync::atomic::{AtomicU64, Ordering};

/// Floating-point operations (2 per multiply-add) of every GEMM run so far in this process.
static FLOPS: AtomicU64 = AtomicU64::new(0);

/// Floating-point operations of every GEMM this process has run (2 per multiply-add, either
/// kernel): with a wall time, the GFLOP/s a model reaches, against the GEMM's own peak
/// (`cargo xtask bench --gemm`).
pub fn flops() -> u64 {
    FLOPS.load(Ordering::Relaxed)
}

/// Counts one `m×k · k×n` product in [`flops`].
fn count_flops(m: usize, n: usize, k: usize) {
    FLOPS.fetch_add(2 * (m * n * k) as u64, Ordering::Relaxed);
}

/// A strided matrix view read in place: element (i, j) is `data[i·rs + j·cs]` (row-major with
/// `c` columns: `(c, 1)`; the transpose of a row-major matrix with `c` columns: `(1, c)`).
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    /// The values.
    pub data: &'a [f32],
    /// Distance between rows.
    pub rs: usize,
    /// Distance between columns.
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major matrix with `cols` columns.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        MatRef {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix with `cols` columns (read in place).
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        MatRef {
            data,
            rs: 1,
            cs: cols,
        }
    }

    /// Whether every element of an r × c matrix lies inside `data`.
    fn fits(&self, r: usize, c: usize) -> bool {
        r == 0 || c == 0 || (r - 1) * self.rs + (c - 1) * self.cs < self.data.len()
    }
}

/// `dst (m×n) += lhs (m×k) · rhs (k×n)`, all row-major and contiguous: the AVX-512 kernel when
/// the CPU has AVX-512F, else the `gemm` crate.
///
/// # Panics
///
/// When a slice is shorter than its shape says.
pub fn gemm_acc(dst: &mut [f32], lhs: &[f32], rhs: &[f32], m: usize, n: usize, k: usize) {
    if try_acc(dst, lhs, rhs, m, n, k) {
        return;
    }
    gemm_crate_acc(dst, lhs, rhs, m, n, k)
}

/// `dst (m×n) += lhs (m×k) · rhs (k×n)`, row-major, through the `gemm` crate only (the fallback
/// where AVX-512 is missing; public for the GEMM benchmark).
///
/// # Panics
///
/// When a slice is shorter than its shape says.
pub fn gemm_crate_acc(dst: &mut [f32], lhs: &[f32], rhs: &[f32], m: usize, n: usize, k: usize) {
    gemm_crate_strided(dst, MatRef::rows(lhs, k), MatRef::rows(rhs, n), m, n, k)
}

/// `dst (m×n, row-major) += lhs (m×k) · rhs (k×n)` for strided (e.g. transposed) operands:
/// the row-major case goes to [`gemm_acc`], the others to the `gemm` crate.
pub(crate) fn gemm_strided_acc(
    dst: &mut [f32],
    lhs: MatRef,
    rhs: MatRef,
    m: usize,
    n: usize,
    k: usize,
) {
    if lhs.cs == 1 && lhs.rs == k && rhs.cs == 1 && rhs.rs == n {
        return gemm_acc(dst, lhs.data, rhs.data, m, n, k);
    }
    gemm_crate_strided(dst, lhs, rhs, m, n, k)
}

fn gemm_threads() -> gemm::Parallelism {
    let n = rayon::current_num_threads();
    if n > 1 {
        gemm::Parallelism::Rayon(n)
    } else {
        gemm::Parallelism::None
    }
}

/// `dst (m×n, row-major) += lhs · rhs` through the `gemm` crate, any strides.
fn gemm_crate_strided(dst: &mut [f32], lhs: MatRef, rhs: MatRef, m: usize, n: usize, k: usize) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    count_flops(m, n, k);
    assert!(
        dst.len() >= m * n && lhs.fits(m, k) && rhs.fits(k, n),
        "gemm: slices too short for {m}×{k} · {k}×{n}"
    );
    // SAFETY: the assert above bounds every element gemm reads or writes with these strides.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            true,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm_threads(),
        )
    }
}
