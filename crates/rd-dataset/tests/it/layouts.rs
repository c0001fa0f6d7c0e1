//! Dataset layouts: MVTec AD, VisA (raw and converted), folders; mask pairing errors.

use std::path::Path;

use rd_dataset::layout::{folder, mvtec, visa};
use rd_dataset::{DatasetError, Label, Preprocess, Sample};

use crate::common::*;

fn names(samples: &[Sample]) -> Vec<String> {
    samples
        .iter()
        .map(|s| {
            let p = &s.image;
            let parent = p.parent().unwrap().file_name().unwrap().to_string_lossy();
            format!("{parent}/{}", p.file_name().unwrap().to_string_lossy())
        })
        .collect()
}

#[test]
fn mvtec_layout_lists_and_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    mvtec_tree(root, "bottle");
    mvtec_tree(root, "carpet");
    std::fs::create_dir_all(root.join("not_a_category/stuff")).unwrap();
    std::fs::write(root.join("readme.txt"), "x").unwrap();

    assert_eq!(mvtec::categories(root).unwrap(), ["bottle", "carpet"]);
    let s = mvtec::load(root, "bottle").unwrap();
    assert_eq!(
        names(&s.train),
        ["good/000.png", "good/001.png", "good/002.png"]
    );
    assert_eq!(
        names(&s.test),
        [
            "crack/000.png",
            "crack/001.png",
            "good/000.png",
            "good/001.png"
        ]
    );
    assert!(s.validation.is_none());
    assert_eq!(s.validation_or_test().len(), 4);
    assert!(s
        .train
        .iter()
        .all(|x| x.label == Label::Normal && x.mask.is_none()));
    let crack = &s.test[1];
    assert_eq!(crack.label, Label::Anomalous);
    assert_eq!(crack.defect, "crack");
    assert_eq!(
        crack.mask.as_deref().unwrap(),
        root.join("bottle/ground_truth/crack/001_mask.png")
    );
    assert_eq!(s.test[2].defect, "good");
    assert!(s.test[2].mask.is_none());

    let err = mvtec::load(root, "cable").unwrap_err();
    match &err {
        DatasetError::CategoryNotFound { available, .. } => {
            assert_eq!(available, &["bottle", "carpet"])
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("bottle, carpet"));
}

