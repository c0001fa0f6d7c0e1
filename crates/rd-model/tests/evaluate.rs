//! Predictions have the right shapes and scores; thresholds and metrics are rd-metrics' on the
//! collected arrays, the way anomalib feeds them.

mod common;

use common::{dataset, model, SIZE};
use rd_metrics::{auroc, f1_adaptive_threshold, f1_score, MinMax};
use rd_model::{
    compute_metrics, fit_post_processor, predict, Metrics, MetricsConfig, PredictConfig,
};

#[test]
fn predictions_thresholds_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let m = model();
    let p = predict(&m, &data.test, &PredictConfig::new(2)).unwrap();

    // Shapes and order.
    let n = data.test.len();
    assert_eq!(n, 5);
    assert_eq!((p.len(), p.height, p.width), (n, SIZE, SIZE));
    assert_eq!(p.maps.len(), n * SIZE * SIZE);
    let masks = p.masks.as_ref().expect("MVTec test images have masks");
    assert_eq!(masks.len(), n * SIZE * SIZE);
    let paths: Vec<_> = data.test.iter().map(|s| s.image.clone()).collect();
    assert_eq!(p.paths, paths);
    let labels: Vec<u8> = data.test.iter().map(|s| s.label.as_u8()).collect();
    assert_eq!(p.labels, labels);
    assert!(p.has_anomalies() && p.skipped.is_empty());
    // Good images have empty masks, defective ones not.
    for i in 0..n {
        let area: usize = masks[i * SIZE * SIZE..(i + 1) * SIZE * SIZE]
            .iter()
            .map(|&v| v as usize)
            .sum();
        assert_eq!(area > 0, labels[i] == 1, "image {i}");
    }

    // The score of each image is the maximum of its map.
    for i in 0..n {
        let max = p.map(i).unwrap().iter().copied().fold(f32::MIN, f32::max);
        assert_eq!(p.scores[i], max, "image {i}");
    }
    // The same images one at a time give the same outputs.
    let single = predict(&m, &data.test, &PredictConfig::new(1)).unwrap();
    for (a, b) in single.scores.iter().zip(&p.scores) {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
    }

    // Thresholds and statistics are rd-metrics' on the collected arrays.
    let post = fit_post_processor(&p).unwrap();
    assert_eq!(
        post.thresholds.image,
        f1_adaptive_threshold(&p.scores, &p.labels).unwrap()
    );
    assert_eq!(
        post.thresholds.pixel,
        f1_adaptive_threshold(&p.maps, masks).unwrap()
    );
    assert_eq!(post.image_stats, MinMax::of(&p.scores).unwrap());
    assert_eq!(post.pixel_stats, MinMax::of(&p.maps).unwrap());

    // Metrics: val = test, so the AUROC on normalised scores is the raw one; F1 is raw > t.
    let metrics = compute_metrics(&p, &post, &MetricsConfig::default()).unwrap();
    assert_eq!((metrics.images, metrics.anomalous_images), (5, 3));
    let raw = auroc(&p.scores, &p.labels).unwrap();
    assert!((metrics.image_auroc.unwrap() - raw).abs() < 1e-6);
    let predicted: Vec<bool> = p
        .scores
        .iter()
        .map(|&s| s > post.thresholds.image)
        .collect();
    assert_eq!(metrics.image_f1, f1_score(&predicted, &p.labels).unwrap());
    let pixel_raw = auroc(&p.maps, masks).unwrap();
    assert!((metrics.pixel_auroc.unwrap() - pixel_raw).abs() < 1e-6);
    let pro = metrics.pixel_aupro.unwrap();
    assert!((0.0..=1.0).contains(&pro));
    let predicted: Vec<bool> = p.maps.iter().map(|&v| v > post.thresholds.pixel).collect();
    assert_eq!(metrics.pixel_f1, Some(f1_score(&predicted, masks).unwrap()));
    let no_pro = compute_metrics(
        &p,
        &post,
        &MetricsConfig {
            aupro: false,
            ..MetricsConfig::default()
        },
    )
    .unwrap();
    assert_eq!(no_pro.pixel_aupro, None);

    // Serialisable for the CLI.
    let json = serde_json::to_string(&metrics).unwrap();
    let back: Metrics = serde_json::from_str(&json).unwrap();
    assert_eq!(back, metrics);
    assert_eq!(metrics.to_map().len(), 5);
}

#[test]
fn validation_on_good_images_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let m = model();
    // Held-out good images: no masks, no anomalies.
    let good = data.train[..3].to_vec();
    let p = predict(&m, &good, &PredictConfig::new(4)).unwrap();
    assert!(p.masks.is_none() && !p.has_anomalies());
    let post = fit_post_processor(&p).unwrap();
    // anomalib's rule: the highest score; the pixel threshold is not fitted and borrows it.
    let max = p.scores.iter().copied().fold(f32::MIN, f32::max);
    assert_eq!(post.thresholds.image, max);
    assert!(post.thresholds.pixel.is_nan());
    assert_eq!(post.pixel_normalizer().threshold, max);
    assert_eq!(post.pixel_stats, MinMax::of(&p.maps).unwrap());
    // Every validation image is then called good.
    let metrics = compute_metrics(&p, &post, &MetricsConfig::default()).unwrap();
    assert_eq!(metrics.image_auroc, None);
    assert_eq!(metrics.image_f1, 0.0);
    assert_eq!(
        (metrics.pixel_auroc, metrics.pixel_f1, metrics.pixel_aupro),
        (None, None, None)
    );

    // Errors, not panics, on empty input.
    assert!(predict(&m, &[], &PredictConfig::new(2)).is_err());
    assert!(predict(&m, &good, &PredictConfig::new(0)).is_err());
}
