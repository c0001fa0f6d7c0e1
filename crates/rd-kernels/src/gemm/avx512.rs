//! The AVX-512 single-precision GEMM behind [`super::gemm_acc`] and the fused kernels.
//!
//! `dst (m×n) (+)= lhs (m×k) · rhs (k×n)`: the shape every convolution reduces to (m = output
//! channels, k = c_in·kh·kw, n = output pixels). The lhs is read in place with any strides
//! ([`MatRef`]: weights as stored, or transposed); the rhs is a [`RhsSource`] that the packing
//! pass reads piecewise: a dense matrix ([`super::Dense`]) or the im2col matrix of an image read
//! straight from the image ([`super::Im2col`], no im2col buffer). BLIS-style blocking:
//!
//! * narrow outputs: `n` in blocks of at most [`PACK_MAX`]` / k` columns; per block the rhs is
//!   packed, in parallel, into [`NR`]-column micro-panels (`p`-major, 32 floats a row, 64-byte
//!   aligned, zero-padded at the n edge), then tasks of `mc` ≤ [`MC`] rows × [`NT`] columns run
//!   on rayon (the global pool, so `RAYON_NUM_THREADS` holds);
//! * wide outputs (at least `SLAB_MIN_TASKS` slabs of [`NT`] columns): one task per slab, which
//!   packs its own slab per k block into a thread-local buffer and runs every lhs row against
//!   it while it is in L2;
//! * inside a task k runs in equal blocks of at most [`KC`] (the `gemm` crate's split on this
//!   machine, so each element sums in the `gemm` crate's order, one FMA chain per block: with
//!   256-deep blocks the rounding pattern changed and `rd-model`'s fast-path gradient test,
//!   which amplifies it through training-mode BatchNorm, failed);
//! * the micro-kernel keeps an MR × 32 tile in `2·MR` zmm accumulators, loads two rhs vectors
//!   and broadcasts MR lhs values per `p`, then adds the tile into `dst` (masked at the n edge,
//!   only the valid rows at the m edge) or, for [`try_fused`], stores it through an
//!   [`Epilogue`] (BatchNorm affine, residual, ReLU) after the last k block.
//!
//! Used only when the CPU reports AVX-512F at run time ([`available`]); otherwise the caller
//! keeps the `gemm` crate. All SIMD `unsafe` of the workspace lives in this module.

use std::cell::RefCell;

use rayon::prelude::*;

use super::{Dense, MatRef, RhsSource};
use crate::Epilogue;

/// Rows of the register tile.
pub(crate) const MR: usize = 8;
/// Columns of the register tile (two zmm vectors of 16 f32).
pub const NR: usize = 32;
/// Most depth of a k block (the `gemm` crate's choice for a 48 KiB 12-way L1 and f32).
pub(crate) const KC: usize = 1024;
/// Rows of a parallel task (a multiple of [`MR`]); its packed lhs block (MC × KC) sits in L2.
pub(crate) const MC: usize = 128;
/// Columns of a parallel task (a multiple of [`NR`]).
pub(crate) const NT: usize = 256;
/// Most floats of one packed rhs block (k × nc): 8 MiB, within the shared L3.
pub(crate) const PACK_MAX: usize = 1 << 21;

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

/// Outputs with at least this many [`NT`]-column slabs use the slab schedule (per-task packing).
const SLAB_MIN_TASKS: usize = 4;

thread_local! {
    /// Per-thread packed rhs slab of the slab schedule (see `imp::sgemm_slabs`).
    static SLAB: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Packing buffers (lhs, rhs) reused across calls from this thread: fresh multi-MiB
    /// allocations per layer would cost page faults on every call.
    static BUFFER: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// How the kernel stores a finished tile.
#[derive(Clone, Copy)]
enum Store<'a> {
    /// `dst += lhs·rhs`.
    Accumulate,
    /// `dst = epilogue(lhs·rhs)`; `dst` is not read before the first k block writes it.
    Overwrite(&'a Epilogue<'a>),
}

