//! The prediction log: read back by DuckDB and pyarrow, crash recovery, disk faults, feedback.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Server, labels_csv, python, read, repo};

/// The project's Python (made by `make venv`), which has duckdb and pyarrow.
/// Runs tests/check_log.py on `log_dir` against `expected`; returns its JSON summary.
fn check_log(log_dir: &Path, expected: &Value) -> Value {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(expected).unwrap()).unwrap();
    let out = Command::new(python())
        .arg(repo().join("tests/check_log.py"))
        .arg(log_dir)
        .arg(file.path())
        .output()
        .expect("running check_log.py");
    assert!(
        out.status.success(),
        "check_log.py failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("check_log.py prints JSON")
}

fn traffic() -> Vec<Vec<u8>> {
    labels_csv("data/traffic/normal/labels.csv")
        .iter()
        .map(|(f, _)| read(format!("data/traffic/normal/{f}")))
        .collect()
}

fn classify(addr: std::net::SocketAddr, id: &str, body: &[u8]) -> Option<Vec<f64>> {
    let raw = crate::support::classify_request("?top_k=10", id, body);
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    std::io::Write::write_all(&mut stream, &raw).ok()?;
    let mut data = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut data).ok()?;
    if data.is_empty() {
        return None;
    }
    let r = crate::support::parse_response(&data);
    if r.status != 200 {
        return None;
    }
    let v = r.json();
    let mut p = vec![0.0; 10];
    for item in v["predictions"].as_array()? {
        p[item["class"].as_u64()? as usize] = item["probability"].as_f64()?;
    }
    Some(p)
}

#[test]
fn every_answered_prediction_and_label_is_in_parquet_after_sigterm() {
    let mut server = Server::start(&[]);
    let images = traffic();
    let n = 300;
    let answers = Mutex::new(HashMap::new());
    std::thread::scope(|scope| {
        for t in 0..4 {
            let (server, images, answers) = (&server, &images, &answers);
            scope.spawn(move || {
                for i in (t..n).step_by(4) {
                    let id = format!("req-{i:04}");
                    let p =
                        classify(server.addr, &id, &images[i % images.len()]).expect("answered");
                    answers.lock().unwrap().insert(id, p);
                }
            });
        }
    });
    let answers = answers.into_inner().unwrap();
    assert_eq!(answers.len(), n);

    // Delayed labels: matched, unknown, duplicate, invalid.
    let labels: Vec<Value> = (0..20)
        .map(|i| json!({"request_id": format!("req-{i:04}"), "label": (i % 10).to_string()}))
        .chain([json!({"request_id": "never-seen", "label": "3"})])
        .collect();
    let r = server.post(
        "/v1/feedback",
        Some("application/json"),
        &serde_json::to_vec(&labels).unwrap(),
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["accepted"], 21);
    let outcomes: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes.iter().filter(|o| **o == "matched").count(), 20);
    assert_eq!(outcomes.last(), Some(&"unknown_id"));
    let again = json!({"request_id": "req-0000", "label": "0", "source": "reviewer"});
    let r = server.post(
        "/v1/feedback",
        Some("application/json"),
        again.to_string().as_bytes(),
    );
    assert_eq!(r.json()["results"][0]["outcome"], "duplicate");
    let bad = json!([{"request_id": "req-0001", "label": "not-a-class"}, {"label": "1"}]);
    let r = server.post(
        "/v1/feedback",
        Some("application/json"),
        bad.to_string().as_bytes(),
    );
    assert_eq!(r.status, 202);
    assert_eq!(r.json()["accepted"], 0);
    server
        .post("/v1/feedback", Some("application/json"), b"{not json")
        .assert_error(400, "bad_json");
    assert_eq!(
        server.metric("shiftwatch_feedback_total{outcome=\"matched\""),
        20.0
    );
    assert_eq!(
        server.metric("shiftwatch_feedback_total{outcome=\"unknown_id\""),
        1.0
    );
    assert_eq!(
        server.metric("shiftwatch_feedback_total{outcome=\"duplicate\""),
        1.0
    );
    assert_eq!(
        server.metric("shiftwatch_feedback_total{outcome=\"invalid\""),
        2.0
    );

    server.terminate();
    assert!(server.wait(Duration::from_secs(30)).success());

    let mut feedback: Vec<Value> = labels.clone();
    feedback.push(json!({"request_id": "req-0000", "label": "0"}));
    let summary = check_log(
        &server.log_dir,
        &json!({"model": "digits", "predictions": answers, "exact": true, "feedback": feedback}),
    );
    println!("log after SIGTERM: {summary}");
    assert_eq!(summary["rows"], n);
    assert_eq!(summary["feedback"], 22);
    // Nothing left in the write-ahead log after a clean shutdown.
    let wal = std::fs::read_dir(server.log_dir.join("wal/predictions/model=digits"))
        .unwrap()
        .count();
    assert_eq!(wal, 0, "segments left after a graceful shutdown");
}

