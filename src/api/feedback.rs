//! `POST /v1/feedback`: delayed labels, one object or an array, stored in the log; and
//! `POST /v1/feedback/label-studio`: the same from Label Studio's webhooks and JSON exports.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

use super::{ApiError, AppState};
use crate::feedback::label_studio::{self, Payload};
use crate::log::{Durability, FeedbackRecord, durable};
use crate::metrics::FeedbackOutcome;
use crate::time::now_us;

/// Most labels one request may carry.
pub const MAX_ITEMS: usize = 10_000;

/// The largest feedback body: MAX_ITEMS items of about 400 bytes.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Serialize)]
struct ItemResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<String>,
    outcome: FeedbackOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct FeedbackResponse {
    accepted: usize,
    results: Vec<ItemResult>,
}

/// A valid item: (request id, label, source); the label is resolved to a model's class later.
fn parse_item(item: &Value) -> Result<(String, String, String), String> {
    let obj = item
        .as_object()
        .ok_or("each item must be an object with request_id and label")?;
    for key in obj.keys() {
        if !matches!(key.as_str(), "request_id" | "label" | "source") {
            return Err(format!(
                "unknown field `{key}` (known: request_id, label, source)"
            ));
        }
    }
    let id = obj
        .get("request_id")
        .and_then(Value::as_str)
        .ok_or("request_id must be a string")?;
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("request_id must be 1 to 128 visible ASCII characters".into());
    }
    let label = match obj.get("label") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err("label must be a class name (string)".into()),
    };
    let source = match obj.get("source") {
        None | Some(Value::Null) => "api".to_string(),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 64 => s.clone(),
        Some(_) => return Err("source must be a string of 1 to 64 characters".into()),
    };
    Ok((id.to_string(), label, source))
}

/// One item of a feedback body: a valid label, or why it is not one (with the request id
/// when it had one).
type ParsedItem = Result<(String, String, String), (Option<String>, String)>;

/// Reads a feedback body as JSON (bounded first; a large one on the blocking pool).
async fn read_json(state: &AppState, body: Body, limit: usize) -> Result<Value, ApiError> {
    let (bytes, _body) = state.read_body(body, limit).await?;
    let len = bytes.len();
    state
        .parse_json(len, move || {
            serde_json::from_slice::<Value>(&bytes).map_err(|e| {
                ApiError::bad_request("bad_json", format!("the body is not valid JSON: {e}"))
            })
        })
        .await
}

pub async fn feedback(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    state.check_token(&headers)?;
    state.ready()?;
    // MAX_ITEMS labels of a few hundred bytes each at most: the body is bounded before any
    // JSON is parsed, and a large one is parsed on the blocking pool.
    let limit = state.config.server.max_body_bytes.min(MAX_BODY_BYTES);
    let value = read_json(&state, body, limit).await?;
    let _permit = state.admit()?;
    let items = match value {
        Value::Array(items) => items,
        obj @ Value::Object(_) => vec![obj],
        _ => {
            return Err(ApiError::bad_request(
                "bad_json",
                "send an object {\"request_id\", \"label\"} or an array of them",
            ));
        }
    };
    if items.len() > MAX_ITEMS {
        return Err(ApiError::bad_request(
            "too_many_items",
            format!("at most {MAX_ITEMS} labels per request"),
        ));
    }
    let parsed = items
        .iter()
        .map(|item| {
            parse_item(item).map_err(|error| {
                let id = item.get("request_id").and_then(Value::as_str);
                (id.map(str::to_string), error)
            })
        })
        .collect();
    let (accepted, results) = store_labels(&state, parsed).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(FeedbackResponse { accepted, results }),
    )
        .into_response())
}

#[derive(Debug, Serialize)]
struct LabelStudioItem {
    #[serde(skip_serializing_if = "Option::is_none")]
    task_id: Option<i64>,
    #[serde(flatten)]
    result: ItemResult,
}

#[derive(Debug, Serialize)]
struct SkippedTask {
    task_id: Option<i64>,
    reason: &'static str,
}

#[derive(Debug, Serialize)]
struct LabelStudioResponse {
    /// `export`, the webhook's action, or the ignored webhook's action.
    payload: String,
    ignored: bool,
    accepted: usize,
    results: Vec<LabelStudioItem>,
    skipped: Vec<SkippedTask>,
}

