//! The one error type of the HTTP API: a status, a machine code and a message, as JSON.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::inference::InferenceError;
use crate::preprocess::PreprocessError;
use crate::service::{RecordError, ReloadError};

/// An error answer: `{"error": "<message>", "code": "<machine_code>"}` with its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for `Retry-After` (503 answers).
    pub retry_after: Option<u64>,
    /// Close the connection after this answer (`Connection: close`): the rest of the request
    /// was not read.
    pub close: bool,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    code: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            close: false,
        }
    }

    /// 408: the body did not arrive in time; the connection is closed.
    pub fn body_timeout(limit: std::time::Duration) -> Self {
        ApiError {
            close: true,
            ..Self::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {} s",
                    limit.as_secs_f64()
                ),
            )
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unknown_model(name: &str, served: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_model",
            format!("unknown model `{name}`; this sidecar serves `{served}`"),
        )
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is over the limit of {limit} bytes"),
        )
    }

    pub fn from_preprocess(e: PreprocessError, retry_after: u64) -> Self {
        match e {
            PreprocessError::UnsupportedMediaType(m) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                m,
            ),
            PreprocessError::BadImage(m) => {
                Self::bad_request("bad_image", format!("cannot decode the image: {m}"))
            }
            PreprocessError::TooLarge(m) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "image_too_large",
                format!("image too large: {m}"),
            ),
            PreprocessError::Busy(m) => Self::unavailable("overloaded", m, retry_after),
        }
    }

    pub fn from_inference(e: InferenceError, retry_after: u64) -> Self {
        match e {
            InferenceError::QueueFull => Self::unavailable(
                "overloaded",
                "the inference queue is full; retry later",
                retry_after,
            ),
            InferenceError::Closed => {
                Self::unavailable("shutting_down", "the server is shutting down", retry_after)
            }
            InferenceError::Failed(m) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "inference_failed",
                format!("inference failed: {m}"),
            ),
        }
    }

    pub fn from_record(e: RecordError, retry_after: u64) -> Self {
        match e {
            RecordError::LogUnavailable(m) => Self::unavailable(
                "log_unavailable",
                format!("the prediction could not be logged durably: {m}"),
                retry_after,
            ),
        }
    }

    pub fn from_reload(e: ReloadError) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            match e {
                ReloadError::Invalid(_) => "model_not_loaded",
                ReloadError::ClassesChanged { .. } => "classes_changed",
            },
            e.to_string(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() && self.status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(code = self.code, error = %self.message, "request failed");
        }
        let body = Json(ErrorBody {
            error: &self.message,
            code: self.code,
        });
        let mut response = (self.status, body).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.close {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}
