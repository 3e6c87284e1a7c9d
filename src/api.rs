//! The HTTP API: routes, shared state, and the handlers for classify, health and KServe v2.
//!
//! `router(state)` is the whole app; tests drive it in-process or over a socket. Handlers only
//! parse, admit and answer: decoding runs on the blocking pool and inference on the workers.

mod classify;
mod error;
mod health;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use tokio::sync::Semaphore;

pub use self::error::ApiError;
use crate::config::Config;
use crate::inference::InferencePool;

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    pub config: Config,
    /// Set once the model is loaded and warmed up: the readiness latch.
    pub pool: OnceLock<InferencePool>,
    /// Admission: one permit per request between reading its body and answering it.
    pub admission: Arc<Semaphore>,
    /// Set when shutdown begins: readiness turns false, new work is refused.
    pub draining: AtomicBool,
}

impl AppState {
    pub fn new(config: Config) -> Arc<Self> {
        let permits = config.inference.max_in_flight;
        Arc::new(AppState {
            config,
            pool: OnceLock::new(),
            admission: Arc::new(Semaphore::new(permits)),
            draining: AtomicBool::new(false),
        })
    }

    /// The pool, when the model is ready and the server is not draining.
    pub fn ready_pool(&self) -> Result<&InferencePool, ApiError> {
        let retry = self.config.server.retry_after_seconds;
        if self.draining.load(Ordering::Acquire) {
            return Err(ApiError::unavailable(
                "shutting_down",
                "the server is shutting down",
                retry,
            ));
        }
        self.pool
            .get()
            .ok_or_else(|| ApiError::unavailable("not_ready", "the model is still loading", retry))
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
}

/// The whole HTTP app.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/models/{model}/classify", post(classify::classify))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/v2", get(health::v2_server))
        .route("/v2/health/live", get(health::v2_live))
        .route("/v2/health/ready", get(health::v2_ready))
        .route("/v2/models/{model}", get(health::v2_model))
        .route("/v2/models/{model}/ready", get(health::v2_model_ready))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
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
