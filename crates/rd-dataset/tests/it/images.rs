//! Decoding: colour types, formats, EXIF orientation, bad files.

use std::io::Cursor;
use std::time::{Duration, Instant};

use image::{ExtendedColorType, ImageEncoder};
use rd_dataset::image::read_dimensions;
use rd_dataset::{load_mask, load_rgb, DatasetError, LoadOptions};

use crate::common::*;

const S8: f32 = 1.0 / 255.0;

fn assert_close(a: f32, b: f32, tol: f32) {
    assert!((a - b).abs() <= tol, "{a} vs {b}");
}

#[test]
fn grayscale_png_is_replicated_to_rgb() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("g.png");
    write(&p, &png_bytes(3, 1, ExtendedColorType::L8, &[0, 128, 255]));
    let img = load_rgb(&p, &LoadOptions::default()).unwrap();
    assert_eq!((img.height, img.width), (1, 3));
    for c in 0..3 {
        assert_eq!(img.get(c, 0, 0), 0.0);
        assert_eq!(img.get(c, 0, 1), 128.0 * S8);
        assert_eq!(img.get(c, 0, 2), 1.0);
    }
}

#[test]
fn rgba_drops_alpha_and_layout_is_channel_first() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("rgba.png");
    // Two pixels: (10, 20, 30, alpha 0) and (200, 100, 50, alpha 255).
    let data = [10, 20, 30, 0, 200, 100, 50, 255];
    write(&p, &png_bytes(2, 1, ExtendedColorType::Rgba8, &data));
    let img = load_rgb(&p, &LoadOptions::default()).unwrap();
    let expect: Vec<f32> = [10u8, 200, 20, 100, 30, 50]
        .iter()
        .map(|&v| f32::from(v) * S8)
        .collect();
    assert_eq!(img.data, expect);
    // Gray + alpha too.
    let p = dir.path().join("la.png");
    write(&p, &png_bytes(1, 1, ExtendedColorType::La8, &[77, 3]));
    let img = load_rgb(&p, &LoadOptions::default()).unwrap();
    assert_eq!(img.data, vec![77.0 * S8; 3]);
}

#[test]
fn sixteen_bit_images_scale_by_65535() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("g16.png");
    let values: [u16; 2] = [0x1234, 65535];
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
    write(&p, &png_bytes(2, 1, ExtendedColorType::L16, &bytes));
    let img = load_rgb(&p, &LoadOptions::default()).unwrap();
    assert_close(img.get(0, 0, 0), 4660.0 / 65535.0, 1e-7);
    assert_close(img.get(2, 0, 0), 4660.0 / 65535.0, 1e-7);
    assert_eq!(img.get(1, 0, 1), 1.0);

    let p = dir.path().join("rgba16.png");
    let values: [u16; 4] = [1000, 30000, 65535, 0];
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
    write(&p, &png_bytes(1, 1, ExtendedColorType::Rgba16, &bytes));
    let img = load_rgb(&p, &LoadOptions::default()).unwrap();
    assert_close(img.data[0], 1000.0 / 65535.0, 1e-7);
    assert_close(img.data[1], 30000.0 / 65535.0, 1e-7);
    assert_eq!(img.data[2], 1.0);
}

#[test]
fn palette_png_expands_to_palette_colours() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pal.png");
    let palette = [[255, 0, 0], [0, 128, 255], [7, 8, 9]];
    write(&p, &palette_png(3, 2, &palette, &[0, 1, 2, 2, 1, 0]));
    let img = load_rgb(&p, &LoadOptions::default()).unwrap();
    assert_eq!((img.height, img.width), (2, 3));
    for (i, &idx) in [0usize, 1, 2, 2, 1, 0].iter().enumerate() {
        let (y, x) = (i / 3, i % 3);
        for (c, &v) in palette[idx].iter().enumerate() {
            assert_eq!(img.get(c, y, x), f32::from(v) * S8, "{y} {x} {c}");
        }
    }
}

