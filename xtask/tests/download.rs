//! `cargo xtask download` against a local HTTP server on 127.0.0.1 (no external network).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{dead_port, sample_tar, sample_tar_xz, sha256_hex, ServerConfig, TestServer};
use xtask::download::{
    ensure_dataset, fetch::part_path, DatasetJob, DownloadSpec, FetchOptions, Outcome, MARKER_FILE,
};

const XZ_NAME: &str = "sample.tar.xz";

fn job(dir: &Path, url: String, sha256: String, file_name: &str) -> DatasetJob {
    DatasetJob {
        spec: DownloadSpec {
            url,
            sha256,
            file_name: file_name.to_string(),
        },
        dir: dir.to_path_buf(),
        archive: dir.join(file_name),
        category: None,
        remove_archive: false,
        fetch: FetchOptions {
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(5),
            max_attempts: 3,
            progress: false,
        },
        licence: None,
    }
}

fn assert_full_tree(dir: &Path) {
    assert_eq!(
        std::fs::read(dir.join("license.txt")).unwrap(),
        b"CC BY-NC-SA 4.0\n"
    );
    assert!(dir.join("bottle/train/good/000.png").is_file());
    assert!(dir
        .join("bottle/ground_truth/broken_large/000_mask.png")
        .is_file());
    assert_eq!(
        std::fs::read(dir.join("cable/test/good/000.png")).unwrap(),
        b"cable"
    );
    assert!(!dir.join(".xtask-extract.partial").exists());
}

#[test]
fn downloads_verifies_extracts_and_then_does_nothing() {
    let archive = sample_tar_xz();
    let server = TestServer::start(ServerConfig::new(archive.clone()));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mvtec");
    let job = job(&dir, server.url(XZ_NAME), sha256_hex(&archive), XZ_NAME);

    let out = ensure_dataset(&job).unwrap();
    assert_eq!(out, Outcome::Extracted { downloaded: true });
    assert_full_tree(&dir);
    assert_eq!(std::fs::read(dir.join(XZ_NAME)).unwrap(), archive);
    assert!(!part_path(&dir.join(XZ_NAME)).exists());
    assert!(dir.join(MARKER_FILE).is_file());
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].request_line.starts_with("GET /sample.tar.xz "));
    assert_eq!(seen[0].range, None);

    // Second run: the marker says done; no request, nothing touched.
    std::fs::remove_file(dir.join("cable/test/good/000.png")).unwrap();
    assert_eq!(ensure_dataset(&job).unwrap(), Outcome::AlreadyPresent);
    assert_eq!(server.seen().len(), 1);
    assert!(!dir.join("cable/test/good/000.png").exists());
}

#[test]
fn resumes_a_half_written_part_file_with_a_range_request() {
    let archive = sample_tar_xz();
    let half = archive.len() / 2;
    let server = TestServer::start(ServerConfig::new(archive.clone()));
    let tmp = tempfile::tempdir().unwrap();
    let job = job(
        tmp.path(),
        server.url(XZ_NAME),
        sha256_hex(&archive),
        XZ_NAME,
    );
    std::fs::write(part_path(&job.archive), &archive[..half]).unwrap();

    assert_eq!(
        ensure_dataset(&job).unwrap(),
        Outcome::Extracted { downloaded: true }
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].range.as_deref(),
        Some(format!("bytes={half}-").as_str())
    );
    assert_eq!(std::fs::read(&job.archive).unwrap(), archive);
    assert_full_tree(tmp.path());
}

#[test]
fn restarts_cleanly_when_the_server_ignores_range() {
    let archive = sample_tar_xz();
    let half = archive.len() / 2;
    let server = TestServer::start(ServerConfig {
        honor_range: false,
        ..ServerConfig::new(archive.clone())
    });
    let tmp = tempfile::tempdir().unwrap();
    let job = job(
        tmp.path(),
        server.url(XZ_NAME),
        sha256_hex(&archive),
        XZ_NAME,
    );
    // A `.part` whose bytes would be wrong if the 200 body were appended to them.
    std::fs::write(part_path(&job.archive), vec![0xAA; half]).unwrap();

    ensure_dataset(&job).unwrap();
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].range.is_some());
    assert_eq!(std::fs::read(&job.archive).unwrap(), archive);
    assert_full_tree(tmp.path());
}

