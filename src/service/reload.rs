//! Hot reload: a new version is loaded and warmed up beside the serving one, then swapped in;
//! requests already running finish on the version they started with, and the old version's
//! workers stop once the last of them is answered. A file watch (opt-in, by polling) reloads
//! when the configured file changes. Rollback is a reload of the previous file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use super::{ModelService, Version, load_version};
use crate::monitor::evaluate::TestKind;

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    pub model: String,
    pub model_version: String,
    pub previous_version: String,
    /// The reference profile the new version is monitored against (`None`: none fits it).
    pub reference: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file does not load, does not fit, or its reference does not fit it: the old version
    /// keeps serving.
    #[error("{0:#}")]
    Invalid(anyhow::Error),
    #[error(
        "the new model's classes ({new}) differ from the served ones ({old}); a reload keeps the classes, restart to change them"
    )]
    ClassesChanged { old: String, new: String },
}

/// How long a retired version waits for its last requests before its workers stop anyway.
const RETIRE_WAIT: Duration = Duration::from_secs(120);

impl ModelService {
    /// Loads `path` (default: the configured file) and swaps it in; the reference is `reference`
    /// when given, else the configured one when it was built for this version, else none.
    /// Blocking (loads sessions): call it off the async workers.
    pub fn reload(
        &self,
        path: Option<&Path>,
        reference: Option<&Path>,
    ) -> Result<Reloaded, ReloadError> {
        let _one_at_a_time = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let path = path.unwrap_or(&self.config.path);
        // The configured reference only when it is this version's: a new model is never
        // compared with an old model's profile.
        let reference = match reference {
            Some(r) => {
                // Read it before loading sessions: a wrong profile fails fast.
                reference_version(r).ok_or_else(|| {
                    ReloadError::Invalid(anyhow::anyhow!(
                        "{} is not a readable reference profile",
                        r.display()
                    ))
                })?;
                Some(r.to_path_buf())
            }
            None => self.config.reference.clone().filter(|r| {
                crate::model::version_of_file(path)
                    .ok()
                    .is_some_and(|v| reference_version(r).as_deref() == Some(v.as_str()))
            }),
        };
        let next = load_version(
            &self.config,
            &self.settings,
            &self.metrics,
            self.several,
            path,
            reference.as_deref(),
        )
        .map_err(ReloadError::Invalid)?;
        let current = self.current();
        if next.spec.labels != current.spec.labels {
            let (old, new) = (current.spec.labels.join(","), next.spec.labels.join(","));
            retire(next);
            return Err(ReloadError::ClassesChanged { old, new });
        }
        let reloaded = Reloaded {
            model: self.name.clone(),
            model_version: next.version.to_string(),
            previous_version: current.version.to_string(),
            reference: reference.clone(),
        };
        // The old monitor stops writing the shared metric handles before the new one starts.
        if let Some(m) = &current.monitor {
            m.stop();
        }
        let next = Arc::new(next);
        self.metrics
            .set_build_info(&next.spec.version, next.spec.execution_provider.as_str());
        self.reset_monitor_metrics(&next);
        if let Some(m) = &next.monitor {
            m.spawn();
        }
        let old = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(PoisonError::into_inner),
            next,
        );
        drop(current);
        tracing::info!(
            model = %self.name,
            model_version = %reloaded.model_version,
            previous_version = %reloaded.previous_version,
            path = %path.display(),
            reference = ?reloaded.reference,
            "model reloaded"
        );
        std::thread::Builder::new()
            .name(format!("retire-{}", self.name))
            .spawn(move || retire_when_idle(old))
            .map_err(|e| ReloadError::Invalid(e.into()))?;
        Ok(reloaded)
    }

    /// The monitor's series start over with a new version: its own monitor fills them at its
    /// first evaluation; without one every family says insufficient data.
    fn reset_monitor_metrics(&self, next: &Version) {
        let m = &self.metrics;
        m.drift_statistic.reset();
        m.drift_p_value.reset();
        m.drift_status.reset();
        m.estimated_accuracy.reset();
        m.estimated_class_ratio.reset();
        m.overconfidence_gap.reset();
        m.overconfidence_status.reset();
        m.labeled_accuracy.reset();
        m.calibration_error.reset();
        m.window_predictions.set(0);
        if next.monitor.is_none() {
            m.reference_class_ratio.reset();
            for kind in TestKind::ALL {
                m.drift_status
                    .with_label_values(&[kind.as_str()])
                    .set(crate::monitor::evaluate::Status::InsufficientData.gauge());
            }
        }
    }
}

/// The `model_version` a reference profile was built for, if it can be read.
fn reference_version(path: &Path) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Head {
        model_version: String,
    }
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice::<Head>(&bytes)
        .ok()
        .map(|h| h.model_version)
}

/// Stops a version nobody uses.
fn retire(version: Version) {
    if let Some(m) = &version.monitor {
        m.stop();
    }
    version.pool.close();
}

/// Waits until no request holds `old` (bounded), then stops its workers.
fn retire_when_idle(old: Arc<Version>) {
    let deadline = Instant::now() + RETIRE_WAIT;
    let mut old = old;
    loop {
        match Arc::try_unwrap(old) {
            Ok(version) => return retire(version),
            Err(still_used) if Instant::now() < deadline => {
                old = still_used;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(still_used) => {
                tracing::warn!(
                    model_version = %still_used.version,
                    "a retired model version is still in use; its workers stop when it is dropped"
                );
                return;
            }
        }
    }
}

/// The file watch of one model: a thread that polls the file's size and modification time and
/// reloads once a change has settled (two polls alike).
pub struct Watch {
    stop: crossbeam_channel::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Watch {
    pub fn start(service: Weak<ModelService>, every: Duration) -> Watch {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("model-watch".into())
            .spawn(move || {
                let stamp = |path: &Path| -> Option<(u64, SystemTime)> {
                    let m = std::fs::metadata(path).ok()?;
                    Some((m.len(), m.modified().ok()?))
                };
                let mut seen = service.upgrade().and_then(|s| stamp(&s.config.path));
                let mut pending: Option<(u64, SystemTime)> = None;
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(every)
                {
                    let Some(service) = service.upgrade() else {
                        return;
                    };
                    let now = stamp(&service.config.path);
                    if now.is_none() || now == seen {
                        pending = None;
                        continue;
                    }
                    // Wait for one more poll with the same stamp: the file may still be written.
                    if pending != now {
                        pending = now;
                        continue;
                    }
                    pending = None;
                    seen = now;
                    match service.reload(None, None) {
                        Ok(r) => tracing::info!(
                            model = %r.model,
                            model_version = %r.model_version,
                            "the model file changed; reloaded"
                        ),
                        Err(e) => tracing::error!(
                            model = %service.name,
                            error = %e,
                            "the model file changed but does not load; the old version keeps serving"
                        ),
                    }
                }
            })
            .expect("spawning the model watch");
        Watch { stop, thread }
    }

    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}
