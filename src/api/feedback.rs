//! `POST /v1/feedback`: delayed labels, one object or an array, stored in the log.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

use super::{ApiError, AppState};
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

pub async fn feedback(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    state.check_token(&headers)?;
    let services = state.ready()?;
    // MAX_ITEMS labels of a few hundred bytes each at most: the body is bounded before any
    // JSON is parsed, and a large one is parsed on the blocking pool.
    let limit = state.config.server.max_body_bytes.min(MAX_BODY_BYTES);
    let (bytes, _body) = state.read_body(body, limit).await?;
    let _permit = state.admit()?;
    let len = bytes.len();
    let value = state
        .parse_json(len, move || {
            serde_json::from_slice::<Value>(&bytes).map_err(|e| {
                ApiError::bad_request("bad_json", format!("the body is not valid JSON: {e}"))
            })
        })
        .await?;
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

    let ts_us = now_us();
    let mut results = Vec::with_capacity(items.len());
    let mut pending = Vec::new();
    let mut accepted = 0;
    for item in &items {
        let parsed = parse_item(item).and_then(|(id, label, source)| {
            services
                .resolve_label(&id, &label)
                .map(|(model, class)| (id, label, source, model, class))
        });
        let (id, label, source, model, class) = match parsed {
            Ok(p) => p,
            Err(error) => {
                state
                    .metrics
                    .shared
                    .feedback
                    .with_label_values(&[FeedbackOutcome::Invalid.as_str()])
                    .inc();
                results.push(ItemResult {
                    request_id: item
                        .get("request_id")
                        .and_then(Value::as_str)
                        .map(str::to_string),
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
    Ok((
        StatusCode::ACCEPTED,
        Json(FeedbackResponse { accepted, results }),
    )
        .into_response())
}