/// Load from 4 threads until `stop`; records sent ids and answers with the time of each answer.
struct Load {
    sent: Mutex<Vec<String>>,
    answered: Mutex<HashMap<String, (Vec<f64>, Instant)>>,
    stop: AtomicBool,
}

impl Load {
    fn new() -> Arc<Self> {
        Arc::new(Load {
            sent: Mutex::new(Vec::new()),
            answered: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
        })
    }

    fn run(
        self: &Arc<Self>,
        addr: std::net::SocketAddr,
        prefix: &str,
    ) -> Vec<std::thread::JoinHandle<()>> {
        let images = Arc::new(traffic());
        (0..4)
            .map(|t| {
                let (load, images, prefix) =
                    (Arc::clone(self), Arc::clone(&images), prefix.to_string());
                std::thread::spawn(move || {
                    let mut i = 0usize;
                    // Bounded: at most 20 000 requests per thread, and the test stops it sooner.
                    while !load.stop.load(Ordering::Relaxed) && i < 20_000 {
                        let id = format!("{prefix}-{t}-{i:05}");
                        load.sent.lock().unwrap().push(id.clone());
                        if let Some(p) = classify(addr, &id, &images[(t * 7919 + i) % images.len()])
                        {
                            load.answered
                                .lock()
                                .unwrap()
                                .insert(id, (p, Instant::now()));
                        }
                        i += 1;
                    }
                })
            })
            .collect()
    }
}

