//! Visualisation: palette, bilinear resize, overlays, masks, contours and `.npy` output.

use image::{GrayImage, Luma, Rgb, RgbImage};
use rd_anomaly_map::{
    blend, contour_overlay, contour_overlay_thick, heatmap_overlay, jet, mask_boundary, mask_image,
    npy_header, resize_bilinear, write_npy, write_npy_to, Colormap, MapView, Normalization,
    RenderError, GT_CONTOUR_COLOUR, JET_STOPS, PRED_CONTOUR_COLOUR,
};

fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "lengths differ: {got:?} vs {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * w.abs().max(1.0),
            "index {i}: got {g}, want {w}"
        );
    }
}

fn tmp_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("rd-render-{}-{name}", std::process::id()))
}

// ---------------------------------------------------------------- palette

#[test]
fn jet_end_points_and_midpoint() {
    assert_eq!(jet(0.0), Rgb([0, 0, 143]));
    assert_eq!(jet(1.0), Rgb([127, 0, 0]));
    // 9 stops: 0.5 is exactly the 5th stop (light green)
    assert_eq!(jet(0.5), Rgb([127, 255, 127]));
    // every stop sits at k/8
    for (k, stop) in JET_STOPS.iter().enumerate() {
        assert_eq!(jet(k as f32 / 8.0), Rgb(*stop), "stop {k}");
    }
    // halfway between stop 0 (0,0,143) and stop 1 (0,0,255): 199
    assert_eq!(jet(1.0 / 16.0), Rgb([0, 0, 199]));
    // halfway between cyan (0,255,255) and light green (127,255,127): round(63.5)=64, 191
    assert_eq!(jet(7.0 / 16.0), Rgb([64, 255, 191]));
}

#[test]
fn jet_clamps_out_of_range_and_nan() {
    assert_eq!(jet(-3.0), jet(0.0));
    assert_eq!(jet(7.5), jet(1.0));
    assert_eq!(jet(f32::NEG_INFINITY), jet(0.0));
    assert_eq!(jet(f32::INFINITY), jet(1.0));
    assert_eq!(jet(f32::NAN), jet(0.0));
}

#[test]
fn colormap_matches_jet_and_custom_stops() {
    let cm = Colormap::jet();
    for i in 0..=100 {
        let v = i as f32 / 100.0;
        assert_eq!(cm.color(v), jet(v));
    }
    let grey = Colormap::from_stops(&[[0, 0, 0], [255, 255, 255]]).unwrap();
    assert_eq!(grey.color(0.5), Rgb([128, 128, 128]));
    assert_eq!(grey.color(0.25), Rgb([64, 64, 64]));
    assert!(matches!(
        Colormap::from_stops(&[[1, 2, 3]]),
        Err(RenderError::TooFewStops(1))
    ));
}

// ---------------------------------------------------------------- resize

#[test]
fn bilinear_2x2_to_4x4_matches_torch_align_corners_false() {
    let data = [1.0, 2.0, 3.0, 4.0];
    let map = MapView::new(&data, 2, 2).unwrap();
    let out = resize_bilinear(map, 4, 4);
    // torch.nn.functional.interpolate(x, size=(4, 4), mode="bilinear", align_corners=False)
    #[rustfmt::skip]
    let want = [
        1.0, 1.25, 1.75, 2.0,
        1.5, 1.75, 2.25, 2.5,
        2.5, 2.75, 3.25, 3.5,
        3.0, 3.25, 3.75, 4.0,
    ];
    assert_close(&out, &want);
}

#[test]
fn bilinear_row_and_downsampling() {
    // one row [1, 2] -> width 4: [1, 1.25, 1.75, 2]
    let row = [1.0, 2.0];
    let out = resize_bilinear(MapView::new(&row, 1, 2).unwrap(), 1, 4);
    assert_close(&out, &[1.0, 1.25, 1.75, 2.0]);
    // downsampling by 2 averages pairs (source positions 0.5 and 2.5)
    let row = [0.0, 1.0, 2.0, 3.0];
    let out = resize_bilinear(MapView::new(&row, 1, 4).unwrap(), 1, 2);
    assert_close(&out, &[0.5, 2.5]);
    // non-integer ratio 3 -> 5: src = 0.6·(o + 0.5) − 0.5 = [-0.2→0, 0.4, 1.0, 1.6, 2.2]
    let row = [0.0, 10.0, 20.0];
    let out = resize_bilinear(MapView::new(&row, 1, 3).unwrap(), 1, 5);
    assert_close(&out, &[0.0, 4.0, 10.0, 16.0, 20.0]);
}

