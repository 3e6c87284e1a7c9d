//! The model as the unit of the design: one [`ModelService`] per served model owns its versions
//! (spec, inference pool, monitor), its candidate store, its feedback join buffer, its log stream
//! and its metric handles, and decides what happens to every prediction ([`record`]). The HTTP
//! layer only translates: it resolves a model by name, hands decoded inputs to
//! [`Version::infer`] and the result to [`ModelService::record`], and turns the answer into JSON.
//!
//! Versions: a service serves one [`Version`] at a time, behind an `Arc` that each request takes
//! when it starts, so a request finishes on the version it started with while a reload swaps in
//! the next ([`reload`]). A version with no reference profile has no monitor: its tests say
//! `insufficient_data` rather than compare it with another version's profile.

pub mod record;
pub mod reload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use anyhow::Context;

pub use self::record::{ImageInput, Prediction, RecordError, Served};
pub use self::reload::{ReloadError, Reloaded};
use crate::config::Config;
use crate::feedback::RecentPredictions;
use crate::image_stats::Descriptor;
use crate::inference::{BatchMetrics, InferenceError, InferencePool, Inferred, Pending, Post};
use crate::log::{FeedbackRecord, PredictionLog, PredictionStream};
use crate::metrics::{FeedbackOutcome, Metrics, ProcessMetrics};
use crate::model::config::ModelConfig;
use crate::model::{self, LoadOptions, ModelSpec, RawOutput};
use crate::monitor::correctness::Correctness;
use crate::monitor::reference::{Reference, ReferenceProfile};
use crate::monitor::{Monitor, MonitorConfig, Snapshot};
use crate::relabel::ood::OodDetector;
use crate::relabel::{CandidateMetrics, Candidates};

/// One loaded version of a model: what a request needs from start to answer.
pub struct Version {
    pub spec: Arc<ModelSpec>,
    pub pool: InferencePool,
    /// `None` when the monitor is off or this version has no reference profile.
    pub monitor: Option<Arc<Monitor>>,
    /// `model_version`, shared by every row this version logs.
    pub version: Arc<str>,
    /// Class names, shared by every row this version logs.
    pub labels: Vec<Arc<str>>,
    /// The file it was loaded from.
    pub path: PathBuf,
    /// The out-of-distribution detector fitted on the reference embeddings and image
    /// descriptors (`None` without a reference built for this version, or when the reference
    /// holds neither).
    pub ood: Option<Arc<OodDetector>>,
    /// The per-prediction correctness model of the reference (`None` without one: a profile
    /// built without labels or before it existed, or without a detector to place predictions).
    pub correctness: Option<Arc<Correctness>>,
}

impl std::fmt::Debug for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Version")
            .field("model", &self.spec.name)
            .field("version", &self.version)
            .finish()
    }
}

impl Version {
    /// Runs one preprocessed image through this version's inference pool ([`Self::submit`]).
    pub async fn infer(
        &self,
        tensor: Vec<f32>,
        descriptor: Option<&Descriptor>,
    ) -> Result<Inferred, InferenceError> {
        self.submit(tensor, descriptor)?
            .await
            .map_err(|_| InferenceError::Closed)?
    }

    /// Queues one preprocessed image; the receiver yields its result. With a detector, the
    /// inference thread also searches the reference for the output's embedding and the image's
    /// `descriptor` (`Inferred::proximity`; see [`crate::inference::Post`]).
    pub fn submit(
        &self,
        tensor: Vec<f32>,
        descriptor: Option<&Descriptor>,
    ) -> Result<Pending, InferenceError> {
        let post = self.ood.as_ref().map(|detector| {
            let (detector, k) = (Arc::clone(detector), self.neighbors());
            let descriptor = descriptor.copied();
            Box::new(move |output: &RawOutput| {
                detector.proximity(
                    output.embedding.as_deref(),
                    descriptor.as_ref().map(|d| &d[..]),
                    k,
                    None,
                )
            }) as Post
        });
        self.pool.submit(tensor, post)
    }

