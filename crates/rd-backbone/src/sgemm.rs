//! AVX-512 single-precision GEMM for the eval-mode kernels in [`crate::fast`].
//!
//! `dst (m×n) += lhs (m×k) · rhs (k×n)`, all row-major and contiguous: the shape every fused
//! convolution reduces to (m = output channels, k = c_in·kh·kw, n = output pixels).
//!
//! BLIS-style blocking:
//!
//! * `n` in blocks of at most [`PACK_MAX`]` / k` columns; per block the rhs (k × nc) is packed,
//!   in parallel, into [`NR`]-column micro-panels (`p`-major, 32 floats a row, 64-byte aligned,
//!   zero-padded at the n edge). The lhs is read in place (row-major, k contiguous: the
//!   micro-kernel broadcasts from MR row streams), so there is no lhs packing pass, which cost
//!   as much as the arithmetic when n is small;
//! * the output block is cut into tasks of `mc` ≤ [`MC`] rows × [`NT`] columns (smaller `mc`
//!   when there would be fewer than 4 tasks per thread), run on rayon (the global pool, so
//!   `RAYON_NUM_THREADS` holds) in a single parallel section per rhs block; inside a task, k
//!   runs in equal blocks of at most [`KC`] (the `gemm` crate's split on this machine, so each
//!   element sums in the `gemm` crate's order, one FMA chain per block added to `dst`: with
//!   256-deep blocks the rounding pattern changed and `rd-model`'s fast-path gradient test,
//!   which amplifies it through training-mode BatchNorm, failed),
//!   then rhs micro-panels, then lhs row groups (the lhs rows of the task stay in L2);
//! * the micro-kernel keeps an MR × 32 tile of `dst` in `2·MR` zmm accumulators, loads two
//!   rhs vectors and broadcasts MR lhs values per `p`, and adds the tile into `dst` with masked
//!   loads/stores at the n edge and only the valid rows at the m edge.
//!
//! Used only when the CPU reports AVX-512F at run time ([`available`]); otherwise the caller
//! keeps the `gemm` crate. All `unsafe` of the crate's GEMM lives in this module.

use std::cell::RefCell;

use rayon::prelude::*;

/// Rows of the register tile.
pub const MR: usize = 8;
/// Columns of the register tile (two zmm vectors of 16 f32).
pub const NR: usize = 32;
/// Most depth of a k block (the `gemm` crate's choice for a 48 KiB 12-way L1 and f32).
pub const KC: usize = 1024;
/// Rows of a parallel task (a multiple of [`MR`]); its packed lhs block (MC × KC) sits in L2.
pub const MC: usize = 128;
/// Columns of a parallel task (a multiple of [`NR`]).
pub const NT: usize = 256;
/// Most floats of one packed rhs block (k × nc): 8 MiB, within the shared L3.
pub const PACK_MAX: usize = 1 << 21;

/// Below this many multiply-adds the call runs on the calling thread only.
const PAR_MIN_MACS: usize = 1 << 18;

/// Whether the AVX-512 kernel can run on this CPU (AVX-512F, detected at run time).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

