//! `cargo xtask loadtest`: starts `rd serve` (release) on loopback with a seeded model, drives it
//! with concurrent clients, and compares its throughput with `rd predict` on the same images.
//!
//! Phases: offline `rd predict` (images/s, start-up subtracted), then `--clients` clients posting
//! for `--seconds` (throughput, p50/p95/p99 latency, errors), then an overload phase with far
//! more clients than the queue, where every answer must be 200 or 503. Everything is bounded in
//! time and count, and talks to 127.0.0.1 only. On a shared machine the numbers are noisy.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use rd_backbone::Backbone;
use rd_model::ModelMeta;
use serde_json::json;

use crate::bench::{seeded_model, write_bmp};

/// Arguments of `cargo xtask loadtest`.
#[derive(Debug, Args)]
pub struct LoadtestArgs {
    /// Concurrent clients in the main phase.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub clients: u32,
    /// Seconds of the main phase (the overload phase takes half as long).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub seconds: u64,
    /// Image size (square) of the model and of the posted images.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Teacher backbone of the seeded model.
    #[arg(long, default_value = "resnet18")]
    pub backbone: Backbone,
    /// `rd serve --queue` (the overload phase uses 4× this many clients).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub queue: u32,
    /// `rd serve --max-batch`.
    #[arg(long, default_value_t = 8)]
    pub max_batch: u32,
    /// Images scored by `rd predict` for the offline baseline.
    #[arg(long, default_value_t = 48)]
    pub offline_images: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/loadtest/loadtest.json")]
    pub json: PathBuf,
    /// An already built release `rd` to drive (default: build target/release/rd first).
    #[arg(long, value_name = "PATH")]
    pub rd: Option<PathBuf>,
}

/// Runs the load test.
pub fn run(args: LoadtestArgs) -> Result<()> {
    let root = crate::workspace_root();
    let rd = match &args.rd {
        Some(rd) => rd.clone(),
        None => {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            eprintln!("building the release rd…");
            let status = Command::new(&cargo)
                .current_dir(&root)
                .args(["build", "--release", "-p", "rd-cli"])
                .status()
                .context("running cargo build --release -p rd-cli")?;
            if !status.success() {
                bail!("cargo build --release -p rd-cli failed");
            }
            root.join("target/release/rd")
        }
    };
    let tmp = tempfile::tempdir()?;
    let models = tmp.path().join("models");
    let images = tmp.path().join("images");
    std::fs::create_dir_all(&models)?;
    std::fs::create_dir_all(&images)?;
    let model_path = models.join("part.safetensors");
    let model = seeded_model(args.backbone, args.size, &candle_core::Device::Cpu)?;
    model.save(
        &model_path,
        &ModelMeta::new(model.config(), "seeded(0)"),
        &[],
    )?;
    let image = images.join("part_0000.bmp");
    write_bmp(&image, args.size)?;
    let body = std::fs::read(&image)?;
    for k in 1..args.offline_images {
        std::fs::copy(&image, images.join(format!("part_{k:04}.bmp")))?;
    }

    eprintln!("== offline: rd predict on {} images", args.offline_images);
    let one = tmp.path().join("one");
    std::fs::create_dir_all(&one)?;
    std::fs::copy(&image, one.join("part.bmp"))?;
    let t1 = time_predict(&rd, &model_path, &one, &tmp.path().join("out1"))?;
    let tn = time_predict(&rd, &model_path, &images, &tmp.path().join("outn"))?;
    let offline_ips = (args.offline_images - 1) as f64 / (tn - t1).max(1e-6);
    eprintln!("   {offline_ips:.1} images/s (start-up {t1:.2} s subtracted)");

    let mut server = Served::start(&rd, &models, &args)?;
    let url = format!("http://{}/predict/part", server.addr);
    // Warm-up: the first batches page the weights in.
    for _ in 0..4 {
        post(&agent(), &url, &body).context("warm-up request")?;
    }

    eprintln!("== {} clients for {} s", args.clients, args.seconds);
    let main = drive(
        &url,
        &body,
        args.clients as usize,
        Duration::from_secs(args.seconds),
    );
    eprintln!("   {}", main.summary());
    let overload_clients = 4 * args.queue as usize;
    eprintln!(
        "== overload: {overload_clients} clients (queue {}) for {} s",
        args.queue,
        args.seconds.div_ceil(2)
    );
    let over = drive(
        &url,
        &body,
        overload_clients,
        Duration::from_secs(args.seconds.div_ceil(2)),
    );
    eprintln!("   {}", over.summary());
    let exit = server.stop()?;

    let ratio = main.images_per_s() / offline_ips;
    let table = format!(
        "| phase | clients | requests | images/s | p50 | p95 | p99 | 200 | 503 | other |\n\
         |---|---|---|---|---|---|---|---|---|---|\n\
         | rd predict (offline) | – | {} | {offline_ips:.1} | | | | | | |\n{}\n{}\n\n\
         serve / offline throughput: {ratio:.2}×; rd serve exited with {exit}",
        args.offline_images,
        main.row("rd serve", args.clients as usize),
        over.row("overload", overload_clients),
    );
    println!("{table}");
    let results = json!({
        "backbone": args.backbone.to_string(),
        "size": args.size,
        "offline_images_per_s": offline_ips,
        "serve": main.json(args.clients as usize),
        "overload": over.json(overload_clients),
        "ratio": ratio,
    });
    let out = root.join(&args.json);
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&results)?)?;
    eprintln!("results in {}", out.display());
    if over.other > 0 || main.other > 0 {
        bail!("some answers were neither 200 nor 503 (see above)");
    }
    if !exit.success() {
        bail!("rd serve did not exit cleanly on SIGTERM ({exit})");
    }
    Ok(())
}

