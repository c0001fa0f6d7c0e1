//! Getting a verified archive: a file already in place, or an HTTP download with resume.
//!
//! The download goes to `<archive>.part`. A `.part` left by an interrupted run is continued with
//! `Range: bytes=N-`; a server that answers `200` instead of `206` gets a clean restart. The
//! SHA-256 is computed while writing (the bytes of a resumed `.part` are hashed first) and checked
//! before the `.part` is renamed to the archive path, so an archive at that path is always either
//! verified by us or side-loaded by the user (and then verified before use).

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use ureq::config::AutoHeaderValue;
use ureq::http::{header, StatusCode, Uri};

/// An archive to download: where from, its SHA-256 and its file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadSpec {
    /// `http://` or `https://` URL.
    pub url: String,
    /// Expected SHA-256, 64 hex digits.
    pub sha256: String,
    /// The archive's file name (its extension selects the decompressor: `.tar.xz`, `.tar`).
    pub file_name: String,
}

impl DownloadSpec {
    /// The expected SHA-256 in lower case, or an error if it is not 64 hex digits.
    pub fn expected_sha256(&self) -> Result<String> {
        let h = self.sha256.trim().to_ascii_lowercase();
        if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("invalid SHA-256 {:?}: expected 64 hex digits", self.sha256);
        }
        Ok(h)
    }

    /// The URL's host (for messages), or the whole URL if it has none.
    pub fn host(&self) -> String {
        self.url
            .parse::<Uri>()
            .ok()
            .and_then(|u| u.host().map(str::to_string))
            .unwrap_or_else(|| self.url.clone())
    }
}

/// Network and display settings.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Limit for DNS resolution plus TCP/TLS connection.
    pub connect_timeout: Duration,
    /// Limit for each read from the network (a stalled transfer fails after this long).
    pub read_timeout: Duration,
    /// How many requests one run makes before giving up on a transfer that keeps breaking off.
    pub max_attempts: u32,
    /// Draw progress bars (indicatif hides them anyway when stderr is not a terminal).
    pub progress: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            max_attempts: 5,
            progress: true,
        }
    }
}

/// The `.part` file a download of `archive` is written to.
pub fn part_path(archive: &Path) -> PathBuf {
    let mut name = archive.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    archive.with_file_name(name)
}

/// Makes sure `archive` holds the verified archive: uses the file there if its SHA-256 matches
/// (no network), else downloads it. Returns whether it was downloaded.
pub fn obtain(spec: &DownloadSpec, archive: &Path, opts: &FetchOptions) -> Result<bool> {
    let expected = spec.expected_sha256()?;
    if archive.is_file() {
        eprintln!("Checking the SHA-256 of {}", archive.display());
        let got = sha256_file(archive, opts.progress)
            .with_context(|| format!("cannot read {}", archive.display()))?;
        if got == expected {
            eprintln!("Using {} (SHA-256 verified)", archive.display());
            return Ok(false);
        }
        bail!(
            "{} exists but its SHA-256 is {got}, not the expected {expected}. It is not the \
             expected archive or it is damaged: delete it (or replace it with a good copy of {}) \
             and run this command again",
            archive.display(),
            spec.url
        );
    }
    if let Some(parent) = archive.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    download(spec, archive, &expected, opts)?;
    Ok(true)
}

/// What one HTTP request ended with.
enum Transfer {
    /// The whole body is in the `.part` file.
    Complete,
    /// The connection broke off (or the server sent an unexpected range): try again.
    Retry(String),
}

fn download(
    spec: &DownloadSpec,
    archive: &Path,
    expected: &str,
    opts: &FetchOptions,
) -> Result<()> {
    let uri = spec.url.parse::<Uri>().ok();
    let scheme_ok = matches!(
        uri.as_ref().and_then(|u| u.scheme_str()),
        Some("http" | "https")
    );
    if !scheme_ok || uri.as_ref().and_then(|u| u.host()).is_none() {
        bail!(
            "invalid download URL {:?}: expected http://… or https://… (check --url)",
            spec.url
        );
    }
    let part = part_path(archive);
    let agent = agent(opts);
    eprintln!("Downloading {}\n         to {}", spec.url, part.display());
    let bar = bytes_bar(opts.progress);
    let mut last_problem = String::new();
    let mut hasher = None;
    for attempt in 1..=opts.max_attempts.max(1) {
        if attempt > 1 {
            eprintln!(
                "The transfer broke off ({last_problem}); resuming (attempt {attempt} of {})",
                opts.max_attempts
            );
        }
        match request_once(spec, &agent, &part, &bar, &mut hasher, archive)? {
            Transfer::Complete => {
                bar.finish_and_clear();
                let got = match hasher.take() {
                    Some(h) => hex(&h.finalize()),
                    None => sha256_file(&part, false)?,
                };
                if got != expected {
                    let _ = std::fs::remove_file(&part);
                    bail!(
                        "the download from {} has SHA-256 {got}, not the expected {expected}; the \
                         file was deleted and nothing was extracted. Run the command again to \
                         retry; if it fails again, the server sends a different file: check the \
                         URL (--url) or download the archive elsewhere and place it at {}",
                        spec.url,
                        archive.display()
                    );
                }
                std::fs::rename(&part, archive).with_context(|| {
                    format!("cannot rename {} to {}", part.display(), archive.display())
                })?;
                eprintln!("Downloaded {} (SHA-256 verified)", archive.display());
                return Ok(());
            }
            Transfer::Retry(why) => last_problem = why,
        }
    }
    bar.abandon();
    bail!(
        "the download from {} broke off {} times (last: {last_problem}). What arrived is kept in \
         {}; run the command again to resume, or download the archive elsewhere and place it at \
         {} (SHA-256 {expected})",
        spec.url,
        opts.max_attempts,
        part.display(),
        archive.display()
    )
}

