//! `shiftwatch serve`: bind, load the model behind a readiness latch, serve, shut down gracefully.
//!
//! The socket is bound first so that liveness answers while the model loads; readiness turns
//! true once every session has run its warm-up batch. SIGTERM or SIGINT stops accepting
//! connections, lets in-flight requests finish within `server.shutdown_grace_seconds`, then
//! drains the inference queue and exits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{self, AppState, Serving};
use crate::config::Config;
use crate::feedback::RecentPredictions;
use crate::inference::{BatchMetrics, InferencePool};
use crate::log::PredictionLog;
use crate::metrics::Metrics;
use crate::model::{self, ModelSpec};
use crate::monitor::reference::{Reference, ReferenceProfile};
use crate::monitor::{Monitor, MonitorConfig};
use crate::relabel::{CandidateMetrics, Candidates};

/// Runs the sidecar until a shutdown signal; returns once everything is closed.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {} (server.listen)", config.server.listen))?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(watch_signals(stop_tx.clone()));
    serve_on(listener, config, stop_rx, addr).await
}

/// Serves on a bound listener until `stop` turns true.
pub async fn serve_on(
    listener: TcpListener,
    config: Config,
    stop: watch::Receiver<bool>,
    addr: SocketAddr,
) -> anyhow::Result<()> {
    let grace = config.server.shutdown_grace;
    let state = AppState::new(config);
    let app = api::router(Arc::clone(&state));

    // A line scripts and tests can wait for (the port may have been chosen by the OS).
    println!("shiftwatch listening on http://{addr}");
    tracing::info!(%addr, model = %state.config.model.name, "listening; loading the model");

    let server = {
        let mut stop = stop.clone();
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                    state.draining.store(true, Ordering::Release);
                    tracing::info!("shutting down: finishing in-flight requests");
                })
                .await
        })
    };

    let loading = {
        let config = state.config.clone();
        tokio::task::spawn_blocking(move || model::load(&config))
    };
    let mut stop_wait = stop.clone();
    let loaded = tokio::select! {
        loaded = loading => loaded.context("the model loading task failed")?,
        _ = stop_wait.wait_for(|s| *s) => {
            tracing::info!("stopped before the model finished loading");
            return finish(server, grace, state, stop).await;
        }
    };
    let loaded = match loaded {
        Ok(m) => m,
        Err(e) => {
            server.abort();
            return Err(anyhow::Error::new(e).context(format!(
                "cannot load model `{}` from {}",
                state.config.model.name,
                state.config.model.path.display()
            )));
        }
    };
    let spec = &loaded.spec;
    tracing::info!(
        model = %spec.name,
        model_version = %spec.version,
        execution_provider = %spec.execution_provider,
        sessions = loaded.sessions.len(),
        input = %spec.input_name,
        size = %format!("{}x{}", spec.preprocess.width, spec.preprocess.height),
        color = ?spec.preprocess.color,
        layout = ?spec.preprocess.layout,
        classes = spec.num_classes(),
        embedding = ?spec.embedding_dim,
        described_by = spec.described_by,
        max_batch = state.config.inference.max_batch,
        max_in_flight = state.config.inference.max_in_flight,
        "model ready"
    );
    let metrics = &state.metrics;
    metrics
        .build_info
        .with_label_values(&[
            env!("CARGO_PKG_VERSION"),
            spec.version.as_str(),
            &spec.execution_provider.to_string(),
        ])
        .set(1);
    metrics.init_series(&spec.labels);

    let log = match state.config.log.clone() {
        None => None,
        Some(log_config) => {
            let (name, version, labels) =
                (spec.name.clone(), spec.version.clone(), spec.labels.clone());
            let log_metrics = metrics.log.clone();
            let opened = tokio::task::spawn_blocking(move || {
                PredictionLog::open(&log_config, &name, &version, &labels, &log_metrics)
            })
            .await
            .context("the log opening task failed")?;
            match opened {
                Ok((log, recovered)) => {
                    tracing::info!(
                        dir = %state.config.log.as_ref().map(|l| l.dir.display().to_string()).unwrap_or_default(),
                        durability = ?log.durability(),
                        recovered_predictions = recovered.predictions,
                        recovered_feedback = recovered.feedback,
                        "prediction log open"
                    );
                    Some(log)
                }
                Err(e) => {
                    server.abort();
                    return Err(
                        anyhow::Error::new(e).context("cannot open the prediction log (log.dir)")
                    );
                }
            }
        }
    };
    let monitor = match &state.config.monitor {
        None => None,
        Some(mc) => match load_monitor(mc, spec, metrics) {
            Ok(m) => Some(m),
            Err(e) => {
                server.abort();
                return Err(e);
            }
        },
    };
    let candidates = match state.config.candidates.clone() {
        None => None,
        Some(mut cc) => {
            cc.selection.classes = spec.num_classes();
            let cm = CandidateMetrics {
                stored: metrics.candidates_stored.clone(),
                stored_bytes: metrics.candidates_stored_bytes.clone(),
                exported: metrics.candidates_exported.clone(),
                evicted: metrics.candidates_evicted.clone(),
                skipped: metrics.candidates_skipped.clone(),
            };
            let dir = cc.dir.clone();
            match Candidates::open(cc, cm) {
                Ok(c) => Some(c),
                Err(e) => {
                    server.abort();
                    return Err(anyhow::Error::new(e).context(format!(
                        "cannot open the candidate store {} (candidates.dir)",
                        dir.display()
                    )));
                }
            }
        }
    };
    let pool = InferencePool::start(
        loaded,
        &state.config.inference,
        state.config.inference.max_in_flight,
        BatchMetrics {
            inference_duration: metrics.inference_duration.clone(),
            batch_size: metrics.batch_size.clone(),
        },
    );
    let serving = Serving {
        pool,
        log,
        recent: RecentPredictions::new(state.config.feedback_match_window),
        monitor,
        candidates,
    };
    state
        .serving
        .set(serving)
        .expect("the model is loaded exactly once");
    println!("shiftwatch ready");

    finish(server, grace, state, stop).await
}