/// `POST /v1/feedback/label-studio`: Label Studio's webhook bodies and JSON exports
/// (`feedback::label_studio`), each task's label stored as `/v1/feedback` stores it, with
/// source `label-studio`.
pub async fn label_studio(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    state.check_token(&headers)?;
    state.ready()?;
    // An export carries each task's data, predictions and annotations: a few KB per task.
    let limit = state.config.server.max_body_bytes;
    let value = read_json(&state, body, limit).await?;
    let _permit = state.admit()?;
    let parsed = label_studio::parse(&value, MAX_ITEMS)
        .map_err(|e| ApiError::bad_request("bad_label_studio_payload", e.to_string()))?;
    let (payload, ignored) = match &parsed.payload {
        Payload::Export => ("export".to_string(), false),
        Payload::Webhook(action) => (action.as_str().to_string(), false),
        Payload::IgnoredWebhook(action) => (action.clone(), true),
    };
    let mut task_ids = Vec::new();
    let mut labels = Vec::new();
    let mut skipped = Vec::new();
    for item in parsed.items {
        match item {
            label_studio::Item::Label {
                task_id,
                request_id,
                label,
            } => {
                task_ids.push(task_id);
                labels.push(Ok((request_id, label, SOURCE_LABEL_STUDIO.to_string())));
            }
            label_studio::Item::Invalid { task_id, error } => {
                task_ids.push(task_id);
                labels.push(Err((None, error)));
            }
            label_studio::Item::Skipped { task_id, reason } => {
                skipped.push(SkippedTask { task_id, reason });
            }
        }
    }
    let (accepted, results) = store_labels(&state, labels).await?;
    let results = task_ids
        .into_iter()
        .zip(results)
        .map(|(task_id, result)| LabelStudioItem { task_id, result })
        .collect();
    Ok((
        StatusCode::ACCEPTED,
        Json(LabelStudioResponse {
            payload,
            ignored,
            accepted,
            results,
            skipped,
        }),
    )
        .into_response())
}

/// The `source` of labels that came from Label Studio.
const SOURCE_LABEL_STUDIO: &str = "label-studio";

/// Resolves, counts and stores each item; answers once the labels are in the write-ahead log
/// (strict: fsynced). Returns how many were accepted and each item's outcome, in order.
async fn store_labels(
    state: &AppState,
    items: Vec<ParsedItem>,
) -> Result<(usize, Vec<ItemResult>), ApiError> {
    let services = state.ready()?;
    let ts_us = now_us();
    let mut results = Vec::with_capacity(items.len());
    let mut pending = Vec::new();
    let mut accepted = 0;
    for item in items {
        let parsed =
            item.and_then(
                |(id, label, source)| match services.resolve_label(&id, &label) {
                    Ok((model, class)) => Ok((id, label, source, model, class)),
                    Err(error) => Err((Some(id), error)),
                },
            );
        let (id, label, source, model, class) = match parsed {
            Ok(p) => p,
            Err((request_id, error)) => {
                state
                    .metrics
                    .shared
                    .feedback
                    .with_label_values(&[FeedbackOutcome::Invalid.as_str()])
                    .inc();
                results.push(ItemResult {
                    request_id,
                    outcome: FeedbackOutcome::Invalid,
                    error: Some(error),
                });
                continue;
            }
        };
        let record = FeedbackRecord {
            request_id: id.clone(),
            ts_us,
            label,
            class,
            source,
        };
        let (outcome, appended) = services.label(model, record, &state.metrics);
        match appended {
            Ok(appended) => pending.extend(appended),
            Err(e) if services.log.as_ref().map(|l| l.durability()) == Some(Durability::Strict) => {
                return Err(ApiError::unavailable(
                    "log_unavailable",
                    format!("the label could not be stored: {e}"),
                    state.config.server.retry_after_seconds,
                ));
            }
            // Not strict: the row is dropped and counted; the label still counts.
            Err(_) => {}
        }
        accepted += 1;
        results.push(ItemResult {
            request_id: Some(id),
            outcome,
            error: None,
        });
    }
    // Answered once the labels are in the write-ahead log (strict: fsynced); outside strict
    // mode a label the log could not write is dropped and counted, and the answer goes out.
    let strict = services.log.as_ref().map(|l| l.durability()) == Some(Durability::Strict);
    for appended in pending {
        match durable(appended).await {
            Ok(()) => {}
            Err(e) if strict => {
                return Err(ApiError::unavailable(
                    "log_unavailable",
                    format!("the labels could not be made durable: {e}"),
                    state.config.server.retry_after_seconds,
                ));
            }
            Err(_) => {}
        }
    }
    Ok((accepted, results))
}
