//! The synthetic generator: layout, determinism, masks, reuse and interrupted runs.

use std::collections::BTreeMap;
use std::path::Path;

use rd_dataset::layout::mvtec;
use rd_dataset::synthetic::{generate, MANIFEST};
use rd_dataset::{load_mask, DefectKind, Label, LoadOptions, SyntheticCategory, SyntheticConfig};

fn small(seed: u64) -> SyntheticConfig {
    SyntheticConfig {
        seed,
        size: 48,
        train_good: 3,
        test_good: 2,
        test_defective: 5,
        ..SyntheticConfig::default()
    }
}

/// Every file under `root` (relative path -> bytes).
fn snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                let rel = p
                    .strip_prefix(base)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn default_config_is_cpu_demo_sized() {
    let c = SyntheticConfig::default();
    assert_eq!(
        (c.size, c.train_good, c.test_good, c.test_defective),
        (128, 60, 10, 15)
    );
    assert_eq!(
        c.categories,
        [SyntheticCategory::Fabric, SyntheticCategory::Puck]
    );
    assert_eq!(c.defects, DefectKind::ALL);
}

#[test]
fn writes_an_mvtec_layout_with_exact_masks() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("synth");
    let summary = generate(&root, &small(1)).unwrap();
    assert!(!summary.reused);
    assert_eq!(summary.categories, ["fabric", "puck"]);
    // Per category: 3 + 2 + 5 images and 5 masks.
    assert_eq!(summary.files_written, 2 * 15);
    assert_eq!(mvtec::categories(&root).unwrap(), ["fabric", "puck"]);
    for cat in ["fabric", "puck"] {
        let s = mvtec::load(&root, cat).unwrap();
        assert_eq!(s.train.len(), 3);
        assert_eq!(s.test.len(), 7);
        let defects: Vec<&str> = s.test.iter().map(|x| x.defect.as_str()).collect();
        // 5 defective images cycle through the 4 kinds: cut, good x2, hole, scratch x2, stain.
        assert_eq!(
            defects,
            ["cut", "good", "good", "hole", "scratch", "scratch", "stain"]
        );
        for sample in &s.test {
            let img = rd_dataset::load_rgb(&sample.image, &LoadOptions::default()).unwrap();
            assert_eq!((img.height, img.width), (48, 48));
            match sample.label {
                Label::Anomalous => {
                    let m =
                        load_mask(sample.mask.as_ref().unwrap(), &LoadOptions::default()).unwrap();
                    assert_eq!((m.height, m.width), (48, 48));
                    let n = m.count_anomalous();
                    assert!(n > 5 && n < 48 * 48 / 3, "{}: {n}", sample.image.display());
                }
                Label::Normal => assert!(sample.mask.is_none()),
            }
        }
        // Mask files are strictly 0/255.
        let raw = image::open(root.join(cat).join("ground_truth/hole/000_mask.png"))
            .unwrap()
            .to_luma8();
        assert!(raw.as_raw().iter().all(|&v| v == 0 || v == 255));
        assert!(raw.as_raw().contains(&255));
    }
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    generate(&a, &small(7)).unwrap();
    generate(&b, &small(7)).unwrap();
    generate(&c, &small(8)).unwrap();
    let (sa, sb, sc) = (snapshot(&a), snapshot(&b), snapshot(&c));
    assert_eq!(sa.len(), 31); // 30 PNGs and the manifest
    assert_eq!(sa, sb);
    let png_differs = sa
        .iter()
        .filter(|(k, _)| k.ends_with(".png"))
        .filter(|(k, v)| sc.get(*k) != Some(v))
        .count();
    assert!(png_differs >= 20, "only {png_differs} files differ");
    // Good images differ from each other too.
    assert_ne!(
        sa["fabric/train/good/000.png"],
        sa["fabric/train/good/001.png"]
    );
    assert_ne!(sa["puck/train/good/000.png"], sa["puck/test/good/000.png"]);
}

#[test]
fn rerun_reuses_and_interrupted_run_is_redone() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("synth");
    let cfg = small(3);
    generate(&root, &cfg).unwrap();
    let before = snapshot(&root);

    let again = generate(&root, &cfg).unwrap();
    assert!(again.reused);
    assert_eq!(again.files_written, 0);

    // Simulate an interrupted run: a file is missing and the manifest says incomplete.
    std::fs::remove_file(root.join("puck/test/hole/000.png")).unwrap();
    let manifest = std::fs::read_to_string(root.join(MANIFEST)).unwrap();
    std::fs::write(
        root.join(MANIFEST),
        manifest.replace("\"complete\": true", "\"complete\": false"),
    )
    .unwrap();
    let redo = generate(&root, &cfg).unwrap();
    assert!(!redo.reused);
    assert_eq!(snapshot(&root), before);

    // A missing file alone also triggers regeneration.
    std::fs::remove_file(root.join("fabric/ground_truth/cut/000_mask.png")).unwrap();
    assert!(!generate(&root, &cfg).unwrap().reused);
    assert_eq!(snapshot(&root), before);

    // A smaller configuration removes the files it no longer has.
    let mut fewer = cfg.clone();
    fewer.train_good = 1;
    fewer.categories = vec![SyntheticCategory::Puck];
    generate(&root, &fewer).unwrap();
    assert!(!root.join("puck/train/good/001.png").exists());
    assert!(!root.join("fabric/train/good/000.png").exists());
    assert_eq!(mvtec::categories(&root).unwrap(), ["puck"]);
    // No temporary files are left behind.
    assert!(snapshot(&root).keys().all(|k| !k.contains(".tmp")));
}

#[test]
fn invalid_config_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small(0);
    cfg.size = 8;
    assert!(generate(dir.path(), &cfg).is_err());
    let mut cfg = small(0);
    cfg.defects.clear();
    let err = generate(dir.path(), &cfg).unwrap_err();
    assert!(err.to_string().contains("defect"));
}