    /// The reference neighbours a prediction is placed among: the correctness model's count
    /// when there is one, else the nearest alone (all the score needs).
    pub fn neighbors(&self) -> usize {
        if self.correctness.is_some() {
            crate::monitor::correctness::NEIGHBORS
        } else {
            1
        }
    }
}

/// A neighbour found by [`ModelService::similar`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Similar {
    pub request_id: String,
    pub distance: f64,
    pub predicted_label: Option<String>,
    /// The delayed label, when one came back.
    pub label: Option<String>,
}

/// One served model: its current version and everything that outlives versions.
pub struct ModelService {
    pub name: String,
    config: ModelConfig,
    /// The whole config: inference, runtime, monitor and candidate settings.
    settings: Arc<Config>,
    several: bool,
    current: RwLock<Arc<Version>>,
    pub metrics: Metrics,
    log: Option<PredictionStream>,
    pub candidates: Option<Candidates>,
    recent: RecentPredictions,
    /// Held while a reload loads and swaps (one reload at a time per model).
    reloading: Mutex<()>,
    watch: Mutex<Option<reload::Watch>>,
}

impl std::fmt::Debug for ModelService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelService")
            .field("name", &self.name)
            .field("version", &self.current().version)
            .finish()
    }
}

/// Every served model and the log directory.
pub struct Services {
    models: BTreeMap<String, Arc<ModelService>>,
    pub log: Option<PredictionLog>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("models", &self.models.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ModelService {
    /// The version serving now (a request keeps it until it is answered).
    pub fn current(&self) -> Arc<Version> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The monitor's latest evaluation of the current version (made now if none has run yet;
    /// blocking: call it off the async workers).
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        let monitor_config = self.settings.monitor.as_ref()?;
        let version = self.current();
        Some(match &version.monitor {
            Some(m) => m.latest().unwrap_or_else(|| m.evaluate_now()),
            None => Arc::new(Snapshot::unreferenced(
                &self.name,
                &version.version,
                monitor_config.window,
                monitor_config.max_age,
            )),
        })
    }

    /// Records a delayed label for `request_id` when this model remembers it: feeds the
    /// current version's labeled window (labels of an older version's predictions only count
    /// for that version, which no longer serves).
    /// Unknown ids are counted in `process_metrics` (they belong to no model).
    fn label(
        &self,
        request_id: &str,
        class: usize,
        process_metrics: &ProcessMetrics,
    ) -> FeedbackOutcome {
        let (outcome, served) = self.recent.label(request_id, class);
        if let Some((probabilities, version)) = served {
            let current = self.current();
            if current.version == version
                && let Some(monitor) = &current.monitor
            {
                monitor.observe_label(&probabilities, class, request_id);
            }
        }
        let counted = if outcome == FeedbackOutcome::UnknownId {
            &process_metrics.shared
        } else {
            &self.metrics.shared
        };
        counted
            .feedback
            .with_label_values(&[outcome.as_str()])
            .inc();
        outcome
    }

    /// The `k` predictions nearest to `request_id`'s embedding among those this model still
    /// holds (its recent predictions and its stored candidates), nearest first; `None` when it
    /// holds no embedding for that id. A model without an embedding output compares its
    /// candidates' probability vectors instead.
    pub fn similar(&self, request_id: &str, k: usize) -> Option<Vec<Similar>> {
        let stored = self
            .candidates
            .as_ref()
            .map(Candidates::list)
            .unwrap_or_default();
        let query = self.recent.embedding(request_id).or_else(|| {
            stored
                .iter()
                .find(|s| s.candidate.request_id == request_id)
                .map(|s| s.candidate.vector.clone())
        })?;
        let labels = self.current().labels.clone();
        let name = |class: Option<usize>| class.and_then(|c| labels.get(c)).map(|l| l.to_string());
        let mut found: Vec<Similar> = self
            .recent
            .nearest(&query, k, request_id, false)
            .into_iter()
            .map(|n| Similar {
                request_id: n.request_id,
                distance: n.distance,
                predicted_label: name(n.predicted_class),
                label: name(n.true_class),
            })
            .collect();
        let known: std::collections::HashSet<String> =
            found.iter().map(|n| n.request_id.clone()).collect();
        for s in &stored {
            let c = &s.candidate;
            if c.request_id == request_id
                || c.vector.len() != query.len()
                || known.contains(&c.request_id)
                || c.vector.iter().any(|v| !v.is_finite())
            {
                continue;
            }
            found.push(Similar {
                distance: crate::stats::knn::euclidean(&query, &c.vector),
                predicted_label: Some(s.predicted_label.clone()),
                label: name(self.recent.true_class(&c.request_id)),
                request_id: c.request_id.clone(),
            });
        }
        found.sort_by(|a, b| {
            a.distance
                .total_cmp(&b.distance)
                .then_with(|| a.request_id.cmp(&b.request_id))
        });
        found.truncate(k);
        Some(found)
    }

    /// The labeled prediction whose embedding lies nearest to `vector` (not `exclude` itself):
    /// its request id, its label and the distance (label propagation in exports).
    pub fn nearest_labeled(&self, vector: &[f32], exclude: &str) -> Option<(String, String, f64)> {
        let near = self.recent.nearest(vector, 1, exclude, true).pop()?;
        let label = self.current().labels.get(near.true_class?)?.to_string();
        Some((near.request_id, label, near.distance))
    }

    /// Stops the watcher, the workers and the monitor of the current version, writes out the
    /// log stream and the candidate index.
    fn close(&self) {
        if let Some(w) = self
            .watch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            w.stop();
        }
        let version = self.current();
        version.pool.close();
        if let Some(log) = &self.log {
            log.close();
        }
        if let Some(monitor) = &version.monitor {
            monitor.close();
        }
        if let Some(candidates) = &self.candidates {
            candidates.close();
        }
    }
}