/// One GET (ranged when a `.part` exists), appending to the `.part` file.
///
/// `hasher` holds the SHA-256 state of the bytes already in the `.part` file, when known from an
/// earlier attempt of this run; otherwise the existing bytes are hashed first.
fn request_once(
    spec: &DownloadSpec,
    agent: &ureq::Agent,
    part: &Path,
    bar: &ProgressBar,
    hasher: &mut Option<Sha256>,
    archive: &Path,
) -> Result<Transfer> {
    let offset = match std::fs::metadata(part) {
        Ok(m) => m.len(),
        Err(_) => 0,
    };
    let mut request = agent.get(&spec.url);
    if offset > 0 {
        request = request.header(header::RANGE, format!("bytes={offset}-"));
    }
    let response = request
        .call()
        .map_err(|e| unreachable_error(spec, archive, &e))?;
    let status = response.status();
    let headers = response.headers().clone();
    let content_range = headers
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .map(ContentRange::parse);
    let content_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());

    let (start, total) = match status {
        StatusCode::PARTIAL_CONTENT if offset > 0 => match content_range {
            Some(Some(cr)) if cr.start == Some(offset) => (offset, cr.total),
            other => {
                // A range we did not ask for: drop what we have and start over.
                restart_part(part, hasher)?;
                return Ok(Transfer::Retry(format!(
                    "the server sent an unexpected range ({other:?}) for bytes={offset}-"
                )));
            }
        },
        StatusCode::OK => {
            if offset > 0 {
                eprintln!("The server ignored the range request; downloading from the start again");
            }
            (0, content_length)
        }
        StatusCode::RANGE_NOT_SATISFIABLE if offset > 0 => {
            let total = content_range.flatten().and_then(|cr| cr.total);
            if total == Some(offset) {
                // The `.part` already holds the whole file.
                return Ok(Transfer::Complete);
            }
            restart_part(part, hasher)?;
            return Ok(Transfer::Retry(format!(
                "the server cannot serve bytes={offset}- (total {total:?}); starting over"
            )));
        }
        s => bail!(
            "{} answered HTTP {s} for {}. The link may have moved or need a licence click-through: \
             pass a mirror with --url, or download the archive elsewhere and place it at {} \
             (SHA-256 {}), then run this command again",
            spec.host(),
            spec.url,
            archive.display(),
            spec.sha256
        ),
    };

    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(part)
        .with_context(|| format!("cannot open {}", part.display()))?;
    if start == 0 {
        file.set_len(0)?;
        *hasher = Some(Sha256::new());
    } else if hasher.is_none() {
        eprintln!(
            "Resuming {} at {} bytes",
            part.display(),
            indicatif::HumanBytes(start)
        );
        let mut h = Sha256::new();
        file.seek(SeekFrom::Start(0))?;
        io::copy(&mut (&mut file).take(start), &mut HashWriter(&mut h))
            .with_context(|| format!("cannot read {}", part.display()))?;
        *hasher = Some(h);
    }
    file.seek(SeekFrom::Start(start))?;
    let h = hasher.as_mut().expect("hasher set above");

    if let Some(t) = total {
        bar.set_length(t);
    }
    bar.set_position(start);
    let mut body = response.into_body().into_reader();
    let mut buf = vec![0u8; 256 * 1024];
    let mut written = start;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                file.flush()?;
                return Ok(Transfer::Retry(e.to_string()));
            }
        };
        file.write_all(&buf[..n])
            .with_context(|| format!("cannot write {} (disk full?)", part.display()))?;
        h.update(&buf[..n]);
        written += n as u64;
        bar.set_position(written);
    }
    file.sync_all()?;
    match total {
        Some(t) if written < t => Ok(Transfer::Retry(format!(
            "the connection closed after {written} of {t} bytes"
        ))),
        _ => Ok(Transfer::Complete),
    }
}