thread_local! {
    /// Packing buffers (lhs, rhs) reused across calls from this thread: fresh multi-MiB
    /// allocations per layer would cost page faults on every call.
    static BUFFER: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `dst (m×n) += lhs (m×k) · rhs (k×n)`, row-major and contiguous, with the AVX-512 kernel.
///
/// Returns `false` (and leaves `dst` untouched) when the CPU lacks AVX-512F, so the caller can
/// fall back to another GEMM.
///
/// # Panics
///
/// When a slice is shorter than its shape says.
pub fn try_sgemm_acc(
    dst: &mut [f32],
    lhs: &[f32],
    rhs: &[f32],
    m: usize,
    n: usize,
    k: usize,
) -> bool {
    assert!(
        dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= k * n,
        "sgemm: slices too short for {m}×{k} · {k}×{n}"
    );
    if !available() {
        return false;
    }
    if m == 0 || n == 0 || k == 0 {
        return true;
    }
    #[cfg(target_arch = "x86_64")]
    BUFFER.with(|b| {
        // Take the buffer out so a re-entrant call (none expected) would allocate its own.
        let mut pb = std::mem::take(&mut *b.borrow_mut());
        imp::sgemm(dst, lhs, rhs, m, n, k, &mut pb);
        *b.borrow_mut() = pb;
    });
    true
}

// The AVX-512 intrinsics are stable since Rust 1.89, the workspace's `rust-version`.
#[cfg(target_arch = "x86_64")]
mod imp {
    use super::*;
    use std::arch::x86_64::*;

    /// The output pointer shared by the tasks; each task writes a disjoint tile range.
    #[derive(Clone, Copy)]
    struct OutPtr(*mut f32);
    // SAFETY: tasks only write disjoint rows×columns ranges of the buffer behind the pointer,
    // which outlives the parallel section (it is borrowed mutably by `sgemm` throughout).
    unsafe impl Send for OutPtr {}
    // SAFETY: as above; the pointer is only read (copied) from shared references.
    unsafe impl Sync for OutPtr {}

    impl OutPtr {
        /// The pointer (a method, so closures capture the whole `Send` wrapper).
        fn get(self) -> *mut f32 {
            self.0
        }
    }

    fn round_up(x: usize, to: usize) -> usize {
        x.div_ceil(to) * to
    }

    /// A 64-byte aligned window of `len` floats inside `buf` (grown as needed).
    fn aligned(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
        if buf.len() < len + 16 {
            *buf = vec![0f32; len + 16];
        }
        let off = buf.as_ptr().align_offset(64).min(16);
        &mut buf[off..off + len]
    }

    pub(super) fn sgemm(
        dst: &mut [f32],
        lhs: &[f32],
        rhs: &[f32],
        m: usize,
        n: usize,
        k: usize,
        pb: &mut Vec<f32>,
    ) {
        let threads = rayon::current_num_threads();
        let par = m * n * k >= PAR_MIN_MACS && threads > 1;
        // k in equal blocks of at most KC, as the `gemm` crate splits it: per element the same
        // summation order (one FMA chain per block, added to dst), hence the same rounding.
        let kc_blk = k.div_ceil(k.div_ceil(KC));
        // Columns per packed rhs block: all of n when the block stays under PACK_MAX floats.
        let nc_blk = round_up((PACK_MAX / k).max(NR), NR).min(round_up(n, NR));
        let pb = aligned(pb, k * nc_blk);
        let out = OutPtr(dst.as_mut_ptr());
        for jc in (0..n).step_by(nc_blk) {
            let nc = (n - jc).min(nc_blk);
            let nc_pad = round_up(nc, NR);
            let pb = &mut pb[..k * nc_pad];
            // Pack rhs[.., jc..jc+nc] into k×NR micro-panels (zero-padded columns).
            let pack_b = |(jp, panel): (usize, &mut [f32])| {
                let j0 = jc + jp * NR;
                let w = (jc + nc - j0).min(NR);
                for (p, row) in panel.chunks_exact_mut(NR).enumerate() {
                    row[..w].copy_from_slice(&rhs[p * n + j0..][..w]);
                    row[w..].fill(0.0);
                }
            };
            if par {
                pb.par_chunks_mut(k * NR).enumerate().for_each(pack_b);
            } else {
                pb.chunks_mut(k * NR).enumerate().for_each(pack_b);
            }
            let pb: &[f32] = pb;
            // Tasks of mc rows × NT columns; smaller mc when there are too few tasks.
            let tn = nc.div_ceil(NT);
            let want_tm = (4 * threads).div_ceil(tn).max(1);
            let mc = round_up(m.div_ceil(want_tm), MR).clamp(MR, MC);
            let tm = m.div_ceil(mc);
            let task = |t: usize| {
                let (ti, tj) = (t % tm, t / tm);
                let (i_lo, i_hi) = (ti * mc, ((ti + 1) * mc).min(m));
                let (j_lo, j_hi) = (tj * NT, ((tj + 1) * NT).min(nc));
                for pc in (0..k).step_by(kc_blk) {
                    let kc = (k - pc).min(kc_blk);
                    for j0 in (j_lo..j_hi).step_by(NR) {
                        let cols = (j_hi - j0).min(NR);
                        let b = &pb[(j0 / NR) * k * NR + pc * NR..][..kc * NR];
                        for i0 in (i_lo..i_hi).step_by(MR) {
                            let rows = (i_hi - i0).min(MR);
                            let a = &lhs[i0 * k + pc..(i0 + rows - 1) * k + pc + kc];
                            // SAFETY: `available()` reported AVX-512F before `sgemm` was
                            // called; `a` holds rows `i0..i0+rows` of lhs from column pc
                            // (kc values each, row stride k) and `b` kc×NR floats; the tile
                            // rows i0..i0+rows ≤ m, columns jc+j0..+cols ≤ n, so every
                            // access through `out` with row stride n stays inside `dst`
                            // (checked by the caller's assert), and no other task writes
                            // these elements (tasks partition rows by mc, columns by NT).
                            unsafe {
                                kernel(
                                    kc,
                                    a.as_ptr(),
                                    k,
                                    b.as_ptr(),
                                    out.get().add(i0 * n + jc + j0),
                                    n,
                                    rows,
                                    cols,
                                );
                            }
                        }
                    }
                }
            };
            if par {
                (0..tm * tn).into_par_iter().for_each(task);
            } else {
                (0..tm * tn).for_each(task);
            }
        }
    }

    /// `c[i][j] += Σ_p a[i·lda + p] · b[p·NR + j]` for `i < rows ≤ MR`, `j < cols ≤ NR`, `p < kc`.
    ///
    /// # Safety
    ///
    /// The CPU supports AVX-512F; `a + i·lda + p` is readable for `i < rows`, `p < kc`; `b`
    /// points to `kc·NR` readable floats; `c + i·ldc + j` is valid for reads and writes for
    /// every `i < rows`, `j < cols`, and nothing else accesses those elements meanwhile.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn kernel(
        kc: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        // Rows past `rows` (the m edge) repeat the last valid row; their sums are discarded.
        let mut ar = [a; MR];
        for (i, r) in ar.iter_mut().enumerate() {
            // SAFETY: min(i, rows − 1) < rows, a valid row of `a`.
            *r = unsafe { a.add(i.min(rows - 1) * lda) };
        }
        let mut b = b;
        for p in 0..kc {
            // SAFETY: p < kc, so b[p·NR .. p·NR + 32] and every a row's element p are in bounds.
            unsafe {
                let b0 = _mm512_loadu_ps(b);
                let b1 = _mm512_loadu_ps(b.add(16));
                for (acc, r) in acc.iter_mut().zip(&ar) {
                    let ai = _mm512_set1_ps(*r.add(p));
                    acc[0] = _mm512_fmadd_ps(ai, b0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(ai, b1, acc[1]);
                }
                b = b.add(NR);
            }
        }
        let m0: __mmask16 = if cols >= 16 {
            0xffff
        } else {
            (1u32 << cols) as u16 - 1
        };
        let m1: __mmask16 = if cols >= 32 {
            0xffff
        } else if cols > 16 {
            (1u32 << (cols - 16)) as u16 - 1
        } else {
            0
        };
        for (i, acc) in acc.iter().enumerate().take(rows) {
            // SAFETY: row i < rows and only the lanes j < cols (masks m0, m1) are touched;
            // masked-off lanes are neither read nor written (no fault).
            unsafe {
                let ci = c.add(i * ldc);
                if cols == NR {
                    let v0 = _mm512_add_ps(_mm512_loadu_ps(ci), acc[0]);
                    let v1 = _mm512_add_ps(_mm512_loadu_ps(ci.add(16)), acc[1]);
                    _mm512_storeu_ps(ci, v0);
                    _mm512_storeu_ps(ci.add(16), v1);
                } else {
                    let v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, ci), acc[0]);
                    _mm512_mask_storeu_ps(ci, m0, v0);
                    if m1 != 0 {
                        let v1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, ci.add(16)), acc[1]);
                        _mm512_mask_storeu_ps(ci.add(16), m1, v1);
                    }
                }
            }
        }
    }
}
