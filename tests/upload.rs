//! Log shipping against a real S3 API on loopback (moto's server): every acknowledged row in the
//! bucket exactly once after SIGTERM, after SIGKILL and a restart, and across an outage of the
//! store; read back with pyarrow's S3 filesystem (`check_bucket.py`).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::log::{Load, classify, traffic};
use crate::support::{S3Server, Server, python, repo};

const BUCKET: &str = "shiftwatch-log";

/// Runs tests/check_bucket.py on `s3://BUCKET/prefix` against `expected`; its JSON summary.
fn check_bucket(s3: &S3Server, prefix: &str, expected: &Value) -> Value {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(expected).unwrap()).unwrap();
    let out = Command::new(python())
        .arg(repo().join("tests/check_bucket.py"))
        .arg(s3.endpoint())
        .arg(BUCKET)
        .arg(prefix)
        .arg(file.path())
        .output()
        .expect("running check_bucket.py");
    assert!(
        out.status.success(),
        "check_bucket.py failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("check_bucket.py prints JSON")
}

/// The sidecar's environment: ship to `s3://BUCKET/prefix` on `s3`, plus `extra`.
fn env(s3: &S3Server, prefix: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = s3.env();
    env.push((
        "SHIFTWATCH__LOG__UPLOAD_URL".into(),
        format!("s3://{BUCKET}/{prefix}"),
    ));
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

fn start(env: &[(String, String)]) -> Server {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Server::start(&pairs)
}

/// Polls `/metrics` until `series` satisfies `ok`, at most `limit`; returns its last value.
fn wait_metric(server: &Server, series: &str, limit: Duration, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + limit;
    loop {
        let v = server.metric(series);
        if ok(v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{series} stayed at {v} for {limit:?}; stderr:\n{}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Completed Parquet files still in the local log (not temporary ones).
fn local_files(log_dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.filter_map(Result::ok) {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "parquet")
                && !e.file_name().to_string_lossy().starts_with('.')
            {
                out.push(p.display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(&log_dir.join("predictions"), &mut out);
    walk(&log_dir.join("feedback"), &mut out);
    out
}

/// Sends `n` classify requests from 4 threads with ids `<prefix>-<i>`; the answers.
fn send(server: &Server, prefix: &str, n: usize) -> HashMap<String, Vec<f64>> {
    let images = traffic();
    let answers = Mutex::new(HashMap::new());
    std::thread::scope(|scope| {
        for t in 0..4 {
            let (images, answers) = (&images, &answers);
            scope.spawn(move || {
                for i in (t..n).step_by(4) {
                    let id = format!("{prefix}-{i:05}");
                    let p = classify(server.addr, &id, &images[i % images.len()])
                        .unwrap_or_else(|| panic!("{id} was not answered"));
                    answers.lock().unwrap().insert(id, p);
                }
            });
        }
    });
    answers.into_inner().unwrap()
}

#[test]
fn after_sigterm_the_bucket_holds_every_acknowledged_row_exactly_once() {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let prefix = "fleet/replica-a";
    let env = env(&s3, prefix, &[("SHIFTWATCH__LOG__ROTATE_SECONDS", "0.5")]);
    let mut server = start(&env);
    let answers = send(&server, "sigterm", 300);
    let labels: Vec<Value> = (0..20)
        .map(|i| json!({"request_id": format!("sigterm-{i:05}"), "label": (i % 10).to_string()}))
        .collect();
    let r = server.post(
        "/v1/feedback",
        Some("application/json"),
        &serde_json::to_vec(&labels).unwrap(),
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    // Files are shipped while serving, not only at shutdown.
    let shipped = wait_metric(
        &server,
        "shiftwatch_log_upload_files_total{stream=\"predictions\"",
        Duration::from_secs(60),
        |v| v > 0.0,
    );
    server.terminate();
    assert!(server.wait(Duration::from_secs(60)).success());

    let summary = check_bucket(
        &s3,
        prefix,
        &json!({"model": "digits", "predictions": answers, "feedback": labels}),
    );
    println!("bucket after SIGTERM ({shipped} files shipped while serving): {summary}");
    assert_eq!(summary["rows"], 300);
    assert_eq!(summary["feedback"], 20);
    // Every file's upload was confirmed, so none is left on the local disk.
    assert_eq!(local_files(&server.log_dir), Vec::<String>::new());
}

#[test]
fn after_sigkill_during_uploads_and_a_restart_every_acknowledged_row_is_there_once() {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let prefix = "fleet/replica-b";
    let log_dir = tempfile::tempdir().unwrap();
    let dir = log_dir.path().to_str().unwrap().to_string();
    let env = env(
        &s3,
        prefix,
        &[
            ("SHIFTWATCH__LOG__DIR", dir.as_str()),
            // A file completes every 0.2 s: uploads are going on whenever the kill comes.
            ("SHIFTWATCH__LOG__ROTATE_SECONDS", "0.2"),
        ],
    );
    let mut server = start(&env);
    let load = Load::new();
    let threads = load.run(server.addr, "sigkill");
    wait_metric(
        &server,
        "shiftwatch_log_upload_files_total{stream=\"predictions\"",
        Duration::from_secs(120),
        |v| v >= 5.0,
    );
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
    let left = local_files(log_dir.path()).len();
    let segments = std::fs::read_dir(log_dir.path().join("wal/predictions/model=digits"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(
        left + segments > 0,
        "the kill left nothing to ship or recover: not a kill during uploads"
    );

    // The restart recovers the segments, ships what waits, and drains at SIGTERM.
    let mut again = start(&env);
    again.terminate();
    assert!(again.wait(Duration::from_secs(60)).success());
    assert_eq!(local_files(log_dir.path()), Vec::<String>::new());

    let answered = load.answered.lock().unwrap();
    let predictions: HashMap<&String, &Vec<f64>> =
        answered.iter().map(|(k, (p, _))| (k, p)).collect();
    let summary = check_bucket(
        &s3,
        prefix,
        &json!({"model": "digits", "predictions": predictions, "sent": *load.sent.lock().unwrap()}),
    );
    println!(
        "bucket after SIGKILL ({left} completed files and {segments} segments left locally) and a restart: {summary}"
    );
    assert!(summary["rows"].as_u64().unwrap() >= answered.len() as u64);
}

#[test]
fn with_the_store_stopped_serving_goes_on_the_backlog_is_counted_and_drains_once_it_is_back() {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let prefix = "fleet/replica-c";
    let env = env(
        &s3,
        prefix,
        &[
            ("SHIFTWATCH__LOG__ROTATE_SECONDS", "0.3"),
            ("SHIFTWATCH__LOG__UPLOAD_TIMEOUT_SECONDS", "2"),
            ("SHIFTWATCH__LOG__UPLOAD_RETRY_MAX_SECONDS", "1"),
            ("SHIFTWATCH__LOG__UPLOAD_MAX_BACKLOG_FILES", "2"),
        ],
    );
    let mut server = start(&env);
    let backlog = "shiftwatch_log_upload_backlog_files{stream=\"predictions\"";
    let uploaded = "shiftwatch_log_upload_files_total{stream=\"predictions\"";
    let mut answers = send(&server, "before", 100);
    wait_metric(&server, uploaded, Duration::from_secs(60), |v| v > 0.0);
    wait_metric(&server, backlog, Duration::from_secs(60), |v| v == 0.0);

    s3.pause();
    // Serving goes on while no upload can succeed: every request answered, files pile up past
    // the readiness bound, and the uploader retries (at least 6 s: several timed-out attempts).
    let stopped_at = Instant::now();
    let mut batch = 0;
    while server.metric(backlog) < 3.0 || stopped_at.elapsed() < Duration::from_secs(6) {
        assert!(
            batch < 20 && stopped_at.elapsed() < Duration::from_secs(120),
            "no backlog built up; stderr:\n{}",
            server.stderr()
        );
        answers.extend(send(&server, &format!("during-{batch}"), 40));
        batch += 1;
        std::thread::sleep(Duration::from_millis(400));
    }
    let timeouts = wait_metric(
        &server,
        "shiftwatch_log_upload_failures_total{reason=\"timeout\",stream=\"predictions\"",
        Duration::from_secs(60),
        |v| v >= 2.0,
    );
    let during = server.metric(uploaded);
    let ready = server.get("/readyz");
    assert_eq!(ready.status, 200);
    let ready = ready.json();
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert!(
        ready["log"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("wait for their upload")),
        "{ready}"
    );
    let bytes = server.metric("shiftwatch_log_upload_backlog_bytes{stream=\"predictions\"");
    let age = server.metric("shiftwatch_log_upload_backlog_age_seconds{stream=\"predictions\"");
    assert!(
        bytes > 0.0 && age > 0.0,
        "backlog {bytes} bytes, {age} s old"
    );
    let waiting = server.metric(backlog);
    println!(
        "store stopped {:.1} s: {} requests answered meanwhile, {waiting} files ({bytes} bytes, oldest {age:.1} s) waiting, {timeouts} timed-out attempts",
        stopped_at.elapsed().as_secs_f64(),
        answers.len() - 100,
    );

    s3.resume();
    let resumed = Instant::now();
    wait_metric(&server, backlog, Duration::from_secs(60), |v| v == 0.0);
    let drained_in = resumed.elapsed();
    assert!(server.metric(uploaded) > during);
    let ready = server.get("/readyz").json();
    assert_eq!(ready["status"], "ready", "{ready}");
    println!(
        "drained in {:.1} s once the store was back",
        drained_in.as_secs_f64()
    );

    server.terminate();
    assert!(server.wait(Duration::from_secs(60)).success());
    let summary = check_bucket(
        &s3,
        prefix,
        &json!({"model": "digits", "predictions": answers}),
    );
    println!("bucket after the outage: {summary}");
    assert_eq!(summary["rows"].as_u64(), Some(answers.len() as u64));
}