/// `dst (m×n) = epilogue(lhs (m×k) · rhs (k×n))` with the AVX-512 kernel: a convolution with its
/// BatchNorm, residual and ReLU in one pass over the output, applied as each tile's last k block
/// is stored. Returns `false` (and leaves `dst` untouched) when the CPU lacks AVX-512F.
///
/// # Panics
///
/// When `dst`, `lhs`, the affine or the residual is shorter than its shape says.
pub fn try_fused(
    dst: &mut [f32],
    lhs: MatRef,
    rhs: &impl RhsSource,
    (m, n, k): (usize, usize, usize),
    epilogue: &Epilogue,
) -> bool {
    if let Some(a) = epilogue.affine {
        assert!(
            a.scale.len() >= m && a.shift.len() >= m,
            "sgemm: affine shorter than {m} rows"
        );
    }
    if let Some(r) = epilogue.residual {
        assert!(r.len() >= m * n, "sgemm: residual shorter than {m}×{n}");
    }
    if k == 0 {
        // No k block would store anything: multiply a zero column by a zero row instead.
        let zeros = vec![0f32; m];
        let store = Store::Overwrite(epilogue);
        return run(dst, MatRef::rows(&zeros, 1), &ZeroRow, (m, n, 1), store);
    }
    run(dst, lhs, rhs, (m, n, k), Store::Overwrite(epilogue))
}

/// A 1 × n rhs of zeros (lets an empty product still apply the epilogue).
struct ZeroRow;

impl RhsSource for ZeroRow {
    fn pack_panel(&self, _p0: usize, kc: usize, _j0: usize, w: usize, panel: &mut [f32]) {
        panel
            .chunks_exact_mut(NR)
            .take(kc)
            .for_each(|row| row[..w].fill(0.0));
    }
}

/// `dst (m×n) += lhs (m×k) · rhs (k×n)`, row-major and contiguous, with the AVX-512 kernel.
///
/// Returns `false` (and leaves `dst` untouched) when the CPU lacks AVX-512F, so the caller can
/// fall back to another GEMM.
///
/// # Panics
///
/// When a slice is shorter than its shape says.
pub fn try_acc(dst: &mut [f32], lhs: &[f32], rhs: &[f32], m: usize, n: usize, k: usize) -> bool {
    assert!(
        dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= k * n,
        "sgemm: slices too short for {m}×{k} · {k}×{n}"
    );
    try_acc_from(dst, MatRef::rows(lhs, k), &Dense { data: rhs, n }, m, n, k)
}

/// [`try_acc`] with the rhs read through a [`RhsSource`] (e.g. [`Im2col`]).
///
/// # Panics
///
/// When `dst` or `lhs` is shorter than its shape says (the source checks its own reads).
pub fn try_acc_from(
    dst: &mut [f32],
    lhs: MatRef,
    rhs: &impl RhsSource,
    m: usize,
    n: usize,
    k: usize,
) -> bool {
    run(dst, lhs, rhs, (m, n, k), Store::Accumulate)
}

fn run(
    dst: &mut [f32],
    lhs: MatRef,
    rhs: &impl RhsSource,
    (m, n, k): (usize, usize, usize),
    store: Store,
) -> bool {
    assert!(
        dst.len() >= m * n && lhs.fits(m, k),
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
        imp::sgemm(dst, lhs, rhs, (m, n, k), &mut pb, store);
        *b.borrow_mut() = pb;
    });
    true
}

/// `dst[t] = src[x0 + t·stride]` where that index lies inside `src`, else 0, for every
/// `t < dst.len()`: one im2col segment (part of an input row, shifted, strided and zero-padded
/// at both ends). Masked vector loads for strides 1 and 2 on AVX-512: a segment of 4–32 values
/// costs a few instructions, where a `memcpy` and a `memset` call each cost more than the copy.
pub(crate) fn gather_segment(dst: &mut [f32], src: &[f32], x0: isize, stride: usize) {
    #[cfg(target_arch = "x86_64")]
    if (stride == 1 || stride == 2) && available() {
        // SAFETY: the CPU has AVX-512F (checked just above).
        return unsafe { imp::gather_segment(dst, src, x0, stride) };
    }
    for (t, d) in dst.iter_mut().enumerate() {
        let ix = x0 + (t * stride) as isize;
        *d = if ix >= 0 && (ix as usize) < src.len() {
            src[ix as usize]
        } else {
            0.0
        };
    }
}

