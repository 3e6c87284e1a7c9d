//! The prediction log: every prediction and every delayed label in Parquet, crash-safe.
//!
//! Requests hand a compact record to a bounded queue ([`PredictionStream::append`]); one
//! writer thread per stream (each model's predictions, feedback) turns them into record batches,
//! appends each batch to a write-ahead segment (one checksummed frame per batch: `segment.rs`)
//! and to the open Parquet file of its partition, and makes a file visible under its final name
//! only once it is complete. On start, leftover segments become Parquet as far as they are
//! valid, the rest goes to `quarantine/` ([`recover`]). Opening the log never fails: a
//! directory that cannot be used now makes the log degraded (rows dropped and counted) until it
//! can. See `sink.rs` for the writer's rules.
//!
//! Layout (Hive partitions, by arrival time in UTC):
//! `<dir>/predictions/model=<name>/date=<YYYY-MM-DD>/hour=<HH>/<uuid>.parquet`,
//! `<dir>/feedback/date=<YYYY-MM-DD>/<uuid>.parquet`, segments under `<dir>/wal/<stream>/`.
//! With `log.upload_url`, completed files are shipped to object storage under the same keys
//! (`upload.rs`).

mod config;
mod retention;
pub mod rows;
pub mod schema;
pub mod segment;
mod sink;
mod upload;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::oneshot;

pub use self::config::{LogConfig, RawLog};
pub use self::sink::{Appended, LogHealth};
use self::sink::{DirLock, RowCodec, Sink, StreamSpec};
use self::upload::Uploader;
pub use self::upload::{UploadConfig, open_store};
use crate::image_stats::InputStats;
use crate::metrics::LogMetrics;
use crate::time::date_hour;

/// When a row counts as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The request is answered only after its row is written and fsynced in the write-ahead
    /// log.
    Strict,
    /// The request is answered once its row is written to the write-ahead log (it survives the
    /// process being killed); segments are fsynced at least every `fsync_interval`.
    Interval,
    /// No write-ahead log: rows live in memory until their Parquet file closes.
    None,
}

impl Durability {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "strict" => Some(Durability::Strict),
            "interval" => Some(Durability::Interval),
            "none" => Some(Durability::None),
            _ => None,
        }
    }
}

/// Which API produced a prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Classify,
    Infer,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Classify => "classify",
            Endpoint::Infer => "infer",
        }
    }
}

/// What is known about the encoded and decoded image (absent for tensor inputs).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInfo {
    pub bytes: i64,
    pub sha256: String,
    pub dhash: u64,
    pub stats: InputStats,
}

/// One prediction, as the request path hands it to the log.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictionRecord {
    pub request_id: String,
    /// The version that made it (several can serve in turn: hot reload).
    pub model_version: Arc<str>,
    pub predicted_label: Arc<str>,
    /// Arrival time, microseconds since the Unix epoch (UTC).
    pub ts_us: i64,
    pub endpoint: Endpoint,
    pub predicted_class: usize,
    pub confidence: f32,
    pub margin: f32,
    pub entropy: f32,
    pub probabilities: Vec<f32>,
    pub embedding: Option<Vec<f32>>,
    pub latency_us: i64,
    pub inference_us: i64,
    pub batch_size: i32,
    pub content_type: Option<String>,
    pub image: Option<ImageInfo>,
    pub flags: Vec<&'static str>,
    /// The conformal prediction set (class indices), when sets are on.
    pub prediction_set: Option<Vec<i32>>,
}

/// One delayed label.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackRecord {
    pub request_id: String,
    pub ts_us: i64,
    pub label: String,
    pub class: usize,
    pub source: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another shiftwatch holds the log directory {0} (its lock file is taken)")]
    Locked(PathBuf),
    #[error("the log cannot take the row now ({0})")]
    Unavailable(String),
    #[error("{0}")]
    Format(String),
}

/// The partition folder (relative to the log dir) of a prediction.
pub fn prediction_partition(model: &str, ts_us: i64) -> PathBuf {
    let (date, hour) = date_hour(ts_us);
    PathBuf::from(format!(
        "predictions/model={model}/date={date}/hour={hour:02}"
    ))
}

/// The partition folder (relative to the log dir) of a feedback row.
pub fn feedback_partition(ts_us: i64) -> PathBuf {
    let (date, _) = date_hour(ts_us);
    PathBuf::from(format!("feedback/date={date}"))
}

/// Rows recovered from write-ahead segments at start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    pub predictions: usize,
    pub feedback: usize,
}

/// The log directory: its lock, the feedback stream, and what every stream shares. Each
/// served model writes its predictions through its own [`PredictionStream`].
pub struct PredictionLog {
    feedback: Sink<FeedbackRecord>,
    config: LogConfig,
    health: Arc<LogHealth>,
    lock: Arc<DirLock>,
    uploader: Option<Uploader>,
}

impl std::fmt::Debug for PredictionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PredictionLog")
            .field("dir", &self.config.dir)
            .finish()
    }
}

/// One model's prediction rows: `predictions/model=<name>/…`, its own writer and segments.
pub struct PredictionStream {
    sink: Sink<PredictionRecord>,
}

impl std::fmt::Debug for PredictionStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PredictionStream").finish()
    }
}

pub(crate) fn prediction_stream(model: &str) -> StreamSpec<PredictionRecord> {
    let model = model.to_string();
    StreamSpec {
        name: "predictions",
        schema: schema::prediction_schema(),
        root: PathBuf::from(format!("predictions/model={model}")),
        wal: PathBuf::from(format!("wal/predictions/model={model}")),
        partition: Box::new(move |ts| prediction_partition(&model, ts)),
        to_batch: Box::new(schema::prediction_batch),
        ts: Box::new(|r| r.ts_us),
        rows: Some(RowCodec {
            encode: rows::encode_predictions,
            decode: rows::decode_predictions,
        }),
    }
}