impl Services {
    /// Loads every configured model (blocking: sessions, warm-up, reference profiles), opens
    /// the log directory and each model's stream, candidate store and monitor.
    pub fn start(
        config: Arc<Config>,
        process_metrics: &ProcessMetrics,
    ) -> anyhow::Result<Services> {
        let several = config.models.len() > 1;
        let log = match &config.log {
            None => None,
            Some(log_config) => {
                // Never fails: a log that cannot write now is degraded, not a failed start.
                let (log, recovered) = PredictionLog::open(log_config, &process_metrics.shared.log);
                tracing::info!(
                    dir = %log_config.dir.display(),
                    durability = ?log.durability(),
                    recovered_feedback = recovered,
                    "prediction log open"
                );
                Some(log)
            }
        };
        let mut models = BTreeMap::new();
        for model_config in &config.models {
            let service = ModelService::start(model_config, &config, several, log.as_ref())?;
            models.insert(model_config.name.clone(), service);
        }
        Ok(Services { models, log })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<ModelService>> {
        self.models.get(name)
    }

    /// The model routes without a model name default to: the only one, or the first by name.
    pub fn default_model(&self) -> &Arc<ModelService> {
        self.models
            .values()
            .next()
            .expect("a config has at least one model")
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<ModelService>> {
        self.models.values()
    }

    pub fn names(&self) -> Vec<&str> {
        self.models.keys().map(String::as_str).collect()
    }

    /// The registries of the models' series.
    pub fn registries(&self) -> impl Iterator<Item = &prometheus::Registry> {
        self.models.values().map(|m| &m.metrics.registry)
    }

    /// Whether the log can write (`None`) or why not.
    pub fn log_degraded(&self) -> Option<String> {
        self.log.as_ref().and_then(PredictionLog::degraded)
    }

    /// Resolves the model and class of a delayed label: the model that remembers the request
    /// id, else the first whose classes include `label` (the label is kept either way: labels
    /// can outlive the window). `Err` lists the classes when no model has the label.
    pub fn resolve_label(
        &self,
        request_id: &str,
        label: &str,
    ) -> Result<(&ModelService, usize), String> {
        let owner = self.models.values().find(|m| m.recent.contains(request_id));
        let candidates: Vec<&Arc<ModelService>> = match owner {
            Some(m) => vec![m],
            None => self.models.values().collect(),
        };
        for m in &candidates {
            if let Some(class) = m.current().labels.iter().position(|l| &**l == label) {
                return Ok((m, class));
            }
        }
        let classes: Vec<String> = candidates
            .iter()
            .flat_map(|m| m.current().labels.clone())
            .map(|l| l.to_string())
            .collect();
        Err(format!(
            "unknown label `{label}` (the model's classes: {})",
            classes.join(", ")
        ))
    }

    /// Records a valid delayed label: matched against its model's recent predictions,
    /// counted, and queued for the feedback log (the second part: whether the log took it).
    pub fn label(
        &self,
        model: &ModelService,
        record: FeedbackRecord,
        process_metrics: &ProcessMetrics,
    ) -> (
        FeedbackOutcome,
        Result<Option<crate::log::Appended>, crate::log::LogError>,
    ) {
        let outcome = model.label(&record.request_id, record.class, process_metrics);
        let appended = match &self.log {
            Some(log) => log.append_feedback(record).map(Some),
            None => Ok(None),
        };
        (outcome, appended)
    }

    /// Stops every model (workers drain their queues), then the log.
    pub fn close(&self) {
        for m in self.models.values() {
            m.close();
        }
        if let Some(log) = &self.log {
            log.close();
        }
    }
}

impl ModelService {
    fn start(
        model_config: &ModelConfig,
        config: &Arc<Config>,
        several: bool,
        log: Option<&PredictionLog>,
    ) -> anyhow::Result<Arc<ModelService>> {
        let name = model_config.name.clone();
        let metrics = Metrics::new(&name);
        let version = load_version(
            model_config,
            config,
            &metrics,
            several,
            &model_config.path,
            model_config.reference.as_deref(),
        )?;
        if let Some(m) = &version.monitor {
            m.spawn();
        }
        let spec = Arc::clone(&version.spec);
        metrics.init_series(&spec.labels);
        metrics.set_build_info(&spec.version, spec.execution_provider.as_str());
        let stream = match log {
            None => None,
            Some(log) => {
                let (stream, recovered) = log.predictions(&name, &metrics.shared.log);
                if recovered > 0 {
                    tracing::info!(model = %name, recovered_predictions = recovered, "recovered logged predictions");
                }
                Some(stream)
            }
        };
        let candidates = match &config.candidates {
            None => None,
            Some(cc) => {
                let cc = cc.for_model(&name, several, spec.num_classes());
                let dir = cc.dir.clone();
                let cm = CandidateMetrics {
                    stored: metrics.candidates_stored.clone(),
                    stored_bytes: metrics.candidates_stored_bytes.clone(),
                    exported: metrics.candidates_exported.clone(),
                    evicted: metrics.candidates_evicted.clone(),
                    skipped: metrics.candidates_skipped.clone(),
                    index_rejected: metrics.candidates_index_rejected.clone(),
                };
                Some(Candidates::open(cc, cm).with_context(|| {
                    format!(
                        "cannot open the candidate store {} (candidates.dir)",
                        dir.display()
                    )
                })?)
            }
        };
        let service = Arc::new(ModelService {
            name,
            config: model_config.clone(),
            settings: Arc::clone(config),
            several,
            current: RwLock::new(Arc::new(version)),
            metrics,
            log: stream,
            candidates,
            recent: RecentPredictions::new(config.feedback_match_window),
            reloading: Mutex::new(()),
            watch: Mutex::new(None),
        });
        if let Some(every) = model_config.watch {
            let watch = reload::Watch::start(Arc::downgrade(&service), every);
            *service.watch.lock().unwrap_or_else(PoisonError::into_inner) = Some(watch);
        }
        Ok(service)
    }
}

/// Loads one version: sessions and warm-up, the reference profile when one fits, the monitor
/// (not started: the caller spawns it once the version serves), the inference pool.
fn load_version(
    model_config: &ModelConfig,
    config: &Config,
    metrics: &Metrics,
    several: bool,
    path: &Path,
    reference: Option<&Path>,
) -> anyhow::Result<Version> {
    let loaded = model::load(
        model_config,
        LoadOptions {
            path,
            inference: &config.inference,
            library: config.runtime_library.as_deref(),
        },
    )
    .map_err(anyhow::Error::new)
    .with_context(|| {
        format!(
            "cannot load model `{}` from {}",
            model_config.name,
            path.display()
        )
    })?;
    let spec = &loaded.spec;
    tracing::info!(
        model = %spec.name,
        model_version = %spec.version,
        path = %path.display(),
        execution_provider = %spec.execution_provider,
        sessions = loaded.sessions.len(),
        input = %spec.input_name,
        size = %format!("{}x{}", spec.preprocess.width, spec.preprocess.height),
        color = ?spec.preprocess.color,
        layout = ?spec.preprocess.layout,
        classes = spec.num_classes(),
        embedding = ?spec.embedding_dim,
        described_by = spec.described_by,
        "model loaded"
    );
    let monitor = match (&config.monitor, reference) {
        (Some(mc), Some(reference)) => {
            let mut mc = mc.clone();
            mc.state_file = mc.state_file_for(&spec.name, several);
            Some(start_monitor(&mc, reference, spec, metrics)?)
        }
        _ => None,
    };
    let profile = reference.and_then(|path| read_reference(path, spec).ok());
    let ood = reference.zip(profile.as_ref()).and_then(|(path, profile)| {
        let quantile = config.candidates.as_ref().map_or(0.99, |c| c.ood_quantile);
        if profile.descriptors.is_none() {
            tracing::warn!(model = %spec.name, reference = %path.display(),
                "the reference profile holds no image descriptors (built before they existed): \
                 the out-of-distribution score uses the embedding alone; rebuild the profile \
                 with `shiftwatch reference`");
        }
        match OodDetector::fit(
            profile.embeddings.as_deref(),
            profile.descriptors.as_deref(),
            quantile,
        ) {
            Ok(d) => {
                let (embedding, descriptor) = d.spaces();
                tracing::info!(model = %spec.name, embedding, descriptor,
                    "out-of-distribution detector fitted");
                Some(Arc::new(d))
            }
            Err(e) => {
                tracing::warn!(model = %spec.name, reference = %path.display(), error = %e,
                    "no out-of-distribution detector: ood_suspect falls back to the monitor's centroids");
                None
            }
        }
    });
    let correctness = match (&profile, &ood) {
        (Some(profile), Some(_)) => match (&profile.correctness, &profile.true_classes) {
            (Some(c), Some(truth)) => match Correctness::new(c.clone(), truth.clone()) {
                Ok(c) => Some(Arc::new(c)),
                Err(e) => {
                    tracing::warn!(model = %spec.name, error = %e,
                        "the reference's correctness model cannot be used: the served accuracy \
                         estimate falls back to ATC");
                    None
                }
            },
            _ => {
                tracing::warn!(model = %spec.name,
                    "the reference profile holds no correctness model (built without labels or \
                     before it existed): the served accuracy estimate falls back to ATC; rebuild \
                     it with `shiftwatch reference --labels`");
                None
            }
        },
        _ => None,
    };
    let version: Arc<str> = Arc::from(spec.version.as_str());
    let labels = spec.labels.iter().map(|l| Arc::from(l.as_str())).collect();
    let pool = InferencePool::start(
        loaded,
        &config.inference,
        config.inference.max_in_flight,
        BatchMetrics {
            inference_duration: metrics.inference_duration.clone(),
            batch_size: metrics.batch_size.clone(),
        },
    );
    Ok(Version {
        spec: Arc::clone(pool.spec()),
        pool,
        monitor,
        version,
        labels,
        path: path.to_path_buf(),
        ood,
        correctness,
    })
}

/// Reads a reference profile and checks that it was built with this model version.
pub fn read_reference(path: &Path, spec: &ModelSpec) -> anyhow::Result<ReferenceProfile> {
    let text = std::fs::read(path).with_context(|| {
        format!(
            "cannot read the reference profile {}; build it with \
             `shiftwatch reference --images DIR --labels CSV --out {}` or set monitor.enabled = false",
            path.display(),
            path.display()
        )
    })?;
    let profile: ReferenceProfile = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a reference profile", path.display()))?;
    if profile.model_version != spec.version {
        anyhow::bail!(
            "the reference profile {} was built with model version {}, but the model is {}; \
             rebuild it with `shiftwatch reference`",
            path.display(),
            profile.model_version,
            spec.version
        );
    }
    if profile.labels != spec.labels {
        anyhow::bail!(
            "the reference profile {} has other class labels than the model",
            path.display()
        );
    }
    Ok(profile)
}

/// Prepares the reference and makes the monitor (its thread starts with `Monitor::spawn`).
fn start_monitor(
    config: &MonitorConfig,
    path: &Path,
    spec: &ModelSpec,
    metrics: &Metrics,
) -> anyhow::Result<Arc<Monitor>> {
    let profile = read_reference(path, spec)?;
    let mut reference =
        Reference::prepare(&profile, config.apply_temperature, config.settings.seed)
            .map_err(|e| anyhow::anyhow!("reference profile {}: {e}", path.display()))?;
    if let Some(coverage) = config.prediction_set_coverage
        && let Err(e) = reference.calibrate_prediction_sets(
            &profile,
            coverage,
            config.prediction_set_regularization,
            config.prediction_set_temperature,
            config.settings.seed,
        )
    {
        tracing::warn!(model = %spec.name, reference = %path.display(), error = %e, "prediction sets are off");
    }
    tracing::info!(
        model = %spec.name,
        reference = %path.display(),
        samples = reference.n,
        accuracy = ?reference.labeled.as_ref().map(|l| l.accuracy),
        temperature_applied = ?reference.temperature_applied,
        "monitor ready"
    );
    // `spawn` restores the saved window only when it is this version's: a new version starts
    // with an empty one.
    Ok(Arc::new(Monitor::new(
        &spec.name,
        config.clone(),
        reference,
        spec.embedding_dim.unwrap_or(0),
        metrics.clone(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request's reference search runs on the inference thread (`Version::submit`), and
    /// `record` takes it from there; it must be the search `record` did itself before: the
    /// detector's, with the correctness model's neighbour count, giving the same neighbours,
    /// distances and ratios, for bundled images in and out of distribution.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_inference_thread_searches_as_record_would() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[model]\nname = \"digits\"\npath = {:?}\nreference = {:?}\n\
             [log]\ndir = {:?}\n[candidates]\nenabled = false\n",
            root.join("models/digits.onnx"),
            root.join("models/digits.reference.json"),
            dir.path().join("log"),
        );
        let config = crate::config::load_str(&text, Path::new("test.toml"), []).unwrap();
        let limits = config.limits;
        let services = Services::start(Arc::new(config), &ProcessMetrics::new(None)).unwrap();
        let version = services.get("digits").unwrap().current();
        let detector = version
            .ood
            .clone()
            .expect("the bundled reference has a detector");
        assert!(version.correctness.is_some());
        assert_eq!(version.neighbors(), crate::monitor::correctness::NEIGHBORS);
        let mut checked = 0;
        for folder in ["normal", "ood", "blur"] {
            let mut files: Vec<_> = std::fs::read_dir(root.join("data/traffic").join(folder))
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "png"))
                .collect();
            files.sort();
            for file in files.iter().take(4) {
                let bytes = std::fs::read(file).unwrap();
                let image = crate::preprocess::decode(&bytes, None, &limits)
                    .unwrap()
                    .image;
                let mut tensor = vec![0f32; version.spec.preprocess.tensor_len()];
                crate::preprocess::to_tensor(&image, &version.spec.preprocess, &mut tensor);
                let descriptor = crate::image_stats::describe(&image).descriptor;
                let inferred = version.infer(tensor, Some(&descriptor)).await.unwrap();
                let searched = inferred
                    .proximity
                    .expect("searched on the inference thread");
                let direct = detector.proximity(
                    inferred.output.embedding.as_deref(),
                    Some(&descriptor[..]),
                    version.neighbors(),
                    None,
                );
                assert_eq!(searched, direct, "{}", file.display());
                assert_eq!(searched.embedding_neighbors.len(), version.neighbors());
                assert!(searched.score().is_some());
                checked += 1;
            }
        }
        assert_eq!(checked, 12);
        services.close();
    }
}
