//! What happens to every prediction after inference, whichever endpoint made it: temperature,
//! flags, the monitor's window, metrics, the candidate store, the feedback join buffer, the log.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::{ModelService, Version};
use crate::feedback::Remembered;
use crate::image_stats::Descriptor;
use crate::inference::Inferred;
use crate::log::{Durability, Endpoint, ImageInfo, PredictionRecord, durable};
use crate::model::RawOutput;
use crate::monitor::correctness::Inputs as CorrectnessInputs;
use crate::monitor::window::Observation;
use crate::prediction::{Flag, Summary, summarize};
use crate::relabel::ood::{OodDetector, Proximity};
use crate::relabel::select::{Candidate, Signals};
use crate::relabel::{Admit, Offer};
use crate::stats;

/// The encoded image behind a prediction (classify, or a v2 BYTES input); tensor inputs have
/// none.
pub struct ImageInput {
    pub info: ImageInfo,
    /// The out-of-distribution descriptor (`image_stats::descriptor`).
    pub descriptor: Descriptor,
    pub bytes: Bytes,
    pub content_type: Option<String>,
}

/// One prediction to record, as inference returned it.
pub struct Prediction {
    pub request_id: String,
    /// Arrival time, microseconds since the Unix epoch.
    pub ts_us: i64,
    pub started: Instant,
    pub inferred: Inferred,
    pub image: Option<ImageInput>,
    pub endpoint: Endpoint,
}

/// A prediction as served.
pub struct Served {
    /// The probabilities as served (after the temperature when one is applied).
    pub output: RawOutput,
    pub summary: Summary,
    pub flags: Vec<Flag>,
    /// The conformal prediction set (classes, highest probability first), when sets are on.
    pub prediction_set: Option<Vec<usize>>,
}

/// Why a prediction could not be recorded (only with strict durability: otherwise a row that
/// cannot be logged is dropped and counted, and the answer goes out).
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the prediction could not be logged: {0}")]
    LogUnavailable(String),
}