async fn finish(
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    grace: std::time::Duration,
    state: Arc<AppState>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut server = server;
    tokio::select! {
        result = &mut server => {
            result.context("the server task failed")?.context("the server failed")?;
        }
        _ = async {
            let _ = stop.wait_for(|s| *s).await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(grace_seconds = grace.as_secs_f64(), "grace period over; closing the remaining connections");
            server.abort();
        }
    }
    // Every request is answered: let the workers finish what is queued, then write out and
    // close every log file.
    if let Some(serving) = state.serving.get() {
        serving.pool.close();
        if let Some(log) = &serving.log {
            log.close();
        }
        if let Some(monitor) = &serving.monitor {
            monitor.close();
        }
        if let Some(candidates) = &serving.candidates {
            candidates.close();
        }
    }
    tracing::info!("shut down");
    Ok(())
}

/// Reads and prepares the reference profile and starts the monitor's evaluation thread.
fn load_monitor(
    config: &MonitorConfig,
    spec: &ModelSpec,
    metrics: &Metrics,
) -> anyhow::Result<Arc<Monitor>> {
    let path = &config.reference;
    let text = std::fs::read(path).with_context(|| {
        format!(
            "cannot read the reference profile {} (monitor.reference); build it with \
             `shiftwatch reference --images DIR --labels CSV --out {}` or set monitor.enabled = false",
            path.display(),
            path.display()
        )
    })?;
    let profile: ReferenceProfile = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a reference profile", path.display()))?;
    if profile.model_version != spec.version {
        anyhow::bail!(
            "the reference profile {} was built with model version {}, but the served model is {}; \
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
    let reference = Reference::prepare(&profile, config.apply_temperature, config.settings.seed)
        .map_err(|e| anyhow::anyhow!("reference profile {}: {e}", path.display()))?;
    tracing::info!(
        reference = %path.display(),
        samples = reference.n,
        accuracy = ?reference.labeled.as_ref().map(|l| l.accuracy),
        temperature_applied = ?reference.temperature_applied,
        "monitor ready"
    );
    let monitor = Arc::new(Monitor::new(
        &spec.name,
        config.clone(),
        reference,
        spec.embedding_dim.unwrap_or(0),
        metrics.clone(),
    ));
    monitor.spawn();
    Ok(monitor)
}

async fn watch_signals(stop: watch::Sender<bool>) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("received SIGINT"),
        _ = term => tracing::info!("received SIGTERM"),
    }
    let _ = stop.send(true);
}
