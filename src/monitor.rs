//! The monitor: the window of recent predictions, the labeled window, and their evaluation
//! against the reference profile, off the request path.
//!
//! The request path calls [`Monitor::observe`] (a copy into a fixed ring under a short lock) and
//! [`Monitor::flags`]. A background thread ([`Monitor::spawn`]) evaluates every
//! `evaluate_every`, applies hysteresis, updates the metrics and keeps the latest
//! [`Snapshot`] for `GET /v1/monitor`; it also saves the window so that a restart does not
//! blind the monitor. Each evaluation first feeds the predictions that arrived since the last
//! one, in order, to the sequential detectors (`sequential`). Where a sequential detector
//! watches a family, the family is `alert` exactly when that detector's evidence is at or over
//! its threshold (so every alert carries the run-length guarantee); its window test then says
//! `warn` at most, and `insufficient_data`/`ok` as before (see `combined_status`).

pub mod augment;
mod config;
pub mod correctness;
pub mod estimates;
pub mod evaluate;
pub mod reference;
pub mod sequential;
pub mod window;

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use self::config::{MonitorConfig, RawMinEffect, RawMonitor, RawTolerance};
use self::evaluate::{Estimates, Hysteresis, Status, TestKind, TestOutcome, evaluate};
use self::reference::Reference;
use self::sequential::{Sequential, SequentialReport};
use self::window::{Observation, Window, WindowData};
use crate::metrics::Metrics;
use crate::stats;

/// The label values of a family without labels (absent until set, removable).
const NO_LABELS: &[&str] = &[];

/// Labeled predictions, last N.
#[derive(Debug)]
struct Labeled {
    capacity: usize,
    classes: usize,
    rows: std::collections::VecDeque<LabeledRow>,
}

/// One labeled prediction: the served probabilities, the true class and, with prediction sets,
/// the set's size and whether it held the true class.
type LabeledRow = (Box<[f32]>, usize, Option<(usize, bool)>);

/// What `GET /v1/monitor` answers.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub model: String,
    pub model_version: String,
    pub evaluated_at: String,
    pub window: WindowInfo,
    pub tests: Vec<TestReport>,
    pub estimates: Estimates,
    pub labeled: Option<LabeledReport>,
    /// `None` when this model version has no reference profile.
    pub reference: Option<ReferenceInfo>,
    /// The sequential detectors and their guarantee; `None` when off or unreferenced.
    pub sequential: Option<SequentialBlock>,
}

/// `/v1/monitor`'s `sequential` block.
#[derive(Debug, Clone, Serialize)]
pub struct SequentialBlock {
    /// What the thresholds guarantee, in words.
    pub guarantee: String,
    /// The average run length to a false alarm, in predictions (`monitor.run_length`).
    pub run_length: f64,
    /// Every family's threshold: run_length × the number of families with a detector.
    pub threshold: f64,
    /// Predictions fed to the detectors so far.
    pub predictions_seen: u64,
    /// Predictions that left the window before an evaluation could feed them.
    pub predictions_skipped: u64,
    pub tests: Vec<SequentialReport>,
}

