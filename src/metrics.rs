//! Prometheus metrics: one registry owned by the app (no global registry), every family carrying
//! the `model` label, label values from fixed sets. Names and units are the DESIGN.md contract.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Why a log row was not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The writer's queue was full.
    QueueFull,
    /// The disk refused the write (full, unwritable, I/O error).
    WriteError,
    /// The writer had already stopped (shutdown).
    Closed,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [
        DropReason::QueueFull,
        DropReason::WriteError,
        DropReason::Closed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::WriteError => "write_error",
            DropReason::Closed => "closed",
        }
    }
}

/// Why a write-ahead segment (or its tail) was set aside in `quarantine/` at recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuarantineReason {
    /// The file ends inside a frame: a write cut short by a crash.
    Torn,
    /// A frame's magic, length or CRC-32 does not match: the bytes changed after they were written.
    Checksum,
    /// The checksum holds but the payload is not one Arrow record batch of the segment's schema.
    Malformed,
    /// The segment's columns cannot become the current schema (a required column missing, a
    /// type changed).
    Schema,
    /// The segment cannot be read at all (an I/O error, a directory or a broken link in its place).
    Unreadable,
}

impl QuarantineReason {
    pub const ALL: [QuarantineReason; 5] = [
        QuarantineReason::Torn,
        QuarantineReason::Checksum,
        QuarantineReason::Malformed,
        QuarantineReason::Schema,
        QuarantineReason::Unreadable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            QuarantineReason::Torn => "torn",
            QuarantineReason::Checksum => "checksum",
            QuarantineReason::Malformed => "malformed",
            QuarantineReason::Schema => "schema",
            QuarantineReason::Unreadable => "unreadable",
        }
    }
}

/// Why an attempt to upload a log file to object storage failed (it is retried).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadFailure {
    /// The store answered with an error or could not be reached.
    Store,
    /// The attempt took longer than `log.upload_timeout_seconds`.
    Timeout,
    /// The local file could not be read.
    Read,
    /// The store holds an object of another size than the file after the put.
    Mismatch,
}

impl UploadFailure {
    pub const ALL: [UploadFailure; 4] = [
        UploadFailure::Store,
        UploadFailure::Timeout,
        UploadFailure::Read,
        UploadFailure::Mismatch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UploadFailure::Store => "store",
            UploadFailure::Timeout => "timeout",
            UploadFailure::Read => "read",
            UploadFailure::Mismatch => "mismatch",
        }
    }
}

/// What became of one feedback item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedbackOutcome {
    Matched,
    UnknownId,
    Duplicate,
    Invalid,
}

impl FeedbackOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            FeedbackOutcome::Matched => "matched",
            FeedbackOutcome::UnknownId => "unknown_id",
            FeedbackOutcome::Duplicate => "duplicate",
            FeedbackOutcome::Invalid => "invalid",
        }
    }
}

/// The log's families (shared by the prediction and feedback streams, told apart by `stream`).
#[derive(Clone)]
pub struct LogMetrics {
    pub rows_written: IntCounterVec,
    pub rows_dropped: IntCounterVec,
    pub rows_recovered: IntCounterVec,
    pub queue_depth: IntGaugeVec,
    pub files_written: IntCounterVec,
    pub files_deleted: IntCounterVec,
    /// Write-ahead segments set aside in `quarantine/` at recovery, by [`QuarantineReason`].
    pub segments_quarantined: IntCounterVec,
    /// Files uploaded to `log.upload_url` and confirmed there.
    pub upload_files: IntCounterVec,
    pub upload_bytes: IntCounterVec,
    /// Failed upload attempts, by [`UploadFailure`] (each is retried).
    pub upload_failures: IntCounterVec,
    /// Completed files waiting for their upload now, their bytes, and the oldest one's age.
    pub upload_backlog_files: IntGaugeVec,
    pub upload_backlog_bytes: IntGaugeVec,
    pub upload_backlog_age: GaugeVec,
}