#[test]
fn bmp_tiff_and_jpeg_decode() {
    let dir = tempfile::tempdir().unwrap();
    let rgb: Vec<u8> = (0..4 * 3 * 3).map(|i| (i * 7) as u8).collect();

    let mut bmp = Vec::new();
    image::codecs::bmp::BmpEncoder::new(&mut bmp)
        .write_image(&rgb, 4, 3, ExtendedColorType::Rgb8)
        .unwrap();
    let p = dir.path().join("a.BMP");
    write(&p, &bmp);
    let img = load_rgb(&p, &LoadOptions::default()).unwrap();
    assert_eq!(img.get(0, 1, 2), f32::from(rgb[(4 + 2) * 3]) * S8);
    assert_eq!(img.get(2, 2, 3), f32::from(rgb[(2 * 4 + 3) * 3 + 2]) * S8);

    let mut tiff = Cursor::new(Vec::new());
    image::codecs::tiff::TiffEncoder::new(&mut tiff)
        .write_image(&rgb, 4, 3, ExtendedColorType::Rgb8)
        .unwrap();
    let p = dir.path().join("a.tif");
    write(&p, tiff.get_ref());
    let img2 = load_rgb(&p, &LoadOptions::default()).unwrap();
    assert_eq!(img2, img);

    // JPEG is lossy: a flat colour comes back within a few levels.
    let flat: Vec<u8> = (0..16 * 16).flat_map(|_| [200u8, 40, 90]).collect();
    let mut jpg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpg, 95)
        .write_image(&flat, 16, 16, ExtendedColorType::Rgb8)
        .unwrap();
    let p = dir.path().join("a.JPEG");
    write(&p, &jpg);
    let img = load_rgb(&p, &LoadOptions::default()).unwrap();
    assert_close(img.get(0, 8, 8), 200.0 * S8, 4.0 * S8);
    assert_close(img.get(1, 8, 8), 40.0 * S8, 4.0 * S8);
    assert_close(img.get(2, 8, 8), 90.0 * S8, 4.0 * S8);
}

#[test]
fn format_is_decided_by_content_not_extension() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("really_a_png.jpg");
    write_solid_png(&p, 2, 2, [255, 0, 0]);
    let img = load_rgb(&p, &LoadOptions::default()).unwrap();
    assert_eq!(img.get(0, 1, 1), 1.0);
}

/// A JPEG with an APP1 Exif segment (big-endian TIFF, one IFD entry: Orientation).
fn jpeg_with_orientation(rgb: &[u8], width: u32, height: u32, orientation: u16) -> Vec<u8> {
    let mut jpg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpg, 100)
        .write_image(rgb, width, height, ExtendedColorType::Rgb8)
        .unwrap();
    let mut tiff = b"MM\0\x2a".to_vec();
    tiff.extend_from_slice(&8u32.to_be_bytes()); // first IFD at offset 8
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes()); // count
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]); // padding of the 4-byte value field
    tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend_from_slice(&tiff);
    let mut app1 = vec![0xFF, 0xE1];
    app1.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    app1.extend_from_slice(&payload);
    assert_eq!(&jpg[..2], &[0xFF, 0xD8]);
    let mut out = jpg[..2].to_vec();
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpg[2..]);
    out
}

#[test]
fn exif_orientation_is_applied_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    // 16 x 8: left half red, right half blue.
    let rgb: Vec<u8> = (0..8)
        .flat_map(|_| (0..16).flat_map(|x| if x < 8 { [255u8, 0, 0] } else { [0, 0, 255] }))
        .collect();
    let p = dir.path().join("rot.jpg");
    write(&p, &jpeg_with_orientation(&rgb, 16, 8, 6)); // 6: rotate 90 degrees clockwise
    assert_eq!(read_dimensions(&p).unwrap(), (16, 8)); // stored size
    let rotate = LoadOptions {
        apply_orientation: true,
        ..LoadOptions::default()
    };

    let img = load_rgb(&p, &rotate).unwrap();
    assert_eq!((img.height, img.width), (16, 8));
    // The left (red) half is now on top, the right (blue) half at the bottom.
    assert!(
        img.get(0, 3, 4) > 0.85 && img.get(2, 3, 4) < 0.15,
        "{:?}",
        img.get(0, 3, 4)
    );
    assert!(img.get(2, 12, 4) > 0.85 && img.get(0, 12, 4) < 0.15);

    // By default the tag is ignored, as anomalib (PIL `Image.open`) ignores it.
    assert!(!LoadOptions::default().apply_orientation);
    let raw = load_rgb(&p, &LoadOptions::default()).unwrap();
    assert_eq!((raw.height, raw.width), (8, 16));
    assert!(raw.get(0, 4, 3) > 0.85 && raw.get(2, 4, 12) > 0.85);

    // Orientation 3: rotate 180 degrees: red ends up on the right.
    let p3 = dir.path().join("rot180.jpg");
    write(&p3, &jpeg_with_orientation(&rgb, 16, 8, 3));
    let img = load_rgb(&p3, &rotate).unwrap();
    assert_eq!((img.height, img.width), (8, 16));
    assert!(img.get(0, 4, 12) > 0.85 && img.get(2, 4, 3) > 0.85);
}

fn expect_err(path: &std::path::Path) -> DatasetError {
    let err = load_rgb(path, &LoadOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "message does not name the file: {msg}"
    );
    err
}

#[test]
fn empty_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("empty.png");
    write(&p, b"");
    let err = expect_err(&p);
    assert!(matches!(err, DatasetError::EmptyFile { .. }), "{err:?}");
    assert!(err.to_string().contains("0 bytes"));
}

