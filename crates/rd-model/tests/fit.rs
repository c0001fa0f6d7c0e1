//! Training runs are reproducible, resumable to the bit, interruptible, and careful with files.

mod common;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::Device;
use common::{assert_same_student, dataset, meta, model};
use rd_dataset::Sample;
use rd_model::{
    checkpoint::PARTIAL_EPOCH_TENSOR, EpochRecord, Fit, FitOutcome, Interrupt, ModelError,
    ReverseDistillation, TrainConfig,
};

fn config(checkpoint: &Path, epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 2,
        checkpoint_every: 1,
        interrupt: Interrupt::Never,
        ..TrainConfig::new(checkpoint)
    }
}

fn train(train: &[Sample], config: TrainConfig) -> (Fit, rd_model::FitReport) {
    let m = model();
    let meta = meta(&m);
    let mut fit = Fit::new(m, meta, "synthetic/fabric", config).unwrap();
    let report = fit.run(train).unwrap();
    (fit, report)
}

#[test]
fn same_seed_same_weights_and_resume_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(&dir.path().join("data"));
    let log = dir.path().join("log.jsonl");

    // Two epochs straight, twice: identical.
    let straight = dir.path().join("straight.safetensors");
    let (a, report) = train(
        &data.train,
        TrainConfig {
            log: Some(log.clone()),
            ..config(&straight, 2)
        },
    );
    assert_eq!(report.outcome, FitOutcome::Completed);
    assert_eq!((report.epochs_done, report.partial_steps), (2, 0));
    // 5 images in batches of 2 at 32x32: 2 + 3 (the single last image folded in).
    assert_eq!(report.steps, 4);
    assert_eq!(report.history.len(), 2);
    assert!(report.history.iter().all(|r| r.images == 5 && r.complete));
    let straight_loss = report.final_loss;
    assert!(straight_loss.is_some());
    let (again, _) = train(
        &data.train,
        config(&dir.path().join("again.safetensors"), 2),
    );
    assert_same_student(a.model(), again.model());

    // One epoch, then resume for a second one from the file.
    let split = dir.path().join("split.safetensors");
    let (_, first) = train(&data.train, config(&split, 1));
    assert_eq!(first.checkpoint.as_deref(), Some(split.as_path()));
    let mut resumed = Fit::resume(&split, &Device::Cpu, config(&split, 2)).unwrap();
    assert_eq!(resumed.epochs_done(), 1);
    let report = resumed.run(&data.train).unwrap();
    assert_eq!((report.epochs_done, report.steps), (2, 4));
    assert_same_student(a.model(), resumed.model());
    assert_eq!(report.final_loss, straight_loss);

    // The checkpoint records the run.
    let loaded = ReverseDistillation::load(&straight, &Device::Cpu).unwrap();
    let t = loaded.meta.training.unwrap();
    assert_eq!((t.epochs, t.steps, t.batch_size, t.seed), (2, 4, 2, 42));
    assert_eq!(t.adam, [0.005, 0.5, 0.999, 1e-8, 0.0]);
    assert_eq!(t.data, "synthetic/fabric");
    assert!(t.final_loss.is_finite() && t.final_loss > 0.0);
    assert!(!loaded.optimizer_state.is_empty());
    assert!(!loaded.optimizer_state.contains_key(PARTIAL_EPOCH_TENSOR));
    assert_same_student(a.model(), &loaded.model);

    // One JSON line per epoch.
    let lines: Vec<EpochRecord> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!((lines[0].epoch, lines[0].step), (1, 2));
    assert_eq!((lines[1].epoch, lines[1].step), (2, 4));
    assert_eq!(lines[1].lr, 0.005);
    assert!(lines
        .iter()
        .all(|r| r.loss.is_finite() && r.loss_terms.iter().all(|t| t.is_finite())));
    // Only the checkpoints and the log are left: no temporary files.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "again.safetensors",
            "data",
            "log.jsonl",
            "split.safetensors",
            "straight.safetensors"
        ]
    );
}

/// Keeping the teacher's features from the first epoch changes nothing: the same weights bit
/// for bit with no cache, a cache of everything (the default) and one that holds only some of
/// the images (batches then mix kept and fresh features), over epochs whose shuffles put the
/// images in different batches.
#[test]
fn the_teacher_cache_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(&dir.path().join("data"));
    let run = |name: &str, teacher_cache: usize| {
        let config = TrainConfig {
            teacher_cache,
            ..config(&dir.path().join(name), 3)
        };
        train(&data.train, config).0
    };
    let none = run("none.safetensors", 0);
    let all = run("all.safetensors", TrainConfig::DEFAULT_TEACHER_CACHE);
    // resnet18 at 32²: 7 168 floats (28 KiB) per image, so two of the five images fit.
    let some = run("some.safetensors", 60_000);
    assert_same_student(none.model(), all.model());
    assert_same_student(none.model(), some.model());
}