/// Every metric family of the sidecar.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub build_info: IntGaugeVec,
    /// Requests to this model's routes, its feedback, its prediction log stream.
    pub shared: SharedFamilies,
    pub inference_duration: Histogram,
    pub batch_size: Histogram,
    pub predictions: IntCounterVec,
    pub confidence: Histogram,
    pub entropy_ratio: Histogram,
    pub drift_statistic: GaugeVec,
    pub drift_p_value: GaugeVec,
    pub drift_status: IntGaugeVec,
    pub drift_evidence: GaugeVec,
    pub drift_evidence_threshold: Gauge,
    pub drift_alarms: IntCounterVec,
    pub prediction_set_size: Histogram,
    pub window_predictions: IntGauge,
    pub window_capacity: IntGauge,
    pub estimated_accuracy: GaugeVec,
    /// No labels: absent until defined, removed when it becomes undefined.
    pub overconfidence_gap: GaugeVec,
    pub overconfidence_status: IntGaugeVec,
    pub labeled_accuracy: GaugeVec,
    pub estimated_class_ratio: GaugeVec,
    pub calibration_error: GaugeVec,
    pub reference_class_ratio: GaugeVec,
    pub candidates_stored: IntGauge,
    pub candidates_stored_bytes: IntGauge,
    pub candidates_exported: prometheus::IntCounter,
    pub candidates_evicted: IntCounterVec,
    pub candidates_skipped: prometheus::IntCounter,
    /// Entries of the candidate index refused at start (a file outside the store, bad fields).
    pub candidates_index_rejected: prometheus::IntCounter,
}

/// The families that both a model's registry and the process registry hold (each with
/// disjoint label values): requests, feedback outcomes, the log streams.
#[derive(Clone)]
pub struct SharedFamilies {
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub feedback: IntCounterVec,
    pub log: LogMetrics,
}

impl SharedFamilies {
    fn register(r: &Registry) -> Self {
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter"),
            )
        };
        let int_gauge_vec = |name: &str, help: &str| {
            register(
                r,
                IntGaugeVec::new(Opts::new(name, help), &["stream"]).expect("valid gauge"),
            )
        };
        SharedFamilies {
            requests: counter_vec(
                "shiftwatch_requests_total",
                "HTTP requests answered, by endpoint and status code",
                &["endpoint", "code"],
            ),
            request_duration: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "shiftwatch_request_duration_seconds",
                        "Server time per request, from arrival to answer",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0,
                    ]),
                    &["endpoint"],
                )
                .expect("valid histogram"),
            ),
            feedback: counter_vec(
                "shiftwatch_feedback_total",
                "Delayed labels received, by outcome",
                &["outcome"],
            ),
            log: LogMetrics {
                rows_written: counter_vec(
                    "shiftwatch_log_rows_written_total",
                    "Rows made durable in the log (write-ahead log or Parquet)",
                    &["stream"],
                ),
                rows_dropped: counter_vec(
                    "shiftwatch_log_rows_dropped_total",
                    "Rows that could not be logged, by reason",
                    &["stream", "reason"],
                ),
                rows_recovered: counter_vec(
                    "shiftwatch_log_rows_recovered_total",
                    "Rows recovered from write-ahead log segments into Parquet",
                    &["stream"],
                ),
                queue_depth: register(
                    r,
                    IntGaugeVec::new(
                        Opts::new(
                            "shiftwatch_log_queue_depth",
                            "Rows waiting for the log writer",
                        ),
                        &["stream"],
                    )
                    .expect("valid gauge"),
                ),
                files_written: counter_vec(
                    "shiftwatch_log_files_written_total",
                    "Parquet files completed and made visible",
                    &["stream"],
                ),
                files_deleted: counter_vec(
                    "shiftwatch_log_files_deleted_total",
                    "Parquet files deleted by retention or the disk quota",
                    &["stream"],
                ),
                segments_quarantined: counter_vec(
                    "shiftwatch_log_segments_quarantined_total",
                    "Write-ahead segments (or their damaged tails) set aside in quarantine/ at recovery, by reason",
                    &["stream", "reason"],
                ),
                upload_files: counter_vec(
                    "shiftwatch_log_upload_files_total",
                    "Parquet files uploaded to log.upload_url and confirmed there",
                    &["stream"],
                ),
                upload_bytes: counter_vec(
                    "shiftwatch_log_upload_bytes_total",
                    "Bytes of the Parquet files uploaded to log.upload_url",
                    &["stream"],
                ),
                upload_failures: counter_vec(
                    "shiftwatch_log_upload_failures_total",
                    "Failed attempts to upload a Parquet file (each is retried), by reason",
                    &["stream", "reason"],
                ),
                upload_backlog_files: int_gauge_vec(
                    "shiftwatch_log_upload_backlog_files",
                    "Completed Parquet files waiting for their upload",
                ),
                upload_backlog_bytes: int_gauge_vec(
                    "shiftwatch_log_upload_backlog_bytes",
                    "Bytes of the completed Parquet files waiting for their upload",
                ),
                upload_backlog_age: register(
                    r,
                    GaugeVec::new(
                        Opts::new(
                            "shiftwatch_log_upload_backlog_age_seconds",
                            "Age of the oldest completed Parquet file waiting for its upload (0: none waits)",
                        ),
                        &["stream"],
                    )
                    .expect("valid gauge"),
                ),
            },
        }
    }

    /// Creates the series of `outcomes` and of the log `stream` at zero.
    fn init(&self, outcomes: &[FeedbackOutcome], stream: &str) {
        for o in outcomes {
            self.feedback.with_label_values(&[o.as_str()]);
        }
        let log = &self.log;
        log.rows_written.with_label_values(&[stream]);
        log.rows_recovered.with_label_values(&[stream]);
        log.files_written.with_label_values(&[stream]);
        log.files_deleted.with_label_values(&[stream]);
        log.queue_depth.with_label_values(&[stream]);
        for reason in DropReason::ALL {
            log.rows_dropped
                .with_label_values(&[stream, reason.as_str()]);
        }
        for reason in QuarantineReason::ALL {
            log.segments_quarantined
                .with_label_values(&[stream, reason.as_str()]);
        }
        log.upload_files.with_label_values(&[stream]);
        log.upload_bytes.with_label_values(&[stream]);
        log.upload_backlog_files.with_label_values(&[stream]);
        log.upload_backlog_bytes.with_label_values(&[stream]);
        log.upload_backlog_age.with_label_values(&[stream]);
        for reason in UploadFailure::ALL {
            log.upload_failures
                .with_label_values(&[stream, reason.as_str()]);
        }
    }
}

