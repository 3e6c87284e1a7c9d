//! The HTTP API: routes, shared state, and the handlers for classify, feedback, metrics, health
//! and KServe v2.
//!
//! `router(state)` is the whole app; tests drive it over a socket. Handlers only parse, admit
//! and answer: decoding runs on the blocking pool, inference on the workers, logging on the log's
//! writer threads.

mod admin;
mod candidates;
mod classify;
pub mod config;
mod error;
mod feedback;
mod health;
mod infer;
mod similar;
pub mod v2;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use self::error::ApiError;
use crate::config::Config;
use crate::metrics::ProcessMetrics;
use crate::service::{ModelService, Services};

/// What every handler shares.
pub struct AppState {
    pub config: Arc<Config>,
    /// The series that belong to no model (requests to other routes, unknown feedback ids,
    /// the feedback log stream).
    pub metrics: ProcessMetrics,
    /// Set once every model is loaded and warmed up and the log is open: the readiness latch.
    pub services: OnceLock<Services>,
    /// Admission: one permit per request between reading its body and answering it.
    pub admission: Arc<Semaphore>,
    /// Set when shutdown begins: readiness turns false, new work is refused.
    pub draining: AtomicBool,
    /// Bytes of request bodies being received or held, at most `server.max_body_bytes_in_flight`.
    pub body_budget: Arc<Semaphore>,
    /// Decoded pixels and their working copies, at most `limits.decode_budget_bytes`.
    pub decode_budget: Arc<crate::preprocess::MemoryBudget>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("ready", &self.services.get().is_some())
            .finish()
    }
}

