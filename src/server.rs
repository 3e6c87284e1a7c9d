//! `shiftwatch serve`: bind, load the models behind a readiness latch, serve, shut down gracefully.
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

use crate::api::{self, AppState};
use crate::config::Config;
use crate::service::Services;

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
    let state = AppState::new(Arc::new(config));
    let app = api::router(Arc::clone(&state));

    // A line scripts and tests can wait for (the port may have been chosen by the OS).
    println!("shiftwatch listening on http://{addr}");
    tracing::info!(%addr, models = state.config.models.len(), "listening; loading the models");

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
        let config = Arc::clone(&state.config);
        let state = Arc::clone(&state);
        tokio::task::spawn_blocking(move || Services::start(config, &state.metrics))
    };
    let mut stop_wait = stop.clone();
    let loaded = tokio::select! {
        loaded = loading => loaded.context("the model loading task failed")?,
        _ = stop_wait.wait_for(|s| *s) => {
            tracing::info!("stopped before the models finished loading");
            return finish(server, grace, state, stop).await;
        }
    };
    let services = match loaded {
        Ok(s) => s,
        Err(e) => {
            server.abort();
            return Err(e);
        }
    };
    tracing::info!(
        models = ?services.names(),
        max_batch = state.config.inference.max_batch,
        max_in_flight = state.config.inference.max_in_flight,
        "ready"
    );
    if state.services.set(services).is_err() {
        anyhow::bail!("the models were loaded twice");
    }
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
    if let Some(services) = state.services.get() {
        services.close();
    }
    tracing::info!("shut down");
    Ok(())
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