/// The process's own series: requests to routes that name no model, feedback that matched no
/// model, the feedback log stream. With one model they carry its name as `model`; with several
/// they carry no `model` label (they belong to none).
#[derive(Clone)]
pub struct ProcessMetrics {
    pub registry: Registry,
    pub shared: SharedFamilies,
    pub guard: GuardMetrics,
}

/// What protects the process from its clients: connections, slow bodies, the decode budget.
#[derive(Clone)]
pub struct GuardMetrics {
    /// Connections open now.
    pub connections_open: IntGauge,
    /// Connections closed at once because `server.max_connections` were open.
    pub connections_refused: IntCounter,
    /// Requests whose body did not arrive within `server.body_timeout_seconds` (answered 408).
    pub body_timeouts: IntCounter,
    /// Requests whose body is being received now (not yet admitted).
    pub bodies_receiving: IntGauge,
    /// Bytes of decoded pixels (and their working copies) admitted now.
    pub decode_budget_in_use: IntGauge,
    /// Images that waited for the decode budget.
    pub decode_budget_waits: IntCounter,
    /// Images refused (503) because the decode budget stayed full past the wait.
    pub decode_budget_refusals: IntCounter,
}

impl GuardMetrics {
    fn register(r: &Registry) -> Self {
        let gauge =
            |name: &str, help: &str| register(r, IntGauge::new(name, help).expect("valid gauge"));
        let counter = |name: &str, help: &str| {
            register(r, IntCounter::new(name, help).expect("valid counter"))
        };
        GuardMetrics {
            connections_open: gauge("shiftwatch_connections_open", "HTTP connections open now"),
            connections_refused: counter(
                "shiftwatch_connections_refused_total",
                "Connections answered 503 and closed because server.max_connections were open",
            ),
            body_timeouts: counter(
                "shiftwatch_body_timeouts_total",
                "Requests whose body did not arrive within server.body_timeout_seconds (408)",
            ),
            bodies_receiving: gauge(
                "shiftwatch_requests_receiving",
                "Requests whose body is being received now (they hold no admission slot yet)",
            ),
            decode_budget_in_use: gauge(
                "shiftwatch_decode_budget_bytes",
                "Bytes of the decode budget held by images being decoded now",
            ),
            decode_budget_waits: counter(
                "shiftwatch_decode_budget_waits_total",
                "Images that waited for the shared decode budget",
            ),
            decode_budget_refusals: counter(
                "shiftwatch_decode_budget_refusals_total",
                "Images refused with 503 because the decode budget stayed full",
            ),
        }
    }
}

impl ProcessMetrics {
    pub fn new(model: Option<&str>) -> Self {
        let labels = model.map(|m| std::iter::once(("model".to_string(), m.to_string())).collect());
        let registry =
            Registry::new_custom(None, labels).expect("the model label is a valid label");
        let shared = SharedFamilies::register(&registry);
        shared.init(
            &[FeedbackOutcome::UnknownId, FeedbackOutcome::Invalid],
            "feedback",
        );
        let guard = GuardMetrics::register(&registry);
        ProcessMetrics {
            registry,
            shared,
            guard,
        }
    }
}

