//! The Prometheus metrics `GET /metrics` exposes.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds, from 1 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Every metric of one server, registered in its own registry.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    registry: Registry,
    /// Answered requests by model, endpoint and status code.
    pub requests: IntCounterVec,
    /// End-to-end request latency by model and endpoint.
    pub request_seconds: HistogramVec,
    /// Time from a request's arrival in the queue to the start of its batch, by model.
    pub queue_seconds: HistogramVec,
    /// Time of one forward pass, by model.
    pub compute_seconds: HistogramVec,
    /// Images per forward pass, by model.
    pub batch_size: HistogramVec,
    /// Requests waiting for a batch.
    pub queue_depth: IntGauge,
    /// Requests accepted and not yet answered.
    pub in_flight: IntGauge,
    /// Models being served.
    pub models_loaded: IntGauge,
    /// Model files loaded (or failed to load) after the start, by result.
    pub reloads: IntCounterVec,
}

impl Metrics {
    /// Fresh metrics; `max_batch` sets the batch-size buckets.
    pub fn new(max_batch: usize) -> Self {
        let registry = Registry::new();
        let latency = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                labels,
            )
            .expect("valid histogram options");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric names");
            h
        };
        let request_seconds = latency(
            "rd_request_duration_seconds",
            "End-to-end request latency.",
            &["model", "endpoint"],
        );
        let queue_seconds = latency(
            "rd_queue_duration_seconds",
            "Time requests wait in the queue before their batch starts.",
            &["model"],
        );
        let compute_seconds = latency(
            "rd_compute_duration_seconds",
            "Time of one batched forward pass.",
            &["model"],
        );
        let mut buckets: Vec<f64> = (0..)
            .map(|k| f64::from(1u32 << k))
            .take_while(|&b| b < max_batch as f64)
            .collect();
        buckets.push(max_batch as f64);
        let batch_size = HistogramVec::new(
            HistogramOpts::new("rd_batch_size", "Images per forward pass.").buckets(buckets),
            &["model"],
        )
        .expect("valid histogram options");
        let requests = IntCounterVec::new(
            Opts::new("rd_requests_total", "Answered requests."),
            &["model", "endpoint", "status"],
        )
        .expect("valid counter options");
        let reloads = IntCounterVec::new(
            Opts::new(
                "rd_model_loads_total",
                "Model files loaded from the folder after the start.",
            ),
            &["result"],
        )
        .expect("valid counter options");
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid gauge options");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric names");
            g
        };
        let queue_depth = gauge("rd_queue_depth", "Requests waiting for a batch.");
        let in_flight = gauge(
            "rd_in_flight_requests",
            "Requests accepted and not yet answered.",
        );
        let models_loaded = gauge("rd_models_loaded", "Models being served.");
        for c in [&requests, &reloads] {
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric names");
        }
        registry
            .register(Box::new(batch_size.clone()))
            .expect("unique metric names");
        Metrics {
            registry,
            requests,
            request_seconds,
            queue_seconds,
            compute_seconds,
            batch_size,
            queue_depth,
            in_flight,
            models_loaded,
            reloads,
        }
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail on I/O; a metric family error would be a bug here.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}
