//! The test server, its models and an HTTP client.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use candle_core::Device;
use rd_anomaly_map::MapMode;
use rd_backbone::{Backbone, Teacher};
use rd_model::{ModelConfig, ModelMeta, PostStats, ReverseDistillation, Student, Variant};
use rd_serve::{ServeConfig, Server, Shutdown};

/// Model input size of the test models.
pub const SIZE: usize = 64;

/// Two seeded models with thresholds (`a`, `b`: different students) and one without
/// statistics (`raw`), built once per test run.
pub struct Models {
    _dir: tempfile::TempDir,
    pub a: PathBuf,
    pub b: PathBuf,
    pub raw: PathBuf,
}

pub fn models() -> &'static Models {
    static MODELS: OnceLock<Models> = OnceLock::new();
    MODELS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.safetensors");
        let b = dir.path().join("b.safetensors");
        let raw = dir.path().join("raw.safetensors");
        save_model(&a, 2, true);
        save_model(&b, 3, true);
        save_model(&raw, 2, false);
        Models {
            _dir: dir,
            a,
            b,
            raw,
        }
    })
}

fn save_model(path: &Path, student_seed: u64, stats: bool) {
    let dev = Device::Cpu;
    let config = ModelConfig {
        backbone: Backbone::Resnet18,
        variant: Variant::Anomalib,
        image_size: (SIZE, SIZE),
        map_mode: MapMode::Add,
    };
    let model = ReverseDistillation::new(
        config,
        Teacher::seeded(config.backbone, 1, &dev).unwrap(),
        Student::seeded(config.backbone, config.variant, student_seed, &dev).unwrap(),
    )
    .unwrap();
    let mut meta = ModelMeta::new(&config, "seeded(1)");
    if stats {
        meta.post = PostStats {
            image_threshold: Some(1.0),
            pixel_threshold: Some(1.0),
            image_min: Some(0.5),
            image_max: Some(1.5),
            pixel_min: Some(0.0),
            pixel_max: Some(2.0),
        };
    }
    model.save(path, &meta, &[]).unwrap();
}

/// A model folder holding `files` (name, source model), linked rather than copied.
pub fn model_dir(files: &[(&str, &Path)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, src) in files {
        place(src, &dir.path().join(format!("{name}.safetensors")));
    }
    dir
}

/// Puts `src` at `dst` the way `rd train` does: written beside it, then renamed over it.
pub fn place(src: &Path, dst: &Path) {
    let tmp = dst.with_file_name(format!(
        ".{}.tmp",
        dst.file_name().unwrap().to_string_lossy()
    ));
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dst).unwrap();
}

/// A server running on its own thread.
pub struct TestServer {
    pub base: String,
    stop: Shutdown,
    thread: Option<JoinHandle<rd_serve::Result<()>>>,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    /// Serves `dir` on a free loopback port; `tweak` adjusts the settings.
    pub fn start(dir: tempfile::TempDir, tweak: impl FnOnce(&mut ServeConfig)) -> Self {
        let mut config = ServeConfig::new(dir.path());
        config.addr = "127.0.0.1:0".parse().unwrap();
        config.reload_interval = Duration::from_millis(50);
        tweak(&mut config);
        let server = Server::bind(config).unwrap();
        let base = format!("http://{}", server.local_addr().unwrap());
        let stop = server.shutdown_handle();
        let thread = Some(std::thread::spawn(move || server.run()));
        TestServer {
            base,
            stop,
            thread,
            dir,
        }
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stops the server and returns what `run` returned.
    pub fn stop(mut self) -> rd_serve::Result<()> {
        self.stop.trigger();
        self.thread.take().unwrap().join().unwrap()
    }

    /// The stop handle, for triggering from another thread.
    pub fn stop_handle(&self) -> Shutdown {
        self.stop.clone()
    }

    /// Waits (bounded) until the run thread ends.
    pub fn join(mut self) -> rd_serve::Result<()> {
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.trigger();
            let _ = t.join();
        }
    }
}

/// An answer: status, headers we look at, body text.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub content_type: Option<String>,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn answer(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let mut r = r.expect("the server answers");
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let retry_after = header("retry-after");
    let content_type = header("content-type");
    let body = r
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .unwrap();
    Answer {
        status: r.status().as_u16(),
        retry_after,
        content_type,
        body,
    }
}

pub fn get(url: &str) -> Answer {
    answer(agent().get(url).call())
}

pub fn post(url: &str, content_type: &str, body: &[u8]) -> Answer {
    answer(
        agent()
            .post(url)
            .header("content-type", content_type)
            .send(body),
    )
}

pub fn post_json(url: &str, body: &serde_json::Value) -> Answer {
    post(url, "application/json", body.to_string().as_bytes())
}

/// A PNG of `w × h` with a smooth pattern and a dark blob (seeded by `k`).
pub fn png(w: u32, h: u32, k: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let blob = (x as i32 - (w / 3 + k) as i32).pow(2) + (y as i32 - (h / 2) as i32).pow(2)
            < (w as i32 / 6).pow(2);
        if blob {
            image::Rgb([20, 20, 30])
        } else {
            image::Rgb([
                (x * 255 / w) as u8,
                (y * 255 / h) as u8,
                ((x + y + 7 * k) % 256) as u8,
            ])
        }
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// Polls `check` every 20 ms for at most `limit`.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The raw score `rd predict` computes for an image file, through rd-model's evaluation path
/// (the loader, not the server's code).
pub fn offline_score(model: &Path, image: &Path) -> f32 {
    let loaded = ReverseDistillation::load(model, &Device::Cpu).unwrap();
    let sample = rd_dataset::Sample::normal(image);
    let config = rd_model::PredictConfig::for_model(&loaded.meta, 1);
    rd_model::predict(&loaded.model, &[sample], &config)
        .unwrap()
        .scores[0]
}
