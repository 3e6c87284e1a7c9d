//! What happens to every prediction after inference, whichever endpoint made it: temperature,
//! flags, the monitor's window, metrics, the candidate store, the feedback join buffer, the log.

use std::time::Instant;

use axum::body::Bytes;

use super::{ApiError, AppState, Serving};
use crate::inference::Inferred;
use crate::log::{Durability, Endpoint, ImageInfo, PredictionRecord, durable};
use crate::model::RawOutput;
use crate::monitor::window::Observation;
use crate::prediction::{Summary, summarize};
use crate::relabel::Offer;
use crate::relabel::select::Candidate;
use crate::stats;

/// The encoded image behind a prediction (classify); tensor inputs (infer) have none.
pub struct ImageInput {
    pub info: ImageInfo,
    pub bytes: Bytes,
    pub content_type: Option<String>,
}

/// A prediction as served.
pub struct Served {
    /// The probabilities as served (after the temperature when one is applied).
    pub output: RawOutput,
    pub summary: Summary,
    pub flags: Vec<&'static str>,
}

/// Records one prediction everywhere it goes. Fails only when strict durability cannot log it.
#[allow(clippy::too_many_arguments)]
pub async fn record(
    state: &AppState,
    serving: &Serving,
    request_id: &str,
    ts_us: i64,
    started: Instant,
    inferred: Inferred,
    image: Option<ImageInput>,
    endpoint: Endpoint,
) -> Result<Served, ApiError> {
    let spec = serving.pool.spec();
    let mut output = inferred.output;
    let mut flags: Vec<&'static str> = Vec::new();
    if let Some(t) = serving
        .monitor
        .as_ref()
        .and_then(|m| m.reference().temperature_applied)
    {
        stats::apply_temperature(&mut output.probabilities, spec.num_classes(), t);
        flags.push("calibrated");
    }
    let summary = summarize(&output.probabilities);
    let label = spec.labels[summary.class].as_str();
    if let Some(monitor) = &serving.monitor {
        flags.extend(monitor.flags(
            summary.class,
            summary.confidence,
            output.embedding.as_deref(),
        ));
        monitor.observe(&Observation {
            ts_us,
            class: summary.class,
            confidence: summary.confidence,
            entropy: summary.entropy,
            probabilities: &output.probabilities,
            inputs: image
                .as_ref()
                .map_or([f32::NAN; 6], |i| i.info.stats.values()),
            embedding: output.embedding.as_deref(),
        });
        if monitor.is_shifted() {
            flags.push("shifted_window");
        }
    }
    let metrics = &state.metrics;
    metrics.predictions.with_label_values(&[label]).inc();
    metrics.confidence.observe(f64::from(summary.confidence));
    if spec.num_classes() > 1 {
        metrics
            .entropy_ratio
            .observe(f64::from(summary.entropy) / (spec.num_classes() as f64).ln());
    }
    if let (Some(store), Some(image)) = (&serving.candidates, &image) {
        let mut candidate = Candidate {
            request_id: request_id.to_string(),
            predicted_class: summary.class,
            confidence: summary.confidence,
            margin: summary.margin,
            entropy: summary.entropy,
            dhash: image.info.dhash,
            vector: Vec::new(),
            ood: flags.contains(&"ood_suspect"),
            shifted: flags.contains(&"shifted_window"),
            random: false,
            ts_us,
        };
        if store.wants(&mut candidate) {
            candidate.vector = output
                .embedding
                .clone()
                .unwrap_or_else(|| output.probabilities.clone());
            store.offer(Offer {
                candidate,
                image: image.bytes.clone(),
                content_type: image.content_type.clone(),
                predicted_label: label.to_string(),
                model_version: spec.version.clone(),
            });
        }
    }
    serving.recent.remember(request_id, &output.probabilities);
    if let Some(log) = &serving.log {
        let retry = state.config.server.retry_after_seconds;
        let content_type = image.as_ref().and_then(|i| i.content_type.clone());
        let record = PredictionRecord {
            request_id: request_id.to_string(),
            ts_us,
            endpoint,
            predicted_class: summary.class,
            confidence: summary.confidence,
            margin: summary.margin,
            entropy: summary.entropy,
            probabilities: output.probabilities.clone(),
            embedding: output.embedding.clone(),
            latency_us: started.elapsed().as_micros() as i64,
            inference_us: inferred.inference.as_micros() as i64,
            batch_size: inferred.batch_size as i32,
            content_type,
            image: image.map(|i| i.info),
            flags: flags.iter().map(|f| f.to_string()).collect(),
        };
        let strict = log.durability() == Durability::Strict;
        match log.append_prediction(record) {
            Ok(appended) => durable(appended).await.map_err(|e| {
                ApiError::unavailable(
                    "log_unavailable",
                    format!("the prediction could not be logged durably: {e}"),
                    retry,
                )
            })?,
            // Not strict: the row is dropped and counted; the answer goes out.
            Err(_) if !strict => {}
            Err(e) => {
                return Err(ApiError::unavailable(
                    "log_unavailable",
                    format!("the prediction could not be logged: {e}"),
                    retry,
                ));
            }
        }
    }
    Ok(Served {
        output,
        summary,
        flags,
    })
}