fn crash_and_recover(durability: &str) {
    let log_dir = tempfile::tempdir().unwrap();
    let dir = log_dir.path().to_str().unwrap().to_string();
    let fsync_ms = 200u64;
    let env = [
        ("SHIFTWATCH__LOG__DIR", dir.as_str()),
        ("SHIFTWATCH__LOG__DURABILITY", durability),
        ("SHIFTWATCH__LOG__FSYNC_INTERVAL_MS", "200"),
        // Files stay open: everything after the kill must come from the write-ahead log.
        ("SHIFTWATCH__LOG__ROTATE_SECONDS", "3600"),
    ];
    let mut server = Server::start(&env);
    let load = Load::new();
    let threads = load.run(server.addr, durability);
    let deadline = Instant::now() + Duration::from_secs(20);
    while load.answered.lock().unwrap().len() < 400 {
        assert!(Instant::now() < deadline, "the load never got going");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill();
    let killed_at = Instant::now();
    load.stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let segments = std::fs::read_dir(log_dir.path().join("wal/predictions/model=digits"))
        .unwrap()
        .count();
    assert!(
        segments > 0,
        "the kill left no write-ahead segment to recover"
    );

    // Restart on the same folder: recovery runs before readiness.
    let mut again = Server::start(&env);
    let recovered = again.metric("shiftwatch_log_rows_recovered_total{stream=\"predictions\"");
    again.terminate();
    assert!(again.wait(Duration::from_secs(30)).success());

    let answered = load.answered.lock().unwrap();
    let predictions: HashMap<&String, &Vec<f64>> =
        answered.iter().map(|(k, (p, _))| (k, p)).collect();
    let summary = check_log(
        log_dir.path(),
        &json!({
            "model": "digits",
            "predictions": predictions,
            "sent": *load.sent.lock().unwrap(),
            "exact": durability == "strict",
        }),
    );
    let missing: Vec<String> = serde_json::from_value(summary["missing_ids"].clone()).unwrap();
    // Rows at risk: answered within the last fsync interval (plus scheduling slack) before the kill.
    let window = Duration::from_millis(fsync_ms + 300);
    let at_risk = answered
        .values()
        .filter(|(_, at)| killed_at.saturating_duration_since(*at) <= window)
        .count();
    println!(
        "{durability}: answered {}, recovered {recovered} rows from the write-ahead log, {} in Parquet, \
         {at_risk} answered in the last {} ms before SIGKILL (at risk), {} missing, {} logged but never answered",
        answered.len(),
        summary["rows"],
        window.as_millis(),
        missing.len(),
        summary["logged_unanswered"],
    );
    assert!(recovered > 0.0, "nothing recovered");
    for id in &missing {
        let (_, at) = &answered[id];
        assert!(
            killed_at.saturating_duration_since(*at) <= window,
            "{id} was answered {:?} before the kill and is missing",
            killed_at.saturating_duration_since(*at)
        );
    }
    if durability == "strict" {
        assert!(missing.is_empty());
    }
}

#[test]
fn sigkill_in_strict_mode_loses_no_answered_prediction() {
    crash_and_recover("strict");
}

#[test]
fn sigkill_in_interval_mode_loses_at_most_the_last_interval() {
    crash_and_recover("interval");
}

#[test]
fn an_unwritable_log_drops_counted_rows_and_recovers() {
    let log_dir = tempfile::tempdir().unwrap();
    let dir = log_dir.path().to_str().unwrap().to_string();
    let env = [
        ("SHIFTWATCH__LOG__DIR", dir.as_str()),
        // New files open often, so the fault is hit within a fraction of a second.
        ("SHIFTWATCH__LOG__ROTATE_SECONDS", "0.1"),
    ];
    let mut server = Server::start(&env);
    let load = Load::new();
    let threads = load.run(server.addr, "fault");
    let wait_for = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("traffic", &|| load.answered.lock().unwrap().len() > 200);

    // The fault: a plain file where the write-ahead folder must be (root ignores permissions,
    // but not this).
    let wal = log_dir.path().join("wal/predictions/model=digits");
    let moved = log_dir.path().join("wal/predictions/model=digits.moved");
    std::fs::rename(&wal, &moved).unwrap();
    std::fs::write(&wal, b"in the way").unwrap();
    wait_for("degraded readiness", &|| {
        server.get("/readyz").json()["status"] == "degraded"
    });
    let during = load.answered.lock().unwrap().len();
    wait_for("answers during the fault", &|| {
        load.answered.lock().unwrap().len() > during + 200
    });
    assert!(
        server.metric(
            "shiftwatch_log_rows_dropped_total{reason=\"write_error\",stream=\"predictions\""
        ) > 0.0
    );
    let ready = server.get("/readyz");
    assert_eq!(ready.status, 200, "serving goes on while the log is down");

    // The fault clears: writing resumes.
    std::fs::remove_file(&wal).unwrap();
    std::fs::rename(&moved, &wal).unwrap();
    wait_for("ready again", &|| {
        server.get("/readyz").json()["status"] == "ready"
    });
    let resumed_from = load.answered.lock().unwrap().len();
    wait_for("answers after the fault", &|| {
        load.answered.lock().unwrap().len() > resumed_from + 200
    });
    load.stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let dropped = server
        .metric("shiftwatch_log_rows_dropped_total{reason=\"write_error\",stream=\"predictions\"");
    let queue_full = server
        .metric("shiftwatch_log_rows_dropped_total{reason=\"queue_full\",stream=\"predictions\"");
    server.terminate();
    assert!(server.wait(Duration::from_secs(30)).success());

    let answered = load.answered.lock().unwrap();
    let predictions: HashMap<&String, &Vec<f64>> =
        answered.iter().map(|(k, (p, _))| (k, p)).collect();
    let summary = check_log(
        log_dir.path(),
        &json!({"model": "digits", "predictions": predictions, "sent": *load.sent.lock().unwrap(), "exact": false}),
    );
    let missing = summary["missing"].as_u64().unwrap() as f64;
    println!(
        "fault: answered {}, in Parquet {}, missing {missing}, counted dropped {dropped} (+{queue_full} queue_full)",
        answered.len(),
        summary["rows"]
    );
    assert!(dropped > 0.0);
    assert_eq!(
        missing,
        dropped + queue_full,
        "every missing row is counted, and only those"
    );
}

#[test]
fn feedback_needs_the_token_when_one_is_set() {
    let token = "a-long-enough-secret-token";
    let server = Server::start(&[("SHIFTWATCH__AUTH__TOKEN", token)]);
    let body = json!({"request_id": "x", "label": "1"}).to_string();
    server
        .post("/v1/feedback", Some("application/json"), body.as_bytes())
        .assert_error(401, "unauthorized");
    let mut raw = format!(
        "POST /v1/feedback HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer wrong-token-of-some-length\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    crate::support::request(server.addr, raw.as_bytes()).assert_error(401, "unauthorized");
    raw = format!(
        "POST /v1/feedback HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(
        crate::support::request(server.addr, raw.as_bytes()).status,
        202
    );
    // Classify and metrics stay open.
    let png = read("data/traffic/normal/normal-0000.png");
    assert_eq!(
        server
            .post("/v1/models/digits/classify", Some("image/png"), &png)
            .status,
        200
    );
    assert_eq!(server.get("/metrics").status, 200);
}

#[test]
fn strict_mode_refuses_what_it_cannot_log_and_recovers() {
    let log_dir = tempfile::tempdir().unwrap();
    let dir = log_dir.path().to_str().unwrap().to_string();
    let server = Server::start(&[
        ("SHIFTWATCH__LOG__DIR", dir.as_str()),
        ("SHIFTWATCH__LOG__DURABILITY", "strict"),
        ("SHIFTWATCH__LOG__ROTATE_SECONDS", "0.1"),
    ]);
    let png = read("data/traffic/normal/normal-0000.png");
    let classify = |id: &str| {
        let raw = crate::support::classify_request("", id, &png);
        crate::support::request(server.addr, &raw)
    };
    assert_eq!(classify("before").status, 200);
    let wal = log_dir.path().join("wal/predictions/model=digits");
    let moved = log_dir.path().join("wal/predictions/model=digits.moved");
    std::fs::rename(&wal, &moved).unwrap();
    std::fs::write(&wal, b"in the way").unwrap();
    // Within a rotation the open file is abandoned and a new one cannot start: 503, not a
    // prediction that was never logged.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    let refused = loop {
        let r = classify(&format!("during-{i}"));
        i += 1;
        if r.status == 503 {
            break r;
        }
        assert_eq!(r.status, 200);
        assert!(
            Instant::now() < deadline,
            "strict mode kept answering without a log"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    refused.assert_error(503, "log_unavailable");
    assert!(refused.header("retry-after").is_some());
    assert_eq!(server.get("/readyz").json()["status"], "degraded");
    std::fs::remove_file(&wal).unwrap();
    std::fs::rename(&moved, &wal).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut j = 0;
    while classify(&format!("after-{j}")).status != 200 {
        j += 1;
        assert!(Instant::now() < deadline, "strict mode did not recover");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(server.get("/readyz").json()["status"], "ready");
}
