//! Liveness, readiness, and the KServe Open Inference Protocol v2 metadata routes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::preprocess::Layout;

/// Liveness: the process answers.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: the model is loaded and warmed up, and the server is not draining.
pub async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    if state.draining.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting_down"})),
        );
    }
    match state.serving.get() {
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading", "model": state.config.model.name})),
        ),
        Some(serving) => {
            let pool = &serving.pool;
            let spec = pool.spec();
            let log_error = serving.log.as_ref().and_then(|l| l.degraded());
            (
                StatusCode::OK,
                Json(json!({
                    "status": if log_error.is_some() { "degraded" } else { "ready" },
                    "log": match (&serving.log, &log_error) {
                        (None, _) => json!("disabled"),
                        (Some(_), None) => json!("ok"),
                        (Some(_), Some(e)) => json!({"error": e}),
                    },
                    "model": spec.name,
                    "model_version": spec.version,
                    "execution_provider": spec.execution_provider.to_string(),
                    "in_flight": state.in_flight(),
                    "queue_depth": pool.queue_depth(),
                })),
            )
        }
    }
}

pub async fn v2_server() -> Json<Value> {
    Json(json!({
        "name": "shiftwatch",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
}

pub async fn v2_live() -> Json<Value> {
    Json(json!({"live": true}))
}

pub async fn v2_ready(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    let ready = state.ready().is_ok();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"ready": ready})))
}

pub async fn v2_model_ready(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    state.check_model(&model)?;
    Ok(v2_ready(State(state)).await)
}

/// Model metadata in the v2 shape: name, versions, platform, input and output tensors.
pub async fn v2_model(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.check_model(&model)?;
    let spec = state.ready()?.pool.spec();
    let image_shape = spec.preprocess.image_shape();
    let mut outputs = vec![json!({
        "name": spec.probabilities_output,
        "datatype": "FP32",
        "shape": [-1, spec.num_classes() as i64],
    })];
    if let (Some(name), Some(dim)) = (&spec.embedding_output, spec.embedding_dim) {
        outputs.push(json!({"name": name, "datatype": "FP32", "shape": [-1, dim as i64]}));
    }
    Ok(Json(json!({
        "name": spec.name,
        "versions": [spec.version],
        "platform": "onnxruntime_onnx",
        "inputs": [{
            "name": spec.input_name,
            "datatype": "FP32",
            "shape": [-1, image_shape[0], image_shape[1], image_shape[2]],
            "parameters": {
                "layout": match spec.preprocess.layout { Layout::Nchw => "NCHW", Layout::Nhwc => "NHWC" },
            },
        }],
        "outputs": outputs,
    })))
}
