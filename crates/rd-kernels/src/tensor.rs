//! Borrowing the f32 data of CPU tensors, and making fresh ones: the one home of these helpers.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, DType, Device, Layout, Result, Shape, Storage, Tensor};

/// Fails unless every tensor is an f32 CPU tensor: a kernel never copies a GPU tensor to the
/// host, and never builds a custom op (CPU implementation only) on one.
pub(crate) fn ensure_cpu_f32(op: &str, tensors: &[&Tensor]) -> Result<()> {
    for t in tensors {
        if !t.device().is_cpu() || t.dtype() != DType::F32 {
            bail!(
                "rd-kernels {op}: runs on f32 CPU tensors only, got {:?} on {:?}; check \
                 rd_kernels::enabled and take the Candle path for other tensors",
                t.dtype(),
                t.device().location()
            )
        }
    }
    Ok(())
}

/// The contiguous f32 data behind a custom op's input.
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("{op}: expected f32 data, got {:?}", s.dtype())
    };
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("{op}: expected a contiguous input, got {:?}", l.shape())
    };
    Ok(&v[start..end])
}

/// Runs `f` on the row-major f32 data of a CPU tensor: in place when it is contiguous, else on
/// a contiguous copy (on the CPU). Other devices and dtypes are an error.
pub fn with_f32<T>(t: &Tensor, op: &str, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
    ensure_cpu_f32(op, &[t])?;
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(s) = &*storage else {
        bail!("{op}: runs on the CPU only")
    };
    Ok(f(f32_slice(s, layout, op)?))
}

/// [`with_f32`] for an optional tensor.
pub(crate) fn with_f32_opt<T>(
    t: Option<&Tensor>,
    op: &str,
    f: impl FnOnce(Option<&[f32]>) -> T,
) -> Result<T> {
    match t {
        Some(t) => with_f32(t, op, |v| f(Some(v))),
        None => Ok(f(None)),
    }
}

/// A fresh f32 tensor on the CPU.
pub(crate) fn from_vec(v: Vec<f32>, shape: impl Into<Shape>) -> Result<Tensor> {
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// Panics unless every slice has its expected length: the raw-data kernels' check of their
/// caller (a wrong length is a bug there, not bad input).
pub(crate) fn check_len(op: &str, slices: &[(&[f32], usize)]) {
    for (i, (s, len)) in slices.iter().enumerate() {
        assert_eq!(s.len(), *len, "{op}: argument {i} has the wrong length");
    }
}
