//! `GET /v1/similar?request_id=ID&k=N`: the predictions whose embeddings lie nearest to ID's,
//! among those the sidecar still holds (bearer token when configured).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiError, AppState};

/// Neighbours one call returns without `k`, and at most.
pub const DEFAULT_K: usize = 10;
pub const MAX_K: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimilarQuery {
    request_id: String,
    k: Option<usize>,
    model: Option<String>,
}

pub async fn similar(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<SimilarQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    state.check_token(&headers)?;
    let services = state.ready()?;
    let Query(query) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let k = query.k.unwrap_or(DEFAULT_K);
    if !(1..=MAX_K).contains(&k) {
        return Err(ApiError::bad_request(
            "bad_query",
            format!("k must be 1 to {MAX_K}"),
        ));
    }
    let models: Vec<Arc<crate::service::ModelService>> = match query.model.as_deref() {
        Some(name) => vec![Arc::clone(state.model(name)?)],
        None => services.iter().cloned().collect(),
    };
    let _permit = state.admit()?;
    let id = query.request_id.clone();
    // An exact scan over up to `feedback.match_window` embeddings: the blocking pool's work.
    let found = tokio::task::spawn_blocking(move || models.iter().find_map(|m| m.similar(&id, k)))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    match found {
        Some(neighbors) => Ok(Json(serde_json::json!({
            "request_id": query.request_id,
            "neighbors": neighbors,
        }))
        .into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_request_id",
            format!(
                "no embedding is held for request id {:?} (it is neither a recent prediction \
                 nor a stored candidate)",
                query.request_id.chars().take(128).collect::<String>()
            ),
        )),
    }
}