impl Snapshot {
    /// What a model version without a reference profile reports: every test family
    /// `insufficient_data` (never a comparison with another version's profile).
    pub fn unreferenced(
        model: &str,
        model_version: &str,
        window: usize,
        max_age: Option<Duration>,
    ) -> Snapshot {
        Snapshot {
            model: model.to_string(),
            model_version: model_version.to_string(),
            evaluated_at: crate::time::rfc3339(crate::time::now_us()),
            window: WindowInfo {
                predictions: 0,
                capacity: window,
                max_age_seconds: max_age.map(|a| a.as_secs_f64()),
            },
            tests: TestKind::ALL
                .iter()
                .map(|k| TestReport {
                    test: k.as_str(),
                    feature: "all".into(),
                    statistic: f64::NAN,
                    p_value: f64::NAN,
                    effect_size: f64::NAN,
                    threshold: k.default_min_effect(),
                    status: Status::InsufficientData,
                    n_window: 0,
                    n_reference: 0,
                })
                .collect(),
            estimates: Estimates::default(),
            labeled: None,
            reference: None,
            sequential: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct WindowInfo {
    pub predictions: usize,
    pub capacity: usize,
    pub max_age_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TestReport {
    pub test: &'static str,
    pub feature: String,
    pub statistic: f64,
    pub p_value: f64,
    pub effect_size: f64,
    pub threshold: f64,
    pub status: Status,
    pub n_window: usize,
    pub n_reference: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct LabeledReport {
    pub n: usize,
    pub accuracy: f64,
    pub ece: f64,
    pub adaptive_ece: f64,
    pub mce: f64,
    pub brier: f64,
    pub nll: f64,
    pub reliability: Vec<ReliabilityReport>,
    pub per_class_accuracy: Vec<Option<f64>>,
    /// Share of labeled predictions whose prediction set held the true class (with sets on).
    pub prediction_set_coverage: Option<f64>,
    /// The coverage the sets were calibrated for.
    pub prediction_set_target: Option<f64>,
    pub mean_prediction_set_size: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReliabilityReport {
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    pub accuracy: f64,
    pub confidence: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReferenceInfo {
    pub samples: usize,
    pub accuracy: Option<f64>,
    pub mean_confidence: f64,
    pub ece: Option<f64>,
    pub temperature: Option<f64>,
    pub temperature_applied: bool,
    pub atc_threshold: Option<f64>,
    /// The calibrated APS threshold of prediction sets, when on.
    pub prediction_set_threshold: Option<f64>,
}

/// A family's status from its window test (after hysteresis) and the sequential detectors:
/// where a detector watches the family (its own, or the one watching the same feature), the
/// detector decides `alert` and a window alert is reported as `warn` (significant and large on
/// this window, but without the run-length guarantee); without one, the window test decides.
fn combined_status(kind: TestKind, window: Status, sequential: Option<&SequentialBlock>) -> Status {
    let family = kind.sequential_family().as_str();
    let Some(detector) = sequential.and_then(|b| b.tests.iter().find(|t| t.test == family)) else {
        return window;
    };
    if detector.status == Status::Alert {
        Status::Alert
    } else {
        window.min(Status::Warn)
    }
}

/// The saved window (JSON), restored at start when the model version matches.
#[derive(Debug, Serialize, Deserialize)]
struct SavedWindow {
    model_version: String,
    #[serde(flatten)]
    data: WindowData,
}

pub struct Monitor {
    model: String,
    config: MonitorConfig,
    reference: Arc<Reference>,
    window: Mutex<Window>,
    labeled: Mutex<Labeled>,
    hysteresis: Mutex<[Hysteresis; TestKind::COUNT]>,
    sequential: Option<Mutex<Sequential>>,
    latest: RwLock<Option<Arc<Snapshot>>>,
    /// Whether any test family is in alert (after hysteresis) at the last evaluation.
    shifted: std::sync::atomic::AtomicBool,
    metrics: Metrics,
    stop: Mutex<Option<crossbeam_channel::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("model", &self.model)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Monitor {
    pub fn new(
        model: &str,
        config: MonitorConfig,
        reference: Reference,
        embedding_dim: usize,
        metrics: Metrics,
    ) -> Self {
        let classes = reference.labels.len();
        for (class, ratio) in reference.labels.iter().zip(&reference.class_ratios) {
            metrics
                .reference_class_ratio
                .with_label_values(&[class.as_str()])
                .set(*ratio);
        }
        metrics.window_capacity.set(config.window as i64);
        let sequential = config
            .sequential
            .as_ref()
            .map(|s| Sequential::new(&reference, s));
        if let Some(s) = &sequential {
            metrics.drift_evidence_threshold.set(s.threshold());
        }
        let dim = if reference.embeddings.is_some() {
            embedding_dim
        } else {
            0
        };
        Monitor {
            model: model.to_string(),
            window: Mutex::new(Window::new(config.window, classes, dim)),
            labeled: Mutex::new(Labeled {
                capacity: config.labeled_window.max(1),
                classes,
                rows: std::collections::VecDeque::new(),
            }),
            hysteresis: Mutex::new([Hysteresis::default(); TestKind::COUNT]),
            sequential: sequential.map(Mutex::new),
            latest: RwLock::new(None),
            shifted: std::sync::atomic::AtomicBool::new(false),
            reference: Arc::new(reference),
            config,
            metrics,
            stop: Mutex::new(None),
            thread: Mutex::new(None),
        }
    }

    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    pub fn config(&self) -> &MonitorConfig {
        &self.config
    }

    /// Records one prediction (request path: a copy under a short lock).
    pub fn observe(&self, o: &Observation<'_>) {
        lock(&self.window).push(o);
    }

    /// The flags of one prediction (request path).
    pub fn flags(
        &self,
        class: usize,
        confidence: f32,
        embedding: Option<&[f32]>,
    ) -> Vec<crate::prediction::Flag> {
        self.reference.flags(class, confidence, embedding)
    }

    /// The conformal prediction set of a prediction (classes, highest probability first), when
    /// sets are on (request path: a sort of the classes).
    pub fn prediction_set(&self, probabilities: &[f32], request_id: &str) -> Option<Vec<usize>> {
        let c = self.reference.conformal.as_ref()?;
        let set = c.set(probabilities, request_id);
        self.metrics.prediction_set_size.observe(set.len() as f64);
        Some(set)
    }

    /// Records a delayed label for a prediction whose served probabilities are known (its set
    /// is recomputed from them and the request id: the same set that was served).
    pub fn observe_label(&self, probabilities: &[f32], true_class: usize, request_id: &str) {
        let set = self
            .reference
            .conformal
            .as_ref()
            .map(|c| c.set(probabilities, request_id));
        let mut l = lock(&self.labeled);
        if probabilities.len() != l.classes || true_class >= l.classes {
            return;
        }
        if l.rows.len() == l.capacity {
            l.rows.pop_front();
        }
        let set = set.map(|s| (s.len(), s.contains(&true_class)));
        l.rows.push_back((probabilities.into(), true_class, set));
    }

    /// Whether the last evaluation found the window shifted (any family in alert).
    pub fn is_shifted(&self) -> bool {
        self.shifted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The latest evaluation, if any yet.
    pub fn latest(&self) -> Option<Arc<Snapshot>> {
        self.latest
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn min_ts(&self) -> i64 {
        match self.config.max_age {
            Some(age) => crate::time::now_us() - age.as_micros() as i64,
            None => i64::MIN,
        }
    }

    /// Evaluates now: tests, hysteresis, metrics, snapshot.
    pub fn evaluate_now(&self) -> Arc<Snapshot> {
        let seen = self.sequential.as_ref().map(|s| lock(s).seen());
        let (data, fresh) = {
            let w = lock(&self.window);
            (w.snapshot(self.min_ts()), seen.map(|seen| w.since(seen)))
        };
        let sequential = match (&self.sequential, fresh) {
            (Some(s), Some(fresh)) => {
                let mut s = lock(s);
                s.feed(&fresh.data, &self.reference, fresh.pushed, fresh.skipped);
                let (alarms, reports) = s.check(crate::time::now_us());
                for a in alarms {
                    tracing::warn!(model = %self.model, test = a.kind.as_str(), "sequential drift alarm");
                    self.metrics
                        .drift_alarms
                        .with_label_values(&[a.kind.as_str()])
                        .inc();
                }
                Some(SequentialBlock {
                    guarantee: format!(
                        "average run length to a false alarm of any family at least {} predictions \
                         of traffic within the tolerances of the reference (Shiryaev-Roberts \
                         e-detectors; each family alarms at run_length x {} families)",
                        s.run_length(),
                        reports.len()
                    ),
                    run_length: s.run_length(),
                    threshold: s.threshold(),
                    predictions_seen: s.seen(),
                    predictions_skipped: s.skipped(),
                    tests: reports,
                })
            }
            _ => None,
        };
        let (outcomes, estimates) = evaluate(&self.reference, &data, &self.config.settings);
        let statuses: Vec<Status> = {
            let mut h = lock(&self.hysteresis);
            outcomes
                .iter()
                .map(|o| {
                    let window = h[o.kind.index()].update(o.raw, self.config.clear_after);
                    combined_status(o.kind, window, sequential.as_ref())
                })
                .collect()
        };
        self.shifted.store(
            statuses.contains(&Status::Alert),
            std::sync::atomic::Ordering::Relaxed,
        );
        let labeled = self.labeled_report();
        self.export(&data, &outcomes, &statuses, &estimates, labeled.as_ref());
        if let Some(b) = &sequential {
            for t in &b.tests {
                self.metrics
                    .drift_evidence
                    .with_label_values(&[t.test])
                    .set(t.evidence);
            }
        }
        let tests = outcomes
            .iter()
            .zip(&statuses)
            .flat_map(|(o, status)| {
                let threshold = self.config.settings.min_effect(o.kind);
                let overall = TestReport {
                    test: o.kind.as_str(),
                    feature: o.overall.feature.clone(),
                    statistic: o.overall.statistic,
                    p_value: o.overall.p_value,
                    effect_size: o.overall.effect_size,
                    threshold,
                    status: *status,
                    n_window: o.n_window,
                    n_reference: o.n_reference,
                };
                let per_feature = o.features.iter().map(move |f| TestReport {
                    test: o.kind.as_str(),
                    feature: f.feature.clone(),
                    statistic: f.statistic,
                    p_value: f.p_value,
                    effect_size: f.effect_size,
                    threshold,
                    status: evaluate::verdict(
                        &self.config.settings,
                        o.kind,
                        o.n_window,
                        f.p_value,
                        f.effect_size,
                    ),
                    n_window: o.n_window,
                    n_reference: o.n_reference,
                });
                std::iter::once(overall).chain(per_feature)
            })
            .collect();
        let r = &self.reference;
        let snapshot = Arc::new(Snapshot {
            model: self.model.clone(),
            model_version: r.model_version.clone(),
            evaluated_at: crate::time::rfc3339(crate::time::now_us()),
            window: WindowInfo {
                predictions: data.len,
                capacity: self.config.window,
                max_age_seconds: self.config.max_age.map(|a| a.as_secs_f64()),
            },
            tests,
            estimates,
            labeled,
            reference: Some(ReferenceInfo {
                samples: r.n,
                accuracy: r.labeled.as_ref().map(|l| l.accuracy),
                mean_confidence: r.mean_confidence,
                ece: r.labeled.as_ref().map(|l| l.ece),
                temperature: r.labeled.as_ref().map(|l| l.temperature),
                temperature_applied: r.temperature_applied.is_some(),
                atc_threshold: r.labeled.as_ref().map(|l| l.atc_threshold),
                prediction_set_threshold: r.conformal.as_ref().map(|c| c.threshold),
            }),
            sequential,
        });
        *self.latest.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&snapshot));
        snapshot
    }

    fn labeled_report(&self) -> Option<LabeledReport> {
        let l = lock(&self.labeled);
        if l.rows.is_empty() {
            return None;
        }
        let k = l.classes;
        let n = l.rows.len();
        let mut probs = Vec::with_capacity(n * k);
        let mut truth = Vec::with_capacity(n);
        let (mut with_set, mut covered, mut sizes) = (0usize, 0usize, 0usize);
        for (p, t, set) in &l.rows {
            probs.extend_from_slice(p);
            truth.push(*t);
            if let Some((size, hit)) = set {
                with_set += 1;
                sizes += size;
                covered += usize::from(*hit);
            }
        }
        drop(l);
        let share = |x: usize| (with_set > 0).then(|| x as f64 / with_set as f64);
        let mut confidence = Vec::with_capacity(n);
        let mut correct = Vec::with_capacity(n);
        let mut per_class = vec![(0usize, 0usize); k];
        for (row, t) in probs.chunks_exact(k).zip(&truth) {
            let s = crate::prediction::summarize(row);
            confidence.push(f64::from(s.confidence));
            correct.push(s.class == *t);
            per_class[*t].0 += 1;
            per_class[*t].1 += usize::from(s.class == *t);
        }
        Some(LabeledReport {
            n,
            accuracy: correct.iter().filter(|c| **c).count() as f64 / n as f64,
            ece: stats::ece(&confidence, &correct, 15),
            adaptive_ece: stats::adaptive_ece(&confidence, &correct, 15),
            mce: stats::mce(&confidence, &correct, 15),
            brier: stats::brier(&probs, k, &truth),
            nll: stats::nll(&probs, k, &truth),
            reliability: stats::reliability_bins(&confidence, &correct, 15)
                .into_iter()
                .map(|b| ReliabilityReport {
                    lo: b.lo,
                    hi: b.hi,
                    count: b.count,
                    accuracy: b.accuracy,
                    confidence: b.confidence,
                })
                .collect(),
            per_class_accuracy: per_class
                .iter()
                .map(|(n, ok)| (*n > 0).then(|| *ok as f64 / *n as f64))
                .collect(),
            prediction_set_coverage: share(covered),
            prediction_set_target: self.reference.conformal.as_ref().map(|c| c.coverage),
            mean_prediction_set_size: share(sizes),
        })
    }

    fn export(
        &self,
        data: &WindowData,
        outcomes: &[TestOutcome],
        statuses: &[Status],
        estimates: &Estimates,
        labeled: Option<&LabeledReport>,
    ) {
        let m = &self.metrics;
        m.window_predictions.set(data.len as i64);
        for (o, status) in outcomes.iter().zip(statuses) {
            let test = o.kind.as_str();
            m.drift_status
                .with_label_values(&[test])
                .set(status.gauge());
            for f in std::iter::once(&o.overall).chain(&o.features) {
                m.drift_statistic
                    .with_label_values(&[test, f.feature.as_str()])
                    .set(f.statistic);
                m.drift_p_value
                    .with_label_values(&[test, f.feature.as_str()])
                    .set(f.p_value);
            }
        }
        // A method, a class share or a verdict that is undefined now is removed, not left at
        // its last value (nor exported before it is first defined).
        let served = [("served", estimates.accuracy)];
        for (method, value) in estimates.methods().into_iter().chain(served) {
            match value {
                Some(v) => m.estimated_accuracy.with_label_values(&[method]).set(v),
                None => {
                    let _ = m.estimated_accuracy.remove_label_values(&[method]);
                }
            }
        }
        match estimates.overconfidence_gap {
            Some(gap) => m.overconfidence_gap.with_label_values(NO_LABELS).set(gap),
            None => {
                let _ = m.overconfidence_gap.remove_label_values(NO_LABELS);
            }
        }
        match estimates.overconfidence {
            Some(status) => m
                .overconfidence_status
                .with_label_values(NO_LABELS)
                .set(status.gauge()),
            None => {
                let _ = m.overconfidence_status.remove_label_values(NO_LABELS);
            }
        }
        m.estimated_class_ratio.reset();
        if let Some(mix) = &estimates.class_mix {
            for (label, v) in self.reference.labels.iter().zip(&mix.estimated) {
                m.estimated_class_ratio.with_label_values(&[label]).set(*v);
            }
        }
        if labeled.is_none() {
            let _ = m.labeled_accuracy.remove_label_values(NO_LABELS);
            m.calibration_error.reset();
        }
        if let Some(l) = labeled {
            m.labeled_accuracy
                .with_label_values(NO_LABELS)
                .set(l.accuracy);
            for (metric, v) in [
                ("ece", l.ece),
                ("mce", l.mce),
                ("brier", l.brier),
                ("nll", l.nll),
            ] {
                m.calibration_error.with_label_values(&[metric]).set(v);
            }
        }
    }

    /// Starts the evaluation thread (and restores the saved window first).
    pub fn spawn(self: &Arc<Self>) {
        self.restore();
        let (tx, rx) = crossbeam_channel::bounded::<()>(1);
        *lock(&self.stop) = Some(tx);
        let me = Arc::clone(self);
        let handle = std::thread::Builder::new()
            .name("monitor".into())
            .spawn(move || {
                let mut last_save = Instant::now();
                loop {
                    let started = Instant::now();
                    me.evaluate_now();
                    let spent = started.elapsed();
                    tracing::debug!(ms = spent.as_secs_f64() * 1e3, "monitor evaluated");
                    if last_save.elapsed() >= me.config.persist_every {
                        me.save();
                        last_save = Instant::now();
                    }
                    match rx.recv_timeout(me.config.evaluate_every.saturating_sub(spent)) {
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                        _ => break,
                    }
                }
            })
            .expect("spawning the monitor thread");
        *lock(&self.thread) = Some(handle);
    }

    /// Stops the evaluation thread (a retired version: its window is not saved).
    pub fn stop(&self) {
        if let Some(tx) = lock(&self.stop).take() {
            let _ = tx.send(());
        }
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }

    /// Stops the evaluation thread and saves the window.
    pub fn close(&self) {
        self.stop();
        self.save();
    }

    fn save(&self) {
        let Some(path) = &self.config.state_file else {
            return;
        };
        let saved = SavedWindow {
            model_version: self.reference.model_version.clone(),
            data: lock(&self.window).snapshot(i64::MIN),
        };
        let result = (|| -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec(&saved)?)?;
            std::fs::rename(&tmp, path)
        })();
        match result {
            Ok(()) => {
                tracing::debug!(path = %path.display(), rows = saved.data.len, "monitor window saved")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot save the monitor window")
            }
        }
    }

    fn restore(&self) {
        let Some(path) = &self.config.state_file else {
            return;
        };
        let Ok(bytes) = std::fs::read(path) else {
            return;
        };
        let saved: SavedWindow = match serde_json::from_slice(&bytes) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable saved window");
                return;
            }
        };
        if saved.model_version != self.reference.model_version {
            tracing::info!(path = %path.display(), "the saved window is from another model version; starting empty");
            return;
        }
        if !saved.data.is_consistent() {
            tracing::warn!(path = %path.display(), "ignoring an inconsistent saved window");
            return;
        }
        let mut w = lock(&self.window);
        w.restore(&saved.data);
        tracing::info!(path = %path.display(), rows = w.len(), "monitor window restored");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Estimates and verdicts are exported while defined and removed when they stop being:
    /// never before the first evaluation, never a stale value once the window has aged out.
    #[test]
    fn estimate_series_exist_only_while_defined() {
        let profile = crate::monitor::reference::tests::toy_profile();
        let reference = Reference::prepare(&profile, false, 1).unwrap();
        let mut config = crate::monitor::RawMonitor::default()
            .validate(&mut |k, e| panic!("{k}: {e}"))
            .unwrap();
        config.window = 200;
        config.max_age = Some(Duration::from_millis(800));
        config.settings.min_samples = 50;
        config.sequential = None;
        config.state_file = None;
        let metrics = Metrics::new("toy");
        let monitor = Monitor::new("toy", config, reference, 2, metrics.clone());
        let render = || crate::metrics::render(&[&metrics.registry]);
        for series in [
            "shiftwatch_estimated_accuracy{",
            "shiftwatch_overconfidence_gap{",
            "shiftwatch_overconfidence_status{",
            "shiftwatch_labeled_accuracy{",
            "shiftwatch_estimated_class_ratio{",
        ] {
            assert!(!render().contains(series), "{series} before any evaluation");
        }
        let now = crate::time::now_us();
        for (i, (probs, embedding)) in profile
            .probabilities
            .iter()
            .zip(profile.embeddings.as_ref().unwrap())
            .enumerate()
        {
            let s = crate::prediction::summarize(probs);
            monitor.observe(&Observation {
                ts_us: now,
                class: s.class,
                confidence: s.confidence,
                entropy: s.entropy,
                probabilities: probs,
                inputs: [
                    profile.inputs["brightness"][i],
                    f32::NAN,
                    f32::NAN,
                    f32::NAN,
                    8.0,
                    8.0,
                ],
                embedding: Some(embedding),
                set_size: f32::NAN,
                correct: 0.85,
            });
            monitor.observe_label(probs, profile.true_classes.as_ref().unwrap()[i], "id");
        }
        monitor.evaluate_now();
        let text = render();
        for series in [
            "shiftwatch_estimated_accuracy{method=\"served\",model=\"toy\"} 0.85",
            "shiftwatch_estimated_accuracy{method=\"atc\",model=\"toy\"}",
            "shiftwatch_overconfidence_gap{model=\"toy\"}",
            "shiftwatch_overconfidence_status{model=\"toy\"} 0",
            "shiftwatch_estimated_class_ratio{class=\"a\",model=\"toy\"}",
            "shiftwatch_labeled_accuracy{model=\"toy\"} 0.9",
        ] {
            assert!(text.contains(series), "{series} missing: {text}");
        }
        // The window ages out: no estimate, no verdict, no class mix (labels stay: their
        // window is by count).
        std::thread::sleep(Duration::from_millis(900));
        monitor.evaluate_now();
        let text = render();
        for series in [
            "shiftwatch_estimated_accuracy{",
            "shiftwatch_overconfidence_gap{",
            "shiftwatch_overconfidence_status{",
            "shiftwatch_estimated_class_ratio{",
        ] {
            assert!(!text.contains(series), "{series} stale: {text}");
        }
        assert!(text.contains("shiftwatch_labeled_accuracy{model=\"toy\"} 0.9"));
    }

    fn block(test: &'static str, status: Status) -> SequentialBlock {
        SequentialBlock {
            guarantee: String::new(),
            run_length: 1e6,
            threshold: 7e6,
            predictions_seen: 0,
            predictions_skipped: 0,
            tests: vec![SequentialReport {
                test,
                evidence: 0.0,
                threshold: 7e6,
                tolerance: 0.1,
                status,
                alarms: 0,
                alarm_at: None,
                components: 1,
            }],
        }
    }

    #[test]
    fn the_sequential_detector_decides_alerts() {
        let quiet = block("class_chi2", Status::Ok);
        let alarmed = block("class_chi2", Status::Alert);
        // A window alert without the detector's alarm is a warning.
        assert_eq!(
            combined_status(TestKind::ClassChi2, Status::Alert, Some(&quiet)),
            Status::Warn
        );
        // PSI and JS of the class mix follow the class-mix detector.
        assert_eq!(
            combined_status(TestKind::ClassPsi, Status::Ok, Some(&alarmed)),
            Status::Alert
        );
        assert_eq!(
            combined_status(TestKind::ClassJs, Status::InsufficientData, Some(&alarmed)),
            Status::Alert,
            "the detector needs no minimum sample"
        );
        assert_eq!(
            combined_status(TestKind::ClassJs, Status::InsufficientData, Some(&quiet)),
            Status::InsufficientData
        );
        // No detector for the family (or none at all): the window test decides.
        assert_eq!(
            combined_status(TestKind::InputKs, Status::Alert, Some(&quiet)),
            Status::Alert
        );
        assert_eq!(
            combined_status(TestKind::ClassChi2, Status::Alert, None),
            Status::Alert
        );
    }
}
