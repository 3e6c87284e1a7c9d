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

pub(crate) fn traffic() -> Vec<Vec<u8>> {
    labels_csv("data/traffic/normal/labels.csv")
        .iter()
        .map(|(f, _)| read(format!("data/traffic/normal/{f}")))
        .collect()
}

pub(crate) fn classify(addr: std::net::SocketAddr, id: &str, body: &[u8]) -> Option<Vec<f64>> {
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
pub(crate) struct Load {
    pub(crate) sent: Mutex<Vec<String>>,
    pub(crate) answered: Mutex<HashMap<String, (Vec<f64>, Instant)>>,
    pub(crate) stop: AtomicBool,
}

impl Load {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Load {
            sent: Mutex::new(Vec::new()),
            answered: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
        })
    }

    pub(crate) fn run(
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
    // A condition, not a time: however busy the machine, 400 answers before the kill.
    let deadline = Instant::now() + Duration::from_secs(120);
    while load.answered.lock().unwrap().len() < 400 {
        assert!(Instant::now() < deadline, "the load never got going");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill();
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
            "exact": true,
        }),
    );
    let missing: Vec<String> = serde_json::from_value(summary["missing_ids"].clone()).unwrap();
    println!(
        "{durability}: answered {}, recovered {recovered} rows from the write-ahead log, {} in Parquet, \
         {} missing, {} logged but never answered",
        answered.len(),
        summary["rows"],
        missing.len(),
        summary["logged_unanswered"],
    );
    assert!(recovered > 0.0, "nothing recovered");
    // Both modes answer only once the row is in the write-ahead segment (strict: fsynced as
    // well), and SIGKILL loses nothing the kernel already holds: no answered row is missing.
    assert!(
        missing.is_empty(),
        "{} answered predictions missing after SIGKILL, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(3)]
    );
}

#[test]
fn sigkill_in_strict_mode_loses_no_answered_prediction() {
    crash_and_recover("strict");
}

