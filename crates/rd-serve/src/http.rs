//! The routes, `POST /predict/{model}`, and what every request goes through: model lookup,
//! admission (503 when full), the body limit (413), the timeout (504) and the metrics.

use std::future::Future;
use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use image::RgbImage;
use rd_dataset::{load_rgb_bytes, DatasetError, LoadOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::ServeConfig;
use crate::error::{Result, ServeError};
use crate::metrics::Metrics;
use crate::registry::{Registry, ServedModel};
use crate::render::draw;
use crate::scheduler::{Computed, Scheduler};
use crate::v2;

/// The page for people at the line, served as it is.
const PAGE: &str = include_str!("page.html");

/// What every handler shares.
pub(crate) struct App {
    pub registry: Arc<Registry>,
    pub scheduler: Arc<Scheduler>,
    pub metrics: Metrics,
    pub permits: Arc<Semaphore>,
    pub config: ServeConfig,
}

/// All routes of the service.
pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/predict/{model}", post(predict))
        .route("/metrics", get(metrics))
        .route("/v2", get(v2::server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models", get(v2::list_models))
        .route("/v2/models/{model}", get(v2::model_metadata))
        .route("/v2/models/{model}/ready", get(v2::model_ready))
        .route("/v2/models/{model}/infer", post(v2::infer))
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(
                    tower_http::trace::DefaultMakeSpan::new().level(tracing::Level::DEBUG),
                )
                .on_request(())
                .on_response(
                    tower_http::trace::DefaultOnResponse::new()
                        .level(tracing::Level::DEBUG)
                        .latency_unit(tower_http::LatencyUnit::Micros),
                )
                .on_failure(()),
        )
        .with_state(app)
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "live": true }))
}

async fn ready(State(app): State<Arc<App>>) -> Response {
    let ready = !app.registry.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(serde_json::json!({ "ready": ready }))).into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

/// One admitted request: holds its place in the queue and the in-flight gauge until the
/// handler and all its blocking work are done, however the request ends.
pub(crate) struct InFlightGuard {
    metrics: Metrics,
    _permit: OwnedSemaphorePermit,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
    }
}

impl App {
    /// The served model `name`, or 404.
    pub fn model(&self, name: &str) -> Result<Arc<ServedModel>> {
        self.registry
            .get(name)
            .ok_or_else(|| ServeError::UnknownModel(name.to_string()))
    }

    /// Runs `work` if there is room (else 503 at once) within the request timeout (else 504).
    /// Blocking work keeps a clone of the guard, so a timed-out request's decoding still counts
    /// until it stops.
    pub async fn admitted<T, F>(
        &self,
        req: Request,
        work: impl FnOnce(Arc<InFlightGuard>, Request) -> F,
    ) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            self.discard_body(req).await;
            return Err(ServeError::Overloaded(self.config.queue));
        };
        self.metrics.in_flight.inc();
        let guard = Arc::new(InFlightGuard {
            metrics: self.metrics.clone(),
            _permit: permit,
        });
        tokio::time::timeout(self.config.request_timeout, work(guard, req))
            .await
            .map_err(|_| ServeError::Timeout(self.config.request_timeout))?
    }

    /// Reads and drops a refused request's body (bounded in bytes and time), so the client,
    /// still sending it, reads the 503 instead of a reset connection. Nothing is kept.
    async fn discard_body(&self, req: Request) {
        use http_body_util::BodyExt;
        let limit = self.config.max_body_bytes;
        let mut body = req.into_body();
        let drain = async {
            let mut seen = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                seen += frame.data_ref().map_or(0, |d| d.len());
                if seen > limit {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
    }

    /// Counts and times an answered request.
    pub fn finish(
        &self,
        endpoint: &'static str,
        model: &str,
        started: Instant,
        result: Result<Response>,
    ) -> Response {
        let response = result.unwrap_or_else(|e| {
            if e.status().is_server_error() && !matches!(e, ServeError::Overloaded(_)) {
                tracing::warn!(endpoint, model, error = %e, "request failed");
            }
            e.into_response()
        });
        // Unknown names would make the label set grow without bound.
        let label = if self.registry.get(model).is_some() {
            model
        } else {
            "unknown"
        };
        self.metrics
            .requests
            .with_label_values(&[label, endpoint, response.status().as_str()])
            .inc();
        self.metrics
            .request_seconds
            .with_label_values(&[label, endpoint])
            .observe(started.elapsed().as_secs_f64());
        response
    }

    /// The whole body, or 413 past the limit.
    pub async fn body(&self, req: Request) -> Result<(HeaderMap, Bytes)> {
        let limit = self.config.max_body_bytes;
        let (parts, body) = req.into_parts();
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(ServeError::BodyTooLarge { limit });
        }
        let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(s) = source {
                if s.is::<http_body_util::LengthLimitError>() {
                    return ServeError::BodyTooLarge { limit };
                }
                source = s.source();
            }
            ServeError::BadRequest(format!("cannot read the request body: {e}"))
        })?;
        Ok((parts.headers, bytes))
    }

    /// Decoding options for uploads.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            max_pixels: self.config.max_pixels,
            ..LoadOptions::default()
        }
    }
}

