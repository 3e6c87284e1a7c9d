//! The HTTP API: routes, shared state, and the handlers for classify, feedback, metrics, health
//! and KServe v2.
//!
//! `router(state)` is the whole app; tests drive it over a socket. Handlers only parse, admit
//! and answer: decoding runs on the blocking pool, inference on the workers, logging on the log's
//! writer threads.

mod candidates;
mod classify;
mod error;
mod feedback;
mod health;
mod infer;
mod record;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::Semaphore;

pub use self::error::ApiError;
use crate::config::Config;
use crate::feedback::RecentPredictions;
use crate::inference::InferencePool;
use crate::log::PredictionLog;
use crate::metrics::Metrics;
use crate::monitor::Monitor;
use crate::relabel::Candidates;

/// What exists once the model is loaded: the readiness latch holds it.
#[derive(Debug)]
pub struct Serving {
    pub pool: InferencePool,
    pub log: Option<PredictionLog>,
    pub recent: RecentPredictions,
    pub monitor: Option<Arc<Monitor>>,
    pub candidates: Option<Candidates>,
}

/// What every handler shares.
pub struct AppState {
    pub config: Config,
    pub metrics: Metrics,
    /// Set once the model is loaded and warmed up and the log is open: the readiness latch.
    pub serving: OnceLock<Serving>,
    /// Admission: one permit per request between reading its body and answering it.
    pub admission: Arc<Semaphore>,
    /// Set when shutdown begins: readiness turns false, new work is refused.
    pub draining: AtomicBool,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("model", &self.config.model.name)
            .field("ready", &self.serving.get().is_some())
            .finish()
    }
}

impl AppState {
    pub fn new(config: Config) -> Arc<Self> {
        let permits = config.inference.max_in_flight;
        let metrics = Metrics::new(&config.model.name);
        Arc::new(AppState {
            config,
            metrics,
            serving: OnceLock::new(),
            admission: Arc::new(Semaphore::new(permits)),
            draining: AtomicBool::new(false),
        })
    }

    /// What serves requests, when the model is ready and the server is not draining.
    pub fn ready(&self) -> Result<&Serving, ApiError> {
        let retry = self.config.server.retry_after_seconds;
        if self.draining.load(Ordering::Acquire) {
            return Err(ApiError::unavailable(
                "shutting_down",
                "the server is shutting down",
                retry,
            ));
        }
        self.serving
            .get()
            .ok_or_else(|| ApiError::unavailable("not_ready", "the model is still loading", retry))
    }

    /// Admits one request (held until it is answered), or 503 `overloaded` with Retry-After.
    pub fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        Arc::clone(&self.admission)
            .try_acquire_owned()
            .map_err(|_| {
                ApiError::unavailable(
                    "overloaded",
                    "too many requests in flight; retry later",
                    self.config.server.retry_after_seconds,
                )
            })
    }

    /// Requests admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.config.inference.max_in_flight - self.admission.available_permits()
    }

    /// 404 unless `name` is the served model.
    pub fn check_model(&self, name: &str) -> Result<(), ApiError> {
        if name == self.config.model.name {
            Ok(())
        } else {
            Err(ApiError::unknown_model(name, &self.config.model.name))
        }
    }

    /// 401 unless the request carries the configured bearer token (no token: open).
    pub fn check_token(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(expected) = &self.config.auth_token else {
            return Ok(());
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        // Compare without an early exit on the first differing byte.
        let same = given.len() == expected.len()
            && given
                .bytes()
                .zip(expected.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if same {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token",
            ))
        }
    }
}

/// Reads a request body of at most `limit` bytes (413 beyond it).
pub async fn read_body(
    body: axum::body::Body,
    limit: usize,
) -> Result<axum::body::Bytes, ApiError> {
    use http_body_util::{BodyExt, LengthLimitError, Limited};
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::payload_too_large(limit))
        }
        Err(e) => Err(ApiError::bad_request(
            "bad_body",
            format!("cannot read the body: {e}"),
        )),
    }
}

/// The whole HTTP app.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/models/{model}/classify", post(classify::classify))
        .route("/v1/feedback", post(feedback::feedback))
        .route("/v1/monitor", get(monitor))
        .route("/v1/candidates", get(candidates::list))
        .route("/v1/candidates/export", post(candidates::export))
        .route("/metrics", get(metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/v2", get(health::v2_server))
        .route("/v2/health/live", get(health::v2_live))
        .route("/v2/health/ready", get(health::v2_ready))
        .route("/v2/models/{model}", get(health::v2_model))
        .route("/v2/models/{model}/ready", get(health::v2_model_ready))
        .route("/v2/models/{model}/infer", post(infer::infer))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            track_requests,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// The `endpoint` label of a route (a fixed set).
fn endpoint_label(route: &str) -> &'static str {
    match route {
        "/v1/models/{model}/classify" => "classify",
        "/v2/models/{model}/infer" => "infer",
        "/v1/feedback" => "feedback",
        "/v1/monitor" => "monitor",
        "/v1/candidates" | "/v1/candidates/export" => "candidates",
        "/metrics" => "metrics",
        "/v2" | "/v2/models/{model}" => "metadata",
        _ => "health",
    }
}

async fn track_requests(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("health", |p| endpoint_label(p.as_str()));
    let response = next.run(request).await;
    state
        .metrics
        .requests
        .with_label_values(&[endpoint, response.status().as_str()])
        .inc();
    state
        .metrics
        .request_duration
        .with_label_values(&[endpoint])
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut response = state.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// `GET /v1/monitor`: the latest evaluation (made now if none has run yet).
async fn monitor(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let serving = state.ready()?;
    let Some(monitor) = serving.monitor.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "monitor_disabled",
            "the monitor is disabled (monitor.enabled = false)",
        ));
    };
    let snapshot = match monitor.latest() {
        Some(s) => s,
        None => tokio::task::spawn_blocking(move || monitor.evaluate_now())
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?,
    };
    Ok(axum::Json(snapshot.as_ref().clone()).into_response())
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}
