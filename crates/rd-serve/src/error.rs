//! The crate's error type, and how each error answers an HTTP request.

use std::path::PathBuf;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Result alias used throughout the crate.
pub type Result<T, E = ServeError> = std::result::Result<T, E>;

/// Everything that can go wrong starting the service or answering one request.
///
/// Request errors answer with their own status code and a JSON body `{"error": "..."}` that says
/// what to change; none of them affects another request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The request names a model that is not in the model folder (404).
    #[error("no model named `{0}` is served; GET /v2/models lists the models in the folder")]
    UnknownModel(String),

    /// The body is not an image `rd predict` reads (400).
    #[error("{0}")]
    BadImage(String),

    /// The request is malformed: a bad query, a form without its `image` field, invalid JSON (400).
    #[error("{0}")]
    BadRequest(String),

    /// A KServe v2 tensor has the wrong name, type, shape or number of values (400).
    #[error("{0}")]
    BadTensor(String),

    /// The body is larger than `--max-body-mb` (413).
    #[error(
        "the request body is larger than the limit of {limit} bytes: send a smaller image or \
         start rd serve with a larger --max-body-mb"
    )]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },

    /// The queue is full; the client should retry after a moment (503 with `Retry-After`).
    #[error(
        "the server is at capacity ({0} requests queued or running): retry in a moment, or run \
         more replicas"
    )]
    Overloaded(usize),

    /// The request outlived its timeout (504).
    #[error("the request took longer than its timeout of {0:?}; the server is overloaded or the image too large")]
    Timeout(Duration),

    /// The model failed on a batch (500).
    #[error("the model failed: {0}")]
    Compute(String),

    /// The server is shutting down and takes no new work (503).
    #[error("the server is shutting down")]
    ShuttingDown,

    /// The model folder cannot be read.
    #[error("cannot read the model folder {}: {source}; pass an existing folder of .safetensors model files with --models", path.display())]
    ModelsDir {
        /// The folder.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The listening socket cannot be opened.
    #[error("cannot listen on {addr}: {source}; choose another --addr")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Config(String),

    /// The async runtime or a worker thread could not be started.
    #[error("cannot start the server's threads: {0}")]
    Runtime(#[source] std::io::Error),
}

impl ServeError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ServeError::UnknownModel(_) => StatusCode::NOT_FOUND,
            ServeError::BadImage(_) | ServeError::BadRequest(_) | ServeError::BadTensor(_) => {
                StatusCode::BAD_REQUEST
            }
            ServeError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ServeError::Overloaded(_) | ServeError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ServeError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = axum::Json(serde_json::json!({ "error": self.to_string() }));
        let mut response = (status, body).into_response();
        if matches!(self, ServeError::Overloaded(_) | ServeError::ShuttingDown) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
