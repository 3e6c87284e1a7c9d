//! `POST /v1/models/{model}/classify`: image bytes in, the prediction out.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use sha2::{Digest, Sha256};

use super::{ApiError, AppState};
use crate::image_stats::{Descriptor, describe};
use crate::log::{Endpoint, ImageInfo};
use crate::model::ModelSpec;
use crate::prediction::{Flag, top_k};
use crate::preprocess::{self, format_for_media_type};
use crate::service::{ImageInput, Prediction};
use crate::time::now_us;
use image::ImageFormat;

/// The header that carries the caller's request id (echoed in the answer).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyQuery {
    top_k: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct ClassPrediction {
    pub class: usize,
    pub label: String,
    pub probability: f32,
}

#[derive(Debug, Serialize)]
pub struct ClassifyResponse {
    pub request_id: String,
    pub model: String,
    pub model_version: String,
    pub predictions: Vec<ClassPrediction>,
    pub confidence: f32,
    pub margin: f32,
    pub entropy: f32,
    pub flags: Vec<Flag>,
    /// The conformal prediction set (class indices, highest probability first), present only
    /// when `[monitor] prediction_set_coverage` is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction_set: Option<Vec<usize>>,
}

/// The caller's id when it is usable (1..=128 visible ASCII characters), else a new UUIDv7.
pub fn request_id(headers: &HeaderMap) -> Result<String, ApiError> {
    match headers.get(REQUEST_ID_HEADER) {
        None => Ok(uuid::Uuid::now_v7().to_string()),
        Some(v) => {
            let s = v.to_str().unwrap_or_default();
            if s.is_empty() || s.len() > 128 || !s.bytes().all(|b| b.is_ascii_graphic()) {
                Err(ApiError::bad_request(
                    "bad_request_id",
                    "x-request-id must be 1 to 128 visible ASCII characters",
                ))
            } else {
                Ok(s.to_string())
            }
        }
    }
}

/// Bodies at most this large may be decoded on the async worker itself.
const INLINE_DECODE_MAX_BYTES: usize = 16 * 1024;

/// The most decode cost ([`preprocess::decode_cost`]: pixels, conversions and resize rows) an
/// image decoded on the async worker may have: about 60 rows of a small image, tens of
/// microseconds of work, less than the hop to the blocking pool and back costs.
const INLINE_DECODE_MAX_COST: u64 = 256 * 1024;

/// Decodes an encoded image for `spec`: the model's input tensor, what the log and the
/// monitor keep of the image (size, sha256, dHash, input statistics) and its descriptor (for
/// the out-of-distribution score). Its pixels are admitted
/// against the shared decode budget once the header says what they will cost. A small image
/// whose header promises little work, and whose cost the budget grants at once, is decoded
/// right here on the async worker (cheaper than a hop to the blocking pool: see the README's
/// performance section); every other image goes to the blocking pool, where a large one waits
/// for others to finish (at most `limits.decode_wait_seconds`), then gets 503 with Retry-After.
pub async fn decode_image(
    state: &AppState,
    bytes: axum::body::Bytes,
    declared: Option<ImageFormat>,
    spec: Arc<ModelSpec>,
) -> Result<(Vec<f32>, ImageInfo, Descriptor), ApiError> {
    let limits = state.config.limits;
    let retry_after = state.config.server.retry_after_seconds;
    if bytes.len() <= INLINE_DECODE_MAX_BYTES {
        let budget = Arc::clone(&state.decode_budget);
        // Declined: too costly for this worker, or the budget would make it wait.
        let mut declined = false;
        let inline = decode_prepared(&bytes, declared, &limits, &spec, |cost| {
            if cost > INLINE_DECODE_MAX_COST {
                declined = true;
                return Err(preprocess::PreprocessError::Busy(
                    "decode on the pool".into(),
                ));
            }
            budget
                .acquire(cost, std::time::Duration::ZERO)
                .inspect_err(|e| {
                    declined = matches!(e, preprocess::PreprocessError::Busy(_));
                })
        });
        if !declined {
            return inline.map_err(|e| ApiError::from_preprocess(e, retry_after));
        }
    }
    let budget = Arc::clone(&state.decode_budget);
    let guard = state.metrics.guard.clone();
    tokio::task::spawn_blocking(move || {
        decode_prepared(&bytes, declared, &limits, &spec, |cost| {
            let grant = budget.acquire(cost, limits.decode_wait);
            match &grant {
                Ok(g) if g.waited => guard.decode_budget_waits.inc(),
                Err(preprocess::PreprocessError::Busy(_)) => {
                    guard.decode_budget_waits.inc();
                    guard.decode_budget_refusals.inc();
                }
                _ => {}
            }
            grant
        })
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("preprocessing task failed: {e}"),
        )
    })?
    .map_err(|e| ApiError::from_preprocess(e, retry_after))
}

