//! The Open Inference Protocol (KServe v2, Triton's HTTP API): metadata, readiness and
//! `infer` with an FP32 tensor `[N, 3, H, W]` (resized and normalised) or a BYTES tensor of
//! base64-encoded image files. Outputs are named as anomalib's exported models name them and
//! hold what those compute: the normalised score and map, and the label and mask from them.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use rd_model::MASK_THRESHOLD;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{Result, ServeError};
use crate::http::{blocking, compute, decode, App};
use crate::registry::ServedModel;

/// The outputs of `infer`, in the order they are returned.
const OUTPUTS: [&str; 4] = ["pred_score", "pred_label", "anomaly_map", "pred_mask"];

pub(crate) async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "rd",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": [],
    }))
}

/// `GET /v2/models`: every served model (an extension; the page uses it).
pub(crate) async fn list_models(State(app): State<Arc<App>>) -> Json<Value> {
    let models: Vec<Value> = app
        .registry
        .all()
        .iter()
        .map(|m| {
            let [h, w] = m.predictor.meta().image_size;
            json!({
                "name": m.name,
                "version": m.stamp.version(),
                "file": m.path.file_name().map(|f| f.to_string_lossy()),
                "backbone": m.predictor.meta().backbone,
                "image_size": [h, w],
                "ready": true,
            })
        })
        .collect();
    Json(json!({ "models": models }))
}

pub(crate) async fn model_metadata(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Response {
    let started = Instant::now();
    let result = app.model(&name).map(|m| Json(metadata(&m)).into_response());
    app.finish("metadata", &name, started, result)
}

pub(crate) async fn model_ready(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    let ready = app.registry.get(&name).is_some();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    (status, Json(json!({ "name": name, "ready": ready }))).into_response()
}

/// A model's inputs, outputs, shapes and thresholds.
fn metadata(m: &ServedModel) -> Value {
    let meta = m.predictor.meta();
    let [h, w] = meta.image_size;
    let post = &meta.post;
    json!({
        "name": m.name,
        "versions": [m.stamp.version()],
        "platform": "rd-reverse-distillation",
        "inputs": [
            { "name": "input", "datatype": "FP32", "shape": [-1, 3, h, w] },
        ],
        "outputs": [
            { "name": "pred_score", "datatype": "FP32", "shape": [-1] },
            { "name": "pred_label", "datatype": "BOOL", "shape": [-1] },
            { "name": "anomaly_map", "datatype": "FP32", "shape": [-1, 1, h, w] },
            { "name": "pred_mask", "datatype": "BOOL", "shape": [-1, 1, h, w] },
        ],
        "parameters": {
            "backbone": meta.backbone,
            "variant": meta.variant,
            "image_size": [h, w],
            "normalization": meta.normalization,
            "image_threshold": post.image_threshold,
            "pixel_threshold": post.pixel_threshold,
            "image_min": post.image_min,
            "image_max": post.image_max,
            "pixel_min": post.pixel_min,
            "pixel_max": post.pixel_max,
            "bytes_input": "a BYTES tensor [N] of base64-encoded PNG/JPEG/BMP/TIFF files is accepted too; they are resized and normalised as rd predict does",
        },
    })
}

#[derive(Debug, Deserialize)]
struct InferRequest {
    #[serde(default)]
    id: Option<String>,
    inputs: Vec<InferInput>,
    #[serde(default)]
    outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Debug, Deserialize)]
struct InferInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    data: Value,
}

#[derive(Debug, Deserialize)]
struct RequestedOutput {
    name: String,
}

#[derive(Debug, Serialize)]
struct InferOutput {
    name: &'static str,
    datatype: &'static str,
    shape: Vec<usize>,
    data: Value,
}

pub(crate) async fn infer(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    let started = Instant::now();
    let result = infer_inner(&app, &name, req).await;
    app.finish("infer", &name, started, result)
}

async fn infer_inner(app: &Arc<App>, name: &str, req: Request) -> Result<Response> {
    let model = app.model(name)?;
    app.admitted(req, |guard, req| async move {
        let (_, body) = app.body(req).await?;
        let options = app.load_options();
        let m = Arc::clone(&model);
        let (request, input, n) = blocking(&guard, move || {
            let request: InferRequest = serde_json::from_slice(&body).map_err(|e| {
                ServeError::BadRequest(format!("the body is not a KServe v2 infer request: {e}"))
            })?;
            let (input, n) = tensor_input(&m, &request, &options)?;
            Ok((request, input, n))
        })
        .await?;
        let wanted = requested_outputs(&request)?;
        let computed = compute(app, &model, input, n).await?;
        let (h, w) = model.predictor.input_size();
        let p = &model.predictor;
        let image_norm = p.image_normalizer();
        let pixel_norm = p.pixel_normalizer();
        let mut outputs = Vec::new();
        for out in wanted {
            let output = match out {
                "pred_score" => InferOutput {
                    name: out,
                    datatype: "FP32",
                    shape: vec![n],
                    data: json!(image_norm.normalize_all(&computed.scores)),
                },
                "pred_label" if !image_norm.is_identity() => InferOutput {
                    name: out,
                    datatype: "BOOL",
                    shape: vec![n],
                    data: json!(computed
                        .scores
                        .iter()
                        .map(|&s| image_norm.is_anomalous(s))
                        .collect::<Vec<_>>()),
                },
                "anomaly_map" => InferOutput {
                    name: out,
                    datatype: "FP32",
                    shape: vec![n, 1, h, w],
                    data: json!(pixel_norm.normalize_all(&computed.maps)),
                },
                "pred_mask" if !pixel_norm.is_identity() => InferOutput {
                    name: out,
                    datatype: "BOOL",
                    shape: vec![n, 1, h, w],
                    data: json!(computed
                        .maps
                        .iter()
                        .map(|&v| pixel_norm.normalize(v) > MASK_THRESHOLD)
                        .collect::<Vec<_>>()),
                },
                _ => continue,
            };
            outputs.push(output);
        }
        let mut answer = json!({
            "model_name": model.name,
            "model_version": model.stamp.version(),
            "outputs": outputs,
            "parameters": { "raw_scores": computed.scores },
        });
        if let Some(id) = &request.id {
            answer["id"] = json!(id);
        }
        Ok(Json(answer).into_response())
    })
    .await
}

