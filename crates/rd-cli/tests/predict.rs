//! `rd predict` as a user runs it: anomalib parity through files, and every kind of bad input.

mod common;

use common::{rd, text, tiny_model};

use std::path::Path;

use candle_core::Device;

/// The data of a float32 `.npy` written by rd.
fn read_npy(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let header = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    bytes[10 + header..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn results(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The acceptance check: anomalib weights imported, images fed losslessly (float TIFF),
/// raw maps and scores equal to anomalib's own.
#[test]
fn imported_anomalib_model_reproduces_anomalib_maps_and_scores() {
    let Some(cases) = rd_tests::fixture_cases("parity") else {
        return;
    };
    let case = cases
        .iter()
        .find(|c| c.ends_with("resnet18_64x64"))
        .expect("the shared resnet18_64x64 case");
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.safetensors");
    common::import_parity_case(case, &model);

    let infer =
        candle_core::safetensors::load(case.join("infer.safetensors"), &Device::Cpu).unwrap();
    let raw = &infer["image_raw"]; // [B, 3, 64, 64] in [0, 1)
    let mut inputs = Vec::new();
    for b in 0..raw.dim(0).unwrap() {
        let hwc: Vec<f32> = raw
            .get(b)
            .unwrap()
            .permute((1, 2, 0))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let img = image::Rgb32FImage::from_raw(64, 64, hwc).unwrap();
        let path = dir.path().join(format!("part{b}.tif"));
        image::DynamicImage::ImageRgb32F(img).save(&path).unwrap();
        inputs.push(path);
    }
    let out = dir.path().join("out");
    let mut args = vec![
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--raw-maps",
    ];
    args.extend(inputs.iter().map(|p| p.to_str().unwrap()));
    let o = rd(&args);
    assert!(o.status.success(), "{}", text(&o));

    let lines = results(&out);
    let want_maps = &infer["add.anomaly_map"];
    let want_scores: Vec<f32> = infer["add.pred_score"].to_vec1().unwrap();
    for (b, line) in lines.iter().enumerate() {
        let score = line["score"].as_f64().unwrap() as f32;
        assert!(
            (score - want_scores[b]).abs() <= 1e-4,
            "score {score} vs {}",
            want_scores[b]
        );
        let ours = read_npy(Path::new(line["raw_map"].as_str().unwrap()));
        let want: Vec<f32> = want_maps
            .get(b)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let diff = ours
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff <= 1e-4, "image {b}: max|Δ| {diff}");
        // anomalib's weights carry no thresholds: a heatmap, but no mask or label
        assert!(Path::new(line["heatmap"].as_str().unwrap()).is_file());
        assert!(line["mask"].is_null() && line["label"].is_null(), "{line}");
    }
}

/// A PNG whose IHDR claims `w × h` pixels, with no image data after it.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    v.extend_from_slice(&13u32.to_be_bytes());
    v.extend_from_slice(&ihdr);
    v.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    v
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn bad_images_are_reported_per_line_and_good_ones_still_scored() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_model(d);
    let imgs = d.join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    // good images of every colour layout, at and off the model size
    image::GrayImage::from_fn(80, 50, |x, y| image::Luma([(x + y) as u8]))
        .save(imgs.join("gray.png"))
        .unwrap();
    image::RgbaImage::from_pixel(64, 64, image::Rgba([10, 200, 30, 128]))
        .save(imgs.join("rgba.png"))
        .unwrap();
    image::ImageBuffer::<image::Rgb<u16>, Vec<u16>>::from_pixel(
        70,
        90,
        image::Rgb([60000, 100, 3000]),
    )
    .save(imgs.join("deep16.png"))
    .unwrap();
    image::RgbImage::from_pixel(64, 64, image::Rgb([1, 2, 3]))
        .save(imgs.join("small.jpg"))
        .unwrap();
    // bad ones
    std::fs::write(imgs.join("notes.png"), "this is text, not a picture").unwrap();
    std::fs::write(imgs.join("empty.png"), b"").unwrap();
    let good_png = std::fs::read(imgs.join("rgba.png")).unwrap();
    std::fs::write(imgs.join("cut.png"), &good_png[..good_png.len() / 2]).unwrap();
    std::fs::write(imgs.join("huge.png"), png_header_only(100_000, 100_000)).unwrap();

    let out = d.join("out");
    let started = std::time::Instant::now();
    let o = rd(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        imgs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        started.elapsed().as_secs() < 60,
        "the huge header must be refused before allocating"
    );
    assert_eq!(o.status.code(), Some(1), "some images failed: {}", text(&o));
    assert!(!text(&o).contains("panicked"), "{}", text(&o));
    let lines = results(&out);
    assert_eq!(lines.len(), 8);
    let by_name = |name: &str| {
        lines
            .iter()
            .find(|l| l["path"].as_str().unwrap().ends_with(name))
            .unwrap_or_else(|| panic!("{name} missing"))
            .clone()
    };
    for good in ["gray.png", "rgba.png", "deep16.png", "small.jpg"] {
        let l = by_name(good);
        assert!(l["error"].is_null(), "{good}: {l}");
        assert!(l["score"].as_f64().unwrap().is_finite());
        assert!(l["label"].is_boolean());
        let heat = image::open(l["heatmap"].as_str().unwrap()).unwrap();
        let orig = image::open(imgs.join(good)).unwrap();
        assert_eq!(
            (heat.width(), heat.height()),
            (orig.width(), orig.height()),
            "{good} overlay at original size"
        );
        assert!(Path::new(l["mask"].as_str().unwrap()).is_file());
        assert!(Path::new(l["contour"].as_str().unwrap()).is_file());
    }
    for (bad, needle) in [
        ("notes.png", "notes.png"),
        ("empty.png", "empty"),
        ("cut.png", "cut.png"),
        ("huge.png", "100000"),
    ] {
        let l = by_name(bad);
        let err = l["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{bad} should fail: {l}"));
        assert!(err.contains(needle), "{bad}: {err}");
    }
}

