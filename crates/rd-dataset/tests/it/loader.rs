//! The background loader: shapes, order, shuffling, masks, bad files.

use std::path::{Path, PathBuf};

use rd_dataset::rng::shuffled_indices;
use rd_dataset::{DatasetError, Label, Loader, LoaderConfig, Normalization, Sample};

use crate::common::*;

/// `n` solid 6x4 images whose red channel encodes the index: red = 10 * i.
fn numbered(dir: &Path, n: usize) -> Vec<Sample> {
    (0..n)
        .map(|i| {
            let p = dir.join(format!("{i:02}.png"));
            write_solid_png(&p, 6, 4, [(10 * i) as u8, 0, 255]);
            Sample::normal(p)
        })
        .collect()
}

/// Recovers the index from a normalised batch image.
fn index_of(batch: &rd_dataset::Batch, k: usize) -> usize {
    let plane = batch.height * batch.width;
    let v = batch.images[k * 3 * plane];
    let n = Normalization::IMAGENET;
    let raw = v * n.std[0] + n.mean[0];
    (raw * 255.0 / 10.0).round() as usize
}

fn collect(loader: Loader) -> Vec<rd_dataset::Batch> {
    loader.map(|b| b.unwrap()).collect()
}

#[test]
fn batch_shapes_values_and_order() {
    let dir = tempfile::tempdir().unwrap();
    let samples = numbered(dir.path(), 5);
    let loader = Loader::new(samples.clone(), LoaderConfig::new(3, 2, 2)).unwrap();
    assert_eq!(loader.num_batches(), 3);
    assert_eq!(loader.num_samples(), 5);
    let batches = collect(loader);
    assert_eq!(
        batches.iter().map(|b| b.len()).collect::<Vec<_>>(),
        [2, 2, 1]
    );
    let b = &batches[0];
    assert_eq!(b.image_shape(), [2, 3, 3, 2]);
    assert_eq!(b.images.len(), 2 * 3 * 3 * 2);
    assert!(b.masks.is_none(), "normal-only samples have no masks");
    assert_eq!(b.labels, [Label::Normal, Label::Normal]);
    assert_eq!(b.labels_u8(), [0, 0]);
    assert_eq!(b.defects, ["good", "good"]);
    assert_eq!(
        b.paths,
        [samples[0].image.clone(), samples[1].image.clone()]
    );
    // Solid colours survive the resize; values are ImageNet-normalised.
    let plane = 6;
    let n = Normalization::IMAGENET;
    let red1 = (10.0f32 / 255.0 - n.mean[0]) / n.std[0];
    let blue = (1.0f32 - n.mean[2]) / n.std[2];
    let green = (0.0f32 - n.mean[1]) / n.std[1];
    for k in 0..plane {
        assert!((b.images[3 * plane + k] - red1).abs() < 1e-5);
        assert!((b.images[3 * plane + plane + k] - green).abs() < 1e-5);
        assert!((b.images[3 * plane + 2 * plane + k] - blue).abs() < 1e-5);
    }
    let order: Vec<usize> = batches
        .iter()
        .flat_map(|b| (0..b.len()).map(move |k| index_of(b, k)))
        .collect();
    assert_eq!(order, [0, 1, 2, 3, 4]);
}

#[test]
fn seeded_shuffle_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let samples = numbered(dir.path(), 9);
    let run = |seed: u64| -> Vec<PathBuf> {
        let mut cfg = LoaderConfig::new(2, 2, 4);
        cfg.shuffle_seed = Some(seed);
        collect(Loader::new(samples.clone(), cfg).unwrap())
            .into_iter()
            .flat_map(|b| b.paths)
            .collect()
    };
    let a = run(3);
    assert_eq!(a, run(3));
    assert_ne!(a, run(4));
    let expect: Vec<PathBuf> = shuffled_indices(9, 3)
        .into_iter()
        .map(|i| samples[i].image.clone())
        .collect();
    assert_eq!(a, expect);
}

