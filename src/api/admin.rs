//! `POST /v1/admin/models/{model}/reload` (bearer token when configured): load a model file,
//! warm it up and swap it in without failing a request; 422 when it does not load, and the old
//! version keeps serving.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, AppState};

/// The optional body: another file and its reference profile.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReloadRequest {
    path: Option<PathBuf>,
    reference: Option<PathBuf>,
}

pub async fn reload(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    state.check_token(&headers)?;
    let model = Arc::clone(state.model(&model)?);
    let (bytes, _body) = state.read_body(body, 64 * 1024).await?;
    let request: ReloadRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        ReloadRequest::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::bad_request(
                "bad_json",
                format!("expected an empty body or {{\"path\", \"reference\"}}: {e}"),
            )
        })?
    };
    let reloaded = tokio::task::spawn_blocking(move || {
        model.reload(request.path.as_deref(), request.reference.as_deref())
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(ApiError::from_reload)?;
    Ok(Json(json!({
        "model": reloaded.model,
        "model_version": reloaded.model_version,
        "previous_version": reloaded.previous_version,
        "reference": reloaded.reference.map(|p| p.display().to_string()),
    }))
    .into_response())
}
