//! `shiftwatch serve`: bind, load the models behind a readiness latch, serve, shut down gracefully.
//!
//! The socket is bound first so that liveness answers while the model loads; readiness turns
//! true once every session has run its warm-up batch. SIGTERM or SIGINT stops accepting
//! connections, lets in-flight requests finish within `server.shutdown_grace_seconds`, then
//! drains the inference queue and exits.
//!
//! The accept loop is ours rather than `axum::serve`, for what a client must not be able to do:
//! hold a connection without sending (hyper's header-read timer, which also bounds a keep-alive
//! connection's idle time), or open more than `server.max_connections` (the next one is answered
//! 503 with Retry-After and closed). The body's own deadline is `api::read_body`'s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use std::time::Duration;

use anyhow::Context;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

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

    let server = tokio::spawn(accept_loop(listener, app, Arc::clone(&state), stop.clone()));

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
        max_in_flight = state.config.inference.max_in_flight,
        "ready"
    );
    if state.services.set(services).is_err() {
        anyhow::bail!("the models were loaded twice");
    }
    println!("shiftwatch ready");

    finish(server, grace, state, stop).await
}

/// Accepts connections until `stop`, then waits for the open ones to finish their requests.
async fn accept_loop(
    listener: TcpListener,
    app: axum::Router,
    state: Arc<AppState>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let server = &state.config.server;
    let limit = server.max_connections;
    let open = Arc::new(Semaphore::new(limit));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(server.header_read_timeout)
        .keep_alive(true);
    let guard = state.metrics.guard.clone();
    let refusal = Arc::new(refusal_response(server.retry_after_seconds));
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or memory: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            guard.connections_refused.inc();
            tokio::spawn(refuse(stream, Arc::clone(&refusal)));
            continue;
        };
        let _ = stream.set_nodelay(true);
        guard.connections_open.inc();
        let service = TowerToHyperService::new(app.clone());
        let http = http.clone();
        let mut stop = stop.clone();
        let guard = guard.clone();
        tokio::spawn(async move {
            let connection = http.serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            let mut stopping = false;
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    _ = async { let _ = stop.wait_for(|s| *s).await; }, if !stopping => {
                        stopping = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
            guard.connections_open.dec();
            drop(permit);
        });
    }
    state.draining.store(true, Ordering::Release);
    tracing::info!("shutting down: finishing in-flight requests");
    drop(listener);
    // Every connection returns its permit when it closes.
    let _ = open
        .acquire_many(u32::try_from(limit).unwrap_or(u32::MAX))
        .await;
    Ok(())
}

/// The whole answer to a connection over the cap.
fn refusal_response(retry_after: u64) -> Vec<u8> {
    let body =
        r#"{"error":"too many open connections; retry later","code":"too_many_connections"}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {retry_after}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Answers 503 without reading the request, within a second, and closes.
async fn refuse(stream: tokio::net::TcpStream, response: Arc<Vec<u8>>) {
    let written = tokio::time::timeout(Duration::from_secs(1), async {
        let mut rest: &[u8] = &response;
        while !rest.is_empty() {
            stream.writable().await?;
            match stream.try_write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if matches!(written, Ok(Ok(()))) {
        // Say we are done writing; the socket closes when dropped.
        if let Ok(std) = stream.into_std() {
            let _ = std.shutdown(std::net::Shutdown::Write);
        }
    }
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