impl ModelService {
    /// Records one prediction everywhere it goes and returns it as served.
    pub async fn record(&self, version: &Version, p: Prediction) -> Result<Served, RecordError> {
        let spec = &version.spec;
        let mut output = p.inferred.output;
        let mut flags: Vec<Flag> = Vec::new();
        let monitor = version.monitor.as_deref();
        // Where the embedding and the image lie among the reference's, when there is a detector
        // for them: searched on the inference thread (`Version::submit`, every endpoint's way
        // to the pool). The correctness model reads the same search and the unscaled
        // probabilities.
        let proximity = p.inferred.proximity;
        let correct = version
            .correctness
            .as_deref()
            .zip(proximity.as_ref())
            .and_then(|(c, proximity)| {
                c.probability(&CorrectnessInputs {
                    probabilities: &output.probabilities,
                    proximity,
                    stats: p.image.as_ref().map(|i| {
                        let v = i.info.stats.values();
                        [v[0], v[1]]
                    }),
                })
            })
            .map_or(f32::NAN, |c| c as f32);
        if let Some(t) = monitor.and_then(|m| m.reference().temperature_applied) {
            stats::apply_temperature(&mut output.probabilities, spec.num_classes(), t);
            flags.push(Flag::Calibrated);
        }
        let summary = summarize(&output.probabilities);
        let label = &version.labels[summary.class];
        let prediction_set =
            monitor.and_then(|m| m.prediction_set(&output.probabilities, &p.request_id));
        let ood_score = proximity.as_ref().and_then(Proximity::score);
        if let Some(monitor) = monitor {
            let monitor_flags = monitor.flags(
                summary.class,
                summary.confidence,
                output.embedding.as_deref(),
            );
            // With a detector, it alone decides `ood_suspect` (the monitor's centroid radius
            // and low-confidence rule flag 8% of normal traffic on the bundled model).
            flags.extend(
                monitor_flags
                    .into_iter()
                    .filter(|f| ood_score.is_none() || *f != Flag::OodSuspect),
            );
        }
        if ood_score.is_some_and(OodDetector::is_ood) {
            flags.push(Flag::OodSuspect);
        }
        if let Some(monitor) = monitor {
            monitor.observe(&Observation {
                ts_us: p.ts_us,
                class: summary.class,
                confidence: summary.confidence,
                entropy: summary.entropy,
                probabilities: &output.probabilities,
                inputs: p
                    .image
                    .as_ref()
                    .map_or([f32::NAN; 6], |i| i.info.stats.values()),
                embedding: output.embedding.as_deref(),
                set_size: prediction_set.as_ref().map_or(f32::NAN, |s| s.len() as f32),
                correct,
            });
            if monitor.is_shifted() {
                flags.push(Flag::ShiftedWindow);
            }
        }
        let metrics = &self.metrics;
        metrics.predictions.with_label_values(&[&**label]).inc();
        metrics.confidence.observe(f64::from(summary.confidence));
        if spec.num_classes() > 1 {
            metrics
                .entropy_ratio
                .observe(f64::from(summary.entropy) / (spec.num_classes() as f64).ln());
        }
        if let (Some(store), Some(image)) = (&self.candidates, &p.image) {
            let signals = Signals {
                confidence: summary.confidence,
                margin: summary.margin,
                entropy: summary.entropy,
                ood: flags.contains(&Flag::OodSuspect),
                ood_score: ood_score.unwrap_or(0.0) as f32,
                shifted: flags.contains(&Flag::ShiftedWindow),
            };
            if let Some(admit) = store.admits(&signals, p.ts_us) {
                let sample_noise = match admit {
                    Admit::Random { noise } => Some(noise),
                    Admit::Candidate => None,
                };
                store.offer(Offer {
                    candidate: Candidate {
                        request_id: p.request_id.clone(),
                        predicted_class: summary.class,
                        confidence: summary.confidence,
                        margin: summary.margin,
                        entropy: summary.entropy,
                        dhash: image.info.dhash,
                        vector: output
                            .embedding
                            .clone()
                            .unwrap_or_else(|| output.probabilities.clone()),
                        ood: signals.ood,
                        ood_score: signals.ood_score,
                        shifted: signals.shifted,
                        random: sample_noise.is_some(),
                        ts_us: p.ts_us,
                    },
                    image: image.bytes.clone(),
                    sha256: image.info.sha256.clone(),
                    sample_noise,
                    content_type: image.content_type.clone(),
                    predicted_label: label.to_string(),
                    model_version: version.version.to_string(),
                });
            }
        }
        self.recent.remember(
            &p.request_id,
            Remembered {
                probabilities: &output.probabilities,
                embedding: output.embedding.as_deref(),
                predicted_class: summary.class,
                version: &version.version,
            },
        );
        if let Some(log) = &self.log {
            let content_type = p.image.as_ref().and_then(|i| i.content_type.clone());
            let record = PredictionRecord {
                request_id: p.request_id,
                model_version: Arc::clone(&version.version),
                predicted_label: Arc::clone(label),
                ts_us: p.ts_us,
                endpoint: p.endpoint,
                predicted_class: summary.class,
                confidence: summary.confidence,
                margin: summary.margin,
                entropy: summary.entropy,
                probabilities: output.probabilities.clone(),
                embedding: output.embedding.clone(),
                latency_us: p.started.elapsed().as_micros() as i64,
                inference_us: p.inferred.inference.as_micros() as i64,
                batch_size: p.inferred.batch_size as i32,
                content_type,
                image: p.image.map(|i| i.info),
                flags: flags.iter().map(|f| f.as_str()).collect(),
                prediction_set: prediction_set
                    .as_ref()
                    .map(|s| s.iter().map(|c| *c as i32).collect()),
            };
            // The answer waits until the row is in the write-ahead log (strict: fsynced). A
            // row the log cannot take is refused in strict mode; otherwise it is dropped and
            // counted by the log, and the answer goes out.
            let strict = log.durability() == Durability::Strict;
            match log.append(record) {
                Ok(appended) => match durable(appended).await {
                    Ok(()) => {}
                    Err(e) if strict => return Err(RecordError::LogUnavailable(e.to_string())),
                    Err(_) => {}
                },
                Err(e) if strict => return Err(RecordError::LogUnavailable(e.to_string())),
                Err(_) => {}
            }
        }
        Ok(Served {
            output,
            summary,
            flags,
            prediction_set,
        })
    }
}
