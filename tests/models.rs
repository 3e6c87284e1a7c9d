//! Several models in one process, hot reload under load, and the KServe v2 surface as the
//! official `tritonclient` uses it.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{Server, classify_request, python, read, repo, request};

const TWO_MODELS: &str = r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace_seconds = 20.0
[models.digits]
path = "models/digits.onnx"
reference = "models/digits.reference.json"
[models.overconfident]
path = "models/digits-overconfident.onnx"
reference = "models/digits-overconfident.reference.json"
[logging]
level = "info,ort=warn"
"#;

/// Every logged prediction: request id -> (model partition, model_version).
fn logged_rows(log_dir: &std::path::Path) -> HashMap<String, (String, String)> {
    let out = Command::new(python())
        .arg(repo().join("tests/read_rows.py"))
        .arg(log_dir)
        .output()
        .expect("running read_rows.py");
    assert!(
        out.status.success(),
        "read_rows.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: HashMap<String, serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("read_rows.py prints JSON");
    rows.into_iter()
        .map(|(id, v)| {
            (
                id,
                (
                    v["model"].as_str().unwrap().to_string(),
                    v["model_version"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

fn version_of(path: &str) -> String {
    shiftwatch::model::model_version(&read(path))
}

#[test]
fn two_models_in_one_process_each_with_its_partition_and_label() {
    let mut server = Server::start_with_config(TWO_MODELS, &[]);
    let png = read("data/reference/ref-0000.png");
    let mut sent = HashMap::new();
    for (i, model) in ["digits", "overconfident", "digits", "overconfident"]
        .iter()
        .enumerate()
    {
        let id = format!("two-{model}-{i}");
        let r = request(server.addr, &classify_request_for(model, &id, &png));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let body = r.json();
        assert_eq!(body["model"], *model);
        let path = if *model == "digits" {
            "models/digits.onnx"
        } else {
            "models/digits-overconfident.onnx"
        };
        assert_eq!(body["model_version"], version_of(path));
        sent.insert(id, (model.to_string(), version_of(path)));
    }
    // A v2 infer on the second model goes to it too.
    let r = server.get("/v2/models/overconfident");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["name"], "overconfident");
    server
        .get("/v1/models/nope/classify")
        .assert_error(405, "method_not_allowed");
    request(server.addr, &classify_request_for("nope", "x", &png))
        .assert_error(404, "unknown_model");

    // Each model's series carry its own label; each has its own monitor.
    for model in ["digits", "overconfident"] {
        let n = server.metric(&format!(
            "shiftwatch_requests_total{{code=\"200\",endpoint=\"classify\",model=\"{model}\"}}"
        ));
        assert_eq!(n, 2.0, "{model}");
        let text = String::from_utf8(server.get("/metrics").body).unwrap();
        let info: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.starts_with("shiftwatch_build_info{") && l.contains(&format!("model=\"{model}\""))
            })
            .collect();
        assert_eq!(info.len(), 1, "{info:?}");
        assert!(info[0].ends_with(" 1"), "{info:?}");
        let monitor = server.get(&format!("/v1/monitor?model={model}"));
        assert_eq!(monitor.status, 200);
        assert_eq!(monitor.json()["model"], model);
    }
    let text = String::from_utf8(server.get("/metrics").body).unwrap();
    assert_eq!(
        text.matches("# TYPE shiftwatch_predictions_total").count(),
        1
    );

    server.terminate();
    assert!(server.wait(Duration::from_secs(60)).success());
    let rows = logged_rows(&server.log_dir);
    assert_eq!(rows.len(), sent.len(), "{rows:?}");
    for (id, expected) in &sent {
        assert_eq!(rows.get(id), Some(expected), "{id}");
    }
}

fn classify_request_for(model: &str, id: &str, png: &[u8]) -> Vec<u8> {
    let raw = classify_request("", id, png);
    let text = String::from_utf8_lossy(&raw[..64.min(raw.len())]).to_string();
    let from = "/v1/models/digits/classify";
    assert!(text.contains(from), "{text}");
    let mut out = Vec::with_capacity(raw.len() + 16);
    let head_end = raw.iter().position(|b| *b == b'\n').unwrap();
    let first = String::from_utf8(raw[..head_end].to_vec()).unwrap();
    out.extend_from_slice(
        first
            .replace(from, &format!("/v1/models/{model}/classify"))
            .as_bytes(),
    );
    out.extend_from_slice(&raw[head_end..]);
    out
}

/// One answer of the load: when its request started, its id and the version that answered.
struct Answer {
    started: Instant,
    id: String,
    version: String,
}

#[test]
fn reloads_under_load_fail_no_request_and_keep_versions_in_order() {
    let config = TWO_MODELS.replace(
        "[models.overconfident]\npath = \"models/digits-overconfident.onnx\"\nreference = \"models/digits-overconfident.reference.json\"\n",
        "",
    );
    let mut server = Server::start_with_config(&config, &[]);
    let addr = server.addr;
    let images: Vec<Vec<u8>> = (0..20)
        .map(|i| read(format!("data/reference/ref-{i:04}.png")))
        .collect();
    // The version that serves from the start, before any client sends.
    let mut timeline = vec![(Instant::now(), version_of("models/digits.onnx"))];
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Vec::<Answer>::new()));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (stop, answers, failures, images) = (
                Arc::clone(&stop),
                Arc::clone(&answers),
                Arc::clone(&failures),
                images.clone(),
            );
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(120);
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let id = format!("load-{c}-{i}");
                    let started = Instant::now();
                    let r = request(addr, &classify_request("", &id, &images[i % images.len()]));
                    if r.status == 200 {
                        let version = r.json()["model_version"].as_str().unwrap().to_string();
                        answers.lock().unwrap().push(Answer {
                            started,
                            id,
                            version,
                        });
                    } else {
                        failures.lock().unwrap().push(format!(
                            "{id}: {} {}",
                            r.status,
                            String::from_utf8_lossy(&r.body)
                        ));
                    }
                    i += 1;
                }
            })
        })
        .collect();

    // Three reloads, alternating between the two bundled files; each timeline entry says which
    // version serves for requests that start after its answer.
    let files = [
        (
            "models/digits-overconfident.onnx",
            "models/digits-overconfident.reference.json",
        ),
        ("models/digits.onnx", "models/digits.reference.json"),
        ("models/digits-overconfident.onnx", ""),
    ];
    let wait_for_answers = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while answers.lock().unwrap().len() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    for (k, (path, reference)) in files.iter().enumerate() {
        wait_for_answers(50 * (k + 1));
        let body = if reference.is_empty() {
            serde_json::json!({ "path": path })
        } else {
            serde_json::json!({ "path": path, "reference": reference })
        };
        let r = server.post(
            "/v1/admin/models/digits/reload",
            Some("application/json"),
            &serde_json::to_vec(&body).unwrap(),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json();
        assert_eq!(v["model_version"], version_of(path));
        assert_eq!(v["previous_version"], timeline.last().unwrap().1);
        timeline.push((Instant::now(), version_of(path)));
    }
    wait_for_answers(200);
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(failures.is_empty(), "failed requests: {failures:?}");

    // Every answer came from the version live when its request started, or a later one.
    let order: Vec<&str> = timeline.iter().map(|(_, v)| v.as_str()).collect();
    let answers = answers.lock().unwrap();
    assert!(answers.len() >= 200, "{}", answers.len());
    for a in answers.iter() {
        let live = timeline.iter().rposition(|(t, _)| *t <= a.started).unwrap();
        let allowed = &order[live..];
        assert!(
            allowed.contains(&a.version.as_str()),
            "{} answered by {} but {} was live",
            a.id,
            a.version,
            order[live]
        );
    }
    // The last version has no reference: its tests say insufficient_data.
    let monitor = server.get("/v1/monitor").json();
    assert_eq!(
        monitor["model_version"],
        version_of("models/digits-overconfident.onnx")
    );
    assert!(
        monitor["tests"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["status"] == "insufficient_data")
    );
    assert!(monitor["reference"].is_null());
    // One build_info series, naming the version that serves now.
    let text = String::from_utf8(server.get("/metrics").body).unwrap();
    let info: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("shiftwatch_build_info{"))
        .collect();
    assert_eq!(info.len(), 1, "{info:?}");
    assert!(
        info[0].contains(&format!(
            "model_version=\"{}\"",
            version_of("models/digits-overconfident.onnx")
        )),
        "{info:?}"
    );
    // A file that does not load answers 422 and the old version keeps serving.
    let r = server.post(
        "/v1/admin/models/digits/reload",
        Some("application/json"),
        br#"{"path": "README.md"}"#,
    );
    r.assert_error(422, "model_not_loaded");
    let r = request(addr, &classify_request("", "after-bad-reload", &images[0]));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["model_version"],
        version_of("models/digits-overconfident.onnx")
    );

    server.terminate();
    assert!(server.wait(Duration::from_secs(60)).success());
    let rows = logged_rows(&server.log_dir);
    for a in answers.iter() {
        let (model, version) = rows
            .get(&a.id)
            .unwrap_or_else(|| panic!("{} is not in Parquet", a.id));
        assert_eq!(model, "digits");
        assert_eq!(version, &a.version, "{}", a.id);
    }
}

/// The official Python client against the sidecar: tests/check_tritonclient.py.
#[test]
fn tritonclient_speaks_to_the_v2_surface() {
    let server = Server::start(&[]);
    let out = Command::new(python())
        .arg(repo().join("tests/check_tritonclient.py"))
        .arg(server.addr.to_string())
        .arg(version_of("models/digits.onnx"))
        .current_dir(repo())
        .output()
        .expect("running check_tritonclient.py");
    assert!(
        out.status.success(),
        "check_tritonclient.py failed:\n{}{}\nserver:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        server.stderr()
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("check_tritonclient.py prints JSON");
    assert!(summary["calls"].as_u64().unwrap() >= 12, "{summary}");
    // Every v2 prediction was monitored and logged like classify.
    let infers = server.metric("shiftwatch_requests_total{code=\"200\",endpoint=\"infer\"");
    assert!(infers >= 8.0, "{infers}");
}