#[test]
fn masks_come_with_test_samples() {
    let dir = tempfile::tempdir().unwrap();
    let c = mvtec_tree(dir.path(), "bottle");
    let splits = rd_dataset::layout::mvtec::load(dir.path(), "bottle").unwrap();
    let mut cfg = LoaderConfig::new(6, 8, 4);
    cfg.preprocess.normalization = None;
    let batches = collect(Loader::new(splits.test, cfg).unwrap());
    assert_eq!(batches.len(), 1);
    let b = &batches[0];
    let masks = b.masks.as_ref().unwrap();
    assert_eq!(masks.len(), 4 * 6 * 8);
    // crack/000: pixel (0,0) set; crack/001: pixel (0,1) set; good images: empty.
    assert_eq!(b.labels_u8(), [1, 1, 0, 0]);
    assert_eq!(masks[0], 1);
    assert_eq!(masks[..48].iter().map(|&v| v as usize).sum::<usize>(), 1);
    assert_eq!(masks[48 + 1], 1);
    assert_eq!(masks[48..96].iter().map(|&v| v as usize).sum::<usize>(), 1);
    assert!(masks[96..].iter().all(|&v| v == 0));
    // Without normalisation values stay in [0, 1]: the crack images are 10/255.
    assert!((b.images[0] - 10.0 / 255.0).abs() < 1e-6);
    assert_eq!(b.paths[0], c.join("test/crack/000.png"));
}

#[test]
fn skip_bad_records_and_refills_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut samples = numbered(dir.path(), 5);
    let empty = dir.path().join("empty.png");
    write(&empty, b"");
    let text = dir.path().join("text.png");
    write(&text, b"hello");
    samples.insert(1, Sample::normal(&empty));
    samples.insert(4, Sample::normal(&text));

    let mut cfg = LoaderConfig::new(2, 2, 2);
    cfg.skip_bad = true;
    let mut loader = Loader::new(samples.clone(), cfg).unwrap();
    let batches: Vec<_> = loader.by_ref().map(|b| b.unwrap()).collect();
    assert_eq!(
        batches.iter().map(|b| b.len()).collect::<Vec<_>>(),
        [2, 2, 1]
    );
    let order: Vec<usize> = batches
        .iter()
        .flat_map(|b| (0..b.len()).map(move |k| index_of(b, k)))
        .collect();
    assert_eq!(order, [0, 1, 2, 3, 4]);
    let skipped = loader.skipped();
    assert_eq!(skipped.len(), 2);
    assert_eq!(skipped[0].path, empty);
    assert!(
        skipped[0].reason.contains("0 bytes"),
        "{}",
        skipped[0].reason
    );
    assert_eq!(skipped[1].path, text);
    assert!(skipped[1].reason.contains("text.png"));
}

#[test]
fn without_skip_bad_the_first_bad_file_ends_iteration() {
    let dir = tempfile::tempdir().unwrap();
    let mut samples = numbered(dir.path(), 6);
    let bad = dir.path().join("bad.png");
    let good = png_bytes(8, 8, image::ExtendedColorType::Rgb8, &[7; 192]);
    write(&bad, &good[..good.len() - 20]);
    let bad2 = dir.path().join("bad2.png");
    write(&bad2, b"");
    samples.insert(3, Sample::normal(&bad));
    samples.insert(4, Sample::normal(&bad2));
    let mut loader = Loader::new(samples, LoaderConfig::new(2, 2, 2)).unwrap();
    let first = loader.next().unwrap().unwrap();
    assert_eq!(first.len(), 2);
    let err = loader.next().unwrap().unwrap_err();
    assert!(err.to_string().contains("bad.png"), "{err}");
    assert_eq!(err.path(), Some(bad.as_path()));
    assert!(loader.next().is_none());
    assert!(loader.skipped().is_empty());
}

#[test]
fn drop_last_and_early_drop() {
    let dir = tempfile::tempdir().unwrap();
    let samples = numbered(dir.path(), 7);
    let mut cfg = LoaderConfig::new(2, 2, 3);
    cfg.drop_last = true;
    cfg.num_threads = Some(2);
    let loader = Loader::new(samples.clone(), cfg).unwrap();
    assert_eq!(loader.num_batches(), 2);
    assert_eq!(collect(loader).len(), 2);

    // Taking one batch and dropping the loader must not hang.
    let mut cfg = LoaderConfig::new(2, 2, 1);
    cfg.prefetch = 0;
    let mut loader = Loader::new(samples, cfg).unwrap();
    assert!(loader.next().unwrap().is_ok());
    drop(loader);
}

#[test]
fn invalid_configurations_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let samples = numbered(dir.path(), 2);
    let err = Loader::new(samples.clone(), LoaderConfig::new(2, 2, 0)).unwrap_err();
    assert!(matches!(err, DatasetError::InvalidConfig(_)));
    let err = Loader::new(samples, LoaderConfig::new(0, 2, 1)).unwrap_err();
    assert!(err.to_string().contains("0x2"));
    let err = Loader::new(Vec::new(), LoaderConfig::new(2, 2, 1)).unwrap_err();
    assert!(err.to_string().contains("no samples"));
}