/// The outputs to return: those asked for, else all (labels and masks only where the model
/// file has the statistics to compute them).
fn requested_outputs(request: &InferRequest) -> Result<Vec<&'static str>> {
    let Some(asked) = &request.outputs else {
        return Ok(OUTPUTS.to_vec());
    };
    asked
        .iter()
        .map(|o| {
            OUTPUTS
                .iter()
                .find(|&&k| k == o.name)
                .copied()
                .ok_or_else(|| {
                    ServeError::BadTensor(format!(
                        "unknown output `{}`: this model has {}",
                        o.name,
                        OUTPUTS.join(", ")
                    ))
                })
        })
        .collect()
}

/// The prepared images of the request's one input tensor, and how many there are.
fn tensor_input(
    model: &ServedModel,
    request: &InferRequest,
    options: &rd_dataset::LoadOptions,
) -> Result<(Vec<f32>, usize)> {
    let [input] = request.inputs.as_slice() else {
        return Err(ServeError::BadTensor(format!(
            "expected exactly one input tensor, got {}",
            request.inputs.len()
        )));
    };
    let (h, w) = model.predictor.input_size();
    let shape: Vec<usize> = input
        .shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| {
            ServeError::BadTensor(format!(
                "input `{}` has a negative dimension in its shape {:?}",
                input.name, input.shape
            ))
        })?;
    match input.datatype.as_str() {
        "FP32" => {
            let [n, 3, hh, ww] = shape[..] else {
                return Err(wrong_shape(&input.name, &input.shape, h, w));
            };
            if (hh, ww) != (h, w) || n == 0 {
                return Err(wrong_shape(&input.name, &input.shape, h, w));
            }
            let mut data = Vec::with_capacity(n * 3 * h * w);
            flatten_numbers(&input.data, &mut data, &input.name)?;
            if data.len() != n * 3 * h * w {
                return Err(ServeError::BadTensor(format!(
                    "input `{}` has shape {:?}, which needs {} values, but it holds {}",
                    input.name,
                    input.shape,
                    n * 3 * h * w,
                    data.len()
                )));
            }
            Ok((data, n))
        }
        "BYTES" => {
            let n = match shape[..] {
                [n] | [n, 1] if n > 0 => n,
                _ => {
                    return Err(ServeError::BadTensor(format!(
                        "BYTES input `{}` must have shape [N] (one encoded image each), got {:?}",
                        input.name, input.shape
                    )))
                }
            };
            let mut items = Vec::with_capacity(n);
            flatten_strings(&input.data, &mut items, &input.name)?;
            if items.len() != n {
                return Err(ServeError::BadTensor(format!(
                    "BYTES input `{}` has shape {:?} but holds {} elements",
                    input.name,
                    input.shape,
                    items.len()
                )));
            }
            let mut data = Vec::with_capacity(n * 3 * h * w);
            for (i, item) in items.iter().enumerate() {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(item)
                    .map_err(|e| {
                        ServeError::BadTensor(format!(
                            "element {i} of BYTES input `{}` is not base64: {e}",
                            input.name
                        ))
                    })?;
                let image = decode(&bytes, options).map_err(|e| {
                    ServeError::BadImage(format!("element {i} of input `{}`: {e}", input.name))
                })?;
                data.extend(model.predictor.prepare(&image));
            }
            Ok((data, n))
        }
        other => Err(ServeError::BadTensor(format!(
            "input `{}` has datatype {other}; send FP32 [N, 3, {h}, {w}] (resized and normalised) \
             or BYTES [N] (base64 image files)",
            input.name
        ))),
    }
}

fn wrong_shape(name: &str, shape: &[i64], h: usize, w: usize) -> ServeError {
    ServeError::BadTensor(format!(
        "input `{name}` has shape {shape:?}; this model takes FP32 [N, 3, {h}, {w}] (N ≥ 1), \
         resized and normalised"
    ))
}

/// The numbers of a flat or nested JSON array, in row-major order.
fn flatten_numbers(v: &Value, out: &mut Vec<f32>, name: &str) -> Result<()> {
    match v {
        Value::Array(items) => items
            .iter()
            .try_for_each(|item| flatten_numbers(item, out, name)),
        Value::Number(x) => {
            out.push(x.as_f64().unwrap_or(f64::NAN) as f32);
            Ok(())
        }
        other => Err(ServeError::BadTensor(format!(
            "FP32 input `{name}` holds a non-number ({other})"
        ))),
    }
}

/// The strings of a flat or nested JSON array.
fn flatten_strings<'a>(v: &'a Value, out: &mut Vec<&'a str>, name: &str) -> Result<()> {
    match v {
        Value::Array(items) => items
            .iter()
            .try_for_each(|item| flatten_strings(item, out, name)),
        Value::String(s) => {
            out.push(s);
            Ok(())
        }
        _ => Err(ServeError::BadTensor(format!(
            "BYTES input `{name}` must hold base64 strings"
        ))),
    }
}