#[test]
fn same_size_is_not_resampled() {
    let data: Vec<f32> = (0..12).map(|i| (i as f32).sin()).collect();
    let out = resize_bilinear(MapView::new(&data, 3, 4).unwrap(), 3, 4);
    assert_eq!(out, data);
}

// ---------------------------------------------------------------- normalisation

#[test]
fn map_min_max_normalisation() {
    let out = Normalization::MapMinMax.apply(&[1.0, 3.0, 5.0, f32::INFINITY]);
    assert_close(&out[..3], &[0.0, 0.5, 1.0]);
    assert_eq!(out[3], 1.0);
    assert_eq!(
        Normalization::MapMinMax.apply(&[2.0, 2.0]),
        vec![0.0, 0.0],
        "a flat map normalises to 0"
    );
    assert_eq!(
        Normalization::MapMinMax.apply(&[f32::NAN, f32::NAN]),
        vec![0.0, 0.0],
        "no finite value normalises to 0"
    );
    assert_eq!(Normalization::Identity.apply(&[7.0]), vec![7.0]);
}

// ---------------------------------------------------------------- overlay

#[test]
fn zero_map_over_white_is_half_white_half_palette_zero() {
    let image = RgbImage::from_pixel(10, 6, Rgb([255, 255, 255]));
    let zeros = vec![0.0f32; 3 * 5];
    let map = MapView::new(&zeros, 3, 5).unwrap();
    let c0 = jet(0.0);
    let want = Rgb(std::array::from_fn(|c| {
        (0.5 * 255.0 + 0.5 * c0[c] as f32).round() as u8
    }));
    assert_eq!(want, Rgb([128, 128, 199]));
    for norm in [Normalization::Identity, Normalization::MapMinMax] {
        let out = heatmap_overlay(&image, map, &norm);
        assert_eq!(out.dimensions(), (10, 6));
        assert!(out.pixels().all(|p| *p == want), "{norm:?}");
    }
}

#[test]
fn overlay_uses_palette_top_where_map_is_high() {
    // black image, map with a single hot column on the right at model resolution
    let image = RgbImage::new(4, 2);
    let data = [0.0, 1.0, 0.0, 1.0];
    let map = MapView::new(&data, 2, 2).unwrap();
    let out = heatmap_overlay(&image, map, &Normalization::Identity);
    // resized columns are [0, 0.25, 0.75, 1]: left pixel is palette(0)/2, right palette(1)/2
    let half = |c: Rgb<u8>| Rgb(c.0.map(|v| (v as f32 * 0.5).round() as u8));
    assert_eq!(*out.get_pixel(0, 0), half(jet(0.0)));
    assert_eq!(*out.get_pixel(3, 1), half(jet(1.0)));
    assert_eq!(*out.get_pixel(1, 0), half(jet(0.25)));
}

#[test]
fn blend_checks_sizes() {
    let a = RgbImage::new(3, 3);
    let b = RgbImage::new(3, 4);
    assert!(matches!(
        blend(&a, &b, 0.5),
        Err(RenderError::SizeMismatch {
            expected: (3, 3),
            got: (3, 4)
        })
    ));
    let white = RgbImage::from_pixel(3, 3, Rgb([255, 255, 255]));
    let out = blend(&a, &white, 0.25).unwrap();
    assert!(out.pixels().all(|p| *p == Rgb([64, 64, 64])));
}

// ---------------------------------------------------------------- masks and contours

/// An 8×8 map with a filled square on rows/cols 2..6.
fn square_map() -> Vec<f32> {
    let mut data = vec![0.0f32; 64];
    for y in 2..6 {
        for x in 2..6 {
            data[y * 8 + x] = 1.0;
        }
    }
    data
}