/// Packs rows `p0 .. p0 + kc`, columns `j0 .. j0 + w` of an image's im2col matrix into `panel`
/// as [`RhsSource::pack_panel`] does, for strides 1 and 2 and kernels up to 7 wide: the panel's
/// columns are cut once into runs of at most 16 output pixels within one output row, with the
/// masks of every kernel column decided up front, so each (row, run) costs one or two masked
/// loads and a masked store. Returns `false` (nothing written) for other geometries or without
/// AVX-512F.
pub(crate) fn pack_im2col(
    src: &super::Im2col,
    p0: usize,
    kc: usize,
    (j0, w): (usize, usize),
    panel: &mut [f32],
) -> bool {
    let (h, wi) = src.hw;
    let k = src.kernel;
    let taps = (k * k).max(1);
    let channels = src.img.len() / (h * wi).max(1);
    if !(1..=2).contains(&src.stride) || k == 0 || k > MAX_KERNEL || w == 0 || w > NR {
        return false;
    }
    assert!(
        (p0 + kc).div_ceil(taps) <= channels && panel.len() >= (kc.max(1) - 1) * NR + w,
        "pack_im2col: rows {p0}..{} outside {channels} channels or panel too short",
        p0 + kc
    );
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the CPU has AVX-512F (checked just above); the assert bounds the rows read
        // and written, and the stride and kernel were checked above.
        unsafe { imp::pack_im2col(src, p0, kc, (j0, w), panel) };
        return true;
    }
    false
}

/// Packs rows `p0 .. p0 + kc`, columns `j0 .. j0 + w` of a batch's transposed im2col matrix
/// ([`Im2colRows`](super::Im2colRows)) into `panel` as [`RhsSource::pack_panel`] does, for
/// strides 1 and 2: the rows are cut into runs of at most 16 output pixels within one output row,
/// each tap's run is one or two masked loads (as in [`pack_im2col`]), and 16 taps × 16 pixels
/// are transposed in registers into 16 panel rows. Each value costs a fraction of a cycle, where
/// reading it alone with its bounds checks cost several. Returns `false` (nothing written) for
/// other strides or without AVX-512F.
pub(crate) fn pack_im2col_rows(
    src: &super::Im2colRows,
    p0: usize,
    kc: usize,
    (j0, w): (usize, usize),
    panel: &mut [f32],
) -> bool {
    let (h, wi) = src.hw;
    let plane = h * wi;
    if !(1..=2).contains(&src.stride) || src.kernel == 0 || w == 0 || w > NR || plane == 0 {
        return false;
    }
    let images = src.x.len() / src.in_len.max(1);
    let channels = src.in_len / plane;
    assert!(
        p0 + kc <= images * src.n
            && (j0 + w).div_ceil(src.kernel * src.kernel) <= channels
            && src.in_len.is_multiple_of(plane)
            && src.n.div_ceil(src.wo.max(1)) <= h
            && panel.len() >= (kc.max(1) - 1) * NR + w,
        "pack_im2col_rows: rows {p0}..{} or columns {j0}..{} outside the batch, or panel too short",
        p0 + kc,
        j0 + w
    );
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the CPU has AVX-512F (checked just above); the assert bounds the images,
        // channels and rows read and the panel written, and the stride was checked above.
        unsafe { imp::pack_im2col_rows(src, p0, kc, (j0, w), panel) };
        return true;
    }
    false
}

/// Widest kernel [`pack_im2col`] handles (the ResNet stem's 7×7).
const MAX_KERNEL: usize = 7;

/// Zeroes a short `dst` (an im2col segment past the image, a panel row's padding) without a
/// `memset` call.
pub(crate) fn zero_segment(dst: &mut [f32]) {
    gather_segment(dst, &[], 0, 1)
}

// The AVX-512 intrinsics are stable since Rust 1.89, the workspace's `rust-version`.
#[cfg(target_arch = "x86_64")]
mod imp {
    use super::*;
    use std::arch::x86_64::*;

    /// Up to 16 consecutive output pixels of one output row within a panel row.
    #[derive(Clone, Copy, Default)]
    struct Run {
        /// Offset in the panel row.
        off: usize,
        /// Output row and first output column.
        oy: usize,
        /// Lanes stored.
        store: __mmask16,
    }

    use crate::gemm::pack::kernel_taps;

