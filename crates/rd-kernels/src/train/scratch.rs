//! Reusable per-thread buffers for the training ops' intermediates, and transposes into them.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

use rayon::prelude::*;

thread_local! {
    /// Buffers for intermediates (im2col matrices, transposes), reused across calls on this
    /// thread: fresh multi-MiB allocations per layer cost a page fault per 4 KiB on every call.
    static SCRATCH: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer from this thread's scratch pool, of unspecified content; back to the pool on drop.
pub(super) struct Scratch {
    buf: Vec<f32>,
    len: usize,
}

impl Scratch {
    /// A buffer of `len` values (not zeroed).
    pub fn take(len: usize) -> Self {
        let mut buf = SCRATCH.with(|s| s.borrow_mut().pop()).unwrap_or_default();
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        Scratch { buf, len }
    }

    /// A buffer of `len` zeros.
    pub fn zeroed(len: usize) -> Self {
        let mut s = Self::take(len);
        s.fill(0.0);
        s
    }
}

impl Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[..self.len]
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[..self.len]
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        SCRATCH.with(|s| s.borrow_mut().push(buf));
    }
}

/// `src` (rows×cols, row-major) transposed into a scratch buffer.
pub(super) fn transpose_scratch(src: &[f32], rows: usize, cols: usize) -> Scratch {
    let mut out = Scratch::take(rows * cols);
    transpose_into(src, rows, cols, &mut out);
    out
}

/// `src` (rows×cols, row-major) transposed into `out` (cols×rows), in parallel.
pub(super) fn transpose_into(src: &[f32], rows: usize, cols: usize, out: &mut [f32]) {
    // Each task writes a band of output rows, reading the matching short run of every input row.
    const BAND: usize = 16;
    if rows == 0 || cols == 0 {
        return;
    }
    out.par_chunks_mut(BAND * rows)
        .enumerate()
        .for_each(|(band, dst)| {
            let j0 = band * BAND;
            let width = dst.len() / rows;
            for (i, row) in src.chunks_exact(cols).enumerate() {
                for (jj, &v) in row[j0..j0 + width].iter().enumerate() {
                    dst[jj * rows + i] = v;
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shape's transpose equals the definition: full and ragged 16 × 16 blocks, a single
    /// row or column, and bands narrower than 16.
    #[test]
    fn transpose_into_matches_the_definition() {
        for (rows, cols) in [
            (16, 16),
            (37, 53),
            (1, 5),
            (5, 1),
            (100, 3),
            (3, 100),
            (33, 17),
        ] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.5 - 7.0).collect();
            let mut out = vec![f32::NAN; rows * cols];
            transpose_into(&src, rows, cols, &mut out);
            for i in 0..rows {
                for j in 0..cols {
                    assert_eq!(
                        out[j * rows + i],
                        src[i * cols + j],
                        "{rows}×{cols} at {i},{j}"
                    );
                }
            }
        }
    }
}
