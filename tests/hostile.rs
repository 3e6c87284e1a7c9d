//! Hostile clients and untrusted files, against the real binary with the shipped limits: slow
//! senders, decode bombs, too many connections, oversized batches, tokens, and a tampered
//! candidate index. Every wait is for a condition, bounded by a deadline.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Server, read, repo};

const CLASSIFY: &str = "/v1/models/digits/classify";

fn png(image: &image::DynamicImage) -> Vec<u8> {
    let mut out = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What became of a connection the server may close.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    Open,
    /// Closed after an answer with this status.
    Answered(u16),
    /// Closed without an answer.
    Closed,
}

/// Reads what is there without blocking: the connection's fate so far.
fn fate(stream: &mut TcpStream, received: &mut Vec<u8>) -> Fate {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => {
                return if received.is_empty() {
                    Fate::Closed
                } else {
                    let status = std::str::from_utf8(&received[..received.len().min(12)])
                        .ok()
                        .and_then(|s| s.get(9..12))
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    Fate::Answered(status)
                };
            }
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Fate::Open,
            Err(_) => return Fate::Closed,
        }
    }
}

#[test]
fn trickling_clients_are_cut_off_and_hold_nothing_that_others_need() {
    // The shipped timeouts: 10 s for headers, 10 s for a body.
    let server = Server::start(&[]);
    let body = read("data/traffic/normal/normal-0001.png");
    let opened = Instant::now();
    let mut streams: Vec<TcpStream> = Vec::new();
    // 250 send their headers and trickle the body; 50 trickle the headers themselves.
    for i in 0..300 {
        let mut s = TcpStream::connect(server.addr).unwrap();
        if i < 250 {
            let head = format!(
                "POST {CLASSIFY} HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\n\
                 Content-Length: {}\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(&body[..1]).unwrap();
        } else {
            s.write_all(format!("POST {CLASSIFY} HTTP/1.1\r\nHost: t\r\n").as_bytes())
                .unwrap();
        }
        s.set_nonblocking(true).unwrap();
        streams.push(s);
    }
    wait_for("250 bodies being received", Duration::from_secs(60), || {
        server.get("/readyz").json()["receiving"].as_i64() == Some(250)
    });

    // Everyone else is served at once.
    let t = Instant::now();
    let r = server.post(CLASSIFY, Some("image/png"), &body);
    let classify_latency = t.elapsed();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let t = Instant::now();
    assert_eq!(server.get("/healthz").status, 200);
    let health_latency = t.elapsed();
    assert!(
        classify_latency < Duration::from_secs(1) && health_latency < Duration::from_secs(1),
        "classify took {classify_latency:?}, /healthz {health_latency:?}"
    );

    // A byte a second each, until the server closes every one.
    let mut fates = vec![Fate::Open; streams.len()];
    let mut received: Vec<Vec<u8>> = vec![Vec::new(); streams.len()];
    let mut sent = vec![1usize; streams.len()];
    let deadline = opened + Duration::from_secs(60);
    while fates.contains(&Fate::Open) && Instant::now() < deadline {
        for (i, s) in streams.iter_mut().enumerate() {
            if fates[i] != Fate::Open {
                continue;
            }
            let byte: &[u8] = if i < 250 {
                &body[sent[i]..sent[i] + 1]
            } else {
                b"X"
            };
            if s.write(byte).is_ok() {
                sent[i] += 1;
            }
            fates[i] = fate(s, &mut received[i]);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let all_closed = opened.elapsed();
    let timeouts = fates[..250]
        .iter()
        .filter(|f| **f == Fate::Answered(408))
        .count();
    eprintln!(
        "300 trickling connections: classify {classify_latency:?}, /healthz {health_latency:?}, \
         all closed after {all_closed:?}, {timeouts} of 250 body tricklers answered 408"
    );
    assert!(
        !fates.contains(&Fate::Open),
        "still open after {all_closed:?}: {}",
        fates.iter().filter(|f| **f == Fate::Open).count()
    );
    assert!(
        all_closed < Duration::from_secs(30),
        "closing took {all_closed:?}"
    );
    // A body trickler is told why: 408 body_timeout (unless its socket was reset first).
    assert!(timeouts > 200, "only {timeouts} answered 408: {fates:?}");
    assert_eq!(
        server.metric("shiftwatch_body_timeouts_total"),
        timeouts as f64
    );
    assert_eq!(server.post(CLASSIFY, Some("image/png"), &body).status, 200);
}

#[test]
fn decode_bombs_wait_for_the_shared_budget_and_memory_stays_bounded() {
    let server = Server::start(&[]);
    // An all-black 6000 x 6000 grayscale PNG: a few tens of KB that decode to 36 MB.
    let bomb = png(&image::DynamicImage::ImageLuma8(image::GrayImage::new(
        6000, 6000,
    )));
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    let rss_before = server.memory("VmRSS");
    let senders: Vec<_> = (0..24)
        .map(|_| {
            let (addr, bomb) = (server.addr, bomb.clone());
            std::thread::spawn(move || {
                let head = format!(
                    "POST {CLASSIFY} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
                     Content-Type: image/png\r\nContent-Length: {}\r\n\r\n",
                    bomb.len()
                );
                crate::support::request(addr, &[head.into_bytes(), bomb].concat())
            })
        })
        .collect();
    let mut slowest_health = Duration::ZERO;
    while !senders.iter().all(|t| t.is_finished()) {
        let t = Instant::now();
        assert_eq!(server.get("/healthz").status, 200);
        slowest_health = slowest_health.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (mut ok, mut busy) = (0, 0);
    for t in senders {
        let r = t.join().unwrap();
        match r.status {
            200 => ok += 1,
            503 => {
                r.assert_error(503, "overloaded");
                assert_eq!(r.header("retry-after"), Some("1"));
                busy += 1;
            }
            other => panic!("{other}: {}", String::from_utf8_lossy(&r.body)),
        }
    }
    let peak = server.memory("VmHWM");
    let waits = server.metric("shiftwatch_decode_budget_waits_total");
    let refusals = server.metric("shiftwatch_decode_budget_refusals_total");
    eprintln!(
        "24 decode bombs: {ok} answered 200, {busy} 503; RSS {} MB before, peak {} MB; \
         {waits} waited, {refusals} refused; slowest /healthz {slowest_health:?}",
        rss_before >> 20,
        peak >> 20
    );
    assert!(peak < 2 << 30, "peak RSS {} MB", peak >> 20);
    assert_eq!(refusals as usize, busy);
    assert!(
        slowest_health < Duration::from_secs(1),
        "/healthz took {slowest_health:?}"
    );
    assert_eq!(server.metric("shiftwatch_decode_budget_bytes"), 0.0);
    // An image that could never fit the budget is refused for what it is: 64 MB of RGBA
    // pixels fit the decoder's own limit, but with their RGB copy not the whole budget.
    let server = Server::start(&[
        ("SHIFTWATCH__LIMITS__DECODE_BUDGET_BYTES", "67108864"),
        ("SHIFTWATCH__LIMITS__MAX_DECODE_BYTES", "67108864"),
    ]);
    let wide = png(&image::DynamicImage::ImageRgba8(image::RgbaImage::new(
        4000, 4000,
    )));
    server
        .post(CLASSIFY, Some("image/png"), &wide)
        .assert_error(422, "image_too_large");
}

#[test]
fn connections_past_the_cap_get_503_and_oversized_batches_413() {
    let server = Server::start(&[
        ("SHIFTWATCH__SERVER__MAX_CONNECTIONS", "8"),
        ("SHIFTWATCH__INFERENCE__MAX_IN_FLIGHT", "2"),
    ]);
    let idle: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    // The ninth is accepted after the eight (the kernel's queue is in order) and refused.
    let r = crate::support::request(
        server.addr,
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    r.assert_error(503, "too_many_connections");
    assert_eq!(r.header("retry-after"), Some("1"));
    drop(idle);
    wait_for("a free connection slot", Duration::from_secs(30), || {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        crate::support::read_response(&mut s).status == 200
    });
    assert!(server.metric("shiftwatch_connections_refused_total") >= 1.0);

    // Three images cannot be queued whole by a queue of two: a clear 413, not a 503 forever.
    let request = serde_json::json!({"inputs": [{
        "name": "image", "shape": [3, 1, 8, 8], "datatype": "FP32",
        "data": vec![0.0f32; 3 * 64],
    }]});
    let r = server.post(
        "/v2/models/digits/infer",
        Some("application/json"),
        &serde_json::to_vec(&request).unwrap(),
    );
    r.assert_error(413, "batch_too_large");
    // Feedback is bounded before any JSON is read (10,000 labels fit in 4 MiB): the declared
    // length is enough for the answer.
    let r = crate::support::request(
        server.addr,
        format!(
            "POST /v1/feedback HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            4 * 1024 * 1024 + 1
        )
        .as_bytes(),
    );
    r.assert_error(413, "payload_too_large");
    let request = serde_json::json!({"inputs": [{
        "name": "image", "shape": [2, 1, 8, 8], "datatype": "FP32",
        "data": vec![0.0f32; 2 * 64],
    }]});
    let r = server.post(
        "/v2/models/digits/infer",
        Some("application/json"),
        &serde_json::to_vec(&request).unwrap(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

fn with_auth(server: &Server, scheme_and_token: &str) -> u16 {
    let raw = format!(
        "GET /v1/candidates HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
         Authorization: {scheme_and_token}\r\n\r\n"
    );
    crate::support::request(server.addr, raw.as_bytes()).status
}

#[test]
fn tokens_come_from_a_file_match_any_scheme_case_and_are_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "file-token-0123456789\n").unwrap();
    let server = Server::start(&[("SHIFTWATCH__AUTH__TOKEN_FILE", token_file.to_str().unwrap())]);
    assert_eq!(with_auth(&server, "Bearer file-token-0123456789"), 200);
    assert_eq!(with_auth(&server, "bearer file-token-0123456789"), 200);
    assert_eq!(with_auth(&server, "BEARER  file-token-0123456789"), 200);
    assert_eq!(with_auth(&server, "Bearer file-token-012345678"), 401);
    assert_eq!(with_auth(&server, "Basic file-token-0123456789"), 401);
    assert!(!server.stderr().contains("file-token"));

    // A numeric token from the environment is a string, and a bad one is not echoed.
    for (token, ok) in [("12345", false), ("1234567890123456789", true)] {
        let out = Command::new(env!("CARGO_BIN_EXE_shiftwatch"))
            .args(["check-config", "--config", "config/shiftwatch.toml"])
            .current_dir(repo())
            .env("SHIFTWATCH__AUTH__TOKEN", token)
            .env("SHIFTWATCH__LOG__DIR", dir.path().join("log"))
            .env("SHIFTWATCH__CANDIDATES__DIR", dir.path().join("candidates"))
            .output()
            .unwrap();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.success(), ok, "{printed}");
        assert!(!printed.contains(token), "the token was printed: {printed}");
        if !ok {
            assert!(printed.contains("auth.token"), "{printed}");
        }
    }
}

/// Sends `n` images with every one kept as a candidate, then stops the server so that the
/// index is written.
fn fill_store(env: &[(&str, &str)], n: usize) {
    let mut server = Server::start(env);
    for i in 0..n {
        let body = read(format!("data/traffic/normal/normal-{:04}.png", i + 1));
        assert_eq!(server.post(CLASSIFY, Some("image/png"), &body).status, 200);
    }
    wait_for("the candidates stored", Duration::from_secs(60), || {
        server.metric("shiftwatch_candidates_stored") as usize == n
    });
    server.terminate();
    assert!(server.wait(Duration::from_secs(60)).success());
}

#[test]
fn a_tampered_candidate_index_reads_and_deletes_nothing_outside_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let exports = dir.path().join("exports");
    let outside = dir.path().join("outside.png");
    std::fs::write(&outside, b"not the store's").unwrap();
    let env = [
        ("SHIFTWATCH__CANDIDATES__DIR", store.to_str().unwrap()),
        (
            "SHIFTWATCH__CANDIDATES__EXPORT_DIR",
            exports.to_str().unwrap(),
        ),
        ("SHIFTWATCH__CANDIDATES__RANDOM_RATE", "1.0"),
        ("SHIFTWATCH__CANDIDATES__POOL_SIZE", "4"),
        ("SHIFTWATCH__CANDIDATES__RANDOM_MAX", "4"),
    ];
    fill_store(&env, 4);

    // Entries pointing outside: `../outside.png`, its absolute path, and a name of ours that
    // belongs to another request id.
    let index_path = store.join("index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let entries = index["candidates"].as_array_mut().unwrap();
    assert_eq!(entries.len(), 4);
    let template = entries[0].clone();
    for (id, file) in [
        ("evil-1", "../outside.png".to_string()),
        ("evil-2", outside.display().to_string()),
        ("evil-3", entries[1]["file"].as_str().unwrap().to_string()),
    ] {
        let mut e = template.clone();
        e["request_id"] = id.into();
        e["file"] = file.into();
        entries.push(e);
    }
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();

    let server = Server::start(&env);
    assert_eq!(
        server.metric("shiftwatch_candidates_index_rejected_total"),
        3.0
    );
    assert_eq!(server.metric("shiftwatch_candidates_stored"), 4.0);
    let listed = server.get("/v1/candidates?limit=100").json();
    let ids: Vec<&str> = listed["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["request_id"].as_str().unwrap())
        .collect();
    assert!(!ids.iter().any(|id| id.starts_with("evil")), "{ids:?}");
    let r = server.post(
        "/v1/candidates/export",
        Some("application/json"),
        br#"{"name": "tampered", "limit": 100}"#,
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let tasks = std::fs::read_to_string(exports.join("tampered/tasks.json")).unwrap();
    assert!(!tasks.contains("evil"), "{tasks}");
    let images = std::fs::read_dir(exports.join("tampered/images"))
        .unwrap()
        .count();
    assert_eq!(images, 4);

    // A second process on the same folder fails to start instead of deleting its images.
    let second = Command::new(env!("CARGO_BIN_EXE_shiftwatch"))
        .args(["serve", "--config", "config/shiftwatch.toml"])
        .current_dir(repo())
        .env("SHIFTWATCH__SERVER__LISTEN", "127.0.0.1:0")
        .env("SHIFTWATCH__CANDIDATES__DIR", &store)
        .env("SHIFTWATCH__LOG__DIR", dir.path().join("log2"))
        .env(
            "SHIFTWATCH__MONITOR__STATE_FILE",
            dir.path().join("window2.json"),
        )
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&second.stderr).to_string();
    assert!(!second.status.success());
    assert!(said.contains("in use by another shiftwatch"), "{said}");
    server.terminate();
    drop(server);

    // A torn index: its images are kept aside, not deleted.
    let text = std::fs::read(&index_path).unwrap();
    std::fs::write(&index_path, &text[..text.len() / 2]).unwrap();
    let server = Server::start(&env);
    assert_eq!(
        server.metric("shiftwatch_candidates_index_rejected_total"),
        1.0
    );
    assert_eq!(server.metric("shiftwatch_candidates_stored"), 0.0);
    assert_eq!(
        std::fs::read_dir(store.join("unindexed")).unwrap().count(),
        4
    );
    assert_eq!(std::fs::read(&outside).unwrap(), b"not the store's");
}