/// The Prometheus text exposition of several registries, each family once (its series from
/// every registry together, as the format requires).
pub fn render(registries: &[&Registry]) -> String {
    let mut families: Vec<prometheus::proto::MetricFamily> = Vec::new();
    for registry in registries {
        for mut family in registry.gather() {
            match families.iter_mut().find(|f| f.name() == family.name()) {
                Some(existing) => existing.mut_metric().extend(family.take_metric()),
                None => families.push(family),
            }
        }
    }
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut out)
        .expect("encoding to a Vec cannot fail");
    String::from_utf8(out).expect("the text format is UTF-8")
}

fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("metric families are registered once with distinct names");
    c
}

impl Metrics {
    /// A fresh registry whose every series carries `model="<model>"`.
    pub fn new(model: &str) -> Self {
        let mut labels = std::collections::HashMap::new();
        labels.insert("model".to_string(), model.to_string());
        let registry =
            Registry::new_custom(None, Some(labels)).expect("the model label is a valid label");
        let r = &registry;
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter"),
            )
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"),
            )
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            register(
                r,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                    .expect("valid histogram"),
            )
        };
        let float_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                r,
                GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"),
            )
        };
        let float =
            |name: &str, help: &str| register(r, Gauge::new(name, help).expect("valid gauge"));
        let int =
            |name: &str, help: &str| register(r, IntGauge::new(name, help).expect("valid gauge"));
        let shared = SharedFamilies::register(r);
        Metrics {
            build_info: gauge_vec(
                "shiftwatch_build_info",
                "Always 1; labels say what is running",
                &["version", "model_version", "execution_provider"],
            ),
            shared,
            inference_duration: histogram(
                "shiftwatch_inference_duration_seconds",
                "Time inside ONNX Runtime per batch",
                vec![
                    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0,
                ],
            ),
            batch_size: histogram(
                "shiftwatch_inference_batch_size",
                "Images per inference batch",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
            ),
            predictions: counter_vec(
                "shiftwatch_predictions_total",
                "Predictions by predicted class name",
                &["class"],
            ),
            confidence: histogram(
                "shiftwatch_prediction_confidence",
                "Top-1 probability of each prediction",
                vec![
                    0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0,
                ],
            ),
            entropy_ratio: histogram(
                "shiftwatch_prediction_entropy_ratio",
                "Entropy of each prediction divided by ln(classes), 0..1",
                vec![0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
            ),
            drift_statistic: float_vec(
                "shiftwatch_drift_statistic",
                "Each window test's statistic against the reference",
                &["test", "feature"],
            ),
            drift_p_value: float_vec(
                "shiftwatch_drift_p_value",
                "Each window test's p-value (after Bonferroni correction within its family)",
                &["test", "feature"],
            ),
            drift_status: gauge_vec(
                "shiftwatch_drift_status",
                "Each test family's verdict: -1 insufficient data, 0 ok, 1 warn, 2 alert",
                &["test"],
            ),
            drift_evidence: float_vec(
                "shiftwatch_drift_evidence",
                "Each test family's sequential evidence (Shiryaev-Roberts e-detector) against the reference",
                &["test"],
            ),
            drift_evidence_threshold: float(
                "shiftwatch_drift_evidence_threshold",
                "Evidence at which a family's sequential detector alarms (monitor.run_length times the families with a detector)",
            ),
            drift_alarms: counter_vec(
                "shiftwatch_drift_alarms_total",
                "Sequential alarms raised (evidence crossing its threshold), by test family",
                &["test"],
            ),
            prediction_set_size: histogram(
                "shiftwatch_prediction_set_size",
                "Classes in each conformal prediction set",
                vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 10.0, 20.0, 50.0, 100.0],
            ),
            window_predictions: int(
                "shiftwatch_window_predictions",
                "Predictions now in the monitor's window",
            ),
            window_capacity: int(
                "shiftwatch_window_capacity",
                "Predictions the monitor's window holds at most",
            ),
            estimated_accuracy: float_vec(
                "shiftwatch_estimated_accuracy",
                "Label-free accuracy estimate of the window, by method (served, correctness, atc, atc_ne, doc, cot, cott, nuclear, ac)",
                &["method"],
            ),
            overconfidence_gap: float_vec(
                "shiftwatch_overconfidence_gap",
                "Average confidence minus the served accuracy estimate (absent while undefined)",
                &[],
            ),
            overconfidence_status: gauge_vec(
                "shiftwatch_overconfidence_status",
                "Overconfidence verdict: -1 insufficient data, 0 ok, 1 warn, 2 alert (absent while undefined)",
                &[],
            ),
            labeled_accuracy: float_vec(
                "shiftwatch_labeled_accuracy",
                "Accuracy over the last labeled predictions (absent before any label)",
                &[],
            ),
            estimated_class_ratio: float_vec(
                "shiftwatch_estimated_class_ratio",
                "BBSE's estimate of each true class's share of the window",
                &["class"],
            ),
            calibration_error: float_vec(
                "shiftwatch_calibration_error",
                "Calibration over the last labeled predictions (ece, mce, brier, nll)",
                &["metric"],
            ),
            reference_class_ratio: float_vec(
                "shiftwatch_reference_class_ratio",
                "Share of each predicted class in the reference profile",
                &["class"],
            ),
            candidates_stored: int(
                "shiftwatch_candidates_stored",
                "Relabel candidates (and random-sample members) whose image is stored",
            ),
            candidates_stored_bytes: int(
                "shiftwatch_candidates_stored_bytes",
                "Bytes of stored candidate images",
            ),
            candidates_exported: register(
                r,
                prometheus::IntCounter::new(
                    "shiftwatch_candidates_exported_total",
                    "Candidates written into export packages",
                )
                .expect("valid counter"),
            ),
            candidates_evicted: counter_vec(
                "shiftwatch_candidates_evicted_total",
                "Stored candidates removed, by reason",
                &["reason"],
            ),
            candidates_skipped: register(
                r,
                prometheus::IntCounter::new(
                    "shiftwatch_candidates_skipped_total",
                    "Candidates not stored because the store was busy or the disk refused",
                )
                .expect("valid counter"),
            ),
            candidates_index_rejected: register(
                r,
                prometheus::IntCounter::new(
                    "shiftwatch_candidates_index_rejected_total",
                    "Entries of the candidate index refused at start (a file outside the store, invalid fields, or an unreadable index)",
                )
                .expect("valid counter"),
            ),
            registry,
        }
    }

    /// Creates every series of a fixed label set at zero, so dashboards and `rate()` see them
    /// before the first event.
    pub fn init_series(&self, classes: &[String]) {
        for class in classes {
            self.predictions.with_label_values(&[class.as_str()]);
        }
        self.shared.init(
            &[FeedbackOutcome::Matched, FeedbackOutcome::Duplicate],
            "predictions",
        );
        for reason in ["pool_full", "random_full", "disk_quota", "retention"] {
            self.candidates_evicted.with_label_values(&[reason]);
        }
    }

    /// Says which version and provider serve now (the one `shiftwatch_build_info` series).
    pub fn set_build_info(&self, model_version: &str, provider: &str) {
        self.build_info.reset();
        self.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), model_version, provider])
            .set(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_carries_the_model_label() {
        let m = Metrics::new("digits");
        m.init_series(&["0".into(), "1".into()]);
        m.shared
            .requests
            .with_label_values(&["classify", "200"])
            .inc();
        m.confidence.observe(0.97);
        let process = ProcessMetrics::new(Some("digits"));
        process
            .shared
            .requests
            .with_label_values(&["health", "200"])
            .inc();
        let text = render(&[&m.registry, &process.registry]);
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            assert!(line.contains("model=\"digits\""), "{line}");
        }
        assert!(
            text.contains(
                "shiftwatch_prediction_confidence_bucket{model=\"digits\",le=\"0.99\"} 1"
            )
        );
        assert!(text.contains("shiftwatch_log_rows_dropped_total{reason=\"queue_full\",stream=\"predictions\",model=\"digits\"} 0"), "{text}");
        assert!(text.contains("shiftwatch_log_rows_dropped_total{reason=\"queue_full\",stream=\"feedback\",model=\"digits\"} 0"), "{text}");
        // Each family once, with the series of both registries.
        assert_eq!(text.matches("# TYPE shiftwatch_requests_total").count(), 1);
        assert!(text.contains("endpoint=\"health\""), "{text}");
        assert!(text.contains("endpoint=\"classify\""), "{text}");
    }

    #[test]
    fn several_models_render_side_by_side() {
        let a = Metrics::new("a");
        let b = Metrics::new("b");
        a.init_series(&["x".into()]);
        b.init_series(&["x".into()]);
        let process = ProcessMetrics::new(None);
        let text = render(&[&process.registry, &a.registry, &b.registry]);
        assert_eq!(
            text.matches("# TYPE shiftwatch_predictions_total").count(),
            1
        );
        assert!(text.contains("shiftwatch_predictions_total{class=\"x\",model=\"a\"} 0"));
        assert!(text.contains("shiftwatch_predictions_total{class=\"x\",model=\"b\"} 0"));
        assert!(
            text.contains("shiftwatch_feedback_total{outcome=\"unknown_id\"} 0"),
            "{text}"
        );
    }
}
