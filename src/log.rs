//! The prediction log: every prediction and every delayed label in Parquet, crash-safe.
//!
//! Requests hand a compact record to a bounded queue ([`PredictionLog::append_prediction`]); one
//! writer thread per stream (predictions, feedback) turns them into record batches, appends each
//! batch to a write-ahead segment (Arrow IPC stream) and to the open Parquet file of its
//! partition, and makes a file visible under its final name only once it is complete. On start,
//! leftover segments become Parquet ([`recover`]). See `sink.rs` for the writer's rules.
//!
//! Layout (Hive partitions, by arrival time in UTC):
//! `<dir>/predictions/model=<name>/date=<YYYY-MM-DD>/hour=<HH>/<uuid>.parquet`,
//! `<dir>/feedback/date=<YYYY-MM-DD>/<uuid>.parquet`, segments under `<dir>/wal/<stream>/`.

mod retention;
pub mod schema;
mod sink;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

pub use self::sink::{Appended, LogHealth};
use self::sink::{Sink, StreamSpec};
use crate::image_stats::InputStats;
use crate::metrics::LogMetrics;

/// When a row counts as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The request is answered only after its row is fsynced in the write-ahead log.
    Strict,
    /// Rows reach the write-ahead log at once and are fsynced at least every `fsync_interval`.
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

/// The log's settings (the `[log]` config section, validated).
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub dir: PathBuf,
    pub durability: Durability,
    pub fsync_interval: Duration,
    pub queue_capacity: usize,
    pub rotate_rows: usize,
    pub rotate_bytes: usize,
    pub rotate_age: Duration,
    pub row_group_rows: usize,
    pub retention: Option<Duration>,
    pub max_disk_bytes: Option<u64>,
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
    pub flags: Vec<String>,
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

/// Microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian, UTC).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `date=YYYY-MM-DD` and the hour (0..23) of a timestamp in microseconds.
pub fn date_hour(ts_us: i64) -> (String, u32) {
    let secs = ts_us.div_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let hour = (secs.rem_euclid(86_400) / 3600) as u32;
    let (y, m, d) = civil_from_days(days);
    (format!("{y:04}-{m:02}-{d:02}"), hour)
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

/// The running log: one writer per stream.
pub struct PredictionLog {
    predictions: Sink<PredictionRecord>,
    feedback: Sink<FeedbackRecord>,
    _lock: std::fs::File,
    dir: PathBuf,
}

impl std::fmt::Debug for PredictionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PredictionLog")
            .field("dir", &self.dir)
            .finish()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn prediction_stream(
    model: &str,
    model_version: &str,
    labels: &[String],
) -> StreamSpec<PredictionRecord> {
    let (model, version, labels) = (
        model.to_string(),
        model_version.to_string(),
        labels.to_vec(),
    );
    StreamSpec {
        name: "predictions",
        schema: schema::prediction_schema(),
        root: PathBuf::from(format!("predictions/model={model}")),
        partition: Box::new(move |ts| prediction_partition(&model, ts)),
        to_batch: Box::new(move |rows| schema::prediction_batch(rows, &version, &labels)),
        ts: Box::new(|r| r.ts_us),
    }
}

fn feedback_stream() -> StreamSpec<FeedbackRecord> {
    StreamSpec {
        name: "feedback",
        schema: schema::feedback_schema(),
        root: PathBuf::from("feedback"),
        partition: Box::new(feedback_partition),
        to_batch: Box::new(schema::feedback_batch),
        ts: Box::new(|r| r.ts_us),
    }
}

impl PredictionLog {
    /// Takes the directory's lock, recovers leftover write-ahead segments into Parquet, and
    /// starts the writers.
    pub fn open(
        config: &LogConfig,
        model: &str,
        model_version: &str,
        labels: &[String],
        metrics: &LogMetrics,
    ) -> Result<(Self, Recovered), LogError> {
        std::fs::create_dir_all(&config.dir).map_err(io_err(&config.dir))?;
        let lock_path = config.dir.join(".shiftwatch.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        if lock.try_lock().is_err() {
            return Err(LogError::Locked(config.dir.clone()));
        }
        let health = Arc::new(LogHealth::default());
        let predictions_spec = prediction_stream(model, model_version, labels);
        let feedback_spec = feedback_stream();
        let recovered = Recovered {
            predictions: sink::recover(&config.dir, &predictions_spec, metrics)?,
            feedback: sink::recover(&config.dir, &feedback_spec, metrics)?,
        };
        let predictions = Sink::start(
            config,
            predictions_spec,
            metrics.clone(),
            Arc::clone(&health),
        );
        let feedback = Sink::start(config, feedback_spec, metrics.clone(), health);
        Ok((
            PredictionLog {
                predictions,
                feedback,
                _lock: lock,
                dir: config.dir.clone(),
            },
            recovered,
        ))
    }

    /// Queues a prediction row. In strict mode the returned [`Appended::Pending`] resolves once
    /// the row is durable; the caller answers only then.
    pub fn append_prediction(&self, record: PredictionRecord) -> Result<Appended, LogError> {
        self.predictions.append(record)
    }

    pub fn append_feedback(&self, record: FeedbackRecord) -> Result<Appended, LogError> {
        self.feedback.append(record)
    }

    /// `None` while both streams write; else the last error.
    pub fn degraded(&self) -> Option<String> {
        self.predictions.health().degraded()
    }

    pub fn durability(&self) -> Durability {
        self.predictions.durability()
    }

    /// Writes out everything queued, closes every file, and stops the writers.
    pub fn close(&self) {
        self.predictions.close();
        self.feedback.close();
    }
}

/// Waits for a strict-mode acknowledgement.
pub async fn durable(appended: Appended) -> Result<(), LogError> {
    match appended {
        Appended::Queued => Ok(()),
        Appended::Pending(rx) => rx.await.unwrap_or_else(|_: oneshot::error::RecvError| {
            Err(LogError::Unavailable("the log writer stopped".into()))
        }),
    }
}

/// Recovers leftover write-ahead segments without starting writers (for offline tools).
pub fn recover(
    dir: &Path,
    model: &str,
    model_version: &str,
    labels: &[String],
    metrics: &LogMetrics,
) -> Result<Recovered, LogError> {
    Ok(Recovered {
        predictions: sink::recover(
            dir,
            &prediction_stream(model, model_version, labels),
            metrics,
        )?,
        feedback: sink::recover(dir, &feedback_stream(), metrics)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_786), (2026, 11, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        // 2026-11-29T23:59:59.999999Z and one microsecond later.
        let ts = 20_786 * 86_400_000_000 + 86_399_999_999;
        assert_eq!(date_hour(ts), ("2026-11-29".to_string(), 23));
        assert_eq!(date_hour(ts + 1), ("2026-11-30".to_string(), 0));
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