/// Runs blocking work (decoding, drawing) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    guard: &Arc<InFlightGuard>,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let guard = Arc::clone(guard);
    tokio::task::spawn_blocking(move || {
        let _guard = guard;
        f()
    })
    .await
    .map_err(|e| ServeError::Compute(format!("a worker thread failed: {e}")))?
}

/// Queues prepared images and waits for their outputs.
pub(crate) async fn compute(
    app: &App,
    model: &Arc<ServedModel>,
    input: Vec<f32>,
    images: usize,
) -> Result<Computed> {
    app.scheduler
        .submit(Arc::clone(model), input, images)
        .await
        .map_err(|_| ServeError::ShuttingDown)?
}

/// Decodes image bytes into `[0, 1]` RGB, with messages for a client rather than a dataset.
pub(crate) fn decode(bytes: &[u8], options: &LoadOptions) -> Result<rd_dataset::RgbImage32> {
    load_rgb_bytes(bytes, FsPath::new("the image"), options).map_err(|e| {
        ServeError::BadImage(match e {
            DatasetError::EmptyFile { .. } => {
                "the body is empty: post the image file itself, or a multipart form with a field \
                 `image`"
                    .into()
            }
            DatasetError::UnknownFormat { .. } => {
                "the body is not a PNG, JPEG, BMP or TIFF image (its first bytes match none of \
                 these formats): post the image file itself, or a multipart form with a field \
                 `image`"
                    .into()
            }
            DatasetError::Decode { message, .. } => format!(
                "cannot decode the image: {message}; the file is probably truncated or corrupt"
            ),
            DatasetError::TooLarge {
                width,
                height,
                max_pixels,
                ..
            } => format!(
                "the image claims to be {width}x{height} pixels, more than the limit of \
                 {max_pixels} pixels: downscale it before sending"
            ),
            other => other.to_string(),
        })
    })
}

/// `?outputs=heatmap,mask`.
#[derive(Debug, Deserialize)]
pub(crate) struct PredictQuery {
    #[serde(default)]
    outputs: Option<String>,
}

/// Which drawings a predict request asked for.
#[derive(Debug, Clone, Copy, Default)]
struct Wanted {
    heatmap: bool,
    mask: bool,
}

impl Wanted {
    fn parse(q: Option<&str>) -> Result<Self> {
        let mut w = Wanted::default();
        for part in q.unwrap_or("").split(',').map(str::trim) {
            match part {
                "" => {}
                "heatmap" => w.heatmap = true,
                "mask" => w.mask = true,
                other => {
                    return Err(ServeError::BadRequest(format!(
                        "unknown output `{other}`: use ?outputs=heatmap, ?outputs=mask or \
                         ?outputs=heatmap,mask"
                    )))
                }
            }
        }
        Ok(w)
    }