#[test]
fn sigkill_in_interval_mode_loses_no_answered_prediction() {
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

// ---- write-ahead segments found at start: damaged, old, unreadable ------------------------

use shiftwatch::image_stats::InputStats;
use shiftwatch::log::schema::{prediction_batch, prediction_schema};
use shiftwatch::log::segment::SegmentEncoder;
use shiftwatch::log::{Endpoint, ImageInfo, PredictionRecord};

const WAL: &str = "wal/predictions/model=digits";
const QUARANTINE: &str = "quarantine/wal/predictions/model=digits";

fn probabilities(class: usize) -> Vec<f32> {
    (0..10)
        .map(|c| if c == class { 0.91 } else { 0.01 })
        .collect()
}

/// A logged row as an earlier run of the sidecar would have written it.
fn logged_row(id: &str, ts_us: i64, class: usize) -> PredictionRecord {
    PredictionRecord {
        request_id: id.to_string(),
        model_version: Arc::from("0123456789ab"),
        predicted_label: Arc::from(class.to_string()),
        ts_us,
        endpoint: Endpoint::Classify,
        predicted_class: class,
        confidence: 0.91,
        margin: 0.9,
        entropy: 0.5,
        probabilities: probabilities(class),
        embedding: None,
        latency_us: 900,
        inference_us: 300,
        batch_size: 1,
        content_type: Some("image/png".into()),
        image: Some(ImageInfo {
            bytes: 120,
            sha256: "ab".repeat(32),
            dhash: 42,
            stats: InputStats {
                width: 28,
                height: 28,
                brightness: 0.2,
                contrast: 0.3,
                sharpness: 0.4,
                saturation: 0.0,
            },
        }),
        flags: Vec::new(),
        prediction_set: None,
    }
}

/// `batches` batches of `per` rows with ids `<prefix>-<batch>-<row>`, all at `ts_us`.
fn logged_batches(
    prefix: &str,
    batches: usize,
    per: usize,
    ts_us: i64,
) -> Vec<Vec<PredictionRecord>> {
    (0..batches)
        .map(|b| {
            (0..per)
                .map(|r| logged_row(&format!("{prefix}-{b}-{r}"), ts_us, (b + r) % 10))
                .collect()
        })
        .collect()
}

/// Writes a framed segment of `batches` (without the column `drop_column`, as a segment of
/// another version would be); returns the start offset of each batch's frame.
fn write_segment(
    path: &Path,
    batches: &[Vec<PredictionRecord>],
    drop_column: Option<&str>,
) -> Vec<usize> {
    let schema = prediction_schema();
    let keep: Vec<usize> = (0..schema.fields().len())
        .filter(|&i| Some(schema.field(i).name().as_str()) != drop_column)
        .collect();
    let encoded: Vec<_> = batches
        .iter()
        .map(|rows| {
            let refs: Vec<&PredictionRecord> = rows.iter().collect();
            prediction_batch(&refs).unwrap().project(&keep).unwrap()
        })
        .collect();
    let (mut encoder, mut bytes) = SegmentEncoder::new(&schema.project(&keep).unwrap()).unwrap();
    let mut starts = Vec::new();
    for b in &encoded {
        starts.push(bytes.len());
        encoder.encode(b, &mut bytes).unwrap();
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
    starts
}

/// What check_log.py expects for these rows: request id → probabilities.
fn expected(batches: &[&[Vec<PredictionRecord>]]) -> HashMap<String, Vec<f64>> {
    batches
        .iter()
        .flat_map(|b| b.iter().flatten())
        .map(|r| {
            (
                r.request_id.clone(),
                r.probabilities.iter().map(|&p| f64::from(p)).collect(),
            )
        })
        .collect()
}

/// The quarantine note of `name` (reason, offset, rows recovered).
fn quarantine_note(log_dir: &Path, name: &str) -> Value {
    let path = log_dir.join(QUARANTINE).join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("no quarantine note {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn quarantined(server: &Server, reason: &str) -> f64 {
    server.metric(&format!(
        "shiftwatch_log_segments_quarantined_total{{reason=\"{reason}\",stream=\"predictions\""
    ))
}

fn wal_left(log_dir: &Path) -> Vec<String> {
    std::fs::read_dir(log_dir.join(WAL))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Stops the server gracefully and checks that exactly `rows` (and nothing else) are in Parquet.
fn stop_and_check(mut server: Server, rows: &HashMap<String, Vec<f64>>) -> Value {
    server.terminate();
    assert!(server.wait(Duration::from_secs(30)).success());
    let summary = check_log(
        &server.log_dir,
        &json!({"model": "digits", "predictions": rows, "exact": true}),
    );
    assert_eq!(summary["rows"], rows.len(), "{summary}");
    summary
}

#[test]
fn a_segment_overwritten_in_the_middle_keeps_every_valid_frame_and_quarantines_its_bytes() {
    let log_dir = tempfile::tempdir().unwrap();
    let ts = shiftwatch::time::now_us();
    let batches = logged_batches("mid", 4, 5, ts);
    let name = "0190a000-0000-7000-8000-000000000001.wal";
    let path = log_dir.path().join(WAL).join(name);
    let starts = write_segment(&path, &batches, None);
    // Overwrite 16 bytes inside the third batch's payload.
    let mut bytes = std::fs::read(&path).unwrap();
    let at = starts[2] + 40;
    bytes[at..at + 16].copy_from_slice(b"overwritten!!!!!");
    std::fs::write(&path, &bytes).unwrap();

    let dir = log_dir.path().to_str().unwrap().to_string();
    let server = Server::start(&[("SHIFTWATCH__LOG__DIR", dir.as_str())]);
    assert_eq!(quarantined(&server, "checksum"), 1.0);
    assert_eq!(
        server.metric("shiftwatch_log_rows_recovered_total{stream=\"predictions\""),
        15.0
    );
    assert_eq!(server.get("/readyz").json()["status"], "ready");
    assert!(
        wal_left(log_dir.path()).is_empty(),
        "{:?}",
        wal_left(log_dir.path())
    );
    // The original bytes, whole, beside a note saying which frame was passed over.
    assert_eq!(
        std::fs::read(log_dir.path().join(QUARANTINE).join(name)).unwrap(),
        bytes
    );
    let note = quarantine_note(log_dir.path(), name);
    assert_eq!(note["reason"], "checksum", "{note}");
    assert_eq!(note["offset"], starts[2], "{note}");
    assert_eq!(
        note["skipped_frames"].as_array().unwrap().len(),
        1,
        "{note}"
    );
    assert_eq!(note["skipped_frames"][0]["offset"], starts[2], "{note}");
    assert_eq!(note["rows_recovered"], 15, "{note}");
    // The frames before and after the damaged one reach Parquet; its rows do not.
    stop_and_check(server, &expected(&[&batches[..2], &batches[3..]]));
}

#[test]
fn a_segment_missing_a_column_is_filled_when_nullable_and_quarantined_when_required() {
    let log_dir = tempfile::tempdir().unwrap();
    let ts = shiftwatch::time::now_us();
    // An older version without the (nullable) embedding column: recovered, embedding null.
    let old = logged_batches("no-embedding", 2, 3, ts);
    write_segment(
        &log_dir
            .path()
            .join(WAL)
            .join("0190a000-0000-7000-8000-000000000002.wal"),
        &old,
        Some("embedding"),
    );
    // Without the required margin: nothing can be written, the whole segment is set aside.
    let name = "0190a000-0000-7000-8000-000000000003.wal";
    let without_margin = logged_batches("no-margin", 2, 3, ts);
    write_segment(
        &log_dir.path().join(WAL).join(name),
        &without_margin,
        Some("margin"),
    );

    let dir = log_dir.path().to_str().unwrap().to_string();
    let server = Server::start(&[("SHIFTWATCH__LOG__DIR", dir.as_str())]);
    assert_eq!(quarantined(&server, "schema"), 1.0);
    assert_eq!(quarantined(&server, "checksum"), 0.0);
    assert_eq!(
        server.metric("shiftwatch_log_rows_recovered_total{stream=\"predictions\""),
        6.0
    );
    let note = quarantine_note(log_dir.path(), name);
    assert_eq!(note["reason"], "schema", "{note}");
    assert!(
        note["detail"].as_str().unwrap().contains("margin"),
        "{note}"
    );
    assert_eq!(note["rows_recovered"], 0, "{note}");
    assert!(wal_left(log_dir.path()).is_empty());
    // The sidecar serves, and logs as usual beside the recovered rows.
    let png = read("data/traffic/normal/normal-0000.png");
    let answered = classify(server.addr, "after-recovery", &png).expect("answered");
    let mut rows = expected(&[&old]);
    rows.insert("after-recovery".into(), answered);
    let summary = stop_and_check(server, &rows);
    println!("missing column: {summary}");
    // The recovered rows carry a null embedding.
    let out = Command::new(python())
        .arg("-c")
        .arg(
            "import sys, pyarrow.dataset as ds\n\
             t = ds.dataset(sys.argv[1], format='parquet', partitioning='hive').to_table()\n\
             rows = zip(t.column('request_id').to_pylist(), t.column('embedding').to_pylist())\n\
             print(sum(1 for r, e in rows if r.startswith('no-embedding') and e is None))",
        )
        .arg(log_dir.path().join("predictions"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), "6");
}

#[test]
fn unreadable_segments_are_quarantined_and_a_legacy_segment_is_still_recovered() {
    let log_dir = tempfile::tempdir().unwrap();
    let wal = log_dir.path().join(WAL);
    std::fs::create_dir_all(&wal).unwrap();
    // Root reads any file whatever its mode; these fail to read for anyone: a folder and a
    // link to nowhere, each named like a segment.
    let folder = "0190a000-0000-7000-8000-000000000004.wal";
    std::fs::create_dir(wal.join(folder)).unwrap();
    std::fs::write(wal.join(folder).join("inside"), b"kept").unwrap();
    let dangling = "0190a000-0000-7000-8000-000000000005.wal";
    std::os::unix::fs::symlink(log_dir.path().join("nowhere"), wal.join(dangling)).unwrap();
    // A segment of a version before the framing: a plain Arrow IPC stream.
    let ts = shiftwatch::time::now_us();
    let legacy = logged_batches("legacy", 2, 4, ts);
    {
        let file =
            std::fs::File::create(wal.join("0190a000-0000-7000-8000-000000000006.arrows")).unwrap();
        let mut w = arrow_ipc::writer::StreamWriter::try_new(file, &prediction_schema()).unwrap();
        for rows in &legacy {
            let refs: Vec<&PredictionRecord> = rows.iter().collect();
            w.write(&prediction_batch(&refs).unwrap()).unwrap();
        }
        // No end-of-stream marker: the process that wrote it was killed.
        w.flush().unwrap();
    }

    let dir = log_dir.path().to_str().unwrap().to_string();
    let server = Server::start(&[("SHIFTWATCH__LOG__DIR", dir.as_str())]);
    assert_eq!(quarantined(&server, "unreadable"), 2.0);
    assert_eq!(
        server.metric("shiftwatch_log_rows_recovered_total{stream=\"predictions\""),
        8.0
    );
    assert_eq!(server.get("/readyz").json()["status"], "ready");
    assert!(
        wal_left(log_dir.path()).is_empty(),
        "{:?}",
        wal_left(log_dir.path())
    );
    let q = log_dir.path().join(QUARANTINE);
    assert_eq!(
        std::fs::read(q.join(folder).join("inside")).unwrap(),
        b"kept"
    );
    assert!(
        std::fs::symlink_metadata(q.join(dangling))
            .unwrap()
            .is_symlink()
    );
    for name in [folder, dangling] {
        assert_eq!(
            quarantine_note(log_dir.path(), name)["reason"],
            "unreadable"
        );
    }
    stop_and_check(server, &expected(&[&legacy]));
}

#[test]
fn a_recovery_that_cannot_write_serves_degraded_and_retries() {
    let log_dir = tempfile::tempdir().unwrap();
    // Rows of an hour long past, whose partition folder cannot be made: a file is in its way
    // (root ignores permissions, not this).
    let old_ts = 1_577_838_600_000_000; // 2020-01-01T00:30:00Z
    let batches = logged_batches("blocked", 2, 3, old_ts);
    let name = "0190a000-0000-7000-8000-000000000007.wal";
    write_segment(&log_dir.path().join(WAL).join(name), &batches, None);
    let blocker = log_dir
        .path()
        .join("predictions/model=digits/date=2020-01-01");
    std::fs::create_dir_all(blocker.parent().unwrap()).unwrap();
    std::fs::write(&blocker, b"in the way").unwrap();

    let dir = log_dir.path().to_str().unwrap().to_string();
    let server = Server::start(&[("SHIFTWATCH__LOG__DIR", dir.as_str())]);
    let ready = server.get("/readyz");
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "degraded", "{}", ready.json());
    assert!(
        ready.json()["log"]["error"]
            .as_str()
            .unwrap()
            .contains("recovery"),
        "{}",
        ready.json()
    );
    // Serving goes on and today's rows are logged; the segment waits where it was.
    let png = read("data/traffic/normal/normal-0000.png");
    let answered = classify(server.addr, "while-degraded", &png).expect("answered");
    assert_eq!(
        wal_left(log_dir.path())
            .iter()
            .filter(|n| *n == name)
            .count(),
        1
    );
    assert_eq!(quarantined(&server, "checksum"), 0.0);

    // The fault clears: the writer's maintenance recovers the segment, readiness follows.
    std::fs::remove_file(&blocker).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.get("/readyz").json()["status"] != "ready" {
        assert!(Instant::now() < deadline, "the recovery was not retried");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        server.metric("shiftwatch_log_rows_recovered_total{stream=\"predictions\""),
        6.0
    );
    let mut rows = expected(&[&batches]);
    rows.insert("while-degraded".into(), answered);
    stop_and_check(server, &rows);
}

#[test]
fn an_unusable_log_directory_does_not_stop_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    // The log directory is a plain file: nothing can be made under it.
    let not_a_dir = tmp.path().join("log");
    std::fs::write(&not_a_dir, b"not a folder").unwrap();
    let dir = not_a_dir.to_str().unwrap().to_string();
    let server = Server::start(&[("SHIFTWATCH__LOG__DIR", dir.as_str())]);
    assert_eq!(server.get("/readyz").json()["status"], "degraded");
    let png = read("data/traffic/normal/normal-0000.png");
    for i in 0..3 {
        assert!(classify(server.addr, &format!("no-log-{i}"), &png).is_some());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while server
        .metric("shiftwatch_log_rows_dropped_total{reason=\"write_error\",stream=\"predictions\"")
        < 3.0
    {
        assert!(
            Instant::now() < deadline,
            "the dropped rows were not counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(std::fs::read(&not_a_dir).unwrap(), b"not a folder");
}

#[test]
fn a_log_directory_locked_by_another_sidecar_degrades_until_it_is_free() {
    let log_dir = tempfile::tempdir().unwrap();
    let dir = log_dir.path().to_str().unwrap().to_string();
    let env = [("SHIFTWATCH__LOG__DIR", dir.as_str())];
    let mut first = Server::start(&env);
    let mut second = Server::start(&env);
    let ready = second.get("/readyz").json();
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert!(
        ready["log"]["error"]
            .as_str()
            .unwrap()
            .contains("another shiftwatch"),
        "{ready}"
    );
    let png = read("data/traffic/normal/normal-0000.png");
    assert!(classify(second.addr, "while-locked", &png).is_some());
    // The first one stops: the second takes the lock and writes.
    first.terminate();
    assert!(first.wait(Duration::from_secs(30)).success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    while second.get("/readyz").json()["status"] != "ready" {
        assert!(Instant::now() < deadline, "the lock was not taken again");
        // Writes retry the lock when a new file opens.
        assert!(classify(second.addr, &format!("retry-{i}"), &png).is_some());
        i += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let answered = classify(second.addr, "after-lock", &png).expect("answered");
    second.terminate();
    assert!(second.wait(Duration::from_secs(30)).success());
    let summary = check_log(
        log_dir.path(),
        &json!({"model": "digits", "predictions": {"after-lock": answered}, "exact": false,
                "sent": (0..=i).map(|k| format!("retry-{k}")).chain(["while-locked".to_string()]).collect::<Vec<_>>()}),
    );
    assert_eq!(summary["missing"], 0, "{summary}");
}
