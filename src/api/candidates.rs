//! `GET /v1/candidates` and `POST /v1/candidates/export` (bearer token when configured).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState};
use crate::relabel::export::{ExportError, Propagated, write_package};
use crate::relabel::select::{Reason, reasons, select};
use crate::relabel::{Candidates, StoredCandidate};
use crate::service::ModelService;
use crate::time::rfc3339;

/// Most candidates one call returns or exports.
pub const MAX_LIMIT: usize = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<usize>,
    model: Option<String>,
}

#[derive(Debug, Serialize)]
struct CandidateDto {
    request_id: String,
    score: f64,
    reasons: Vec<Reason>,
    predicted_label: String,
    confidence: f32,
    stored_at: String,
}

fn store<'a>(state: &'a AppState, model: Option<&str>) -> Result<&'a ModelService, ApiError> {
    let model = state.model_or_default(model)?;
    model.candidates.as_ref().map(|_| &**model).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "candidates_disabled",
            "relabel candidates are disabled (candidates.enabled = false)",
        )
    })
}

fn check_limit(limit: Option<usize>, default: usize) -> Result<usize, ApiError> {
    match limit.unwrap_or(default) {
        0 => Err(ApiError::bad_request(
            "bad_query",
            "limit must be at least 1",
        )),
        n if n > MAX_LIMIT => Err(ApiError::bad_request(
            "bad_query",
            format!("limit must be at most {MAX_LIMIT}"),
        )),
        n => Ok(n),
    }
}

/// The selection from the stored pool, best first.
pub fn choose(store: &Candidates, limit: usize) -> Vec<StoredCandidate> {
    let stored = store.list();
    let pool: Vec<_> = stored.iter().map(|s| s.candidate.clone()).collect();
    select(&pool, limit, &store.config().selection)
        .into_iter()
        .map(|i| stored[i].clone())
        .collect()
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    state.check_token(&headers)?;
    let _permit = state.admit()?;
    let Query(query) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let model = store(&state, query.model.as_deref())?;
    let store = model.candidates.as_ref().expect("checked by `store`");
    let limit = check_limit(query.limit, store.config().default_limit)?;
    let cfg = &store.config().selection;
    let chosen = choose(store, limit);
    let candidates: Vec<CandidateDto> = chosen
        .into_iter()
        .map(|c| CandidateDto {
            score: c.score,
            reasons: reasons(&c.candidate, cfg),
            predicted_label: c.predicted_label,
            confidence: c.candidate.confidence,
            stored_at: rfc3339(c.stored_at_us),
            request_id: c.candidate.request_id,
        })
        .collect();
    Ok(Json(serde_json::json!({ "candidates": candidates })).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportRequest {
    limit: Option<usize>,
    name: Option<String>,
    model: Option<String>,
}

pub async fn export(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    state.check_token(&headers)?;
    let (bytes, _body) = state.read_body(body, 64 * 1024).await?;
    let _permit = state.admit()?;
    let request: ExportRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        ExportRequest::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::bad_request("bad_json", format!("expected {{\"limit\", \"name\"}}: {e}"))
        })?
    };
    store(&state, request.model.as_deref())?;
    let model = Arc::clone(state.model_or_default(request.model.as_deref())?);
    let limit = {
        let store = model.candidates.as_ref().expect("checked by `store`");
        check_limit(request.limit, store.config().default_limit)?
    };
    let name = request.name.unwrap_or_else(|| {
        let id = uuid::Uuid::now_v7().simple().to_string();
        format!("candidates-{}", &id[..16])
    });
    let labels = model.current().spec.labels.clone();
    // Reading the stored images and writing the package are file work: the blocking pool's.
    let exporting = Arc::clone(&model);
    let written = tokio::task::spawn_blocking(move || {
        let store = exporting.candidates.as_ref().expect("checked by `store`");
        let cfg = store.config().selection.clone();
        let root = store.config().export_dir.clone();
        let prefix = store.config().image_url_prefix.clone();
        let chosen = choose(store, limit);
        let mut items = Vec::with_capacity(chosen.len());
        for c in &chosen {
            // A candidate evicted since the selection, or kept from a model with other classes,
            // is skipped.
            if !labels.contains(&c.predicted_label) {
                continue;
            }
            let Ok(image) = store.image(c) else { continue };
            let mut item = c.export_item(image, &cfg);
            let max = store.config().propagation_max_distance;
            if max > 0.0 {
                item.propagated = exporting
                    .nearest_labeled(&c.candidate.vector, &c.candidate.request_id)
                    .filter(|(_, label, distance)| *distance <= max && labels.contains(label))
                    .map(|(request_id, label, distance)| Propagated {
                        request_id,
                        label,
                        distance,
                    });
            }
            items.push(item);
        }
        let count = items.len();
        std::fs::create_dir_all(&root)
            .map_err(|e| ExportError::Io {
                path: root.clone(),
                source: e,
            })
            .and_then(|()| write_package(&root, &name, &items, &labels, &prefix))
            .map(|p| (p, name, count))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    match written {
        Ok((path, name, count)) => {
            model.metrics.candidates_exported.inc_by(count as u64);
            Ok((
                StatusCode::CREATED,
                Json(serde_json::json!({"name": name, "path": path.display().to_string(), "count": count})),
            )
                .into_response())
        }
        Err(e) => Err(export_error(e)),
    }
}

fn export_error(e: ExportError) -> ApiError {
    match e {
        ExportError::InvalidName { .. } => ApiError::bad_request("bad_name", e.to_string()),
        ExportError::Exists { .. } => {
            ApiError::new(StatusCode::CONFLICT, "export_exists", e.to_string())
        }
        other => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "export_failed",
            other.to_string(),
        ),
    }
}