fn time_predict(rd: &Path, model: &Path, input: &Path, out: &Path) -> Result<f64> {
    let t = Instant::now();
    let status = Command::new(rd)
        .args(["predict", "-q", "--batch-size", "8", "--model"])
        .arg(model)
        .arg("--out")
        .arg(out)
        .arg(input)
        .stdout(Stdio::null())
        .status()
        .context("running rd predict")?;
    if !status.success() {
        bail!("rd predict failed ({status})");
    }
    Ok(t.elapsed().as_secs_f64())
}

/// A running `rd serve`.
struct Served {
    child: Child,
    addr: String,
}

impl Served {
    fn start(rd: &Path, models: &Path, args: &LoadtestArgs) -> Result<Self> {
        let mut child = Command::new(rd)
            .arg("serve")
            .arg("--models")
            .arg(models)
            .args(["--addr", "127.0.0.1:0"])
            .args(["--queue", &args.queue.to_string()])
            .args(["--max-batch", &args.max_batch.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting rd serve")?;
        let stderr = child.stderr.take().context("rd serve's stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                } else {
                    eprintln!("   rd serve: {line}");
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                bail!("rd serve did not start listening within 60 s");
            }
        };
        Ok(Served { child, addr })
    }

    /// SIGTERM, then the exit status (bounded wait).
    fn stop(&mut self) -> Result<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        bail!("rd serve did not stop within 30 s of SIGTERM")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn post(agent: &ureq::Agent, url: &str, body: &[u8]) -> Result<u16> {
    let mut r = agent
        .post(url)
        .header("content-type", "image/bmp")
        .send(body)?;
    let _ = r.body_mut().read_to_vec()?;
    Ok(r.status().as_u16())
}

/// What one phase measured.
#[derive(Debug, Default)]
struct Phase {
    seconds: f64,
    ok_latency: Vec<f64>,
    ok: usize,
    unavailable: usize,
    other: usize,
}

/// `clients` threads posting `body` until `length` has passed (each bounded in count too).
fn drive(url: &str, body: &[u8], clients: usize, length: Duration) -> Phase {
    const MAX_PER_CLIENT: usize = 100_000;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (url, body, stop) = (url.to_string(), body.to_vec(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let agent = agent();
                let mut p = Phase::default();
                for _ in 0..MAX_PER_CLIENT {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let t = Instant::now();
                    match post(&agent, &url, &body) {
                        Ok(200) => {
                            p.ok += 1;
                            p.ok_latency.push(t.elapsed().as_secs_f64());
                        }
                        Ok(503) => {
                            p.unavailable += 1;
                            // A client that honours Retry-After would wait; a tight loop is the
                            // harsher test, so back off only briefly.
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        _ => p.other += 1,
                    }
                }
                p
            })
        })
        .collect();
    while started.elapsed() < length {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = Phase::default();
    for h in handles {
        if let Ok(p) = h.join() {
            total.ok += p.ok;
            total.unavailable += p.unavailable;
            total.other += p.other;
            total.ok_latency.extend(p.ok_latency);
        } else {
            total.other += 1;
        }
    }
    total.seconds = started.elapsed().as_secs_f64();
    total.ok_latency.sort_by(f64::total_cmp);
    total
}

impl Phase {
    fn images_per_s(&self) -> f64 {
        self.ok as f64 / self.seconds
    }

    fn percentile(&self, p: f64) -> f64 {
        if self.ok_latency.is_empty() {
            return f64::NAN;
        }
        let i = ((self.ok_latency.len() - 1) as f64 * p).round() as usize;
        self.ok_latency[i]
    }

    fn summary(&self) -> String {
        format!(
            "{:.1} images/s, p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms; {} ok, {} 503, {} other",
            self.images_per_s(),
            1e3 * self.percentile(0.5),
            1e3 * self.percentile(0.95),
            1e3 * self.percentile(0.99),
            self.ok,
            self.unavailable,
            self.other
        )
    }

    fn row(&self, name: &str, clients: usize) -> String {
        format!(
            "| {name} | {clients} | {} | {:.1} | {:.0} ms | {:.0} ms | {:.0} ms | {} | {} | {} |",
            self.ok + self.unavailable + self.other,
            self.images_per_s(),
            1e3 * self.percentile(0.5),
            1e3 * self.percentile(0.95),
            1e3 * self.percentile(0.99),
            self.ok,
            self.unavailable,
            self.other
        )
    }

    fn json(&self, clients: usize) -> serde_json::Value {
        json!({
            "clients": clients,
            "seconds": self.seconds,
            "images_per_s": self.images_per_s(),
            "p50_s": self.percentile(0.5),
            "p95_s": self.percentile(0.95),
            "p99_s": self.percentile(0.99),
            "ok": self.ok,
            "unavailable": self.unavailable,
            "other": self.other,
        })
    }
}
