//! `rd serve`: the inference service a production line posts its pictures to.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use rd_serve::{ServeConfig, Server};

use crate::device::DeviceArg;

/// Arguments of `rd serve`.
#[derive(Debug, Args)]
#[command(after_help = "\
Endpoints:
  POST /predict/{model}            an image file (or a multipart form with field `image`);
                                   ?outputs=heatmap,mask adds base64 PNGs of the overlay and mask
  GET  /v2/health/live, /v2/health/ready, /v2/models/{model}, /v2/models/{model}/ready
  POST /v2/models/{model}/infer    KServe v2: FP32 [N,3,H,W] or BYTES [N] of base64 image files
  GET  /metrics                    Prometheus text
  GET  /                           a page to try a picture in a browser

Examples:
  rd serve --models models/
  rd serve --models models/ --addr 0.0.0.0:8080 --max-batch 16 --queue 128
  curl --data-binary @part.png http://127.0.0.1:8080/predict/bottle

Every NAME.safetensors in the folder is served as NAME. A file replaced (atomically, as rd train
writes) or added is picked up while running; a removed one stops being served. When the queue
is full the answer is 503 with Retry-After. SIGTERM or Ctrl-C stops accepting, finishes what is
in flight, then exits 0. RUST_LOG=rd_serve=debug,tower_http=debug logs one line per request.")]
pub struct ServeArgs {
    /// Folder of model files (`rd train` / `rd import` output).
    #[arg(long)]
    models: PathBuf,

    /// Address to listen on (use 0.0.0.0:8080 in a container).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,

    /// Most images in one forward pass.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    max_batch: u32,

    /// Longest a request waits for others to join its batch, in milliseconds.
    #[arg(long, default_value_t = 5)]
    max_delay_ms: u64,

    /// Most requests accepted at once (decoding, queued or computing); more get 503.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    queue: u32,

    /// Largest request body in MiB (413 above).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    max_body_mb: u32,

    /// Longest a request may take end to end, in seconds (504 after).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_s: u64,

    /// Where the models run: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceArg,
}

/// Runs `rd serve` until SIGTERM or Ctrl-C.
pub fn run(args: ServeArgs, quiet: bool) -> Result<()> {
    let mut config = ServeConfig::new(&args.models);
    config.addr = args.addr;
    config.max_batch = args.max_batch as usize;
    config.max_delay = Duration::from_millis(args.max_delay_ms);
    config.queue = args.queue as usize;
    config.max_body_bytes = (args.max_body_mb as usize) << 20;
    config.request_timeout = Duration::from_secs(args.timeout_s);
    config.device = args.device.open()?;
    let server = Server::bind(config)?;
    let addr = server.local_addr()?;
    let stop = server.shutdown_handle();
    ctrlc::set_handler(move || stop.trigger()).context("cannot install the SIGTERM handler")?;
    if !quiet {
        eprintln!(
            "rd serve: listening on http://{addr} (models from {})",
            args.models.display()
        );
    }
    server.run()?;
    if !quiet {
        eprintln!("rd serve: stopped");
    }
    Ok(())
}