#[test]
fn mask_of_filled_square() {
    let data = square_map();
    let mask = mask_image(MapView::new(&data, 8, 8).unwrap(), 0.5, 8, 8);
    for y in 0..8u32 {
        for x in 0..8u32 {
            let inside = (2..6).contains(&x) && (2..6).contains(&y);
            assert_eq!(mask.get_pixel(x, y)[0], if inside { 255 } else { 0 });
        }
    }
    // strictly greater than the threshold, as anomalib
    let mask = mask_image(MapView::new(&data, 8, 8).unwrap(), 1.0, 8, 8);
    assert!(mask.pixels().all(|p| p[0] == 0));
}

#[test]
fn mask_is_computed_at_the_original_size() {
    // columns [0, 1] upsample to [0, 0.25, 0.75, 1]
    let data = [0.0, 1.0, 0.0, 1.0];
    let mask = mask_image(MapView::new(&data, 2, 2).unwrap(), 0.5, 4, 3);
    assert_eq!(mask.dimensions(), (4, 3));
    for y in 0..3 {
        let row: Vec<u8> = (0..4).map(|x| mask.get_pixel(x, y)[0]).collect();
        assert_eq!(row, vec![0, 0, 255, 255]);
    }
}

#[test]
fn contour_of_filled_square_is_its_border() {
    let data = square_map();
    let mask = mask_image(MapView::new(&data, 8, 8).unwrap(), 0.5, 8, 8);
    let grey = Rgb([50, 60, 70]);
    let image = RgbImage::from_pixel(8, 8, grey);
    let out = contour_overlay(&image, &mask, PRED_CONTOUR_COLOUR).unwrap();
    for y in 0..8u32 {
        for x in 0..8u32 {
            let inside = (2..6).contains(&x) && (2..6).contains(&y);
            let border = inside && (x == 2 || x == 5 || y == 2 || y == 5);
            let want = if border { Rgb([255, 0, 0]) } else { grey };
            assert_eq!(*out.get_pixel(x, y), want, "pixel ({x}, {y})");
        }
    }
}

#[test]
fn thick_contour_and_image_edge() {
    let data = square_map();
    let mask = mask_image(MapView::new(&data, 8, 8).unwrap(), 0.5, 8, 8);
    // thickness 2 paints the whole 4×4 square (every pixel is within 2 of the outside)
    let boundary = mask_boundary(&mask, 2);
    assert_eq!(boundary, mask);

    // a mask covering the whole image: its contour runs along the image edge
    let full = GrayImage::from_pixel(5, 4, Luma([255]));
    let out = contour_overlay(&RgbImage::new(5, 4), &full, GT_CONTOUR_COLOUR).unwrap();
    for y in 0..4u32 {
        for x in 0..5u32 {
            let edge = x == 0 || y == 0 || x == 4 || y == 3;
            let want = if edge {
                GT_CONTOUR_COLOUR
            } else {
                Rgb([0, 0, 0])
            };
            assert_eq!(*out.get_pixel(x, y), want, "pixel ({x}, {y})");
        }
    }
    // an empty mask draws nothing
    let empty = GrayImage::new(5, 4);
    let image = RgbImage::from_pixel(5, 4, Rgb([9, 9, 9]));
    assert_eq!(
        contour_overlay_thick(&image, &empty, PRED_CONTOUR_COLOUR, 2).unwrap(),
        image
    );
}

#[test]
fn contour_size_mismatch_is_an_error() {
    let image = RgbImage::new(8, 8);
    let mask = GrayImage::new(8, 7);
    assert!(matches!(
        contour_overlay(&image, &mask, PRED_CONTOUR_COLOUR),
        Err(RenderError::SizeMismatch {
            expected: (8, 8),
            got: (8, 7)
        })
    ));
}

// ---------------------------------------------------------------- buffer sizes

#[test]
fn map_view_rejects_wrong_sizes() {
    let data = [0.0f32; 5];
    assert!(matches!(
        MapView::new(&data, 2, 3),
        Err(RenderError::BufferSize {
            len: 5,
            height: 2,
            width: 3
        })
    ));
    assert!(matches!(
        MapView::new(&[], 0, 3),
        Err(RenderError::EmptyShape {
            height: 0,
            width: 3
        })
    ));
    assert!(matches!(
        MapView::new(&data, usize::MAX, 2),
        Err(RenderError::BufferSize { .. })
    ));
    let v = MapView::new(&data, 1, 5).unwrap();
    assert_eq!((v.height(), v.width(), v.data().len()), (1, 5, 5));
}