#[test]
fn a_run_stopped_mid_epoch_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(&dir.path().join("data"));
    let straight = dir.path().join("straight.safetensors");
    let (a, straight_report) = train(&data.train, config(&straight, 2));

    // Stop after 3 steps (mid second epoch): a partial checkpoint.
    let part = dir.path().join("part.safetensors");
    let (_, report) = train(
        &data.train,
        TrainConfig {
            max_steps: Some(3),
            ..config(&part, 2)
        },
    );
    assert_eq!(report.outcome, FitOutcome::StepLimit);
    assert_eq!(
        (report.epochs_done, report.partial_steps, report.steps),
        (1, 1, 3)
    );
    assert_eq!(report.history.last().map(|r| r.complete), Some(false));
    let loaded = ReverseDistillation::load(&part, &Device::Cpu).unwrap();
    assert!(loaded.optimizer_state.contains_key(PARTIAL_EPOCH_TENSOR));

    let mut resumed = Fit::resume(&part, &Device::Cpu, config(&part, 2)).unwrap();
    let mut reports = Vec::new();
    let report = resumed
        .run_with(&data.train, &mut |p| reports.push(*p))
        .unwrap();
    assert_eq!(
        (report.epochs_done, report.partial_steps, report.steps),
        (2, 0, 4)
    );
    // One report per step run by this call, counted against the steps left.
    let seen: Vec<_> = reports.iter().map(|p| (p.done, p.total, p.epoch)).collect();
    assert_eq!(seen, [(1, 1, Some((2, 2)))]);
    assert!(reports[0].loss.is_some_and(f64::is_finite) && reports[0].images_per_sec > 0.0);
    assert_same_student(a.model(), resumed.model());
    // The epoch mean covers the steps before the stop too.
    assert_eq!(report.final_loss, straight_report.final_loss);
}

#[test]
fn interrupt_saves_a_checkpoint_that_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(&dir.path().join("data"));

    // Raised before the run: nothing is done and nothing written.
    let raised = Arc::new(AtomicBool::new(true));
    let early = dir.path().join("early.safetensors");
    let (_, report) = train(
        &data.train,
        TrainConfig {
            interrupt: Interrupt::Flag(raised),
            ..config(&early, 3)
        },
    );
    assert_eq!(report.outcome, FitOutcome::Interrupted);
    assert_eq!((report.steps, report.checkpoint), (0, None));
    assert!(!early.exists());

    // Raised from another thread at some moment during training.
    let flag = Arc::new(AtomicBool::new(false));
    let part = dir.path().join("part.safetensors");
    let m = model();
    let meta = meta(&m);
    let config_part = TrainConfig {
        interrupt: Interrupt::Flag(Arc::clone(&flag)),
        checkpoint_every: 0,
        ..config(&part, 1000)
    };
    let mut fit = Fit::new(m, meta, "synthetic/fabric", config_part).unwrap();
    let raiser = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let report = fit.run(&data.train).unwrap();
    raiser.join().unwrap();
    assert_eq!(report.outcome, FitOutcome::Interrupted);
    assert!(report.steps >= 1);
    assert_eq!(report.checkpoint.as_deref(), Some(part.as_path()));

    // Finish the epoch it was in (or the next one) and compare with a straight run.
    let target = report.epochs_done + 1;
    let mut resumed = Fit::resume(&part, &Device::Cpu, config(&part, target)).unwrap();
    resumed.run(&data.train).unwrap();
    let (straight, _) = train(
        &data.train,
        config(&dir.path().join("straight.safetensors"), target),
    );
    assert_same_student(straight.model(), resumed.model());
}

#[test]
fn bad_settings_and_files_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(&dir.path().join("data"));
    let path = dir.path().join("m.safetensors");
    let m = model();
    let new = |c: TrainConfig| Fit::new(model(), meta(&m), "d", c);

    // One image per step at 32x32 would give BatchNorm a single value per channel.
    let mut fit = new(TrainConfig {
        batch_size: 1,
        ..config(&path, 1)
    })
    .unwrap();
    let err = fit.run(&data.train).unwrap_err().to_string();
    assert!(err.contains("batch size"), "{err}");
    assert!(!path.exists());

    for c in [
        TrainConfig {
            epochs: 0,
            ..config(&path, 1)
        },
        TrainConfig {
            batch_size: 0,
            ..config(&path, 1)
        },
        TrainConfig {
            adam: rd_model::AdamConfig {
                lr: f64::NAN,
                ..rd_model::AdamConfig::paper()
            },
            ..config(&path, 1)
        },
        config(&dir.path().join("missing/m.safetensors"), 1),
    ] {
        assert!(new(c).is_err());
    }

    // An existing file is not overwritten by a new run unless allowed, but can be resumed.
    train(&data.train, config(&path, 1));
    let err = new(config(&path, 2)).unwrap_err().to_string();
    assert!(err.contains("already exists"), "{err}");
    assert!(new(TrainConfig {
        overwrite: true,
        ..config(&path, 2)
    })
    .is_ok());
    let err = Fit::resume(
        &path,
        &Device::Cpu,
        TrainConfig {
            seed: 1,
            ..config(&path, 2)
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("seed"), "{err}");
}

#[test]
fn unreadable_images_are_skipped_or_stop_the_run_with_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(&dir.path().join("data"));
    let bad = dir.path().join("broken.png");
    std::fs::write(&bad, b"not a png").unwrap();
    let mut samples = data.train.clone();
    samples.push(Sample::normal(&bad));

    let (_, report) = train(
        &samples,
        TrainConfig {
            skip_bad: true,
            ..config(&dir.path().join("skip.safetensors"), 2)
        },
    );
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].path, bad);
    assert!(report.history.iter().all(|r| r.images == 5));

    let m = model();
    let mut fit = Fit::new(
        model(),
        meta(&m),
        "d",
        config(&dir.path().join("stop.safetensors"), 2),
    )
    .unwrap();
    let err = fit.run(&samples).unwrap_err();
    assert!(err.to_string().contains("broken.png"), "{err}");
    if let ModelError::Stopped { checkpoint, .. } = &err {
        assert!(checkpoint.exists());
    }
}