/// Decode (admitted by `admit` once the header is read), tensor, statistics, hashes and the
/// descriptor.
fn decode_prepared(
    bytes: &[u8],
    declared: Option<ImageFormat>,
    limits: &preprocess::DecodeLimits,
    spec: &ModelSpec,
    admit: impl FnOnce(u64) -> Result<preprocess::BudgetGrant, preprocess::PreprocessError>,
) -> Result<(Vec<f32>, ImageInfo, Descriptor), preprocess::PreprocessError> {
    let (decoded, grant) = preprocess::decode_admitted(bytes, declared, limits, admit)?;
    let mut tensor = vec![0f32; spec.preprocess.tensor_len()];
    preprocess::to_tensor(&decoded.image, &spec.preprocess, &mut tensor);
    let described = describe(&decoded.image);
    let image = ImageInfo {
        bytes: bytes.len() as i64,
        sha256: hex::encode(Sha256::digest(bytes)),
        dhash: described.dhash,
        stats: described.stats,
    };
    // The pixels go now; so does their share of the budget.
    drop(decoded);
    drop(grant);
    Ok((tensor, image, described.descriptor))
}

pub async fn classify(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    query: Result<Query<ClassifyQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let ts_us = now_us();
    let model = state.model(&model)?;
    let server = &state.config.server;
    let Query(query) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let top_k_n = query.top_k.unwrap_or(server.default_top_k);
    if top_k_n == 0 {
        return Err(ApiError::bad_request(
            "bad_query",
            "top_k must be at least 1",
        ));
    }
    let request_id = request_id(&headers)?;

    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
    let declared = match headers.get(header::CONTENT_TYPE).map(|v| v.to_str()) {
        None => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "set Content-Type to the image's type (image/png, image/jpeg, image/webp, image/gif, image/bmp, image/tiff)",
            ));
        }
        Some(Ok(ct)) if ct.trim().eq_ignore_ascii_case("application/octet-stream") => None,
        Some(Ok(ct)) if format_for_media_type(ct).is_some() => format_for_media_type(ct),
        Some(ct) => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "unsupported Content-Type `{}`; send image/png, image/jpeg, image/webp, image/gif, image/bmp or image/tiff",
                    ct.unwrap_or("<not text>")
                ),
            ));
        }
    };
    let limit = server.max_body_bytes;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(ApiError::payload_too_large(limit));
    }

    // Admission once the body is here: a client still sending holds no slot that decoding
    // and inference need.
    let (bytes, _body) = state.read_body(body, limit).await?;
    let _permit = state.admit()?;

    // The version serving now answers this request, even if a reload swaps it meanwhile.
    let version = model.current();
    let spec = Arc::clone(&version.spec);
    let (tensor, info, descriptor) =
        decode_image(&state, bytes.clone(), declared, Arc::clone(&spec)).await?;
    let retry = server.retry_after_seconds;
    let inferred = version
        .infer(tensor, Some(&descriptor))
        .await
        .map_err(|e| ApiError::from_inference(e, retry))?;
    let served = model
        .record(
            &version,
            Prediction {
                request_id: request_id.clone(),
                ts_us,
                started,
                inferred,
                image: Some(ImageInput {
                    info,
                    descriptor,
                    bytes,
                    content_type,
                }),
                endpoint: Endpoint::Classify,
            },
        )
        .await
        .map_err(|e| ApiError::from_record(e, retry))?;
    let summary = served.summary;
    let predictions = top_k(&served.output.probabilities, top_k_n)
        .into_iter()
        .map(|(class, probability)| ClassPrediction {
            class,
            label: spec.labels[class].clone(),
            probability,
        })
        .collect();
    let flags = served.flags;
    let answer = ClassifyResponse {
        request_id: request_id.clone(),
        model: spec.name.clone(),
        model_version: spec.version.clone(),
        predictions,
        confidence: summary.confidence,
        margin: summary.margin,
        entropy: summary.entropy,
        flags,
        prediction_set: served.prediction_set,
    };
    let mut response = Json(answer).into_response();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    Ok(response)
}