pub(crate) fn feedback_stream() -> StreamSpec<FeedbackRecord> {
    StreamSpec {
        name: "feedback",
        schema: schema::feedback_schema(),
        root: PathBuf::from("feedback"),
        wal: PathBuf::from("wal/feedback"),
        partition: Box::new(feedback_partition),
        to_batch: Box::new(schema::feedback_batch),
        ts: Box::new(|r| r.ts_us),
        // A label now and then: its frames stay Arrow IPC batches.
        rows: None,
    }
}

impl PredictionLog {
    /// Takes the directory's lock, recovers the feedback stream's leftover write-ahead
    /// segments into Parquet, and starts its writer. Returns the rows recovered. Never fails:
    /// when the directory cannot be used now (unwritable, full, locked by another process),
    /// the log is degraded, rows are dropped and counted, and the writers retry.
    pub fn open(config: &LogConfig, metrics: &LogMetrics) -> (Self, usize) {
        let health = Arc::new(LogHealth::default());
        let lock = Arc::new(DirLock::new(&config.dir));
        if let Err(e) = lock.ensure() {
            tracing::error!(error = %e, "the log directory cannot be used now; serving goes on without it, rows are dropped and counted, and the log retries");
        }
        let spec = feedback_stream();
        let uploader = config.upload.as_ref().map(|upload| {
            let uploader = Uploader::start(
                &config.dir,
                upload.clone(),
                Arc::clone(&health),
                Arc::clone(&lock),
            );
            uploader.add_stream(spec.name, &spec.root, metrics);
            uploader
        });
        let pass = sink::recover(&config.dir, &spec, metrics, &health, &lock, &[]);
        let feedback = Sink::start(
            config,
            spec,
            metrics.clone(),
            Arc::clone(&health),
            Arc::clone(&lock),
            pass.complete,
        );
        (
            PredictionLog {
                feedback,
                config: config.clone(),
                health,
                lock,
                uploader,
            },
            pass.rows,
        )
    }

    /// Recovers `model`'s leftover segments and starts its prediction writer. Returns the
    /// stream and the rows recovered (never fails: see [`PredictionLog::open`]).
    pub fn predictions(&self, model: &str, metrics: &LogMetrics) -> (PredictionStream, usize) {
        let spec = prediction_stream(model);
        if let Some(uploader) = &self.uploader {
            uploader.add_stream(spec.name, &spec.root, metrics);
        }
        let pass = sink::recover(
            &self.config.dir,
            &spec,
            metrics,
            &self.health,
            &self.lock,
            &[],
        );
        let sink = Sink::start(
            &self.config,
            spec,
            metrics.clone(),
            Arc::clone(&self.health),
            Arc::clone(&self.lock),
            pass.complete,
        );
        (PredictionStream { sink }, pass.rows)
    }

    pub fn append_feedback(&self, record: FeedbackRecord) -> Result<Appended, LogError> {
        self.feedback.append(record)
    }

    /// `None` while every stream writes; else the last error.
    pub fn degraded(&self) -> Option<String> {
        self.health.degraded()
    }

    pub fn durability(&self) -> Durability {
        self.config.durability
    }

    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// Writes out the feedback queue, closes its files, and stops its writer; then uploads
    /// what waits (with `log.upload_url`, at most `log.upload_drain_seconds`). Close every
    /// [`PredictionStream`] first.
    pub fn close(&self) {
        self.feedback.close();
        if let Some(uploader) = &self.uploader {
            uploader.close();
        }
    }
}

impl PredictionStream {
    /// Queues a prediction row. With a write-ahead log the returned [`Appended::Pending`]
    /// resolves once the row is in its segment (`strict`: and fsynced); the caller answers
    /// only then.
    pub fn append(&self, record: PredictionRecord) -> Result<Appended, LogError> {
        self.sink.append(record)
    }

    pub fn durability(&self) -> Durability {
        self.sink.durability()
    }

    /// Writes out everything queued, closes every file, and stops the writer.
    pub fn close(&self) {
        self.sink.close();
    }
}

/// Waits until an appended row is in the write-ahead log (`interval`: written; `strict`:
/// fsynced); `Err` when it could not be written (the writer counted it as dropped).
pub async fn durable(appended: Appended) -> Result<(), LogError> {
    match appended {
        Appended::Queued => Ok(()),
        Appended::Pending(rx) => rx.await.unwrap_or_else(|_: oneshot::error::RecvError| {
            Err(LogError::Unavailable("the log writer stopped".into()))
        }),
    }
}

/// Recovers leftover write-ahead segments of `model` and of the feedback stream without
/// starting writers (for offline tools). `Err` names what could not be recovered now (the
/// segments stay for the next start).
pub fn recover(dir: &Path, model: &str, metrics: &LogMetrics) -> Result<Recovered, LogError> {
    let health = LogHealth::default();
    let lock = DirLock::new(dir);
    lock.ensure()?;
    let predictions = sink::recover(dir, &prediction_stream(model), metrics, &health, &lock, &[]);
    let feedback = sink::recover(dir, &feedback_stream(), metrics, &health, &lock, &[]);
    match health.degraded() {
        Some(e) => Err(LogError::Unavailable(e)),
        None => Ok(Recovered {
            predictions: predictions.rows,
            feedback: feedback.rows,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions() {
        let ts = 20_786 * 86_400_000_000 + 86_399_999_999;
        assert_eq!(
            prediction_partition("digits", ts),
            PathBuf::from("predictions/model=digits/date=2026-11-29/hour=23")
        );
        assert_eq!(
            feedback_partition(ts + 1),
            PathBuf::from("feedback/date=2026-11-30")
        );
    }
}