/// The model names of a config, for messages.
fn model_names(config: &Config) -> String {
    config
        .models
        .iter()
        .map(|m| m.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl AppState {
    pub fn new(config: Arc<Config>) -> Arc<Self> {
        let permits = config.inference.max_in_flight;
        let metrics = ProcessMetrics::new(if config.models.len() == 1 {
            Some(config.first_model().name.as_str())
        } else {
            None
        });
        let decode_budget = Arc::new(crate::preprocess::MemoryBudget::new(
            config.limits.decode_budget_bytes,
            Some(metrics.guard.decode_budget_in_use.clone()),
        ));
        Arc::new(AppState {
            metrics,
            services: OnceLock::new(),
            admission: Arc::new(Semaphore::new(permits)),
            draining: AtomicBool::new(false),
            body_budget: Arc::new(Semaphore::new(config.server.max_body_bytes_in_flight)),
            decode_budget,
            config,
        })
    }

    /// What serves requests, when every model is ready and the server is not draining.
    pub fn ready(&self) -> Result<&Services, ApiError> {
        let retry = self.config.server.retry_after_seconds;
        if self.draining.load(Ordering::Acquire) {
            return Err(ApiError::unavailable(
                "shutting_down",
                "the server is shutting down",
                retry,
            ));
        }
        self.services
            .get()
            .ok_or_else(|| ApiError::unavailable("not_ready", "the model is still loading", retry))
    }

    /// The served model `name`: 404 `unknown_model` when there is none, 503 before it is ready.
    pub fn model(&self, name: &str) -> Result<&Arc<ModelService>, ApiError> {
        if self.config.model(name).is_none() {
            return Err(ApiError::unknown_model(name, &model_names(&self.config)));
        }
        let services = self.ready()?;
        services
            .get(name)
            .ok_or_else(|| ApiError::unknown_model(name, &model_names(&self.config)))
    }

    /// The model a route without a model in its path means: `?model=` when given, else the
    /// first by name.
    pub fn model_or_default(&self, name: Option<&str>) -> Result<&Arc<ModelService>, ApiError> {
        match name {
            Some(n) => self.model(n),
            None => Ok(self.ready()?.default_model()),
        }
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

    /// 401 unless the request carries the configured bearer token (no token: open).
    pub fn check_token(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(expected) = &self.config.auth_token else {
            return Ok(());
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(config::bearer_token)
            .unwrap_or_default();
        let same = expected.matches(given);
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

/// JSON up to this many bytes is parsed on the async worker (cheaper than a hand-off).
pub const INLINE_JSON_BYTES: usize = 16 * 1024;

/// What parsing JSON into a tree may cost per byte of text at worst: `0,` is two bytes and
/// becomes a 32-byte value in an array.
const JSON_EXPANSION: u64 = 16;

impl AppState {
    /// Runs `parse` over `len` bytes of JSON: here when small; else on the blocking pool,
    /// after taking what the parsed tree may cost from the shared decode budget (so that many
    /// large JSON bodies at once wait or get 503 instead of multiplying memory).
    pub async fn parse_json<T: Send + 'static>(
        &self,
        len: usize,
        parse: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        if len <= INLINE_JSON_BYTES {
            return parse();
        }
        let budget = Arc::clone(&self.decode_budget);
        let wait = self.config.limits.decode_wait;
        let retry = self.config.server.retry_after_seconds;
        let guard = self.metrics.guard.clone();
        tokio::task::spawn_blocking(move || {
            let _grant = budget
                .acquire(len as u64 * JSON_EXPANSION, wait)
                .map_err(|e| {
                    if matches!(e, crate::preprocess::PreprocessError::Busy(_)) {
                        guard.decode_budget_refusals.inc();
                    }
                    match e {
                        crate::preprocess::PreprocessError::Busy(_) => ApiError::unavailable(
                            "overloaded",
                            "too much JSON is being parsed at once; retry later",
                            retry,
                        ),
                        _ => ApiError::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "payload_too_large",
                            format!(
                                "{len} bytes of JSON could need more than the whole decode budget (limits.decode_budget_bytes) to parse; send tensors as binary data"
                            ),
                        ),
                    }
                })?;
            parse()
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    }
}

/// What a received body holds of the shared body budget, until the request is answered.
#[derive(Debug)]
pub struct BodyHold(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl AppState {
    /// Reads a request body of at most `limit` bytes: 413 beyond it, 408 (and the connection
    /// closed) when it has not all arrived within `server.body_timeout_seconds`, 503 when the
    /// bodies being received together would pass `server.max_body_bytes_in_flight`.
    pub async fn read_body(
        &self,
        body: axum::body::Body,
        limit: usize,
    ) -> Result<(axum::body::Bytes, BodyHold), ApiError> {
        let mut frames = Vec::new();
        let hold = self
            .read_body_with(body, limit, |data| {
                frames.push(data);
                Ok(())
            })
            .await?;
        Ok((joined(frames), hold))
    }

    /// [`Self::read_body`] with the same limits, handing each frame of the body to `each` as
    /// it arrives (a frame is hyper's own buffer, not a copy), so that a handler can place the
    /// bytes where they are needed in one copy.
    pub async fn read_body_with(
        &self,
        body: axum::body::Body,
        limit: usize,
        each: impl FnMut(axum::body::Bytes) -> Result<(), ApiError>,
    ) -> Result<BodyHold, ApiError> {
        let deadline = self.config.server.body_timeout;
        let receiving = &self.metrics.guard.bodies_receiving;
        receiving.inc();
        // Counted down however the read ends (the future may also be dropped mid-read).
        struct Received<'a>(&'a prometheus::IntGauge);
        impl Drop for Received<'_> {
            fn drop(&mut self) {
                self.0.dec();
            }
        }
        let _received = Received(receiving);
        match tokio::time::timeout(deadline, self.collect_body(body, limit, each)).await {
            Ok(received) => received,
            Err(_) => {
                self.metrics.guard.body_timeouts.inc();
                Err(ApiError::body_timeout(deadline))
            }
        }
    }

    async fn collect_body(
        &self,
        body: axum::body::Body,
        limit: usize,
        mut each: impl FnMut(axum::body::Bytes) -> Result<(), ApiError>,
    ) -> Result<BodyHold, ApiError> {
        use axum::body::HttpBody;
        use http_body_util::BodyExt;
        let mut body = body;
        if body.size_hint().lower() > limit as u64 {
            return Err(ApiError::payload_too_large(limit));
        }
        let mut hold: Option<OwnedSemaphorePermit> = None;
        let mut len = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::bad_request("bad_body", format!("cannot read the body: {e}"))
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            len += data.len();
            if len > limit {
                return Err(ApiError::payload_too_large(limit));
            }
            let permit = u32::try_from(data.len())
                .ok()
                .and_then(|n| Arc::clone(&self.body_budget).try_acquire_many_owned(n).ok())
                .ok_or_else(|| {
                    ApiError::unavailable(
                        "overloaded",
                        "too many request bodies are being received at once; retry later",
                        self.config.server.retry_after_seconds,
                    )
                })?;
            match &mut hold {
                Some(h) => h.merge(permit),
                None => hold = Some(permit),
            }
            each(data)?;
        }
        Ok(BodyHold(hold))
    }
}

/// A body's frames as one buffer: one frame as it came (no copy); several copied once into a
/// buffer of their total length. Nothing is reserved ahead of the bytes that arrived (and that
/// the body budget counts): a client that announces a large body and stalls holds no more.
pub fn joined(frames: Vec<axum::body::Bytes>) -> axum::body::Bytes {
    match <[_; 1]>::try_from(frames) {
        Ok([one]) => one,
        Err(frames) => {
            let mut all = bytes::BytesMut::with_capacity(frames.iter().map(|f| f.len()).sum());
            for f in &frames {
                all.extend_from_slice(f);
            }
            all.freeze()
        }
    }
}

/// The whole HTTP app.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/models/{model}/classify", post(classify::classify))
        .route("/v1/feedback", post(feedback::feedback))
        .route("/v1/feedback/label-studio", post(feedback::label_studio))
        .route("/v1/monitor", get(monitor))
        .route("/v1/candidates", get(candidates::list))
        .route("/v1/candidates/export", post(candidates::export))
        .route("/v1/similar", get(similar::similar))
        .route("/v1/admin/models/{model}/reload", post(admin::reload))
        .route("/metrics", get(metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/v2", get(health::v2_server))
        .route("/v2/health/live", get(health::v2_live))
        .route("/v2/health/ready", get(health::v2_ready))
        .route("/v2/models/{model}", get(health::v2_model))
        .route("/v2/models/{model}/ready", get(health::v2_model_ready))
        .route("/v2/models/{model}/infer", post(infer::infer))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(health::v2_model_version),
        )
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(health::v2_model_version_ready),
        )
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(infer::infer_version),
        )
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
        "/v2/models/{model}/infer" | "/v2/models/{model}/versions/{version}/infer" => "infer",
        "/v1/feedback" | "/v1/feedback/label-studio" => "feedback",
        "/v1/monitor" => "monitor",
        "/v1/candidates" | "/v1/candidates/export" | "/v1/similar" => "candidates",
        "/v1/admin/models/{model}/reload" => "admin",
        "/metrics" => "metrics",
        "/v2" | "/v2/models/{model}" | "/v2/models/{model}/versions/{version}" => "metadata",
        _ => "health",
    }
}

/// The model a request path names (`/v1/models/{model}/…`, `/v2/models/{model}…`,
/// `/v1/admin/models/{model}/…`).
fn path_model(path: &str) -> Option<&str> {
    let rest = path
        .strip_prefix("/v1/models/")
        .or_else(|| path.strip_prefix("/v2/models/"))
        .or_else(|| path.strip_prefix("/v1/admin/models/"))?;
    rest.split('/').next().filter(|m| !m.is_empty())
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
    let model = path_model(request.uri().path()).map(str::to_string);
    let response = next.run(request).await;
    // A model's own routes count in its series; the rest (and unknown models) in the process's.
    let services = state.services.get();
    let families = match (services, model) {
        (Some(services), Some(name)) => services
            .get(&name)
            .map_or(&state.metrics.shared, |m| &m.metrics.shared),
        _ => &state.metrics.shared,
    };
    families
        .requests
        .with_label_values(&[endpoint, response.status().as_str()])
        .inc();
    families
        .request_duration
        .with_label_values(&[endpoint])
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut registries = vec![&state.metrics.registry];
    if let Some(services) = state.services.get() {
        registries.extend(services.registries());
    }
    let mut response = crate::metrics::render(&registries).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// `?model=NAME`, for routes whose path names no model.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelQuery {
    pub model: Option<String>,
}

/// `GET /v1/monitor[?model=NAME]`: the latest evaluation (made now if none has run yet).
async fn monitor(
    State(state): State<Arc<AppState>>,
    query: Result<axum::extract::Query<ModelQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(query) =
        query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let model = Arc::clone(state.model_or_default(query.model.as_deref())?);
    let snapshot = tokio::task::spawn_blocking(move || model.snapshot())
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "monitor_disabled",
                "the monitor is disabled (monitor.enabled = false)",
            )
        })?;
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