#[test]
fn a_connection_that_breaks_off_is_resumed_in_the_same_run() {
    let archive = sample_tar_xz();
    let cut = archive.len() / 3;
    let server = TestServer::start(ServerConfig {
        cut_first_after: Some(cut),
        ..ServerConfig::new(archive.clone())
    });
    let tmp = tempfile::tempdir().unwrap();
    let job = job(
        tmp.path(),
        server.url(XZ_NAME),
        sha256_hex(&archive),
        XZ_NAME,
    );

    ensure_dataset(&job).unwrap();
    let seen = server.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].range, None);
    assert_eq!(
        seen[1].range.as_deref(),
        Some(format!("bytes={cut}-").as_str())
    );
    assert_full_tree(tmp.path());
}

#[test]
fn a_part_file_that_is_already_complete_is_verified_not_refetched() {
    let archive = sample_tar_xz();
    let server = TestServer::start(ServerConfig::new(archive.clone()));
    let tmp = tempfile::tempdir().unwrap();
    let job = job(
        tmp.path(),
        server.url(XZ_NAME),
        sha256_hex(&archive),
        XZ_NAME,
    );
    std::fs::write(part_path(&job.archive), &archive).unwrap();

    ensure_dataset(&job).unwrap();
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].range.as_deref(),
        Some(format!("bytes={}-", archive.len()).as_str())
    );
    assert_full_tree(tmp.path());
}