// ---------------------------------------------------------------- npy

#[test]
fn npy_bytes_for_2x3() {
    let data = [0.0f32, 1.5, -2.0, 3.25, f32::MAX, 1e-3];
    let mut bytes = Vec::new();
    write_npy_to(&mut bytes, &data, 2, 3).unwrap();

    assert_eq!(&bytes[..6], b"\x93NUMPY");
    assert_eq!(&bytes[6..8], &[1, 0], "format version 1.0");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!(
        header_len, 118,
        "numpy 2.4 writes HEADER_LEN 118 for this array"
    );
    let total = 10 + header_len;
    assert_eq!(total % 64, 0, "header padded to a multiple of 64");
    assert_eq!(total, 128, "as numpy.save writes a (2, 3) <f4 array");
    let header = std::str::from_utf8(&bytes[10..total]).unwrap();
    assert!(header.ends_with('\n'));
    let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
    assert_eq!(header.trim_end_matches('\n').trim_end_matches(' '), dict);
    assert!(header[dict.len()..header.len() - 1]
        .bytes()
        .all(|b| b == b' '));
    assert_eq!(&bytes[..total], npy_header(2, 3).as_slice());

    let body = &bytes[total..];
    assert_eq!(body.len(), 6 * 4);
    let decoded: Vec<f32> = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(decoded, data);
    assert_eq!(&body[4..8], &[0x00, 0x00, 0xc0, 0x3f], "1.5 little-endian");
}

#[test]
fn npy_header_padding_for_many_shapes() {
    for (h, w) in [
        (1, 1),
        (256, 256),
        (1024, 1024),
        (12345678, 3),
        (7, 1234567890),
    ] {
        let header = npy_header(h, w);
        assert_eq!(header.len() % 64, 0, "({h}, {w})");
        // numpy 2.4's `write_array_header_1_0` gives 128 bytes for each of these shapes
        assert_eq!(header.len(), 128, "({h}, {w})");
        assert_eq!(
            u16::from_le_bytes([header[8], header[9]]) as usize,
            header.len() - 10
        );
        assert_eq!(*header.last().unwrap(), b'\n');
        let text = std::str::from_utf8(&header[10..]).unwrap();
        assert!(text.contains(&format!("'shape': ({h}, {w}), }}")), "{text}");
    }
}

#[test]
fn npy_file_and_size_mismatch() {
    let path = tmp_path("map.npy");
    let data: Vec<f32> = (0..6).map(|i| i as f32 * 0.5).collect();
    write_npy(&path, &data, 2, 3).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 128 + 24);
    std::fs::remove_file(&path).unwrap();

    let bad = tmp_path("bad.npy");
    assert!(matches!(
        write_npy(&bad, &data, 4, 2),
        Err(RenderError::BufferSize {
            len: 6,
            height: 4,
            width: 2
        })
    ));
    assert!(!bad.exists(), "a rejected call creates no file");
    let mut sink = Vec::new();
    assert!(write_npy_to(&mut sink, &data, 3, 3).is_err());
    assert!(sink.is_empty());
}

// ---------------------------------------------------------------- PNG round trip

#[test]
fn mask_and_overlay_survive_png() {
    let data = square_map();
    let map = MapView::new(&data, 8, 8).unwrap();
    let image = RgbImage::from_fn(16, 16, |x, y| Rgb([(x * 16) as u8, (y * 16) as u8, 128]));
    let overlay = heatmap_overlay(&image, map, &Normalization::MapMinMax);
    let mask = mask_image(map, 0.5, 16, 16);
    let (p1, p2) = (tmp_path("overlay.png"), tmp_path("mask.png"));
    overlay.save(&p1).unwrap();
    mask.save(&p2).unwrap();
    assert_eq!(image::open(&p1).unwrap().to_rgb8(), overlay);
    assert_eq!(image::open(&p2).unwrap().to_luma8(), mask);
    std::fs::remove_file(p1).unwrap();
    std::fs::remove_file(p2).unwrap();
}
