//! The compute pool: requests queue here, are grouped per model into batches of up to
//! `max_batch` images (waiting at most `max_delay` for company) and run on dedicated threads,
//! never on the async runtime's.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::ServeError;
use crate::metrics::Metrics;
use crate::registry::{lock, ServedModel};

/// One request's prepared images waiting for the model.
pub(crate) struct Job {
    /// The model version the request resolved (kept alive by the job across a reload).
    pub model: Arc<ServedModel>,
    /// `images × 3 × H × W` prepared inputs.
    pub input: Vec<f32>,
    /// Number of images in `input`.
    pub images: usize,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Computed, ServeError>>,
}

/// A job's share of a batch's outputs.
#[derive(Debug)]
pub(crate) struct Computed {
    /// Raw scores, one per image of the job.
    pub scores: Vec<f32>,
    /// Raw maps, `images × H × W`.
    pub maps: Vec<f32>,
}

struct State {
    queue: VecDeque<Job>,
    closing: bool,
}

/// The queue and its worker threads.
pub(crate) struct Scheduler {
    state: Mutex<State>,
    wake: Condvar,
    max_batch: usize,
    max_delay: Duration,
    metrics: Metrics,
}

impl Scheduler {
    /// A scheduler; start its workers with [`Scheduler::spawn_workers`].
    pub fn new(max_batch: usize, max_delay: Duration, metrics: Metrics) -> Arc<Self> {
        Arc::new(Scheduler {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                closing: false,
            }),
            wake: Condvar::new(),
            max_batch,
            max_delay,
            metrics,
        })
    }

    /// Starts `n` compute threads.
    pub fn spawn_workers(
        self: &Arc<Self>,
        n: usize,
    ) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
        (0..n)
            .map(|i| {
                let me = Arc::clone(self);
                std::thread::Builder::new()
                    .name(format!("rd-compute-{i}"))
                    .spawn(move || me.work())
            })
            .collect()
    }

    /// Queues `images` prepared images for `model`; the receiver gets their outputs.
    pub fn submit(
        &self,
        model: Arc<ServedModel>,
        input: Vec<f32>,
        images: usize,
    ) -> oneshot::Receiver<Result<Computed, ServeError>> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            model,
            input,
            images,
            enqueued: Instant::now(),
            reply,
        };
        let mut state = lock(&self.state);
        if state.closing {
            let _ = job.reply.send(Err(ServeError::ShuttingDown));
            return rx;
        }
        state.queue.push_back(job);
        self.metrics.queue_depth.set(state.queue.len() as i64);
        drop(state);
        self.wake.notify_one();
        rx
    }

    /// Lets the workers finish what is queued, then stop.
    pub fn close(&self) {
        lock(&self.state).closing = true;
        self.wake.notify_all();
    }

    fn work(&self) {
        while let Some(batch) = self.next_batch() {
            self.run(batch);
        }
    }

    /// Waits for the next batch: the oldest job's model, as many of its queued jobs as fit in
    /// `max_batch` images, once the batch is full or the oldest job has waited `max_delay`.
    /// `None` once closing and the queue is empty.
    fn next_batch(&self) -> Option<Vec<Job>> {
        let mut state = lock(&self.state);
        loop {
            // A client that gave up (timeout, closed connection) no longer needs its job run.
            state.queue.retain(|j| !j.reply.is_closed());
            let Some(front) = state.queue.front() else {
                if state.closing {
                    return None;
                }
                state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            let waited = front.enqueued.elapsed();
            let model = Arc::clone(&front.model);
            let same: usize = state
                .queue
                .iter()
                .filter(|j| Arc::ptr_eq(&j.model, &model))
                .map(|j| j.images)
                .sum();
            if same < self.max_batch && waited < self.max_delay && !state.closing {
                let rest = self.max_delay - waited;
                state = self
                    .wake
                    .wait_timeout(state, rest)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            }
            let mut batch = Vec::new();
            let mut images = 0;
            let mut kept = VecDeque::with_capacity(state.queue.len());
            for job in state.queue.drain(..) {
                let fits = batch.is_empty() || images + job.images <= self.max_batch;
                if Arc::ptr_eq(&job.model, &model) && fits {
                    images += job.images;
                    batch.push(job);
                } else {
                    kept.push_back(job);
                }
            }
            state.queue = kept;
            self.metrics.queue_depth.set(state.queue.len() as i64);
            if !state.queue.is_empty() {
                // Another worker may take the next batch while this one computes.
                self.wake.notify_one();
            }
            return Some(batch);
        }
    }

    /// Runs one batch and answers each of its jobs.
    fn run(&self, batch: Vec<Job>) {
        let model = Arc::clone(&batch[0].model);
        let name = model.name.as_str();
        let images: usize = batch.iter().map(|j| j.images).sum();
        let started = Instant::now();
        let mut input = Vec::with_capacity(images * model.predictor.input_len());
        let mut parts = Vec::with_capacity(batch.len());
        for mut job in batch {
            self.metrics
                .queue_seconds
                .with_label_values(&[name])
                .observe(started.duration_since(job.enqueued).as_secs_f64());
            input.append(&mut job.input);
            parts.push((job.images, job.reply));
        }
        // A panic in a kernel must fail this batch only, not the worker or the server.
        let result = catch_unwind(AssertUnwindSafe(|| model.predictor.score(input)))
            .unwrap_or_else(|_| {
                Err(rd_model::ModelError::Config(
                    "the forward pass panicked".into(),
                ))
            });
        let seconds = started.elapsed().as_secs_f64();
        self.metrics
            .compute_seconds
            .with_label_values(&[name])
            .observe(seconds);
        self.metrics
            .batch_size
            .with_label_values(&[name])
            .observe(images as f64);
        tracing::debug!(model = name, images, seconds, "batch computed");
        match result {
            Ok(out) => {
                let (h, w) = model.predictor.input_size();
                let mut first = 0;
                for (n, reply) in parts {
                    let computed = Computed {
                        scores: out.scores[first..first + n].to_vec(),
                        maps: out.maps[first * h * w..(first + n) * h * w].to_vec(),
                    };
                    first += n;
                    let _ = reply.send(Ok(computed));
                }
            }
            Err(e) => {
                tracing::error!(model = name, error = %e, "batch failed");
                for (_, reply) in parts {
                    let _ = reply.send(Err(ServeError::Compute(e.to_string())));
                }
            }
        }
    }
}
