//! What `rd serve` is told on its command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use candle_core::Device;

use crate::error::{Result, ServeError};

/// Settings of one server.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Folder of model files; each `NAME.safetensors` is served as `NAME`.
    pub models_dir: PathBuf,
    /// Where to listen (port 0 picks a free one).
    pub addr: SocketAddr,
    /// Most images in one forward pass.
    pub max_batch: usize,
    /// Longest a request waits for others to join its batch.
    pub max_delay: Duration,
    /// Most requests accepted at once (decoding, queued or computing); more are answered 503.
    pub queue: usize,
    /// Largest accepted request body in bytes (413 above).
    pub max_body_bytes: usize,
    /// Largest accepted image in pixels (width × height), refused from its header (400 above).
    pub max_pixels: u64,
    /// Longest a request may take end to end (504 after).
    pub request_timeout: Duration,
    /// How often the model folder is checked for added, replaced and removed files.
    pub reload_interval: Duration,
    /// Threads running forward passes; the kernels are parallel inside, so one is usually best.
    pub compute_workers: usize,
    /// Where the models run.
    pub device: Device,
}

impl ServeConfig {
    /// Defaults for serving `models_dir` on 127.0.0.1:8080 on the CPU.
    pub fn new(models_dir: impl Into<PathBuf>) -> Self {
        ServeConfig {
            models_dir: models_dir.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_batch: 8,
            max_delay: Duration::from_millis(5),
            queue: 64,
            max_body_bytes: 32 << 20,
            max_pixels: 1 << 25,
            request_timeout: Duration::from_secs(30),
            reload_interval: Duration::from_millis(500),
            compute_workers: 1,
            device: Device::Cpu,
        }
    }

    /// Checks that every setting is usable.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            (self.max_batch, "max_batch"),
            (self.queue, "queue"),
            (self.max_body_bytes, "max_body_bytes"),
            (self.compute_workers, "compute_workers"),
        ];
        for (v, name) in positive {
            if v == 0 {
                return Err(ServeError::Config(format!("{name} must be at least 1")));
            }
        }
        if self.max_pixels == 0 {
            return Err(ServeError::Config("max_pixels must be at least 1".into()));
        }
        if self.request_timeout.is_zero() || self.reload_interval.is_zero() {
            return Err(ServeError::Config(
                "the request timeout and reload interval must be positive".into(),
            ));
        }
        Ok(())
    }
}
