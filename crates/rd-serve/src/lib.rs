//! `rd serve`: Reverse Distillation models behind HTTP, for production lines that post each
//! picture and need the answer in milliseconds, from several cameras at once.
//!
//! Every `NAME.safetensors` in a folder is served as `NAME`, and replaced or added files are
//! picked up while running. Requests for one model are batched and run on dedicated compute
//! threads; a bounded queue answers 503 when full, so memory stays bounded under any load.
//!
//! Endpoints: `POST /predict/{model}` (an image file or a multipart form with field `image`;
//! the score equals `rd predict`'s), the Open Inference Protocol (KServe v2) under `/v2`,
//! Prometheus metrics at `/metrics`, and a page for people at the line at `/`.
//!
//! ```no_run
//! use rd_serve::{ServeConfig, Server};
//!
//! # fn main() -> rd_serve::Result<()> {
//! let mut config = ServeConfig::new("models/");
//! config.addr = "127.0.0.1:0".parse().unwrap();
//! let server = Server::bind(config)?;
//! println!("listening on http://{}", server.local_addr()?);
//! let stop = server.shutdown_handle();
//! std::thread::spawn(move || {
//!     std::thread::sleep(std::time::Duration::from_secs(60));
//!     stop.trigger(); // finishes what is in flight, then `run` returns
//! });
//! server.run()?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod config;
mod error;
mod http;
mod metrics;
mod registry;
mod render;
mod scheduler;
mod server;
mod v2;

pub use config::ServeConfig;
pub use error::{Result, ServeError};
pub use server::{Server, Shutdown};
