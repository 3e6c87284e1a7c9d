//! Liveness, readiness, and the KServe Open Inference Protocol v2 metadata routes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::preprocess::Layout;
use crate::service::{ModelService, Version};

/// Liveness: the process answers.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: every model is loaded and warmed up, and the server is not draining. `degraded`
/// (still 200) while the log cannot write.
pub async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    if state.draining.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting_down"})),
        );
    }
    let Some(services) = state.services.get() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "loading",
                "models": state.config.models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            })),
        );
    };
    let log_error = services.log_degraded();
    let models: Vec<Value> = services
        .iter()
        .map(|m| {
            let v = m.current();
            json!({
                "model": m.name,
                "model_version": &*v.version,
                "execution_provider": v.spec.execution_provider.as_str(),
                "queue_depth": v.pool.queue_depth(),
                "monitor": v.monitor.is_some(),
            })
        })
        .collect();
    let first = services.default_model().current();
    (
        StatusCode::OK,
        Json(json!({
            "status": if log_error.is_some() { "degraded" } else { "ready" },
            "log": match (&services.log, &log_error) {
                (None, _) => json!("disabled"),
                (Some(_), None) => json!("ok"),
                (Some(_), Some(e)) => json!({"error": e}),
            },
            "model": services.default_model().name,
            "model_version": &*first.version,
            "execution_provider": first.spec.execution_provider.as_str(),
            "models": models,
            "in_flight": state.in_flight(),
            "receiving": state.metrics.guard.bodies_receiving.get(),
        })),
    )
}

pub async fn v2_server() -> Json<Value> {
    Json(json!({
        "name": "shiftwatch",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", "classification"],
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

/// The current version of `model` when it is `version`, else 404 `unknown_version`.
pub fn version_named(model: &ModelService, version: &str) -> Result<Arc<Version>, ApiError> {
    let current = model.current();
    if &*current.version == version {
        Ok(current)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_version",
            format!(
                "model `{}` serves version `{}`, not `{version}`",
                model.name, current.version
            ),
        ))
    }
}

pub async fn v2_model_ready(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let model = state.model(&model)?;
    let v = model.current();
    Ok(Json(
        json!({"name": model.name, "versions": [&*v.version], "ready": true}),
    ))
}

pub async fn v2_model_version_ready(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let model = state.model(&model)?;
    let v = version_named(model, &version)?;
    Ok(Json(
        json!({"name": model.name, "version": &*v.version, "ready": true}),
    ))
}

/// Model metadata in the v2 shape: name, versions, platform, input and output tensors.
pub async fn v2_model(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let model = state.model(&model)?;
    Ok(Json(metadata(&model.current())))
}

pub async fn v2_model_version(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let model = state.model(&model)?;
    Ok(Json(metadata(&*version_named(model, &version)?)))
}

fn metadata(version: &Version) -> Value {
    let spec = &version.spec;
    let image_shape = spec.preprocess.image_shape();
    let mut outputs = vec![json!({
        "name": spec.probabilities_output,
        "datatype": "FP32",
        "shape": [-1, spec.num_classes() as i64],
    })];
    if let (Some(name), Some(dim)) = (&spec.embedding_output, spec.embedding_dim) {
        outputs.push(json!({"name": name, "datatype": "FP32", "shape": [-1, dim as i64]}));
    }
    json!({
        "name": spec.name,
        "versions": [&*version.version],
        "platform": "onnxruntime_onnx",
        "inputs": [{
            "name": spec.input_name,
            "datatype": "FP32",
            "shape": [-1, image_shape[0], image_shape[1], image_shape[2]],
            "parameters": {
                "layout": match spec.preprocess.layout { Layout::Nchw => "NCHW", Layout::Nhwc => "NHWC" },
                "also_accepts": ["FP16", "UINT8", "BYTES (encoded images, shape [N])"],
            },
        }],
        "outputs": outputs,
    })
}
