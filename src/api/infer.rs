//! `POST /v2/models/{model}/infer`: the KServe Open Inference Protocol v2, with JSON tensors and
//! the binary-data extension. Every image of the batch is monitored and logged like a classify
//! prediction (endpoint `infer`); with a batch of N the rows' request ids are `<id>/<i>`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::classify::{REQUEST_ID_HEADER, request_id};
use super::record::record;
use super::{ApiError, AppState};
use crate::inference::InferenceError;
use crate::log::{Endpoint, now_us};

/// The binary-data extension's header: the length of the JSON part of the body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";
/// Most images one infer request may carry.
pub const MAX_BATCH: usize = 1024;

#[derive(Debug, Deserialize)]
struct InferRequest {
    id: Option<String>,
    inputs: Vec<InferInput>,
    #[serde(default)]
    outputs: Option<Vec<RequestedOutput>>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
struct InferInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

fn unprocessable(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
}

fn flag(parameters: &Option<Map<String, Value>>, key: &str) -> bool {
    parameters
        .as_ref()
        .and_then(|p| p.get(key))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// Flattens nested JSON arrays of numbers (row-major), as the protocol allows either form.
fn flatten(value: &Value, out: &mut Vec<f32>) -> Result<(), ApiError> {
    match value {
        Value::Array(items) => items.iter().try_for_each(|v| flatten(v, out)),
        Value::Number(n) => {
            let v = n.as_f64().unwrap_or(f64::NAN) as f32;
            if !v.is_finite() {
                return Err(ApiError::bad_request(
                    "bad_tensor",
                    "tensor values must be finite FP32 numbers",
                ));
            }
            out.push(v);
            Ok(())
        }
        _ => Err(ApiError::bad_request(
            "bad_tensor",
            "tensor data must be numbers",
        )),
    }
}

pub async fn infer(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let ts_us = now_us();
    state.check_model(&model)?;
    let serving = state.ready()?;
    let spec = Arc::clone(serving.pool.spec());
    let retry = state.config.server.retry_after_seconds;
    let _permit = state.admit()?;
    let bytes = super::read_body(body, state.config.server.max_body_bytes).await?;

    // The JSON part, and the binary part when the extension is used.
    let json_len = match headers.get(HEADER_LENGTH) {
        None => bytes.len(),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|n| *n <= bytes.len())
            .ok_or_else(|| {
                ApiError::bad_request(
                    "bad_header",
                    format!("{HEADER_LENGTH} must be a length within the body"),
                )
            })?,
    };
    let request: InferRequest = serde_json::from_slice(&bytes[..json_len]).map_err(|e| {
        ApiError::bad_request(
            "bad_json",
            format!("the inference request is not valid: {e}"),
        )
    })?;
    let binary = &bytes[json_len..];

    let [input] = request.inputs.as_slice() else {
        return Err(unprocessable(
            "wrong_input",
            format!("expected exactly one input, `{}`", spec.input_name),
        ));
    };
    if input.name != spec.input_name {
        return Err(unprocessable(
            "wrong_input",
            format!(
                "unknown input `{}`; the model's input is `{}`",
                input.name, spec.input_name
            ),
        ));
    }
    if input.datatype != "FP32" {
        return Err(unprocessable(
            "wrong_dtype",
            format!("input `{}` is FP32, not {}", input.name, input.datatype),
        ));
    }
    let image_shape = spec.preprocess.image_shape();
    let n = input.shape.first().copied().unwrap_or(0);
    if input.shape.len() != 4 || input.shape[1..] != image_shape || n < 1 || n as usize > MAX_BATCH
    {
        return Err(unprocessable(
            "wrong_shape",
            format!(
                "input `{}` must have shape [N, {}, {}, {}] with 1 <= N <= {MAX_BATCH}; got {:?}",
                input.name, image_shape[0], image_shape[1], image_shape[2], input.shape
            ),
        ));
    }
    let n = n as usize;
    let per_image = spec.preprocess.tensor_len();
    let values: Vec<f32> = match (
        &input.data,
        input
            .parameters
            .as_ref()
            .and_then(|p| p.get("binary_data_size")),
    ) {
        (Some(data), None) => {
            let mut out = Vec::with_capacity(n * per_image);
            flatten(data, &mut out)?;
            out
        }
        (None, Some(size)) => {
            let size = size.as_u64().unwrap_or(u64::MAX) as usize;
            if size != binary.len() || size != n * per_image * 4 {
                return Err(unprocessable(
                    "wrong_shape",
                    format!(
                        "binary_data_size {size} and the {} binary bytes must both be {} (N × {per_image} FP32 values)",
                        binary.len(),
                        n * per_image * 4
                    ),
                ));
            }
            binary
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        }
        _ => {
            return Err(ApiError::bad_request(
                "bad_tensor",
                "give the input either `data` or parameters.binary_data_size with a binary part",
            ));
        }
    };
    if values.len() != n * per_image {
        return Err(unprocessable(
            "wrong_shape",
            format!(
                "{} values for shape {:?} ({} expected)",
                values.len(),
                input.shape,
                n * per_image
            ),
        ));
    }
    if values.iter().any(|v| !v.is_finite()) {
        return Err(ApiError::bad_request(
            "bad_tensor",
            "tensor values must be finite",
        ));
    }
    let wanted: Vec<(String, bool)> = match &request.outputs {
        None => {
            let all_binary = flag(&request.parameters, "binary_data_output");
            std::iter::once(spec.probabilities_output.clone())
                .chain(spec.embedding_output.clone())
                .map(|name| (name, all_binary))
                .collect()
        }
        Some(outputs) => outputs
            .iter()
            .map(|o| {
                let known = o.name == spec.probabilities_output
                    || spec.embedding_output.as_deref() == Some(&o.name);
                if known {
                    Ok((o.name.clone(), flag(&o.parameters, "binary_data")))
                } else {
                    Err(unprocessable(
                        "wrong_output",
                        format!("the model has no output `{}`", o.name),
                    ))
                }
            })
            .collect::<Result<_, _>>()?,
    };

    let base_id = match &request.id {
        Some(id)
            if !id.is_empty() && id.len() <= 120 && id.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            id.clone()
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "bad_request_id",
                "id must be 1 to 120 visible ASCII characters",
            ));
        }
        None => request_id(&headers)?,
    };

    // Every image through the shared queue (batched with other requests' images).
    let mut receivers = Vec::with_capacity(n);
    for chunk in values.chunks_exact(per_image) {
        receivers.push(
            serving
                .pool
                .submit(chunk.to_vec())
                .map_err(|e| ApiError::from_inference(e, retry))?,
        );
    }
    let mut probabilities = Vec::with_capacity(n * spec.num_classes());
    let mut embeddings = Vec::new();
    for (i, receiver) in receivers.into_iter().enumerate() {
        let inferred = receiver
            .await
            .map_err(|_| ApiError::from_inference(InferenceError::Closed, retry))?
            .map_err(|e| ApiError::from_inference(e, retry))?;
        let row_id = if n == 1 {
            base_id.clone()
        } else {
            format!("{base_id}/{i}")
        };
        let served = record(
            &state,
            serving,
            &row_id,
            ts_us,
            started,
            inferred,
            None,
            Endpoint::Infer,
        )
        .await?;
        probabilities.extend_from_slice(&served.output.probabilities);
        if let Some(e) = served.output.embedding {
            embeddings.extend(e);
        }
    }

    let mut binary_out: Vec<u8> = Vec::new();
    let mut outputs = Vec::new();
    for (name, as_binary) in wanted {
        let (data, dim) = if name == spec.probabilities_output {
            (&probabilities, spec.num_classes())
        } else {
            (&embeddings, embeddings.len() / n)
        };
        let mut entry = json!({"name": name, "datatype": "FP32", "shape": [n, dim]});
        if as_binary {
            let start = binary_out.len();
            for v in data {
                binary_out.extend_from_slice(&v.to_le_bytes());
            }
            entry["parameters"] = json!({"binary_data_size": binary_out.len() - start});
        } else {
            entry["data"] = json!(data);
        }
        outputs.push(entry);
    }
    let answer = json!({
        "model_name": spec.name,
        "model_version": spec.version,
        "id": base_id,
        "outputs": outputs,
    });
    let header = serde_json::to_vec(&answer).expect("JSON values serialize");
    let mut response = if binary_out.is_empty() {
        (
            [(
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            header,
        )
            .into_response()
    } else {
        let json_len = header.len();
        let mut body = header;
        body.extend_from_slice(&binary_out);
        let mut r = (
            [(
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )],
            body,
        )
            .into_response();
        r.headers_mut()
            .insert(HEADER_LENGTH, HeaderValue::from(json_len));
        r
    };
    if let Ok(v) = HeaderValue::from_str(&base_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    Ok(response)
}