    /// See [`super::pack_im2col`].
    ///
    /// # Safety
    ///
    /// The CPU supports AVX-512F; the stride is 1 or 2 and the kernel 1..=[`MAX_KERNEL`];
    /// `w ≤ NR`; rows `p0 .. p0 + kc` lie within the image's channels and `panel` holds
    /// `(kc − 1)·NR + w` floats.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn pack_im2col(
        src: &crate::gemm::Im2col,
        p0: usize,
        kc: usize,
        (j0, w): (usize, usize),
        panel: &mut [f32],
    ) {
        let (h, wi) = src.hw;
        let (k, s, pad) = (src.kernel, src.stride, src.pad as isize);
        // The runs, and per run and kernel column the source offset and load masks.
        let mut runs = [Run::default(); NR];
        let mut loads = [[(0isize, (0 as __mmask16, 0 as __mmask16)); MAX_KERNEL]; NR];
        let mut n_runs = 0;
        let mut off = 0;
        while off < w {
            let q = j0 + off;
            let (oy, ox) = (q / src.wo, q % src.wo);
            let count = (src.wo - ox).min(w - off).min(16);
            runs[n_runs] = Run {
                off,
                oy,
                store: lanes(0, count as isize),
            };
            for (kx, load) in loads[n_runs][..k].iter_mut().enumerate() {
                let x0 = (ox * s + kx) as isize - pad;
                *load = (x0, segment_masks(x0, wi as isize, (count * s) as isize));
            }
            n_runs += 1;
            off += count;
        }
        let img = src.img.as_ptr();
        let dst = panel.as_mut_ptr();
        for (p, (c, ky, kx)) in kernel_taps(p0, k).take(kc).enumerate() {
            for (run, load) in runs[..n_runs].iter().zip(&loads[..n_runs]) {
                let iy = (run.oy * s + ky) as isize - pad;
                let (x0, masks) = load[kx];
                let v = if iy < 0 || iy >= h as isize {
                    _mm512_setzero_ps()
                } else {
                    // The row iy of plane c; lanes outside it are masked off.
                    let at = img
                        .wrapping_add((c * h + iy as usize) * wi)
                        .wrapping_offset(x0);
                    // SAFETY: the masks keep every lane read at 0 ≤ x0 + lane < wi, inside row
                    // iy (< h) of channel c (within the image: the caller's contract).
                    unsafe { load_segment(at, masks, s) }
                };
                // SAFETY: row p < kc of the panel holds NR floats (w for the last, and the run
                // ends within w); the store mask keeps the run's lanes only.
                unsafe { _mm512_mask_storeu_ps(dst.add(p * NR + run.off), run.store, v) };
            }
        }
    }

    /// See [`super::pack_im2col_rows`].
    ///
    /// # Safety
    ///
    /// The CPU supports AVX-512F; the stride is 1 or 2; `w ≤ NR`; rows `p0 .. p0 + kc` lie
    /// within the batch, columns `j0 .. j0 + w` within its channels' taps, and `panel` holds
    /// `(kc − 1)·NR + w` floats.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn pack_im2col_rows(
        src: &crate::gemm::Im2colRows,
        p0: usize,
        kc: usize,
        (j0, w): (usize, usize),
        panel: &mut [f32],
    ) {
        let (h, wi) = src.hw;
        let (k, s, pad) = (src.kernel, src.stride, src.pad as isize);
        // Each column's plane offset and tap offsets, decoded once per panel.
        let mut taps = [(0usize, 0isize, 0isize); NR];
        for (t, tap) in taps[..w].iter_mut().enumerate() {
            let r = j0 + t;
            let (c, ky, kx) = (r / (k * k), (r / k) % k, r % k);
            *tap = (c * h * wi, ky as isize - pad, kx as isize - pad);
        }
        let dst = panel.as_mut_ptr();
        let mut row = 0;
        while row < kc {
            let (b, q) = ((p0 + row) / src.n, (p0 + row) % src.n);
            let (oy, ox) = (q / src.wo, q % src.wo);
            let count = (src.wo - ox).min(kc - row).min(16);
            let img = src.x.as_ptr().wrapping_add(b * src.in_len);
            let span = (count * s) as isize;
            for g0 in (0..w).step_by(16) {
                let group = (w - g0).min(16);
                let mut v = [_mm512_setzero_ps(); 16];
                for (v, &(off, dy, dx)) in v.iter_mut().zip(&taps[g0..g0 + group]) {
                    let iy = (oy * s) as isize + dy;
                    if iy < 0 || iy >= h as isize {
                        continue; // a padding row: zeros
                    }
                    let x0 = (ox * s) as isize + dx;
                    let at = img.wrapping_add(off + iy as usize * wi).wrapping_offset(x0);
                    let masks = segment_masks(x0, wi as isize, span);
                    // SAFETY: the masks keep every lane read at 0 ≤ x0 + lane < wi, inside row
                    // iy (< h) of a channel of image b (the caller's contract).
                    *v = unsafe { load_segment(at, masks, s) };
                }
                let rows = transpose16(v);
                let keep = lanes(0, group as isize);
                for (i, r) in rows[..count].iter().enumerate() {
                    // SAFETY: panel row row + i < kc holds NR floats (w for the last), and
                    // g0 + lane < w for every lane the mask keeps.
                    unsafe { _mm512_mask_storeu_ps(dst.add((row + i) * NR + g0), keep, *r) };
                }
            }
            row += count;
        }
    }

    /// The 16 × 16 transpose of `r` (row i of the result holds lane i of every input).
    #[target_feature(enable = "avx512f")]
    fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
        // 4-wide blocks of rows i, i+1: (a0 b0 a1 b1 | …) and (a2 b2 a3 b3 | …) per 128 bits.
        let mut t = [_mm512_setzero_ps(); 16];
        for i in (0..16).step_by(2) {
            t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
            t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
        }
        // Four rows' lane j together: (a0 b0 c0 d0 | a4 b4 c4 d4 | a8 … | a12 …).
        let mut u = [_mm512_setzero_ps(); 16];
        for i in (0..16).step_by(4) {
            u[i] = _mm512_shuffle_ps::<0x44>(t[i], t[i + 2]);
            u[i + 1] = _mm512_shuffle_ps::<0xEE>(t[i], t[i + 2]);
            u[i + 2] = _mm512_shuffle_ps::<0x44>(t[i + 1], t[i + 3]);
            u[i + 3] = _mm512_shuffle_ps::<0xEE>(t[i + 1], t[i + 3]);
        }
        // 128-bit blocks: rows 0–3 with 4–7 (and 8–11 with 12–15), lanes j and j + 8.
        for i in 0..4 {
            t[i] = _mm512_shuffle_f32x4::<0x88>(u[i], u[i + 4]);
            t[i + 4] = _mm512_shuffle_f32x4::<0xDD>(u[i], u[i + 4]);
            t[i + 8] = _mm512_shuffle_f32x4::<0x88>(u[i + 8], u[i + 12]);
            t[i + 12] = _mm512_shuffle_f32x4::<0xDD>(u[i + 8], u[i + 12]);
        }
        let mut out = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            out[i] = _mm512_shuffle_f32x4::<0x88>(t[i], t[i + 8]);
            out[i + 8] = _mm512_shuffle_f32x4::<0xDD>(t[i], t[i + 8]);
        }
        out
    }

    /// The masks of the two 16-lane loads at `x0` and `x0 + 16` of a segment of `span` source
    /// values: the lanes inside `0 .. len` (the source row) and inside the segment.
    fn segment_masks(x0: isize, len: isize, span: isize) -> (__mmask16, __mmask16) {
        (
            lanes(-x0, len - x0) & lanes(0, span),
            lanes(-x0 - 16, len - x0 - 16) & lanes(0, span - 16),
        )
    }

    /// Up to 16 values `at[t·stride]` (stride 1 or 2) through the masks of [`segment_masks`]:
    /// one masked load, or for stride 2 two and the even lanes of both; masked-off lanes are 0.
    ///
    /// # Safety
    ///
    /// The CPU supports AVX-512F; every lane the masks let through is readable at `at` (first
    /// mask) and `at + 16` (second); masked-off lanes are not read.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_segment(
        at: *const f32,
        (ma, mb): (__mmask16, __mmask16),
        stride: usize,
    ) -> __m512 {
        // SAFETY: the caller's contract.
        let a = unsafe { _mm512_maskz_loadu_ps(ma, at) };
        if stride == 1 {
            return a;
        }
        // Even lanes of a ‖ b: the stride-2 samples of 32 consecutive values.
        let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        // SAFETY: the caller's contract.
        let b = unsafe { _mm512_maskz_loadu_ps(mb, at.wrapping_add(16)) };
        _mm512_permutex2var_ps(a, evens, b)
    }

    /// The lanes `lo ..< hi` of 16, clamped to the vector.
    fn lanes(lo: isize, hi: isize) -> __mmask16 {
        let lo = lo.clamp(0, 16);
        let hi = hi.clamp(lo, 16);
        (((1u32 << hi) - 1) ^ ((1u32 << lo) - 1)) as __mmask16
    }

    /// [`super::gather_segment`] for strides 1 and 2 with masked loads: source lanes outside
    /// `src` are masked off (not read, no fault) and come back as 0.
    ///
    /// # Safety
    ///
    /// The CPU supports AVX-512F; `stride` is 1 or 2.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gather_segment(dst: &mut [f32], src: &[f32], x0: isize, stride: usize) {
        let len = src.len() as isize;
        for t0 in (0..dst.len()).step_by(16) {
            let count = (dst.len() - t0).min(16) as isize;
            let s0 = x0 + (t0 * stride) as isize;
            let masks = segment_masks(s0, len, count * stride as isize);
            // SAFETY: every lane the masks let through lies inside `src`, and for the store
            // inside `dst` (t0 + lane < dst.len()); masked-off lanes are neither read nor
            // written, so the wrapped pointer may point anywhere.
            let v = unsafe { load_segment(src.as_ptr().wrapping_offset(s0), masks, stride) };
            // SAFETY: as above, the store mask keeps t0 + lane < dst.len().
            unsafe { _mm512_mask_storeu_ps(dst.as_mut_ptr().add(t0), lanes(0, count), v) };
        }
    }

    /// The output shared by the tasks (each writes a disjoint set of tiles) and how tiles are
    /// stored.
    #[derive(Clone, Copy)]
    pub(super) struct Out<'a> {
        ptr: *mut f32,
        n: usize,
        store: Store<'a>,
    }
    // SAFETY: tasks only write disjoint tiles of the buffer behind `ptr`, which outlives the
    // parallel section (`sgemm` borrows it mutably throughout); the epilogue slices are shared
    // read-only.
    unsafe impl Send for Out<'_> {}
    // SAFETY: as above; `Out` is only copied out of shared references.
    unsafe impl Sync for Out<'_> {}

    impl<'a> Out<'a> {
        fn new(dst: &'a mut [f32], n: usize, store: Store<'a>) -> Self {
            Out {
                ptr: dst.as_mut_ptr(),
                n,
                store,
            }
        }

        /// Runs the micro-kernel on rows `i0..i0+rows`, columns `j0..j0+cols` of the output with
        /// lhs columns `pc..pc+kc` (of `k`) and the packed panel `b` (kc × NR).
        ///
        /// The caller guarantees that no other thread touches this tile meanwhile and that the
        /// tile lies inside the m × n output (`sgemm`'s shape, asserted by `run`).
        fn tile(
            self,
            lhs: MatRef,
            b: &[f32],
            (pc, kc, k): (usize, usize, usize),
            (i0, rows): (usize, usize),
            (j0, cols): (usize, usize),
        ) {
            let (rs, cs) = (lhs.rs, lhs.cs);
            let a = &lhs.data[i0 * rs + pc * cs..=(i0 + rows - 1) * rs + (pc + kc - 1) * cs];
            assert!(b.len() >= kc * NR && rows <= MR && cols <= NR);
            let at = i0 * self.n + j0;
            let (overwrite, epilogue) = match self.store {
                Store::Accumulate => (false, None),
                Store::Overwrite(e) => (pc == 0, (pc + kc == k).then_some(e)),
            };
            let epi = epilogue.map(|e| TileEpilogue {
                affine: e
                    .affine
                    .map(|a| (a.scale[i0..].as_ptr(), a.shift[i0..].as_ptr())),
                residual: e.residual.map(|r| r[at..].as_ptr()),
                relu: e.relu,
            });
            // SAFETY: `available()` reported AVX-512F before `run` called `sgemm`; `a` holds
            // rows i0..i0+rows of lhs from column pc (kc values, strides rs, cs) and `b`
            // kc×NR floats (both checked by the slicing and assert above); the tile lies inside
            // dst and the residual (m×n, asserted by the callers), the affine pointers cover
            // rows i0..i0+rows (asserted ≥ m by `try_fused`), and no other thread
            // touches the tile (the caller's guarantee).
            unsafe {
                kernel(
                    kc,
                    a.as_ptr(),
                    (rs, cs),
                    b.as_ptr(),
                    self.ptr.add(at),
                    self.n,
                    (rows, cols),
                    overwrite,
                    epi,
                );
            }
        }
    }

    /// The epilogue of one tile: pointers at its first row (affine) or first element (residual).
    #[derive(Clone, Copy)]
    struct TileEpilogue {
        affine: Option<(*const f32, *const f32)>,
        residual: Option<*const f32>,
        relu: bool,
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
        lhs: MatRef,
        rhs: &impl RhsSource,
        (m, n, k): (usize, usize, usize),
        pb: &mut Vec<f32>,
        store: Store,
    ) {
        super::super::count_flops(m, n, k);
        let threads = rayon::current_num_threads();
        let par = m * n * k >= PAR_MIN_MACS && threads > 1;
        let out = Out::new(dst, n, store);
        if n >= SLAB_MIN_TASKS * NT {
            return sgemm_slabs(out, lhs, rhs, (m, n, k), par);
        }
        // k in equal blocks of at most KC, as the `gemm` crate splits it: per element the same
        // summation order (one FMA chain per block, added to dst), hence the same rounding.
        let kc_blk = k.div_ceil(k.div_ceil(KC));
        // Columns per packed rhs block: all of n when the block stays under PACK_MAX floats.
        let nc_blk = round_up((PACK_MAX / k).max(NR), NR).min(round_up(n, NR));
        let pb = aligned(pb, k * nc_blk);
        for jc in (0..n).step_by(nc_blk) {
            let nc = (n - jc).min(nc_blk);
            let nc_pad = round_up(nc, NR);
            let pb = &mut pb[..k * nc_pad];
            // Pack rhs[.., jc..jc+nc] into k×NR micro-panels (zero-padded columns).
            let pack_b = |(jp, panel): (usize, &mut [f32])| {
                let j0 = jc + jp * NR;
                let w = (jc + nc - j0).min(NR);
                rhs.pack_panel(0, k, j0, w, panel);
                if w < NR {
                    panel
                        .chunks_exact_mut(NR)
                        .for_each(|row| super::zero_segment(&mut row[w..]));
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
                            // Tasks partition rows by mc and columns by NT: no other task
                            // touches this tile.
                            out.tile(lhs, b, (pc, kc, k), (i0, rows), (jc + j0, cols));
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

    /// The schedule for wide outputs (many columns): one task per [`NT`]-column slab, which
    /// packs its own slab of the rhs (one k block at a time) into a thread-local buffer and runs
    /// every lhs row against it. The packed panels are used while they are still in L2, instead
    /// of packing the whole rhs first (megabytes for a 64×64 map) and reading it back from L3.
    /// The k blocks are those of [`sgemm`], so every element sums in the same order.
    fn sgemm_slabs(
        out: Out,
        lhs: MatRef,
        rhs: &impl RhsSource,
        (m, n, k): (usize, usize, usize),
        par: bool,
    ) {
        let kc_blk = k.div_ceil(k.div_ceil(KC));
        let task = |tj: usize| {
            let (j_lo, j_hi) = (tj * NT, ((tj + 1) * NT).min(n));
            let width = round_up(j_hi - j_lo, NR);
            SLAB.with(|buf| {
                let mut buf = buf.borrow_mut();
                let pb = aligned(&mut buf, kc_blk * width);
                for pc in (0..k).step_by(kc_blk) {
                    let kc = (k - pc).min(kc_blk);
                    let pb = &mut pb[..kc * width];
                    for (jp, panel) in pb.chunks_exact_mut(kc * NR).enumerate() {
                        let j0 = j_lo + jp * NR;
                        let w = (j_hi - j0).min(NR);
                        rhs.pack_panel(pc, kc, j0, w, panel);
                        if w < NR {
                            panel
                                .chunks_exact_mut(NR)
                                .for_each(|row| super::zero_segment(&mut row[w..]));
                        }
                    }
                    for (jp, j0) in (j_lo..j_hi).step_by(NR).enumerate() {
                        let cols = (j_hi - j0).min(NR);
                        let b = &pb[jp * kc * NR..][..kc * NR];
                        for i0 in (0..m).step_by(MR) {
                            let rows = (m - i0).min(MR);
                            // Only this task, which owns columns j_lo..j_hi, touches the tile.
                            out.tile(lhs, b, (pc, kc, k), (i0, rows), (j0, cols));
                        }
                    }
                }
            })
        };
        let tn = n.div_ceil(NT);
        if par {
            (0..tn).into_par_iter().for_each(task);
        } else {
            (0..tn).for_each(task);
        }
    }

    /// `c[i][j] (+)= Σ_p a[i·rs + p·cs] · b[p·NR + j]` for `i < rows ≤ MR`, `j < cols ≤ NR`,
    /// `p < kc`: accumulated into `c`, or stored over it when `overwrite`; then, with `epi`,
    /// `v·scale[i] + shift[i]`, `+ residual[i·ldc + j]` and ReLU.
    ///
    /// # Safety
    ///
    /// The CPU supports AVX-512F; `a + i·rs + p·cs` is readable for `i < rows`, `p < kc`; `b`
    /// points to `kc·NR` readable floats; `c + i·ldc + j` is valid for reads and writes for
    /// every `i < rows`, `j < cols`, and nothing else accesses those elements meanwhile; the
    /// epilogue's affine pointers are readable for `rows` values and its residual like `c`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn kernel(
        kc: usize,
        a: *const f32,
        (lda, ldp): (usize, usize),
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        (rows, cols): (usize, usize),
        overwrite: bool,
        epi: Option<TileEpilogue>,
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
                    let ai = _mm512_set1_ps(*r.add(p * ldp));
                    acc[0] = _mm512_fmadd_ps(ai, b0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(ai, b1, acc[1]);
                }
                b = b.add(NR);
            }
        }
        if overwrite || epi.is_some() {
            // SAFETY: the caller's contract covers the tile and the epilogue pointers.
            return unsafe { store_tile(&acc, c, ldc, (rows, cols), overwrite, epi) };
        }
        // Plain accumulation inline: with a short k (a 64-channel backward GEMM) a call per
        // tile would cost as much as the FMAs.
        let mask = |lo: usize| -> __mmask16 {
            let n = cols.saturating_sub(lo).min(16);
            ((1u32 << n) - 1) as __mmask16
        };
        let (m0, m1) = (mask(0), mask(16));
        for (i, acc) in acc.iter().enumerate().take(rows) {
            // SAFETY: row i < rows and only lanes j < cols (masks m0, m1) are touched;
            // masked-off lanes are neither read nor written (no fault).
            unsafe {
                let ci = c.add(i * ldc);
                let v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, ci), acc[0]);
                _mm512_mask_storeu_ps(ci, m0, v0);
                if m1 != 0 {
                    let v1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, ci.add(16)), acc[1]);
                    _mm512_mask_storeu_ps(ci.add(16), m1, v1);
                }
            }
        }
    }

    /// Stores the accumulators of [`kernel`] when it overwrites or applies the epilogue (see
    /// there). Kept out of line so the epilogue's code does not crowd the FMA loop's registers.
    ///
    /// # Safety
    ///
    /// As for [`kernel`].
    #[inline(never)]
    #[target_feature(enable = "avx512f")]
    unsafe fn store_tile(
        acc: &[[__m512; 2]; MR],
        c: *mut f32,
        ldc: usize,
        (rows, cols): (usize, usize),
        overwrite: bool,
        epi: Option<TileEpilogue>,
    ) {
        let mask = |lo: usize| -> __mmask16 {
            let n = cols.saturating_sub(lo).min(16);
            ((1u32 << n) - 1) as __mmask16
        };
        let masks = [mask(0), mask(16)];
        for (i, acc) in acc.iter().enumerate().take(rows) {
            for (h, (&m, &acc)) in masks.iter().zip(acc).enumerate() {
                if m == 0 {
                    continue;
                }
                // SAFETY: row i < rows and only lanes j < cols (mask m) are touched; masked-off
                // lanes are neither read nor written (no fault). The epilogue pointers are
                // valid for row i and the same lanes (the caller's contract).
                unsafe {
                    let ci = c.add(i * ldc + 16 * h);
                    let mut v = if overwrite {
                        acc
                    } else {
                        _mm512_add_ps(_mm512_maskz_loadu_ps(m, ci), acc)
                    };
                    if let Some(e) = epi {
                        if let Some((scale, shift)) = e.affine {
                            v = _mm512_mul_ps(v, _mm512_set1_ps(*scale.add(i)));
                            v = _mm512_add_ps(v, _mm512_set1_ps(*shift.add(i)));
                        }
                        if let Some(r) = e.residual {
                            let r = _mm512_maskz_loadu_ps(m, r.add(i * ldc + 16 * h));
                            v = _mm512_add_ps(v, r);
                        }
                        if e.relu {
                            v = _mm512_max_ps(v, _mm512_setzero_ps());
                        }
                    }
                    _mm512_mask_storeu_ps(ci, m, v);
                }
            }
        }
    }
}
