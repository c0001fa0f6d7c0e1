//! Writing anomaly maps as NumPy `.npy` files (format version 1.0, `<f4`, C order, 2-D).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::render::{RenderError, RenderResult};

/// The `.npy` magic string: `\x93NUMPY`.
const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Digits NumPy reserves for the first axis so a shape can grow in place (`GROWTH_AXIS_MAX_DIGITS`).
const GROWTH_AXIS_MAX_DIGITS: usize = 21;

/// The `.npy` header (preamble, dict and padding) of a `(height, width)` little-endian f32 array.
///
/// The dict is padded with spaces and ends in `\n` so that the whole header, including the
/// 10-byte preamble, is a multiple of 64 bytes. Like `numpy.save`, it first reserves room for the
/// first axis to grow to 21 digits, which makes the header byte-identical to NumPy's.
pub fn npy_header(height: usize, width: usize) -> Vec<u8> {
    let dict =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({height}, {width}), }}");
    let growth = GROWTH_AXIS_MAX_DIGITS.saturating_sub(height.to_string().len());
    // preamble (10) + dict + growth + padding + '\n' must be a multiple of 64
    let unpadded = MAGIC.len() + 2 + 2 + dict.len() + growth + 1;
    let padding = growth + (64 - unpadded % 64) % 64;
    let header_len = dict.len() + padding + 1;
    let mut out = Vec::with_capacity(10 + header_len);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    // A 2-D shape is far below the 65535-byte limit of format 1.0.
    out.extend_from_slice(&(header_len as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend(std::iter::repeat_n(b' ', padding));
    out.push(b'\n');
    out
}

/// Errors unless `data` holds exactly `height × width` values.
fn check_shape(data: &[f32], height: usize, width: usize) -> RenderResult<()> {
    if height.checked_mul(width) == Some(data.len()) {
        Ok(())
    } else {
        Err(RenderError::BufferSize {
            len: data.len(),
            height,
            width,
        })
    }
}

/// Writes `data` as a `(height, width)` float32 `.npy` array to `writer`.
pub fn write_npy_to<W: Write>(
    mut writer: W,
    data: &[f32],
    height: usize,
    width: usize,
) -> RenderResult<()> {
    check_shape(data, height, width)?;
    writer.write_all(&npy_header(height, width))?;
    let mut bytes = Vec::with_capacity(data.len() * 4);
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    writer.write_all(&bytes)?;
    writer.flush()?;
    Ok(())
}

/// Writes `data` as a `(height, width)` float32 `.npy` file at `path` (`numpy.load` reads it).
pub fn write_npy(
    path: impl AsRef<Path>,
    data: &[f32],
    height: usize,
    width: usize,
) -> RenderResult<()> {
    // Check the shape before creating the file, so a bad call leaves nothing behind.
    check_shape(data, height, width)?;
    let file = BufWriter::new(File::create(path)?);
    write_npy_to(file, data, height, width)
}
