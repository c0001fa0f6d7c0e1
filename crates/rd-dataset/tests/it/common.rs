//! Helpers that build small image files and dataset trees.

use std::path::{Path, PathBuf};

use image::{ExtendedColorType, ImageEncoder};

/// CRC-32 (IEEE) as PNG chunks use it.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// One PNG chunk: length, type, data, CRC.
pub fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc_input = kind.to_vec();
    crc_input.extend_from_slice(data);
    out.extend_from_slice(&crc32(&crc_input).to_be_bytes());
    out
}

/// A zlib stream holding `data` in one stored (uncompressed) deflate block.
pub fn zlib_stored(data: &[u8]) -> Vec<u8> {
    assert!(data.len() < 65536);
    let mut out = vec![0x78, 0x01, 0x01];
    let len = data.len() as u16;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(data);
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

/// The PNG signature followed by an IHDR chunk.
pub fn png_head(width: u32, height: u32, bit_depth: u8, color_type: u8) -> Vec<u8> {
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[bit_depth, color_type, 0, 0, 0]);
    out.extend(png_chunk(b"IHDR", &ihdr));
    out
}

/// A palette PNG (8-bit indices), hand-assembled.
pub fn palette_png(width: u32, height: u32, palette: &[[u8; 3]], indices: &[u8]) -> Vec<u8> {
    let mut out = png_head(width, height, 8, 3);
    let plte: Vec<u8> = palette.iter().flatten().copied().collect();
    out.extend(png_chunk(b"PLTE", &plte));
    let mut raw = Vec::new();
    for row in indices.chunks(width as usize) {
        raw.push(0); // filter: none
        raw.extend_from_slice(row);
    }
    out.extend(png_chunk(b"IDAT", &zlib_stored(&raw)));
    out.extend(png_chunk(b"IEND", &[]));
    out
}

/// Encodes pixels as PNG bytes.
pub fn png_bytes(width: u32, height: u32, color: ExtendedColorType, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(data, width, height, color)
        .unwrap();
    out
}

/// Writes an RGB8 PNG.
pub fn write_rgb_png(path: &Path, width: u32, height: u32, rgb: &[u8]) {
    write(
        path,
        &png_bytes(width, height, ExtendedColorType::Rgb8, rgb),
    );
}

/// Writes a solid-colour RGB8 PNG.
pub fn write_solid_png(path: &Path, width: u32, height: u32, rgb: [u8; 3]) {
    let data: Vec<u8> = (0..width * height).flat_map(|_| rgb).collect();
    write_rgb_png(path, width, height, &data);
}

/// Writes an 8-bit grayscale PNG mask.
pub fn write_mask_png(path: &Path, width: u32, height: u32, values: &[u8]) {
    write(
        path,
        &png_bytes(width, height, ExtendedColorType::L8, values),
    );
}

/// Writes bytes, creating parent folders.
pub fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// A small MVTec-style category: 3 train, 2 good test, 2 defective (`crack`) with masks.
pub fn mvtec_tree(root: &Path, category: &str) -> PathBuf {
    let c = root.join(category);
    for i in 0..3 {
        write_solid_png(
            &c.join(format!("train/good/{i:03}.png")),
            8,
            6,
            [100, 100, 100],
        );
    }
    for i in 0..2 {
        write_solid_png(
            &c.join(format!("test/good/{i:03}.png")),
            8,
            6,
            [100, 100, 100],
        );
        write_solid_png(
            &c.join(format!("test/crack/{i:03}.png")),
            8,
            6,
            [10, 10, 10],
        );
        let mut m = vec![0u8; 48];
        m[i] = 255;
        write_mask_png(
            &c.join(format!("ground_truth/crack/{i:03}_mask.png")),
            8,
            6,
            &m,
        );
    }
    c
}