#[test]
fn mvtec_missing_mask_names_image_and_expected_mask() {
    let dir = tempfile::tempdir().unwrap();
    let c = mvtec_tree(dir.path(), "bottle");
    std::fs::remove_file(c.join("ground_truth/crack/001_mask.png")).unwrap();
    let err = mvtec::load(dir.path(), "bottle").unwrap_err();
    let msg = err.to_string();
    match &err {
        DatasetError::MissingMask { image, expected } => {
            assert_eq!(image, &c.join("test/crack/001.png"));
            assert_eq!(expected, &c.join("ground_truth/crack/001_mask.png"));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        msg.contains("test/crack/001.png") && msg.contains("001_mask.png"),
        "{msg}"
    );

    // A ground_truth folder without the defect type's folder: still every image needs a mask.
    std::fs::remove_dir_all(c.join("ground_truth/crack")).unwrap();
    let err = mvtec::load(dir.path(), "bottle").unwrap_err();
    match &err {
        DatasetError::MissingMask { image, .. } => {
            assert_eq!(image, &c.join("test/crack/000.png"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn mvtec_without_ground_truth_is_classification_only() {
    let dir = tempfile::tempdir().unwrap();
    let c = mvtec_tree(dir.path(), "solar");
    std::fs::remove_dir_all(c.join("ground_truth")).unwrap();
    let s = mvtec::load(dir.path(), "solar").unwrap();
    assert_eq!(s.train.len(), 3);
    assert_eq!(
        names(&s.test),
        [
            "crack/000.png",
            "crack/001.png",
            "good/000.png",
            "good/001.png"
        ]
    );
    let labels: Vec<Label> = s.test.iter().map(|x| x.label).collect();
    assert_eq!(
        labels,
        [
            Label::Anomalous,
            Label::Anomalous,
            Label::Normal,
            Label::Normal
        ]
    );
    assert_eq!(s.test[0].defect, "crack");
    assert!(s.test.iter().all(|x| x.mask.is_none()), "{:?}", s.test);
    // A defect image without mask preprocesses to an all-zero mask when one is asked for.
    let p = Preprocess::new(4, 4).sample(&s.test[0], true).unwrap();
    assert_eq!(p.mask.unwrap().data, vec![0; 16]);
}

#[test]
fn mvtec_sorted_pairing_checks_stems() {
    let dir = tempfile::tempdir().unwrap();
    let mask_dir = dir.path().join("gt");
    // Every image stem appears in some mask stem, but sorted order pairs `2` with `1_mask`.
    write_mask_png(&mask_dir.join("12_mask.png"), 1, 1, &[255]);
    write_mask_png(&mask_dir.join("1_mask.png"), 1, 1, &[255]);
    let images = vec![dir.path().join("1.png"), dir.path().join("2.png")];
    let err = mvtec::pair_masks(&images, &mask_dir).unwrap_err();
    match &err {
        DatasetError::MaskPairing { image, mask } => {
            assert_eq!(image, &images[1]);
            assert_eq!(mask, &mask_dir.join("1_mask.png"));
        }
        other => panic!("{other:?}"),
    }

    // Extra masks with no image.
    let mask_dir = dir.path().join("gt2");
    for n in ["000_mask", "001_mask", "zzz_mask"] {
        write_mask_png(&mask_dir.join(format!("{n}.png")), 1, 1, &[255]);
    }
    let images = vec![dir.path().join("000.png"), dir.path().join("001.png")];
    let err = mvtec::pair_masks(&images, &mask_dir).unwrap_err();
    match &err {
        DatasetError::UnpairedMasks { count, first, .. } => {
            assert_eq!(*count, 1);
            assert_eq!(first, &mask_dir.join("zzz_mask.png"));
        }
        other => panic!("{other:?}"),
    }

    // Fewer masks than images although each stem matches one (`1` is inside `10_mask`).
    let mask_dir = dir.path().join("gt3");
    write_mask_png(&mask_dir.join("10_mask.png"), 1, 1, &[255]);
    let images = vec![dir.path().join("1.png"), dir.path().join("10.png")];
    let err = mvtec::pair_masks(&images, &mask_dir).unwrap_err();
    match &err {
        DatasetError::MissingMask { image, expected } => {
            assert_eq!(image, &images[0]);
            assert_eq!(expected, &mask_dir.join("1_mask.png"));
        }
        other => panic!("{other:?}"),
    }

    // One image, three masks.
    let one = mvtec::pair_masks(&[dir.path().join("000.png")], &dir.path().join("gt2"));
    assert!(matches!(
        one,
        Err(DatasetError::UnpairedMasks { count: 2, .. })
    ));
}

#[test]
fn mvtec_empty_or_missing_folders() {
    let dir = tempfile::tempdir().unwrap();
    let c = mvtec_tree(dir.path(), "bottle");
    for i in 0..3 {
        std::fs::remove_file(c.join(format!("train/good/{i:03}.png"))).unwrap();
    }
    std::fs::write(c.join("train/good/notes.txt"), "no images here").unwrap();
    let err = mvtec::load(dir.path(), "bottle").unwrap_err();
    match &err {
        DatasetError::EmptyFolder { path } => assert_eq!(path, &c.join("train/good")),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("train/good"));

    std::fs::remove_dir_all(c.join("test")).unwrap();
    write_solid_png(&c.join("train/good/000.png"), 2, 2, [0, 0, 0]);
    let err = mvtec::load(dir.path(), "bottle").unwrap_err();
    assert!(matches!(err, DatasetError::MissingFolder { .. }), "{err:?}");
    let err = mvtec::categories(&dir.path().join("nowhere")).unwrap_err();
    assert!(err.to_string().contains("nowhere"));
}

#[test]
fn mask_size_mismatch_names_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("img.png");
    let mask = dir.path().join("img_mask.png");
    write_solid_png(&image, 8, 6, [0, 0, 0]);
    write_mask_png(&mask, 6, 8, &[255; 48]);
    let sample = Sample {
        image: image.clone(),
        label: Label::Anomalous,
        mask: Some(mask.clone()),
        defect: "x".into(),
    };
    let err = Preprocess::new(4, 4).sample(&sample, true).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(
        err,
        DatasetError::MaskSizeMismatch {
            image_width: 8,
            image_height: 6,
            mask_width: 6,
            mask_height: 8,
            ..
        }
    ));
    assert!(
        msg.contains("img.png") && msg.contains("img_mask.png"),
        "{msg}"
    );
    // Without asking for masks the mask is not read.
    assert!(Preprocess::new(4, 4).sample(&sample, false).is_ok());
}

fn visa_raw_tree(root: &Path) {
    let o = root.join("candle/Data");
    for i in 0..3 {
        write_solid_png(
            &o.join(format!("Images/Normal/{i:04}.JPG")),
            8,
            8,
            [90, 90, 90],
        );
    }
    for i in 0..2 {
        write_solid_png(
            &o.join(format!("Images/Anomaly/{i:03}.JPG")),
            8,
            8,
            [9, 9, 9],
        );
        write_mask_png(&o.join(format!("Masks/Anomaly/{i:03}.png")), 8, 8, &[1; 64]);
    }
    write_solid_png(
        &root.join("pcb1/Data/Images/Normal/0000.JPG"),
        8,
        8,
        [1, 2, 3],
    );
    let csv = "\u{feff}object,split,label,image,mask\r\n\
        candle,train,normal,candle/Data/Images/Normal/0000.JPG,\r\n\
        candle,train,normal,candle/Data/Images/Normal/0001.JPG,\r\n\
        candle,test,normal,candle/Data/Images/Normal/0002.JPG,\r\n\
        candle,test,anomaly,candle/Data/Images/Anomaly/001.JPG,candle/Data/Masks/Anomaly/001.png\r\n\
        candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png\r\n\
        pcb1,train,normal,pcb1/Data/Images/Normal/0000.JPG,\r\n";
    write(&root.join("split_csv/1cls.csv"), csv.as_bytes());
}

#[test]
fn visa_raw_release_with_split_csv() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    visa_raw_tree(root);
    assert_eq!(visa::objects(root).unwrap(), ["candle", "pcb1"]);
    assert!(matches!(
        visa::detect(root).unwrap(),
        visa::VisaLayout::Raw(_)
    ));
    let s = visa::load(root, "candle").unwrap();
    assert_eq!(names(&s.train), ["Normal/0000.JPG", "Normal/0001.JPG"]);
    assert_eq!(
        names(&s.test),
        ["Anomaly/000.JPG", "Anomaly/001.JPG", "Normal/0002.JPG"]
    );
    assert_eq!(s.test[0].label, Label::Anomalous);
    assert_eq!(s.test[0].defect, "bad");
    assert_eq!(
        s.test[0].mask.as_deref().unwrap(),
        root.join("candle/Data/Masks/Anomaly/000.png")
    );
    assert_eq!(s.test[2].label, Label::Normal);
    assert!(s.test[2].mask.is_none());

    // Masks with value 1 (raw VisA) binarise to 1.
    let p = Preprocess::new(4, 4).sample(&s.test[0], true).unwrap();
    assert_eq!(p.mask.unwrap().data, vec![1; 16]);

    let err = visa::load(root, "fryum").unwrap_err();
    assert!(matches!(err, DatasetError::CategoryNotFound { .. }));

    // A row that names a missing image: the error gives the CSV line.
    std::fs::remove_file(root.join("candle/Data/Images/Normal/0001.JPG")).unwrap();
    let err = visa::load(root, "candle").unwrap_err();
    match &err {
        DatasetError::Csv { line, message, .. } => {
            assert_eq!(*line, 3);
            assert!(message.contains("0001.JPG"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // A missing mask file.
    write_solid_png(
        &root.join("candle/Data/Images/Normal/0001.JPG"),
        8,
        8,
        [90, 90, 90],
    );
    std::fs::remove_file(root.join("candle/Data/Masks/Anomaly/001.png")).unwrap();
    let err = visa::load(root, "candle").unwrap_err();
    assert!(matches!(err, DatasetError::MissingMask { .. }), "{err:?}");
}

#[test]
fn visa_bad_csv_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        &root.join("split_csv/1cls.csv"),
        b"object,split,image\ncandle,train,a.png\n",
    );
    let err = visa::load(root, "candle").unwrap_err();
    assert!(
        err.to_string().contains("missing column \"label\""),
        "{err}"
    );
    write(
        &root.join("split_csv/1cls.csv"),
        b"object,split,label,image,mask\ncandle,train,weird,a.png,\n",
    );
    write_solid_png(&root.join("a.png"), 2, 2, [0, 0, 0]);
    let err = visa::load(root, "candle").unwrap_err();
    assert!(matches!(err, DatasetError::Csv { line: 2, .. }), "{err:?}");
}

#[test]
fn visa_converted_layout() {
    let dir = tempfile::tempdir().unwrap();
    let conv = dir.path().join("visa_pytorch");
    let c = conv.join("candle");
    write_solid_png(&c.join("train/good/0000.png"), 4, 4, [1, 1, 1]);
    write_solid_png(&c.join("test/good/0001.png"), 4, 4, [1, 1, 1]);
    write_solid_png(&c.join("test/bad/000.JPG"), 4, 4, [1, 1, 1]);
    write_mask_png(&c.join("ground_truth/bad/000.png"), 4, 4, &[255; 16]);
    for root in [dir.path(), conv.as_path()] {
        assert!(matches!(
            visa::detect(root).unwrap(),
            visa::VisaLayout::Converted(_)
        ));
        assert_eq!(visa::objects(root).unwrap(), ["candle"]);
        let s = visa::load(root, "candle").unwrap();
        assert_eq!(s.train.len(), 1);
        assert_eq!(names(&s.test), ["bad/000.JPG", "good/0001.png"]);
        assert_eq!(s.test[0].defect, "bad");
        assert_eq!(
            s.test[0].mask.as_deref().unwrap(),
            c.join("ground_truth/bad/000.png")
        );
    }
}

#[test]
fn folder_dataset_with_held_out_normals_and_masks() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for i in 0..10 {
        write_solid_png(&root.join(format!("ok/{i:02}.png")), 4, 4, [5, 5, 5]);
    }
    write_solid_png(&root.join("scratch/a.png"), 4, 4, [0, 0, 0]);
    write_solid_png(&root.join("scratch/b.bmp"), 4, 4, [0, 0, 0]);
    write_mask_png(&root.join("masks/a.png"), 4, 4, &[255; 16]);
    write_mask_png(&root.join("masks/b_mask.png"), 4, 4, &[255; 16]);

    let mut cfg = folder::FolderConfig::new(root.join("ok"));
    let s = folder::load(&cfg).unwrap();
    assert_eq!(s.train.len(), 10);
    assert!(s.test.is_empty());

    cfg.abnormal_dirs = vec![root.join("scratch")];
    cfg.mask_dirs = vec![root.join("masks")];
    cfg.normal_test_share = 0.3;
    cfg.seed = 11;
    let a = folder::load(&cfg).unwrap();
    assert_eq!(a.train.len(), 7);
    assert_eq!(a.test.len(), 5);
    assert_eq!(a, folder::load(&cfg).unwrap(), "the split is deterministic");
    let abnormal: Vec<&Sample> = a.test.iter().filter(|s| s.label.is_anomalous()).collect();
    assert_eq!(abnormal.len(), 2);
    assert_eq!(abnormal[0].defect, "scratch");
    assert_eq!(
        abnormal[0].mask.as_deref().unwrap(),
        root.join("masks/a.png")
    );
    assert_eq!(
        abnormal[1].mask.as_deref().unwrap(),
        root.join("masks/b_mask.png")
    );
    // Train and held-out normals are disjoint and cover all normals.
    let mut all: Vec<_> = a.train.iter().map(|s| s.image.clone()).collect();
    all.extend(
        a.test
            .iter()
            .filter(|s| !s.label.is_anomalous())
            .map(|s| s.image.clone()),
    );
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 10);
    // Another seed draws other images (for these sizes the draws differ).
    cfg.seed = 12;
    let b = folder::load(&cfg).unwrap();
    assert_ne!(names(&a.train), names(&b.train));

    // A missing mask.
    std::fs::remove_file(root.join("masks/b_mask.png")).unwrap();
    let err = folder::load(&cfg).unwrap_err();
    match &err {
        DatasetError::MissingMask { image, .. } => assert_eq!(image, &root.join("scratch/b.bmp")),
        other => panic!("{other:?}"),
    }

    // Bad shares and empty folders.
    cfg.mask_dirs.clear();
    cfg.normal_test_share = 1.0;
    assert!(matches!(
        folder::load(&cfg),
        Err(DatasetError::InvalidConfig(_))
    ));
    cfg.normal_test_share = 0.99;
    assert!(matches!(
        folder::load(&cfg),
        Err(DatasetError::InvalidConfig(_))
    ));
    std::fs::create_dir(root.join("none")).unwrap();
    let err = folder::load(&folder::FolderConfig::new(root.join("none"))).unwrap_err();
    assert!(matches!(err, DatasetError::EmptyFolder { .. }));
    assert!(err.to_string().contains("none"));
}

#[test]
fn folder_dataset_with_good_test_folder_and_defect_types() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for i in 0..4 {
        write_solid_png(&root.join(format!("train/{i}.png")), 4, 4, [5, 5, 5]);
    }
    for i in 0..2 {
        write_solid_png(&root.join(format!("good_test/g{i}.png")), 4, 4, [5, 5, 5]);
    }
    write_solid_png(&root.join("scratch/s0.png"), 4, 4, [0, 0, 0]);
    write_solid_png(&root.join("dent/d0.png"), 4, 4, [0, 0, 0]);
    write_solid_png(&root.join("dent/d1.png"), 4, 4, [0, 0, 0]);
    write_mask_png(&root.join("scratch_masks/s0_mask.png"), 4, 4, &[255; 16]);
    write_mask_png(&root.join("dent_masks/d0.png"), 4, 4, &[255; 16]);
    write_mask_png(&root.join("dent_masks/d1.png"), 4, 4, &[255; 16]);

    // Good test images from their own folder: every training image stays for training.
    let mut cfg = folder::FolderConfig::new(root.join("train"));
    cfg.normal_test_dir = Some(root.join("good_test"));
    cfg.abnormal_dirs = vec![root.join("scratch"), root.join("dent")];
    let s = folder::load(&cfg).unwrap();
    assert_eq!(s.train.len(), 4);
    assert_eq!(
        names(&s.test),
        [
            "dent/d0.png",
            "dent/d1.png",
            "good_test/g0.png",
            "good_test/g1.png",
            "scratch/s0.png"
        ]
    );
    let defects: Vec<&str> = s.test.iter().map(|x| x.defect.as_str()).collect();
    assert_eq!(defects, ["dent", "dent", "good", "good", "scratch"]);
    assert!(s.test.iter().all(|x| x.mask.is_none()), "no masks given");

    // Masks in the same order as their abnormal folders.
    cfg.mask_dirs = vec![root.join("scratch_masks"), root.join("dent_masks")];
    let s = folder::load(&cfg).unwrap();
    let masks: Vec<Option<String>> = s
        .test
        .iter()
        .map(|x| {
            x.mask
                .as_ref()
                .map(|m| m.file_name().unwrap().to_string_lossy().into_owned())
        })
        .collect();
    let m = |n: &str| Some(n.to_string());
    assert_eq!(
        masks,
        [m("d0.png"), m("d1.png"), None, None, m("s0_mask.png")]
    );

    // Swapped mask folders: the first unpaired image is named.
    cfg.mask_dirs.reverse();
    let err = folder::load(&cfg).unwrap_err();
    match &err {
        DatasetError::MissingMask { image, .. } => assert_eq!(image, &root.join("scratch/s0.png")),
        other => panic!("{other:?}"),
    }

    // One mask folder for two abnormal folders.
    cfg.mask_dirs.truncate(1);
    let err = folder::load(&cfg).unwrap_err();
    assert!(
        matches!(&err, DatasetError::InvalidConfig(m) if m.contains("1 mask folder(s) for 2")),
        "{err}"
    );

    // A folder of good test images and a held-out share at once.
    cfg.mask_dirs.clear();
    cfg.normal_test_share = 0.25;
    let err = folder::load(&cfg).unwrap_err();
    assert!(
        matches!(&err, DatasetError::InvalidConfig(m) if m.contains("good_test")),
        "{err}"
    );
}