fn restart_part(part: &Path, hasher: &mut Option<Sha256>) -> Result<()> {
    *hasher = None;
    match std::fs::remove_file(part) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", part.display()))
        }
        _ => Ok(()),
    }
}

/// The "offline" error: the request did not get an HTTP response at all.
fn unreachable_error(spec: &DownloadSpec, archive: &Path, e: &ureq::Error) -> anyhow::Error {
    anyhow!(
        "cannot reach {}: {e}. This machine seems offline (or the server is down); download {} \
         elsewhere and place it at {} (SHA-256 {}), then run this command again",
        spec.host(),
        spec.url,
        archive.display(),
        spec.sha256
    )
}

fn agent(opts: &FetchOptions) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_resolve(Some(opts.connect_timeout))
        .timeout_connect(Some(opts.connect_timeout))
        .timeout_per_read(Some(opts.read_timeout))
        .timeout_recv_response(Some(opts.read_timeout))
        // Status codes are handled above (206, 416, …), not turned into errors.
        .http_status_as_error(false)
        // Byte ranges must count archive bytes, never gzip-encoded ones.
        .accept_encoding(AutoHeaderValue::None)
        .user_agent(concat!("rd-xtask/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

/// `Content-Range: bytes START-END/TOTAL` or `bytes */TOTAL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ContentRange {
    start: Option<u64>,
    total: Option<u64>,
}

impl ContentRange {
    fn parse(v: &str) -> Option<ContentRange> {
        let rest = v.trim().strip_prefix("bytes")?.trim_start();
        let (range, total) = rest.split_once('/')?;
        let total = total.trim().parse().ok();
        let start = match range.trim() {
            "*" => None,
            r => Some(r.split_once('-')?.0.trim().parse().ok()?),
        };
        Some(ContentRange { start, total })
    }
}

/// SHA-256 of a file, lower-case hex, with a progress bar over its bytes.
pub fn sha256_file(path: &Path, progress: bool) -> io::Result<String> {
    let file = File::open(path)?;
    let bar = bytes_bar(progress);
    bar.set_length(file.metadata()?.len());
    let mut reader = bar.wrap_read(BufReader::with_capacity(1 << 20, file));
    let mut h = Sha256::new();
    io::copy(&mut reader, &mut HashWriter(&mut h))?;
    bar.finish_and_clear();
    Ok(hex(&h.finalize()))
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A bytes progress bar (bytes, rate, ETA), or a hidden one.
pub(crate) fn bytes_bar(visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40.cyan/blue} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_range() {
        assert_eq!(
            ContentRange::parse("bytes 100-199/200"),
            Some(ContentRange {
                start: Some(100),
                total: Some(200)
            })
        );
        assert_eq!(
            ContentRange::parse("bytes */200"),
            Some(ContentRange {
                start: None,
                total: Some(200)
            })
        );
        assert_eq!(
            ContentRange::parse("bytes 5-9/*"),
            Some(ContentRange {
                start: Some(5),
                total: None
            })
        );
        assert_eq!(ContentRange::parse("items 1-2/3"), None);
    }

    #[test]
    fn part_path_appends_suffix() {
        assert_eq!(
            part_path(Path::new("data/mvtec/a.tar.xz")),
            PathBuf::from("data/mvtec/a.tar.xz.part")
        );
    }

    #[test]
    fn sha256_is_validated_and_normalised() {
        let mut spec = DownloadSpec {
            url: "http://127.0.0.1:1/x.tar".into(),
            sha256: "AB".repeat(32),
            file_name: "x.tar".into(),
        };
        assert_eq!(spec.expected_sha256().unwrap(), "ab".repeat(32));
        assert_eq!(spec.host(), "127.0.0.1");
        spec.sha256 = "xyz".into();
        assert!(spec.expected_sha256().is_err());
    }

    #[test]
    fn rejects_a_url_that_is_not_http() {
        let dir = tempfile::tempdir().unwrap();
        for url in ["not a url", "ftp://host/x.tar", "/local/x.tar"] {
            let spec = DownloadSpec {
                url: url.into(),
                sha256: "ab".repeat(32),
                file_name: "x.tar".into(),
            };
            let opts = FetchOptions {
                progress: false,
                ..FetchOptions::default()
            };
            let err = obtain(&spec, &dir.path().join("x.tar"), &opts)
                .unwrap_err()
                .to_string();
            assert!(err.contains("invalid download URL"), "{err}");
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn hashes_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p, false).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
