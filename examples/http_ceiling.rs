//! The HTTP ceiling of `make compare`: a server on shiftwatch's own stack (axum over hyper, one
//! tokio worker thread as `server.io_threads = "auto"` gives on 2 cores, jemalloc) that reads
//! each request's body and answers with fixed JSON bytes, doing no decoding, inference, logging
//! or monitoring. What it serves under the same `wrk`, on the same cores, bounds what any server
//! doing the real work could serve there: `scripts/compare.py` runs it beside the Python peer.
//!
//! usage: http_ceiling ANSWER_FILE
//!
//! Listens on a free loopback port, prints `listening on ADDR` once it accepts, and answers
//! `POST /v1/models/{model}/classify` with the bytes of ANSWER_FILE (a real answer of the
//! sidecar's, so that both send as much) and `GET /healthz` with `ok`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};

#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: http_ceiling ANSWER_FILE");
        std::process::exit(64);
    };
    let answer: Arc<[u8]> = match std::fs::read(&path) {
        Ok(bytes) => bytes.into(),
        Err(e) => {
            eprintln!("cannot read {path}: {e}");
            std::process::exit(66);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build();
    let result = runtime.and_then(|rt| rt.block_on(serve(answer)));
    if let Err(e) = result {
        eprintln!("http_ceiling: {e}");
        std::process::exit(1);
    }
}

async fn serve(answer: Arc<[u8]>) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/v1/models/{model}/classify",
            post(move |body: Bytes| {
                let answer = Arc::clone(&answer);
                async move {
                    // The body is read whole, as the sidecar reads it, and then dropped.
                    drop(body);
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        Bytes::copy_from_slice(&answer),
                    )
                        .into_response()
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await
}
