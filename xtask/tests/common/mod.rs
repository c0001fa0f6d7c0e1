//! Test helpers: a tiny HTTP/1.1 server on 127.0.0.1 and small archives built in memory.
//!
//! The server answers every GET with one in-memory body, honours `Range: bytes=N-` with `206`
//! (unless told to ignore it), records each request, and stops when dropped or after a deadline,
//! whichever comes first. It never contacts anything; it only listens on 127.0.0.1.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// How long a server may live at most, even if a test forgets to drop it.
const SERVER_DEADLINE: Duration = Duration::from_secs(60);

/// One request the server saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub request_line: String,
    pub range: Option<String>,
}

/// Server behaviour.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub body: Vec<u8>,
    /// Answer `Range` requests with `206`; if false, always send the whole body with `200`.
    pub honor_range: bool,
    /// For the first response only: announce the full length but close after this many body bytes.
    pub cut_first_after: Option<usize>,
}

impl ServerConfig {
    pub fn new(body: Vec<u8>) -> Self {
        ServerConfig {
            body,
            honor_range: true,
            cut_first_after: None,
        }
    }
}

pub struct TestServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    pub fn start(config: ServerConfig) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let stop = stop.clone();
            let seen = seen.clone();
            std::thread::spawn(move || {
                let served = AtomicUsize::new(0);
                let deadline = Instant::now() + SERVER_DEADLINE;
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let n = served.fetch_add(1, Ordering::SeqCst);
                            let _ = serve(stream, &config, n == 0, &seen);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(_) => break,
                    }
                }
            })
        };
        TestServer {
            addr,
            stop,
            seen,
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    stream: TcpStream,
    config: &ServerConfig,
    first: bool,
    seen: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    seen.lock().unwrap().push(Seen {
        request_line: request_line.trim().to_string(),
        range: range.clone(),
    });

    let body = &config.body;
    let total = body.len();
    let start = range
        .as_deref()
        .filter(|_| config.honor_range)
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse::<usize>().ok());
    let mut out = stream;
    let (head, slice) = match start {
        Some(s) if s >= total => (
            format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            ),
            &body[0..0],
        ),
        Some(s) => (
            format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {s}-{}/{total}\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                total - 1,
                total - s
            ),
            &body[s..],
        ),
        None => (
            format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n"),
            &body[..],
        ),
    };
    out.write_all(head.as_bytes())?;
    let slice = match config.cut_first_after {
        Some(n) if first => &slice[..n.min(slice.len())],
        _ => slice,
    };
    out.write_all(slice)?;
    out.flush()?;
    let _ = out.shutdown(std::net::Shutdown::Both);
    Ok(())
}

/// A 127.0.0.1 port with nobody listening (bound, then released).
pub fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A small MVTec-like tree: two categories, a top-level licence file. Contents are not
/// compressible to nothing (so ranges and cut-offs land mid-stream).
pub fn sample_tar() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, path, data).unwrap();
    };
    let noise: Vec<u8> = (0u32..20_000)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    add("license.txt", b"CC BY-NC-SA 4.0\n");
    add("bottle/train/good/000.png", &noise);
    add("bottle/test/broken_large/000.png", &noise[..5000]);
    add("bottle/ground_truth/broken_large/000_mask.png", b"mask");
    add("cable/train/good/000.png", &noise[7..]);
    add("cable/test/good/000.png", b"cable");
    builder.into_inner().unwrap()
}

/// `sample_tar()` compressed with xz.
pub fn sample_tar_xz() -> Vec<u8> {
    use std::io::Write as _;
    let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 6);
    enc.write_all(&sample_tar()).unwrap();
    enc.finish().unwrap()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
