//! The monitor end to end: the real server and model, bundled traffic, `/v1/monitor`.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Server, labels_csv, read, repo};

/// A window of 200, evaluated often, judged on its own phase of traffic.
fn monitor_env(state_file: &str) -> Vec<(&'static str, String)> {
    vec![
        ("SHIFTWATCH__MONITOR__WINDOW", "200".into()),
        ("SHIFTWATCH__MONITOR__MIN_SAMPLES", "100".into()),
        ("SHIFTWATCH__MONITOR__EVALUATE_EVERY_SECONDS", "0.2".into()),
        ("SHIFTWATCH__MONITOR__CLEAR_AFTER", "1".into()),
        ("SHIFTWATCH__MONITOR__LABELED_WINDOW", "5000".into()),
        ("SHIFTWATCH__MONITOR__STATE_FILE", state_file.into()),
    ]
}

fn start(env: &[(&'static str, String)]) -> Server {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start(&pairs)
}

/// Sends every image of a traffic folder, in order; returns (request id, true label) pairs.
fn replay(server: &Server, folder: &str, prefix: &str) -> Vec<(String, String)> {
    let mut sent = Vec::new();
    for (i, (file, label)) in labels_csv(format!("data/traffic/{folder}/labels.csv"))
        .iter()
        .enumerate()
    {
        let id = format!("{prefix}-{i:04}");
        let raw = crate::support::classify_request(
            "",
            &id,
            &read(format!("data/traffic/{folder}/{file}")),
        );
        let r = crate::support::request(server.addr, &raw);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        sent.push((id, label.clone()));
    }
    sent
}

/// The evaluation of the window as it stands now, after everything sent so far: two
/// evaluations after the latest one published at the time of the call. (The first may have
/// copied its window before the call; the second began after the first was published.) The
/// window is then exactly the last `window` predictions sent, whatever the machine's speed.
fn settled_evaluation(server: &Server) -> Value {
    let latest = server.get("/v1/monitor").json()["evaluated_at"]
        .as_str()
        .unwrap()
        .to_string();
    evaluation_after(server, &latest)
}

/// Polls until two evaluations have been published after `after`.
fn evaluation_after(server: &Server, after: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = 0;
    let mut last = after.to_string();
    loop {
        let v = server.get("/v1/monitor").json();
        let at = v["evaluated_at"].as_str().unwrap().to_string();
        if at > last {
            seen += 1;
            last = at;
            if seen >= 2 {
                return v;
            }
        }
        assert!(Instant::now() < deadline, "no fresh evaluation: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Each family's verdict (its `all` entry, or its only entry).
fn family_status(snapshot: &Value) -> BTreeMap<String, String> {
    snapshot["tests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| {
            t["feature"] == "all" || !["bbsd_ks", "input_ks"].contains(&t["test"].as_str().unwrap())
        })
        .map(|t| {
            (
                t["test"].as_str().unwrap().to_string(),
                t["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn normal_traffic_is_ok_shift_alerts_labels_match_parquet() {
    let state = tempfile::tempdir().unwrap();
    let state_file = state.path().join("window.json");
    let env = monitor_env(state_file.to_str().unwrap());
    let mut server = start(&env);

    // Before traffic: no verdicts.
    let empty = server.get("/v1/monitor").json();
    assert_eq!(empty["window"]["predictions"], 0);
    assert!(
        family_status(&empty)
            .values()
            .all(|s| s == "insufficient_data"),
        "{empty}"
    );
    assert_eq!(empty["labeled"], Value::Null);

    // Normal traffic: every test ok on its last 200 predictions.
    let normal = replay(&server, "normal", "normal");
    let snap = settled_evaluation(&server);
    assert_eq!(snap["window"]["predictions"], 200);
    assert_eq!(snap["window"]["capacity"], 200);
    let statuses = family_status(&snap);
    assert_eq!(statuses.len(), 11, "every family runs: {statuses:?}");
    for (test, status) in &statuses {
        assert_eq!(status, "ok", "{test} on normal traffic: {snap}");
    }
    // The sequential detectors saw every normal prediction and none alarmed.
    let seq = &snap["sequential"];
    assert_eq!(seq["predictions_seen"], normal.len(), "{seq}");
    assert_eq!(seq["run_length"], 1e6, "{seq}");
    let threshold = seq["threshold"].as_f64().unwrap();
    let families = seq["tests"].as_array().unwrap();
    assert_eq!(families.len(), 7, "{seq}");
    assert_eq!(threshold, 7e6, "run_length x families: {seq}");
    for t in families {
        assert_eq!(t["status"], "ok", "sequential {t} on normal traffic");
        assert_eq!(t["alarms"], 0, "sequential {t} on normal traffic");
        assert!(t["evidence"].as_f64().unwrap() < threshold, "{t}");
    }
    for t in snap["tests"].as_array().unwrap() {
        for key in [
            "statistic",
            "p_value",
            "effect_size",
            "threshold",
            "n_window",
            "n_reference",
        ] {
            assert!(t[key].is_number(), "{key} missing in {t}");
        }
    }
    let est = &snap["estimates"];
    for key in [
        "accuracy",
        "ac",
        "doc",
        "atc",
        "atc_ne",
        "cot",
        "cott",
        "nuclear",
        "correctness",
        "overconfidence_gap",
    ] {
        assert!(est[key].is_number(), "{key}: {est}");
    }
    // The served estimate is the correctness model's (the bundled profile has one), close to
    // the test split's accuracy (0.97), and the model is not confidently wrong.
    assert_eq!(est["method"], "correctness", "{est}");
    assert_eq!(est["accuracy"], est["correctness"], "{est}");
    let served = est["accuracy"].as_f64().unwrap();
    assert!((0.92..=1.0).contains(&served), "{est}");
    assert_eq!(est["overconfidence"], "ok", "{est}");
    assert_eq!(est["class_mix"]["shift"], "none", "{est}");
    let mix: f64 = est["class_mix"]["estimated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .sum();
    assert!((mix - 1.0).abs() < 1e-9, "{est}");
    // Defined series only: an estimate for every method and the served one, no labeled
    // accuracy before any label.
    let metrics = String::from_utf8(server.get("/metrics").body).unwrap();
    for method in [
        "served",
        "correctness",
        "atc",
        "atc_ne",
        "doc",
        "cot",
        "cott",
        "nuclear",
        "ac",
    ] {
        let series =
            format!("shiftwatch_estimated_accuracy{{method=\"{method}\",model=\"digits\"}}");
        assert!(metrics.contains(&series), "{series}: {metrics}");
    }
    assert!(
        metrics.contains("shiftwatch_overconfidence_status{model=\"digits\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("shiftwatch_estimated_class_ratio{class=\"7\",model=\"digits\"}"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("shiftwatch_labeled_accuracy{"),
        "no labeled accuracy before any label: {metrics}"
    );

    // Out-of-distribution traffic: input and embedding tests alert within one window, and
    // the sequential detectors of the input statistics and embeddings alarm.
    replay(&server, "ood", "ood");
    let snap = settled_evaluation(&server);
    let alarmed: BTreeMap<String, u64> = snap["sequential"]["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["test"].as_str().unwrap().to_string(),
                t["alarms"].as_u64().unwrap(),
            )
        })
        .collect();
    for test in ["input_ks", "embedding_mmd"] {
        assert!(
            alarmed[test] >= 1,
            "sequential {test} on ood traffic: {alarmed:?}"
        );
    }
    let statuses = family_status(&snap);
    for test in ["input_ks", "embedding_mmd", "bbsd_ks"] {
        assert_eq!(
            statuses[test], "alert",
            "{test} on out-of-distribution traffic: {snap}"
        );
    }
    // Confidently wrong: nothing in the bundled out-of-distribution set is right, while the
    // model's confidence stays near 0.8. The served estimate says so, and the verdict alerts.
    let est = &snap["estimates"];
    assert!(est["accuracy"].as_f64().unwrap() < 0.3, "{est}");
    assert_eq!(est["overconfidence"], "alert", "{est}");
    assert_eq!(est["class_mix"]["shift"], "inputs", "{est}");
    let metrics = String::from_utf8(server.get("/metrics").body).unwrap();
    assert!(
        metrics.contains("shiftwatch_overconfidence_status{model=\"digits\"} 2"),
        "{metrics}"
    );
    // A class-prior shift: the class-mix tests alert.
    replay(&server, "class_prior", "prior");
    let snap = settled_evaluation(&server);
    let statuses = family_status(&snap);
    for test in ["class_chi2", "class_psi", "class_js"] {
        assert_eq!(
            statuses[test], "alert",
            "{test} on a class-prior shift: {snap}"
        );
    }
    // The metrics say the same.
    let metrics = String::from_utf8(server.get("/metrics").body).unwrap();
    assert!(
        metrics.contains("shiftwatch_drift_status{test=\"class_chi2\",model=\"digits\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("shiftwatch_window_predictions{model=\"digits\"} 200"));
    assert!(
        metrics.contains("shiftwatch_drift_evidence_threshold{model=\"digits\"} 7000000"),
        "{metrics}"
    );
    assert!(
        metrics.contains("shiftwatch_drift_alarms_total{test=\"input_ks\",model=\"digits\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("shiftwatch_prediction_set_size_count{model=\"digits\"}"));

    // Delayed labels for the normal traffic: calibration from the labeled window.
    server.send_labels(&normal);
    let snap = settled_evaluation(&server);
    let labeled = snap["labeled"].clone();
    assert_eq!(labeled["n"], normal.len());
    let metrics = String::from_utf8(server.get("/metrics").body).unwrap();
    assert!(
        metrics.contains("shiftwatch_labeled_accuracy{model=\"digits\"}"),
        "labeled accuracy once labels came: {metrics}"
    );
    assert!(labeled["accuracy"].as_f64().unwrap() > 0.9, "{labeled}");
    assert_eq!(labeled["reliability"].as_array().unwrap().len(), 15);
    // Prediction sets: calibrated for 0.9 on the reference, measured on the test split.
    assert_eq!(labeled["prediction_set_target"], 0.9);
    let coverage = labeled["prediction_set_coverage"].as_f64().unwrap();
    assert!((coverage - 0.9).abs() <= 0.02, "{labeled}");

    server.terminate();
    assert!(server.wait(Duration::from_secs(30)).success());

    // Recomputed from the Parquet log by numpy: the same numbers.
    let expected = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(expected.path(), labeled.to_string()).unwrap();
    let out = Command::new(crate::support::python())
        .arg(repo().join("tests/check_calibration.py"))
        .arg(&server.log_dir)
        .arg(expected.path())
        .output()
        .expect("running check_calibration.py (make venv)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "calibration from Parquet: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );

    // The window survives a restart.
    assert!(state_file.exists(), "the window was saved on shutdown");
    let server = start(&env);
    let v = server.get("/v1/monitor").json();
    assert_eq!(v["window"]["predictions"], 200, "restored window: {v}");
}

#[test]
fn flags_mark_low_confidence_and_out_of_distribution_inputs() {
    let server = start(&monitor_env(""));
    let mut ood_flagged = 0;
    let files = labels_csv("data/traffic/ood/labels.csv");
    for (file, _) in &files {
        let r = server.post(
            "/v1/models/digits/classify",
            Some("image/png"),
            &read(format!("data/traffic/ood/{file}")),
        );
        let flags: Vec<String> = serde_json::from_value(r.json()["flags"].clone()).unwrap();
        if flags.iter().any(|f| f == "ood_suspect") {
            ood_flagged += 1;
        }
    }
    let mut normal_flagged = 0;
    let normal = labels_csv("data/traffic/normal/labels.csv");
    for (file, _) in &normal {
        let r = server.post(
            "/v1/models/digits/classify",
            Some("image/png"),
            &read(format!("data/traffic/normal/{file}")),
        );
        let flags: Vec<String> = serde_json::from_value(r.json()["flags"].clone()).unwrap();
        if flags.iter().any(|f| f == "ood_suspect") {
            normal_flagged += 1;
        }
    }
    let ood_rate = ood_flagged as f64 / files.len() as f64;
    let normal_rate = normal_flagged as f64 / normal.len() as f64;
    println!(
        "ood_suspect: {ood_rate:.2} of out-of-distribution images, {normal_rate:.2} of normal ones"
    );
    assert!(ood_rate > 0.5, "{ood_rate}");
    assert!(normal_rate < 0.1, "{normal_rate}");
}

#[test]
fn temperature_scaling_is_a_switch_and_is_recorded() {
    let mut env = monitor_env("");
    env.push(("SHIFTWATCH__MONITOR__APPLY_TEMPERATURE", "true".into()));
    let server = start(&env);
    let fixture: Value = serde_json::from_slice(&read("tests/data/digits_fixture.json")).unwrap();
    let image = &fixture["images"][0];
    let raw: Vec<f64> = serde_json::from_value(image["probabilities"].clone()).unwrap();
    let r = server.post(
        "/v1/models/digits/classify?top_k=10",
        Some("image/png"),
        &read(image["file"].as_str().unwrap()),
    );
    let v = r.json();
    let flags: Vec<String> = serde_json::from_value(v["flags"].clone()).unwrap();
    assert!(flags.contains(&"calibrated".to_string()), "{flags:?}");
    let monitor = server.get("/v1/monitor").json();
    assert_eq!(monitor["reference"]["temperature_applied"], true);
    let t = monitor["reference"]["temperature"].as_f64().unwrap();
    assert!(
        (t - 1.0).abs() > 0.05,
        "a temperature that changes something: {t}"
    );
    // softmax(ln p / T), from the training-side probabilities.
    let logits: Vec<f64> = raw.iter().map(|p| p.max(1e-12).ln() / t).collect();
    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = logits.iter().map(|z| (z - max).exp()).sum();
    let mut served = [0.0; 10];
    for item in v["predictions"].as_array().unwrap() {
        served[item["class"].as_u64().unwrap() as usize] = item["probability"].as_f64().unwrap();
    }
    for (k, z) in logits.iter().enumerate() {
        let want = (z - max).exp() / sum;
        assert!(
            (served[k] - want).abs() < 1e-4,
            "class {k}: {} vs {want}",
            served[k]
        );
    }
}