#[test]
fn nothing_to_do_and_unusable_paths_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_model(d);
    let m = model.to_str().unwrap();
    let empty = d.join("empty_folder");
    std::fs::create_dir(&empty).unwrap();
    let out = d.join("out");
    let o = out.to_str().unwrap();

    let check = |args: &[&str], needle: &str| {
        let r = rd(args);
        let t = text(&r);
        assert!(!r.status.success(), "{args:?} should fail: {t}");
        assert!(!t.contains("panicked"), "{t}");
        assert!(t.contains(needle), "`{needle}` not in: {t}");
    };
    check(
        &["predict", "--model", m, empty.to_str().unwrap(), "--out", o],
        "no images",
    );
    check(
        &["predict", "--model", m, "no/such/dir/*.png", "--out", o],
        "matched no images",
    );
    let absent = d.join("absent.safetensors");
    check(
        &[
            "predict",
            "--model",
            absent.to_str().unwrap(),
            empty.to_str().unwrap(),
            "--out",
            o,
        ],
        "absent.safetensors",
    );
    let truncated = d.join("truncated.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    check(
        &[
            "predict",
            "--model",
            truncated.to_str().unwrap(),
            empty.to_str().unwrap(),
            "--out",
            o,
        ],
        "truncated.safetensors",
    );
    // an output folder under a file cannot be created
    let file = d.join("a_file");
    std::fs::write(&file, "x").unwrap();
    let img = d.join("one.png");
    image::RgbImage::new(64, 64).save(&img).unwrap();
    let bad_out = file.join("out");
    check(
        &[
            "predict",
            "--model",
            m,
            img.to_str().unwrap(),
            "--out",
            bad_out.to_str().unwrap(),
        ],
        "cannot create output folder",
    );
    check(
        &[
            "predict",
            "--model",
            m,
            img.to_str().unwrap(),
            "--out",
            o,
            "--device",
            "cuda:0",
        ],
        "without CUDA",
    );
}
