//! The engine's activation and gradient buffers, recycled from one layer and one step to the
//! next instead of freshly allocated (and page-faulted in) every time.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use candle_core::{Device, Result, Tensor};

/// Freed buffers, kept for the next request they can hold. Cloning shares the pool.
#[derive(Clone, Default)]
pub(crate) struct Pool(Arc<Mutex<Vec<Vec<f32>>>>);

impl std::fmt::Debug for Pool {
    /// The free buffers' count and size, not their values (megabytes of floats).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let free = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let floats: usize = free.iter().map(Vec::capacity).sum();
        write!(f, "Pool({} free buffers, {floats} floats)", free.len())
    }
}

impl Pool {
    /// A buffer for an NCHW map of `dims`, of unspecified content: the smallest free buffer
    /// that holds it, or a new one. The last, smaller batch of an epoch reuses the full
    /// batches' buffers, so the pool never holds more than one step's worth.
    pub fn take(&self, dims: [usize; 4]) -> Buf {
        let len = dims.iter().product();
        let mut data = {
            let mut free = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let best = free
                .iter()
                .enumerate()
                .filter(|(_, v)| v.capacity() >= len)
                .min_by_key(|(_, v)| v.capacity())
                .map(|(i, _)| i);
            best.map(|i| free.swap_remove(i)).unwrap_or_default()
        };
        data.resize(len, 0.0);
        Buf {
            data,
            dims,
            pool: self.clone(),
        }
    }

    /// A buffer holding a copy of the f32 CPU tensor `t` (NCHW).
    pub fn copy_of(&self, t: &Tensor) -> Result<Buf> {
        let (b, c, h, w) = t.dims4()?;
        let mut buf = self.take([b, c, h, w]);
        rd_kernels::with_f32(t, "engine", |v| buf.copy_from_slice(v))?;
        Ok(buf)
    }

    /// The number of buffers waiting for reuse (for tests).
    #[cfg(test)]
    pub fn free(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// An NCHW f32 map owned by the engine; its memory goes back to the pool when dropped.
pub(crate) struct Buf {
    data: Vec<f32>,
    dims: [usize; 4],
    pool: Pool,
}

impl Buf {
    /// (images, channels, height, width).
    pub fn dims(&self) -> [usize; 4] {
        self.dims
    }

    /// (images, channels, pixels per plane), as the BatchNorm kernels take it.
    pub fn nchw(&self) -> (usize, usize, usize) {
        let [b, c, h, w] = self.dims;
        (b, c, h * w)
    }

    /// A copy as a CPU tensor.
    pub fn to_tensor(&self) -> Result<Tensor> {
        let [b, c, h, w] = self.dims;
        Tensor::from_slice(&self.data, (b, c, h, w), &Device::Cpu)
    }
}

impl Deref for Buf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.data
    }
}

impl DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        let data = std::mem::take(&mut self.data);
        self.pool
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(data);
    }
}

impl std::fmt::Debug for Buf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buf").field("dims", &self.dims).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_return_to_the_pool_and_the_smallest_fitting_one_is_reused() {
        let pool = Pool::default();
        let (big, small) = (pool.take([2, 4, 8, 8]), pool.take([1, 4, 8, 8]));
        let big_ptr = big.as_ptr();
        drop((big, small));
        assert_eq!(pool.free(), 2);
        // Both fit 256 values; the smaller one is taken, the larger stays free.
        let a = pool.take([1, 1, 16, 16]);
        assert_ne!(a.as_ptr(), big_ptr);
        assert_eq!((a.len(), a.dims()), (256, [1, 1, 16, 16]));
        // Only the larger one fits 512 values.
        let b = pool.take([2, 1, 16, 16]);
        assert_eq!(b.as_ptr(), big_ptr);
        assert_eq!(pool.free(), 0);
        // Nothing fits: a new buffer.
        let c = pool.take([4, 4, 8, 8]);
        assert_eq!(c.len(), 1024);
        drop(c);
        assert_eq!(format!("{pool:?}"), "Pool(1 free buffers, 1024 floats)");
    }
}