    fn any(&self) -> bool {
        self.heatmap || self.mask
    }
}

/// The answer of `POST /predict/{model}`.
#[derive(Debug, Serialize)]
struct PredictResponse {
    model: String,
    score: f32,
    normalized_score: Option<f32>,
    label: Option<&'static str>,
    threshold: Option<f32>,
    image_size: ImageSize,
    #[serde(skip_serializing_if = "Option::is_none")]
    heatmap: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mask: Option<String>,
}

#[derive(Debug, Serialize)]
struct ImageSize {
    width: usize,
    height: usize,
}

async fn predict(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    query: std::result::Result<Query<PredictQuery>, QueryRejection>,
    req: Request,
) -> Response {
    let started = Instant::now();
    let result = predict_inner(&app, &name, query, req).await;
    app.finish("predict", &name, started, result)
}

async fn predict_inner(
    app: &Arc<App>,
    name: &str,
    query: std::result::Result<Query<PredictQuery>, QueryRejection>,
    req: Request,
) -> Result<Response> {
    let model = app.model(name)?;
    let Query(query) = query.map_err(|e| ServeError::BadRequest(e.body_text()))?;
    let wanted = Wanted::parse(query.outputs.as_deref())?;
    app.admitted(req, |guard, req| async move {
        let (headers, body) = app.body(req).await?;
        let bytes = image_bytes(&headers, body).await?;
        let options = app.load_options();
        let m = Arc::clone(&model);
        let (input, original, size) = blocking(&guard, move || {
            let image = decode(&bytes, &options)?;
            let original: Option<RgbImage> = wanted.any().then(|| image.to_rgb8());
            let size = ImageSize {
                width: image.width,
                height: image.height,
            };
            Ok((m.predictor.prepare(&image), original, size))
        })
        .await?;
        let computed = compute(app, &model, input, 1).await?;
        let score = computed.scores[0];
        let drawings = match original {
            Some(original) => {
                let m = Arc::clone(&model);
                blocking(&guard, move || {
                    draw(
                        &m.predictor,
                        &original,
                        &computed.maps,
                        wanted.heatmap,
                        wanted.mask,
                    )
                })
                .await?
            }
            None => Default::default(),
        };
        let p = &model.predictor;
        let verdict = p.verdict(score);
        let threshold = if p.image_normalizer().is_identity() {
            p.meta().post.image_threshold
        } else {
            Some(p.image_normalizer().effective_threshold())
        };
        Ok(Json(PredictResponse {
            model: model.name.clone(),
            score,
            normalized_score: verdict.normalized_score,
            label: verdict
                .anomalous
                .map(|a| if a { "anomalous" } else { "normal" }),
            threshold,
            image_size: size,
            heatmap: drawings.heatmap,
            mask: drawings.mask,
        })
        .into_response())
    })
    .await
}

/// The image of a predict body: the body itself, or the `image` field of a multipart form.
async fn image_bytes(headers: &HeaderMap, body: Bytes) -> Result<Bytes> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if !is_form {
        return Ok(body);
    }
    let mut req = Request::new(Body::from(body));
    *req.headers_mut() = headers.clone();
    let mut form = Multipart::from_request(req, &()).await.map_err(|e| {
        ServeError::BadRequest(format!("invalid multipart form: {}", e.body_text()))
    })?;
    let bad = |e: axum::extract::multipart::MultipartError| {
        ServeError::BadRequest(format!("invalid multipart form: {}", e.body_text()))
    };
    while let Some(field) = form.next_field().await.map_err(bad)? {
        if field.name() == Some("image") {
            return field.bytes().await.map_err(bad);
        }
    }
    Err(ServeError::BadRequest(
        "the form has no field `image`: send the picture as the form field `image`".into(),
    ))
}