#[test]
fn a_wrong_sha256_is_an_error_and_nothing_is_extracted() {
    let archive = sample_tar_xz();
    let server = TestServer::start(ServerConfig::new(archive.clone()));
    let tmp = tempfile::tempdir().unwrap();
    let job = job(tmp.path(), server.url(XZ_NAME), "0".repeat(64), XZ_NAME);

    let err = format!("{:#}", ensure_dataset(&job).unwrap_err());
    assert!(err.contains("SHA-256"), "{err}");
    assert!(err.contains(&sha256_hex(&archive)), "{err}");
    assert!(err.contains(&"0".repeat(64)), "{err}");
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

#[test]
fn an_unreachable_server_gives_the_offline_message() {
    let tmp = tempfile::tempdir().unwrap();
    let port = dead_port();
    let url = format!("http://127.0.0.1:{port}/{XZ_NAME}");
    let sha = "ab".repeat(32);
    let job = job(tmp.path(), url.clone(), sha.clone(), XZ_NAME);

    let err = format!("{:#}", ensure_dataset(&job).unwrap_err());
    assert!(err.contains("cannot reach 127.0.0.1"), "{err}");
    assert!(err.contains("offline"), "{err}");
    assert!(err.contains(&url), "{err}");
    assert!(err.contains(&job.archive.display().to_string()), "{err}");
    assert!(err.contains(&sha), "{err}");
    assert!(!tmp.path().join(MARKER_FILE).exists());
}

#[test]
fn a_side_loaded_archive_is_used_without_network() {
    let archive = sample_tar_xz();
    let server = TestServer::start(ServerConfig::new(archive.clone()));
    let tmp = tempfile::tempdir().unwrap();
    let job = job(
        tmp.path(),
        server.url(XZ_NAME),
        sha256_hex(&archive),
        XZ_NAME,
    );
    std::fs::write(&job.archive, &archive).unwrap();

    assert_eq!(
        ensure_dataset(&job).unwrap(),
        Outcome::Extracted { downloaded: false }
    );
    assert!(server.seen().is_empty());
    assert_full_tree(tmp.path());
}

#[test]
fn a_side_loaded_archive_with_a_wrong_hash_is_refused_and_kept() {
    let archive = sample_tar_xz();
    let server = TestServer::start(ServerConfig::new(archive.clone()));
    let tmp = tempfile::tempdir().unwrap();
    let job = job(
        tmp.path(),
        server.url(XZ_NAME),
        sha256_hex(&archive),
        XZ_NAME,
    );
    std::fs::write(&job.archive, b"not the archive").unwrap();

    let err = format!("{:#}", ensure_dataset(&job).unwrap_err());
    assert!(err.contains("delete it"), "{err}");
    assert!(server.seen().is_empty());
    assert!(job.archive.is_file());
    assert!(!tmp.path().join("bottle").exists());
}

#[test]
fn one_category_at_a_time_then_the_rest_from_the_kept_archive() {
    let archive = sample_tar_xz();
    let server = TestServer::start(ServerConfig::new(archive.clone()));
    let tmp = tempfile::tempdir().unwrap();
    let mut job = job(
        tmp.path(),
        server.url(XZ_NAME),
        sha256_hex(&archive),
        XZ_NAME,
    );
    job.category = Some("bottle".into());

    ensure_dataset(&job).unwrap();
    assert!(tmp.path().join("bottle/train/good/000.png").is_file());
    assert!(tmp.path().join("license.txt").is_file());
    assert!(!tmp.path().join("cable").exists());
    assert_eq!(ensure_dataset(&job).unwrap(), Outcome::AlreadyPresent);

    job.category = Some("cable".into());
    assert_eq!(
        ensure_dataset(&job).unwrap(),
        Outcome::Extracted { downloaded: false }
    );
    assert_full_tree(tmp.path());
    assert_eq!(server.seen().len(), 1);

    job.category = Some("zipper".into());
    let err = format!("{:#}", ensure_dataset(&job).unwrap_err());
    assert!(err.contains("no folder \"zipper\""), "{err}");
    assert!(err.contains("bottle, cable"), "{err}");

    // A full extraction after per-category ones: recorded as complete.
    job.category = None;
    ensure_dataset(&job).unwrap();
    job.category = Some("zipper".into());
    assert_eq!(ensure_dataset(&job).unwrap(), Outcome::AlreadyPresent);
}

#[test]
fn a_plain_tar_is_extracted_and_the_archive_can_be_removed() {
    let archive = sample_tar();
    let server = TestServer::start(ServerConfig::new(archive.clone()));
    let tmp = tempfile::tempdir().unwrap();
    let mut job = job(
        tmp.path(),
        server.url("visa.tar"),
        sha256_hex(&archive),
        "visa.tar",
    );
    job.remove_archive = true;

    ensure_dataset(&job).unwrap();
    assert_full_tree(tmp.path());
    assert!(!job.archive.exists());
    assert_eq!(ensure_dataset(&job).unwrap(), Outcome::AlreadyPresent);
}

// ---- the binary -------------------------------------------------------------------------------

fn xtask() -> Command {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
}

#[test]
fn every_download_subcommand_has_help_with_an_example() {
    for sub in ["mvtec", "visa", "weights"] {
        let out = xtask().args(["download", sub, "--help"]).output().unwrap();
        assert!(out.status.success());
        let help = String::from_utf8(out.stdout).unwrap();
        assert!(
            help.contains(&format!("cargo xtask download {sub}")),
            "{help}"
        );
    }
    let out = xtask()
        .args(["download", "mvtec", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in ["--category", "--dir", "--url", "--archive"] {
        assert!(help.contains(flag), "{help}");
    }
}

#[test]
fn cli_offline_message_names_the_official_hash_and_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!(
        "http://127.0.0.1:{}/mvtec_anomaly_detection.tar.xz",
        dead_port()
    );
    let out = xtask()
        .args([
            "download",
            "mvtec",
            "--category",
            "bottle",
            "--url",
            &url,
            "--dir",
        ])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("CC BY-NC-SA 4.0"), "{err}");
    assert!(err.contains("cannot reach 127.0.0.1"), "{err}");
    assert!(
        err.contains("cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"),
        "{err}"
    );
    let expected_path = tmp.path().join("mvtec_anomaly_detection.tar.xz");
    assert!(err.contains(&expected_path.display().to_string()), "{err}");
}

#[test]
fn cli_rejects_an_unknown_category_before_any_download() {
    let out = xtask()
        .args(["download", "mvtec", "--category", "bottel", "--url"])
        .arg(format!("http://127.0.0.1:{}/x.tar.xz", dead_port()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("bottle"), "{err}");
    assert!(!err.contains("cannot reach"), "{err}");
}

#[test]
fn cli_weights_finds_a_cached_file_offline() {
    let cache = tempfile::tempdir().unwrap();
    let folder = cache.path().join("models--timm--resnet18.tv_in1k");
    let rev = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(folder.join("refs")).unwrap();
    std::fs::write(folder.join("refs/main"), rev).unwrap();
    let snap = folder.join("snapshots").join(rev);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::write(snap.join("model.safetensors"), b"x").unwrap();

    let out = xtask()
        .args(["download", "weights", "resnet18.tv_in1k"])
        .env("HF_HUB_CACHE", cache.path())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.trim(),
        snap.join("model.safetensors").display().to_string()
    );

    // A cache miss while offline: a failure that names the repository.
    let out = xtask()
        .args(["download", "weights", "resnet34"])
        .env("HF_HUB_CACHE", cache.path())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("timm/resnet34"), "{err}");

    let out = xtask()
        .args(["download", "weights", "resnet19"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
