//! `POST /v2/models/{model}[/versions/{version}]/infer`: the KServe Open Inference Protocol v2
//! as `tritonclient` speaks it (parsing and encoding in [`super::v2`]). Every image of the batch
//! is monitored and logged like a classify prediction (endpoint `infer`); with a batch of N the
//! rows' request ids are `<id>/<i>`. BYTES inputs carry encoded images and are decoded like
//! classify (input statistics, dHash, candidates); tensors go straight to the model.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::classify::{REQUEST_ID_HEADER, decode_image, request_id};
use super::v2::{self, Encoding, Input, OutputData, V2Error};
use super::{ApiError, AppState};
use crate::log::Endpoint;
use crate::service::{ImageInput, ModelService, Prediction, Version};
use crate::time::now_us;

/// The binary-data extension's header: the length of the JSON part of the body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

impl From<V2Error> for ApiError {
    fn from(e: V2Error) -> Self {
        let status = if e.unprocessable {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(status, e.code, e.message)
    }
}

/// An `Inference-Header-Content-Length` that is not a number, or points past the body.
fn bad_header_length() -> ApiError {
    ApiError::bad_request(
        "bad_header",
        format!("{HEADER_LENGTH} must be a length within the body"),
    )
}

pub async fn infer(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let model = Arc::clone(state.model(&model)?);
    let version = model.current();
    run(&state, &model, version, headers, body).await
}

pub async fn infer_version(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let model = Arc::clone(state.model(&model)?);
    let current = super::health::version_named(&model, &version)?;
    run(&state, &model, current, headers, body).await
}

async fn run(
    state: &AppState,
    model: &ModelService,
    version: Arc<Version>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let ts_us = now_us();
    let limit = state.config.server.max_body_bytes;
    let retry = state.config.server.retry_after_seconds;
    let json_len = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(bad_header_length)?,
        ),
    };
    let encoding = match headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
    {
        None => None,
        Some(e) if e.trim().eq_ignore_ascii_case("identity") => None,
        Some(e) => Some(Encoding::parse(e).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_encoding",
                format!("Content-Encoding `{e}` is not gzip or deflate"),
            )
        })?),
    };
    // Admission once the body is here (a client still sending holds no slot).
    let (json, binary, _body, _permit) = match (encoding, json_len) {
        // Binary data, not compressed: the JSON part and the binary part are taken apart as
        // the frames arrive (the binary part's frames kept as hyper gave them), then the binary
        // part is copied once into its words.
        (None, Some(json_len)) => {
            let mut json = Vec::new();
            let mut frames: Vec<Bytes> = Vec::new();
            let hold = state
                .read_body_with(body, limit, |mut data| {
                    if json.len() < json_len {
                        let take = (json_len - json.len()).min(data.len());
                        json.extend_from_slice(&data[..take]);
                        data = data.slice(take..);
                    }
                    if !data.is_empty() {
                        frames.push(data);
                    }
                    Ok(())
                })
                .await?;
            let permit = state.admit()?;
            if json.len() < json_len {
                return Err(bad_header_length());
            }
            let binary = v2::Binary::from_pieces(&frames);
            (Bytes::from(json), binary, hold, permit)
        }
        (encoding, json_len) => {
            let (raw, hold) = state.read_body(body, limit).await?;
            let permit = state.admit()?;
            let bytes: Bytes = match encoding {
                None => raw,
                Some(encoding) => {
                    // The body limit applies after decompression.
                    tokio::task::spawn_blocking(move || v2::decompress(&raw, encoding, limit))
                        .await
                        .map_err(|e| {
                            ApiError::new(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "internal",
                                e.to_string(),
                            )
                        })?
                        .map_err(|(too_large, message)| {
                            if too_large {
                                ApiError::payload_too_large(limit)
                            } else {
                                ApiError::bad_request("bad_encoding", message)
                            }
                        })?
                        .into()
                }
            };
            let json_len = match json_len {
                None => bytes.len(),
                Some(n) if n <= bytes.len() => n,
                Some(_) => return Err(bad_header_length()),
            };
            if json_len == bytes.len() {
                (bytes, v2::Binary::default(), hold, permit)
            } else {
                let binary = v2::Binary::from_slice(&bytes[json_len..]);
                // The JSON part copied out, so that the whole body goes now.
                (
                    Bytes::copy_from_slice(&bytes[..json_len]),
                    binary,
                    hold,
                    permit,
                )
            }
        }
    };
    let json_len = json.len();
    let spec = Arc::clone(&version.spec);
    let parse = {
        let spec = Arc::clone(&spec);
        move || {
            let ports = v2::ModelPorts {
                input: &spec.input_name,
                image_shape: spec.preprocess.image_shape(),
                probabilities: &spec.probabilities_output,
                embedding: spec.embedding_output.as_deref(),
            };
            v2::parse_request_binary(&json, binary, &ports)
        }
    };
    // A small request is parsed here; a large one on the blocking pool under the budget.
    let request = state
        .parse_json(json_len, move || parse().map_err(ApiError::from))
        .await?;
    let base_id = match request.id {
        Some(id) => id,
        None => request_id(&headers)?,
    };
    let n = request.input.len();
    let capacity = version.pool.capacity();
    if n > capacity {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!(
                "{n} images in one request is more than the inference queue holds ({capacity}, inference.max_in_flight); send at most {capacity} per request"
            ),
        ));
    }
    let per_image = spec.preprocess.tensor_len();
    // Images and their tensors, in order.
    let mut inputs: Vec<(Vec<f32>, Option<ImageInput>)> = Vec::with_capacity(n);
    match request.input {
        // One image's tensor is moved, not copied.
        Input::Tensor { values, .. } if n == 1 => inputs.push((values, None)),
        Input::Tensor { values, .. } => {
            inputs.extend(values.chunks_exact(per_image).map(|c| (c.to_vec(), None)));
        }
        Input::Images(images) => {
            for image in images {
                let bytes = Bytes::from(image);
                let (tensor, info, descriptor) =
                    decode_image(state, bytes.clone(), None, Arc::clone(&spec)).await?;
                inputs.push((
                    tensor,
                    Some(ImageInput {
                        info,
                        descriptor,
                        bytes,
                        content_type: None,
                    }),
                ));
            }
        }
    }
    // Every image through the shared queue (batched with other requests' images).
    let mut receivers = Vec::with_capacity(n);
    for (tensor, image) in inputs {
        let receiver = version
            .submit(tensor, image.as_ref().map(|i| &i.descriptor))
            .map_err(|e| ApiError::from_inference(e, retry))?;
        receivers.push((receiver, image));
    }
    let mut probabilities = Vec::with_capacity(n * spec.num_classes());
    let mut embeddings = Vec::new();
    for (i, (receiver, image)) in receivers.into_iter().enumerate() {
        let inferred = receiver
            .await
            .map_err(|_| ApiError::from_inference(crate::inference::InferenceError::Closed, retry))?
            .map_err(|e| ApiError::from_inference(e, retry))?;
        let row_id = if n == 1 {
            base_id.clone()
        } else {
            format!("{base_id}/{i}")
        };
        let served = model
            .record(
                &version,
                Prediction {
                    request_id: row_id,
                    ts_us,
                    started,
                    inferred,
                    image,
                    endpoint: Endpoint::Infer,
                },
            )
            .await
            .map_err(|e| ApiError::from_record(e, retry))?;
        probabilities.extend_from_slice(&served.output.probabilities);
        if let Some(e) = served.output.embedding {
            embeddings.extend(e);
        }
    }

    let k = spec.num_classes();
    let outputs = request
        .outputs
        .into_iter()
        .map(|o| {
            let data = if let Some(top) = o.classification {
                let top = top.min(k);
                OutputData::Bytes {
                    shape: [n, top],
                    values: probabilities
                        .chunks_exact(k)
                        .flat_map(|row| v2::classification(row, top, &version.labels))
                        .collect(),
                }
            } else if o.name == spec.probabilities_output {
                OutputData::Fp32 {
                    shape: [n, k],
                    values: probabilities.clone(),
                }
            } else {
                OutputData::Fp32 {
                    shape: [n, embeddings.len() / n.max(1)],
                    values: embeddings.clone(),
                }
            };
            (o, data)
        })
        .collect();
    let (header_json, binary) =
        v2::encode_response(&spec.name, &version.version, &base_id, outputs);
    let json_len = header_json.len();
    let mut body = header_json;
    let has_binary = !binary.is_empty();
    body.extend_from_slice(&binary);
    let accepted = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .and_then(Encoding::accepted);
    let body = match accepted {
        Some(e) => tokio::task::spawn_blocking(move || v2::compress(&body, e))
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?,
        None => body,
    };
    let content_type = if has_binary {
        "application/octet-stream"
    } else {
        "application/json"
    };
    let mut response = (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response();
    let h = response.headers_mut();
    if has_binary {
        h.insert(HEADER_LENGTH, HeaderValue::from(json_len));
    }
    if let Some(e) = accepted {
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(e.as_str()),
        );
    }
    if let Ok(v) = HeaderValue::from_str(&base_id) {
        h.insert(REQUEST_ID_HEADER, v);
    }
    Ok(response)
}
