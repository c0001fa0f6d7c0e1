//! `rd import` and `rd inspect`, run as a user would run them.

mod common;

use common::rd;

use std::path::Path;
use std::process::Output;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// One line, starting `error:`, and a failure exit code.
fn assert_clean_failure(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, got success: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(
        err.starts_with("error: ") && err.trim_end().lines().count() == 1,
        "{err}"
    );
    assert!(err.contains(needle), "`{needle}` not in: {err}");
}

#[test]
fn imports_anomalib_weights_and_inspects_them() {
    let Some(cases) = rd_tests::fixture_cases("parity") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for case in cases {
        let out = dir.path().join("imported.safetensors");
        let meta = common::import_parity_case(&case, &out);
        let backbone = meta["config"]["backbone"].as_str().unwrap();
        let o = rd(&["inspect", out.to_str().unwrap(), "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let counts = &meta["param_counts"];
        assert_eq!(report["parameters"]["teacher"], counts["encoder"]["params"]);
        assert_eq!(
            report["parameters"]["bottleneck"],
            counts["bottleneck"]["params"]
        );
        assert_eq!(report["parameters"]["decoder"], counts["decoder"]["params"]);
        assert_eq!(report["meta"]["backbone"], backbone);
        assert_eq!(report["meta"]["map_mode"], "add");
    }
}

#[test]
fn bad_imports_fail_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = d.join("notes.ckpt");
    std::fs::write(&text, "not a checkpoint").unwrap();
    let out = d.join("m.safetensors");
    let out = out.to_str().unwrap();
    let run = |weights: &Path, extra: &[&str]| {
        let mut args = vec![
            "import",
            "--from",
            "anomalib",
            "--weights",
            weights.to_str().unwrap(),
        ];
        args.extend_from_slice(&["--backbone", "resnet18", "-o", out]);
        args.extend_from_slice(extra);
        rd(&args)
    };
    assert_clean_failure(
        &run(&d.join("absent.ckpt"), &["--image-size", "64"]),
        "absent.ckpt",
    );
    assert_clean_failure(&run(&text, &["--image-size", "64"]), "notes.ckpt");
    assert_clean_failure(&run(&text, &["--image-size", "100"]), "multiples of 32");
    assert!(
        !Path::new(out).exists(),
        "no output file is left after a failure"
    );
}

#[test]
fn inspect_refuses_what_is_not_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("empty.safetensors"), b"").unwrap();
    std::fs::write(
        d.join("text.safetensors"),
        b"hello, this is text and not weights",
    )
    .unwrap();
    for (name, needle) in [
        ("missing.safetensors", "missing.safetensors"),
        ("empty.safetensors", "empty.safetensors"),
        ("text.safetensors", "text.safetensors"),
    ] {
        let p = d.join(name);
        assert_clean_failure(&rd(&["inspect", p.to_str().unwrap()]), needle);
    }
}

#[test]
fn help_teaches_with_examples() {
    let o = rd(&["--help"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("Examples:") && text.contains("rd import"),
        "{text}"
    );
    let o = rd(&["import", "--help"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("--teacher"));
}
