//! Starting, running and stopping one server.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};

use crate::config::ServeConfig;
use crate::error::{Result, ServeError};
use crate::http::{router, App};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::scheduler::Scheduler;

/// A server bound to its address with its models loaded, ready to [`Server::run`].
pub struct Server {
    runtime: tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    app: Arc<App>,
    workers: Vec<JoinHandle<()>>,
    shutdown: Shutdown,
}

/// Asks a running server to stop: it stops accepting, finishes what is in flight, then
/// [`Server::run`] returns. Cheap to clone; safe to call from a signal handler thread.
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
}

impl Shutdown {
    fn new() -> Self {
        Shutdown {
            tx: Arc::new(watch::channel(false).0),
        }
    }

    /// Starts the graceful stop (again: no effect).
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives in `self`, so waiting cannot fail.
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

impl Server {
    /// Loads every model of the folder, starts the compute workers and binds the address.
    pub fn bind(config: ServeConfig) -> Result<Server> {
        config.validate()?;
        let metrics = Metrics::new(config.max_batch);
        let registry = Arc::new(Registry::new(
            &config.models_dir,
            config.device.clone(),
            metrics.clone(),
        )?);
        registry.scan(true);
        if registry.is_empty() {
            tracing::warn!(
                folder = %config.models_dir.display(),
                "no loadable model file (NAME.safetensors) in the folder yet; not ready until one appears"
            );
        }
        let listener =
            std::net::TcpListener::bind(config.addr).map_err(|source| ServeError::Bind {
                addr: config.addr,
                source,
            })?;
        listener
            .set_nonblocking(true)
            .map_err(ServeError::Runtime)?;
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            // The async threads only move bytes; decoding runs on the blocking pool and the
            // model on the compute workers.
            .worker_threads(threads.clamp(1, 2))
            .max_blocking_threads(threads)
            .thread_name("rd-serve")
            .enable_io()
            .enable_time()
            .build()
            .map_err(ServeError::Runtime)?;
        let scheduler = Scheduler::new(config.max_batch, config.max_delay, metrics.clone());
        let workers = scheduler
            .spawn_workers(config.compute_workers)
            .map_err(ServeError::Runtime)?;
        let app = Arc::new(App {
            registry,
            scheduler,
            metrics,
            permits: Arc::new(Semaphore::new(config.queue)),
            config,
        });
        Ok(Server {
            runtime,
            listener,
            app,
            workers,
            shutdown: Shutdown::new(),
        })
    }

    /// The address the server listens on (with the port chosen when asked for port 0).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener.local_addr().map_err(ServeError::Runtime)
    }

    /// A handle that stops the server.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Serves until [`Shutdown::trigger`], then finishes the requests in flight and returns.
    pub fn run(self) -> Result<()> {
        let Server {
            runtime,
            listener,
            app,
            workers,
            shutdown,
        } = self;
        let (stop_watching, stopped) = mpsc::channel::<()>();
        let registry = Arc::clone(&app.registry);
        let interval = app.config.reload_interval;
        let watcher = std::thread::Builder::new()
            .name("rd-serve-watch".into())
            .spawn(move || watch_folder(&registry, interval, &stopped))
            .map_err(ServeError::Runtime)?;
        let router = router(Arc::clone(&app));
        let served = runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { shutdown.wait().await })
                .await
        });
        tracing::info!("stopped accepting; finishing queued work");
        app.scheduler.close();
        for w in workers {
            let _ = w.join();
        }
        drop(stop_watching);
        let _ = watcher.join();
        runtime.shutdown_timeout(Duration::from_secs(5));
        served.map_err(ServeError::Runtime)
    }
}

/// Rescans the model folder every `interval` until `stop` is dropped.
fn watch_folder(registry: &Registry, interval: Duration, stop: &mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(interval) {
        registry.scan(false);
    }
}