#[test]
fn text_named_png_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notes.png");
    write(&p, b"this is not an image, just some text\n");
    let err = expect_err(&p);
    assert!(matches!(err, DatasetError::UnknownFormat { .. }), "{err:?}");
    assert!(err.to_string().contains("not a PNG, JPEG, BMP or TIFF"));
}

#[test]
fn truncated_png_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let rgb: Vec<u8> = (0..32 * 32 * 3).map(|i| (i * 31 % 251) as u8).collect();
    let full = png_bytes(32, 32, ExtendedColorType::Rgb8, &rgb);
    for cut in [full.len() / 2, 40, 20] {
        let p = dir.path().join(format!("cut{cut}.png"));
        write(&p, &full[..cut]);
        let err = expect_err(&p);
        assert!(matches!(err, DatasetError::Decode { .. }), "{err:?}");
    }
    // Also a PNG that is cut inside the 8-byte signature: no format recognised.
    let p = dir.path().join("sig.png");
    write(&p, &full[..4]);
    let err = expect_err(&p);
    assert!(matches!(err, DatasetError::UnknownFormat { .. }), "{err:?}");
}

#[test]
fn huge_header_is_refused_quickly() {
    let dir = tempfile::tempdir().unwrap();
    // Header only: signature, IHDR for 100000 x 100000 RGB, IEND.
    let mut header_only = png_head(100_000, 100_000, 8, 2);
    header_only.extend(png_chunk(b"IEND", &[]));
    // And with a (far too short) IDAT, as a real file would have.
    let mut with_idat = png_head(100_000, 100_000, 8, 2);
    with_idat.extend(png_chunk(b"IDAT", &zlib_stored(&[0, 1, 2, 3])));
    with_idat.extend(png_chunk(b"IEND", &[]));
    for (name, bytes) in [("h1.png", header_only), ("h2.png", with_idat)] {
        let p = dir.path().join(name);
        write(&p, &bytes);
        let start = Instant::now();
        let err = expect_err(&p);
        assert!(start.elapsed() < Duration::from_secs(1));
        match err {
            DatasetError::TooLarge {
                width,
                height,
                max_pixels,
                ..
            } => {
                assert_eq!((width, height), (100_000, 100_000));
                assert_eq!(max_pixels, rd_dataset::DEFAULT_MAX_PIXELS);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert_eq!(read_dimensions(&p).unwrap(), (100_000, 100_000));
        let err = load_mask(&p, &LoadOptions::default()).unwrap_err();
        assert!(matches!(err, DatasetError::TooLarge { .. }));
    }
}

#[test]
fn max_pixels_is_configurable() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("small.png");
    write_solid_png(&p, 4, 4, [1, 2, 3]);
    let opts = LoadOptions {
        max_pixels: 15,
        ..LoadOptions::default()
    };
    let err = load_rgb(&p, &opts).unwrap_err();
    assert!(matches!(
        err,
        DatasetError::TooLarge {
            width: 4,
            height: 4,
            max_pixels: 15,
            ..
        }
    ));
    assert!(err.to_string().contains("max_pixels"));
    let opts = LoadOptions {
        max_pixels: 16,
        ..LoadOptions::default()
    };
    assert!(load_rgb(&p, &opts).is_ok());
    // Formats other than PNG are checked from the decoder's header.
    let mut jpg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new(&mut jpg)
        .write_image(&[9; 16 * 16 * 3], 16, 16, ExtendedColorType::Rgb8)
        .unwrap();
    let p = dir.path().join("small.jpg");
    write(&p, &jpg);
    let opts = LoadOptions {
        max_pixels: 255,
        ..LoadOptions::default()
    };
    let err = load_rgb(&p, &opts).unwrap_err();
    assert!(
        matches!(
            err,
            DatasetError::TooLarge {
                width: 16,
                height: 16,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn missing_file_and_folder_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nope.png");
    let err = expect_err(&p);
    assert!(matches!(err, DatasetError::Io { .. }));
    let err = load_rgb(dir.path(), &LoadOptions::default()).unwrap_err();
    assert!(err.to_string().contains(&dir.path().display().to_string()));
}

#[test]
fn masks_are_binarised() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.png");
    write_mask_png(&p, 4, 1, &[0, 1, 128, 255]);
    let m = load_mask(&p, &LoadOptions::default()).unwrap();
    assert_eq!(m.data, vec![0, 1, 1, 1]);
    assert_eq!(m.count_anomalous(), 3);
    // An RGB mask: any non-zero colour channel counts.
    let p = dir.path().join("m_rgb.png");
    write(
        &p,
        &png_bytes(3, 1, ExtendedColorType::Rgb8, &[0, 0, 0, 0, 0, 1, 9, 0, 0]),
    );
    let m = load_mask(&p, &LoadOptions::default()).unwrap();
    assert_eq!(m.data, vec![0, 1, 1]);
}
