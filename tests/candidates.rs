//! Relabel candidates end to end: selection on bundled traffic, export, Label Studio checks,
//! the disk quota, auth and path safety.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Server, labels_csv, read, repo};

const TOKEN: &str = "candidates-test-token-0123456789";

fn send(server: &Server, folder: &str, file: &str, id: &str) {
    let raw =
        crate::support::classify_request("", id, &read(format!("data/traffic/{folder}/{file}")));
    let r = crate::support::request(server.addr, &raw);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

fn authed(server: &Server, method: &str, path: &str, body: &str) -> crate::support::Response {
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    crate::support::request(server.addr, raw.as_bytes())
}

fn check_package(dir: &std::path::Path) -> Value {
    let out = Command::new(crate::support::python())
        .arg(repo().join("tests/check_label_studio.py"))
        .arg(dir)
        .output()
        .expect("running check_label_studio.py (make venv)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON summary")
}

#[test]
fn shifted_and_unknown_images_lead_the_candidates_and_export_for_label_studio() {
    let dirs = tempfile::tempdir().unwrap();
    let store = dirs.path().join("store");
    let exports = dirs.path().join("exports");
    let env = [
        ("SHIFTWATCH__AUTH__TOKEN", TOKEN.to_string()),
        ("SHIFTWATCH__CANDIDATES__DIR", store.display().to_string()),
        (
            "SHIFTWATCH__CANDIDATES__EXPORT_DIR",
            exports.display().to_string(),
        ),
        ("SHIFTWATCH__CANDIDATES__RANDOM_RATE", "0.02".to_string()),
        ("SHIFTWATCH__MONITOR__WINDOW", "200".to_string()),
        (
            "SHIFTWATCH__MONITOR__EVALUATE_EVERY_SECONDS",
            "0.2".to_string(),
        ),
    ];
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut server = Server::start(&pairs);

    // Mostly normal traffic; a few percent shifted or out of distribution, arriving last.
    let mut shifted_ids = std::collections::HashSet::new();
    for (i, (file, _)) in labels_csv("data/traffic/normal/labels.csv")
        .iter()
        .enumerate()
    {
        send(&server, "normal", file, &format!("normal-{i:04}"));
    }
    for folder in ["ood", "rotation", "brightness", "blur"] {
        for (i, (file, _)) in labels_csv(format!("data/traffic/{folder}/labels.csv"))
            .iter()
            .take(10)
            .enumerate()
        {
            let id = format!("{folder}-{i:04}");
            send(&server, folder, file, &id);
            shifted_ids.insert(id);
        }
    }
    let total = 540 + shifted_ids.len();
    let traffic_share = shifted_ids.len() as f64 / total as f64;

    // The store works off the request path: wait until it has taken every offer (the pool is
    // larger than the traffic, so every prediction is offered).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let taken = server.metric("shiftwatch_candidates_stored{")
            + server.metric("shiftwatch_candidates_skipped_total");
        if taken >= total as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the store took {taken} of {total} offers"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(server.metric("shiftwatch_candidates_skipped_total"), 0.0);

    // Auth first.
    server
        .get("/v1/candidates?limit=100")
        .assert_error(401, "unauthorized");
    let r = authed(&server, "GET", "/v1/candidates?limit=100", "");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let top = r.json()["candidates"].as_array().unwrap().clone();
    assert_eq!(top.len(), 100);
    let shifted_in_top = top
        .iter()
        .filter(|c| shifted_ids.contains(c["request_id"].as_str().unwrap()))
        .count();
    let top_share = shifted_in_top as f64 / top.len() as f64;
    let classes: std::collections::BTreeSet<&str> = top
        .iter()
        .map(|c| c["predicted_label"].as_str().unwrap())
        .collect();
    println!(
        "shifted or out-of-distribution: {:.1}% of traffic, {:.1}% of the top 100 ({:.1}x); classes {classes:?}",
        traffic_share * 100.0,
        top_share * 100.0,
        top_share / traffic_share
    );
    assert!(
        top_share >= 3.0 * traffic_share,
        "{top_share} vs {traffic_share}"
    );
    assert_eq!(classes.len(), 10, "every class appears: {classes:?}");
    let scores: Vec<f64> = top.iter().map(|c| c["score"].as_f64().unwrap()).collect();
    assert!(
        top.iter()
            .all(|c| c["reasons"].is_array() && c["stored_at"].is_string())
    );
    assert!(scores.iter().all(|s| s.is_finite()));

    // Export over HTTP: a Label Studio package; hostile names go nowhere.
    for bad in ["../escape", "a/b", "..", ".hidden"] {
        let body = json!({"limit": 5, "name": bad}).to_string();
        authed(&server, "POST", "/v1/candidates/export", &body).assert_error(400, "bad_name");
    }
    assert!(!dirs.path().join("escape").exists());
    let r = authed(
        &server,
        "POST",
        "/v1/candidates/export",
        &json!({"limit": 100, "name": "batch-1"}).to_string(),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["count"], 100);
    let summary = check_package(&exports.join("batch-1"));
    println!("HTTP export: {summary}");
    authed(
        &server,
        "POST",
        "/v1/candidates/export",
        &json!({"name": "batch-1"}).to_string(),
    )
    .assert_error(409, "export_exists");
    assert_eq!(server.metric("shiftwatch_candidates_exported_total"), 100.0);

    server.terminate();
    assert!(server.wait(Duration::from_secs(30)).success());

    // Offline: from the Parquet log and the stored images, with the sidecar stopped.
    let config = dirs.path().join("offline.toml");
    std::fs::write(&config, "[model]\npath = \"models/digits.onnx\"\n").unwrap();
    let out = dirs.path().join("offline-export");
    let run = Command::new(env!("CARGO_BIN_EXE_shiftwatch"))
        .args(["candidates", "export", "--limit", "50", "--out"])
        .arg(&out)
        .arg("--config")
        .arg(&config)
        .current_dir(repo())
        .env("SHIFTWATCH__CANDIDATES__DIR", &store)
        .env("SHIFTWATCH__LOG__DIR", &server.log_dir)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    println!("{}", String::from_utf8_lossy(&run.stdout).trim());
    let summary = check_package(&out);
    assert_eq!(summary["tasks"], 50);
}

/// A sidecar whose candidate store in `store` is bounded by the disk quota alone (the pool's
/// count far above what the tests send), with `random_rate` of the traffic drawn for the sample.
fn quota_server(store: &std::path::Path, quota: u64, random_rate: &str) -> Server {
    let env = [
        ("SHIFTWATCH__CANDIDATES__DIR", store.display().to_string()),
        ("SHIFTWATCH__CANDIDATES__MAX_DISK_BYTES", quota.to_string()),
        ("SHIFTWATCH__CANDIDATES__POOL_SIZE", "100000".to_string()),
        (
            "SHIFTWATCH__CANDIDATES__RANDOM_RATE",
            random_rate.to_string(),
        ),
    ];
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start(&pairs)
}

#[test]
fn stored_images_stay_under_the_disk_quota() {
    let dirs = tempfile::tempdir().unwrap();
    let store = dirs.path().join("store");
    let quota: u64 = 30_000;
    let mut server = quota_server(&store, quota, "0.05");
    let mut peak = 0f64;
    let mut n = 0;
    for round in 0..3 {
        for folder in ["normal", "ood", "rotation"] {
            for (i, (file, _)) in labels_csv(format!("data/traffic/{folder}/labels.csv"))
                .iter()
                .enumerate()
            {
                send(&server, folder, file, &format!("{round}-{folder}-{i}"));
                n += 1;
                if n % 100 == 0 {
                    peak = peak.max(server.metric("shiftwatch_candidates_stored_bytes"));
                }
            }
        }
    }
    let evicted = server.metric("shiftwatch_candidates_evicted_total{reason=\"disk_quota\"");
    // A graceful stop drains the store's queue; then measure the folder itself.
    server.terminate();
    assert!(server.wait(Duration::from_secs(30)).success());
    let on_disk: u64 = std::fs::read_dir(store.join("images"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.metadata().unwrap().len())
        .sum();
    println!(
        "{n} predictions: stored bytes peaked at {peak} (metric), {on_disk} on disk at the end, quota {quota}, {evicted} evicted for the quota"
    );
    assert!(peak <= quota as f64);
    assert!(on_disk <= quota);
    assert!(evicted > 0.0, "the quota was exercised");
    assert!(
        on_disk > quota / 2,
        "the store is used up to its quota: {on_disk}"
    );
}

/// Once the disk quota binds, a newcomer has to beat the lowest stored score, as when the pool is
/// full by count: the same image sent 100 times (equal scores) fills the quota and then stops
/// being written, instead of being written and evicted again at every request.
#[test]
fn a_full_disk_quota_admits_only_what_beats_the_floor() {
    let dirs = tempfile::tempdir().unwrap();
    let store = dirs.path().join("store");
    let file = "normal-0000.png";
    let size = read(format!("data/traffic/normal/{file}")).len() as u64;
    let quota = size * 11 / 2; // room for five
    let mut server = quota_server(&store, quota, "0");
    for i in 0..100 {
        send(&server, "normal", file, &format!("same-{i}"));
    }
    // The store's queue drains in well under a second; the count is read while it runs.
    std::thread::sleep(Duration::from_millis(500));
    let evicted = server.metric("shiftwatch_candidates_evicted_total{reason=\"disk_quota\"");
    server.terminate();
    assert!(server.wait(Duration::from_secs(30)).success());
    let stored = std::fs::read_dir(store.join("images")).unwrap().count();
    println!("{stored} stored, {evicted} evicted for the quota of {quota} bytes ({size} a file)");
    assert_eq!(stored, 5, "the quota holds five");
    // The store's thread sets the floor after it has written: a few offers may race it.
    assert!(
        evicted <= 10.0,
        "{evicted} images written only to be evicted"
    );
}

#[test]
fn label_studio_webhooks_and_exports_come_back_as_feedback() {
    let env = [("SHIFTWATCH__AUTH__TOKEN", TOKEN)];
    let server = Server::start(&env);
    let labels = labels_csv("data/traffic/normal/labels.csv");
    for (i, (file, _)) in labels.iter().take(4).enumerate() {
        send(&server, "normal", file, &format!("ls-{i}"));
    }
    let choice = |label: &str| {
        json!([{"from_name": "label", "to_name": "image", "type": "choices",
                "value": {"choices": [label]}}])
    };
    let matched = || server.metric("shiftwatch_feedback_total{outcome=\"matched\"");
    let before = matched();
    let post = |body: &Value| {
        authed(
            &server,
            "POST",
            "/v1/feedback/label-studio",
            &body.to_string(),
        )
    };

    // A webhook body as Label Studio sends it on ANNOTATION_CREATED.
    let webhook = json!({
        "action": "ANNOTATION_CREATED",
        "annotation": {"id": 1, "task": 11, "result": choice(&labels[0].1), "was_cancelled": false},
        "task": {"id": 11, "data": {"image": "/data/local-files/?d=b/images/x.png", "request_id": "ls-0"}},
        "project": {"id": 1},
    });
    let r = post(&webhook);
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let answer = r.json();
    println!("webhook: {answer}");
    assert_eq!(answer["payload"], "ANNOTATION_CREATED");
    assert_eq!(answer["results"][0]["outcome"], "matched");
    assert_eq!(answer["results"][0]["task_id"], 11);
    assert_eq!(matched() - before, 1.0);

    // An export: one task already labeled (duplicate), two new, one unlabeled (skipped), one
    // whose id the sidecar never served, one with a label that is not a class.
    let task = |id: i64, request_id: &str, annotations: Value| json!({"id": id, "data": {"request_id": request_id}, "annotations": annotations});
    let export = json!([
        task(11, "ls-0", json!([{"result": choice(&labels[0].1)}])),
        task(12, "ls-1", json!([{"result": choice(&labels[1].1)}])),
        task(13, "ls-2", json!([{"result": choice(&labels[2].1)}])),
        task(14, "ls-3", json!([])),
        task(15, "never-served", json!([{"result": choice("4")}])),
        task(16, "ls-3", json!([{"result": choice("not-a-class")}])),
    ]);
    let r = post(&export);
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let answer = r.json();
    println!("export: {answer}");
    let outcomes: Vec<&str> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["duplicate", "matched", "matched", "unknown_id", "invalid"]
    );
    assert_eq!(answer["skipped"][0]["task_id"], 14);
    assert_eq!(answer["accepted"], 4);
    assert_eq!(matched() - before, 3.0);

    // Actions without labels are accepted and ignored.
    let r = post(&json!({"action": "PROJECT_UPDATED", "project": {"id": 1}}));
    assert_eq!(r.status, 202);
    assert_eq!(r.json()["ignored"], true);

    // Bad payloads: a clear 4xx, never a panic.
    for (body, status, code) in [
        ("{not json", 400, "bad_json"),
        ("{\"label\": \"7\"}", 400, "bad_label_studio_payload"),
        (
            "{\"action\": \"ANNOTATION_CREATED\"}",
            400,
            "bad_label_studio_payload",
        ),
        ("42", 400, "bad_label_studio_payload"),
    ] {
        authed(&server, "POST", "/v1/feedback/label-studio", body).assert_error(status, code);
    }
    server
        .post(
            "/v1/feedback/label-studio",
            Some("application/json"),
            webhook.to_string().as_bytes(),
        )
        .assert_error(401, "unauthorized");
    assert_eq!(matched() - before, 3.0);
}

/// One run of the out-of-distribution selection test: 540 normal images with `folder`'s
/// images mixed in at every tenth request (60, so 10% of the traffic); returns (share of
/// normal flagged ood_suspect, share of `folder` flagged, `folder` images in the top 100,
/// classes of the in-distribution candidates in the top 100).
fn ood_run(folder: &str) -> (f64, f64, usize, std::collections::BTreeSet<String>) {
    let dirs = tempfile::tempdir().unwrap();
    let store = dirs.path().join("store");
    let env = [
        ("SHIFTWATCH__AUTH__TOKEN", TOKEN.to_string()),
        ("SHIFTWATCH__CANDIDATES__DIR", store.display().to_string()),
    ];
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start(&pairs);
    let normal = labels_csv("data/traffic/normal/labels.csv");
    let others = labels_csv(format!("data/traffic/{folder}/labels.csv"));
    // 60 spread over the folder (the bundled set is ordered by kind).
    let others: Vec<&String> = (0..60).map(|i| &others[i * others.len() / 60].0).collect();
    let flagged = |id: &str, file: &str, dir: &str| -> bool {
        let raw =
            crate::support::classify_request("", id, &read(format!("data/traffic/{dir}/{file}")));
        let r = crate::support::request(server.addr, &raw);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "ood_suspect")
    };
    let (mut normal_flagged, mut other_flagged) = (0, 0);
    let mut next_normal = normal.iter().enumerate();
    for (i, file) in others.iter().enumerate() {
        for _ in 0..9 {
            let (n, (file, _)) = next_normal.next().unwrap();
            normal_flagged += usize::from(flagged(&format!("normal-{n:04}"), file, "normal"));
        }
        other_flagged += usize::from(flagged(&format!("{folder}-{i:04}"), file, folder));
    }
    let total = normal.len() + others.len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.metric("shiftwatch_candidates_stored{")
        + server.metric("shiftwatch_candidates_skipped_total")
        < total as f64
    {
        assert!(
            Instant::now() < deadline,
            "the store did not take every offer"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = authed(&server, "GET", "/v1/candidates?limit=100", "");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let top = r.json()["candidates"].as_array().unwrap().clone();
    assert_eq!(top.len(), 100);
    let is_other = |c: &Value| c["request_id"].as_str().unwrap().starts_with(folder);
    let in_top = top.iter().filter(|c| is_other(c)).count();
    // The out-of-distribution candidates lead the ranking.
    let first_normal = top.iter().position(|c| !is_other(c)).unwrap_or(100);
    let classes = top
        .iter()
        .filter(|c| !is_other(c))
        .map(|c| c["predicted_label"].as_str().unwrap().to_string())
        .collect();
    println!(
        "{folder}: ood_suspect on {normal_flagged}/{} normal, {other_flagged}/{} {folder}; \
         {in_top} {folder} images in the top 100 ({:.1}x their 10% share), the first {first_normal} \
         candidates all {folder}",
        normal.len(),
        others.len(),
        in_top as f64 / 10.0
    );
    (
        normal_flagged as f64 / normal.len() as f64,
        other_flagged as f64 / others.len() as f64,
        in_top,
        classes,
    )
}

#[test]
fn confidently_wrong_out_of_distribution_images_lead_the_candidates() {
    // Natural-photo crops (training/make_photo_traffic.py): nothing was tuned on them; the
    // model calls them "8" or "2" at a median confidence of 0.99.
    let (normal, photos, in_top, classes) = ood_run("photos");
    assert!(normal <= 0.02, "false flags on normal traffic: {normal}");
    assert!(photos >= 0.95, "photos flagged: {photos}");
    assert!(in_top >= 40, "{in_top} photos in the top 100");
    assert_eq!(classes.len(), 10, "in-distribution classes {classes:?}");
    // The bundled out-of-distribution set (noise, sparse, patterns, shapes, letters). These 60
    // hold 4 of the 8 images the score misses over the whole set (56 of 60): the next test
    // asserts 95% over all 200.
    let (normal, ood, in_top, classes) = ood_run("ood");
    assert!(normal <= 0.02, "false flags on normal traffic: {normal}");
    assert!(
        ood >= 0.9,
        "bundled out-of-distribution images flagged: {ood}"
    );
    assert!(
        in_top >= 40,
        "{in_top} bundled out-of-distribution images in the top 100"
    );
    assert_eq!(classes.len(), 10, "in-distribution classes {classes:?}");
}

/// `ood_suspect` over the whole bundled sets, through the sidecar: at most 2% of normal
/// traffic, at least 95% of the bundled out-of-distribution images (each kind printed), and the
/// natural-photo crops, which nothing was tuned on.
#[test]
fn ood_suspect_flags_the_bundled_out_of_distribution_sets_and_little_normal_traffic() {
    let server = Server::start(&[]);
    let flagged_share = |folder: &str| -> (usize, usize, Vec<bool>) {
        let files = labels_csv(format!("data/traffic/{folder}/labels.csv"));
        let flags: Vec<bool> = files
            .iter()
            .enumerate()
            .map(|(i, (file, _))| {
                let raw = crate::support::classify_request(
                    "",
                    &format!("{folder}-{i:04}"),
                    &read(format!("data/traffic/{folder}/{file}")),
                );
                let r = crate::support::request(server.addr, &raw);
                assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                r.json()["flags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|f| f == "ood_suspect")
            })
            .collect();
        let n = flags.iter().filter(|&&f| f).count();
        println!("{folder}: {n} of {} flagged ood_suspect", flags.len());
        (n, flags.len(), flags)
    };
    let (normal, n_normal, _) = flagged_share("normal");
    let (ood, n_ood, flags) = flagged_share("ood");
    let (photos, n_photos, _) = flagged_share("photos");
    assert_eq!((n_normal, n_ood), (540, 200));
    // The bundled set is ordered by kind, 40 each (training/digit_images.py `ood_images`).
    for (k, kind) in ["noise", "sparse", "patterns", "shapes", "letters"]
        .iter()
        .enumerate()
    {
        let n = flags[k * 40..(k + 1) * 40].iter().filter(|&&f| f).count();
        println!("  {kind}: {n} of 40");
    }
    assert!(
        normal as f64 <= 0.02 * n_normal as f64,
        "{normal} of {n_normal} normal images flagged"
    );
    assert!(
        ood as f64 >= 0.95 * n_ood as f64,
        "{ood} of {n_ood} bundled out-of-distribution images flagged"
    );
    assert!(
        photos as f64 >= 0.95 * n_photos as f64,
        "{photos} of {n_photos} photos flagged"
    );
}

#[test]
fn similar_images_and_labels_propagated_to_the_export() {
    let dirs = tempfile::tempdir().unwrap();
    let exports = dirs.path().join("exports");
    let env = [
        ("SHIFTWATCH__AUTH__TOKEN", TOKEN.to_string()),
        (
            "SHIFTWATCH__CANDIDATES__EXPORT_DIR",
            exports.display().to_string(),
        ),
    ];
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start(&pairs);
    let normal = labels_csv("data/traffic/normal/labels.csv");
    let truth: std::collections::HashMap<String, String> = normal
        .iter()
        .enumerate()
        .map(|(i, (_, label))| (format!("n-{i:04}"), label.clone()))
        .collect();
    for (i, (file, _)) in normal.iter().enumerate() {
        send(&server, "normal", file, &format!("n-{i:04}"));
    }
    // Delayed labels for the first 200.
    let labeled: Vec<Value> = (0..200)
        .map(|i| json!({"request_id": format!("n-{i:04}"), "label": normal[i].1}))
        .collect();
    let r = authed(
        &server,
        "POST",
        "/v1/feedback",
        &Value::from(labeled).to_string(),
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));

    let r = authed(&server, "GET", "/v1/similar?request_id=n-0300&k=8", "");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let answer = r.json();
    println!("similar: {answer}");
    assert_eq!(answer["request_id"], "n-0300");
    let neighbors = answer["neighbors"].as_array().unwrap();
    assert_eq!(neighbors.len(), 8);
    let distances: Vec<f64> = neighbors
        .iter()
        .map(|n| n["distance"].as_f64().unwrap())
        .collect();
    assert!(distances.windows(2).all(|w| w[0] <= w[1]), "{distances:?}");
    for n in neighbors {
        let id = n["request_id"].as_str().unwrap();
        assert_ne!(id, "n-0300");
        assert!(n["predicted_label"].is_string());
        let index: usize = id[2..].parse().unwrap();
        if index < 200 {
            assert_eq!(n["label"], truth[id].as_str(), "{n}");
        } else {
            assert!(n["label"].is_null(), "{n}");
        }
    }
    // The nearest images mostly share the query's digit.
    let same = neighbors
        .iter()
        .filter(|n| truth[n["request_id"].as_str().unwrap()] == truth["n-0300"])
        .count();
    assert!(same >= 5, "{same} of 8 neighbours share the digit");
    authed(&server, "GET", "/v1/similar?request_id=never-seen", "")
        .assert_error(404, "unknown_request_id");
    authed(&server, "GET", "/v1/similar?request_id=n-0001&k=0", "").assert_error(400, "bad_query");
    authed(&server, "GET", "/v1/similar?k=3", "").assert_error(400, "bad_query");
    server
        .get("/v1/similar?request_id=n-0001")
        .assert_error(401, "unauthorized");

    // The export: tasks near a labeled prediction carry its label as a second prediction.
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.metric("shiftwatch_candidates_stored{")
        + server.metric("shiftwatch_candidates_skipped_total")
        < normal.len() as f64
    {
        assert!(
            Instant::now() < deadline,
            "the store did not take every offer"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = authed(
        &server,
        "POST",
        "/v1/candidates/export",
        &json!({"limit": 200, "name": "propagated"}).to_string(),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let package = exports.join("propagated");
    check_package(&package);
    let tasks: Value =
        serde_json::from_slice(&std::fs::read(package.join("tasks.json")).unwrap()).unwrap();
    let (mut propagated, mut right) = (0, 0);
    for task in tasks.as_array().unwrap() {
        let predictions = task["predictions"].as_array().unwrap();
        assert!(predictions.len() <= 2);
        let Some(p) = predictions.get(1) else {
            continue;
        };
        let from = p["model_version"]
            .as_str()
            .unwrap()
            .strip_prefix("propagated:")
            .expect("a propagated prediction names its neighbour");
        let label = p["result"][0]["value"]["choices"][0].as_str().unwrap();
        assert!(
            from[2..].parse::<usize>().unwrap() < 200,
            "{from} was labeled"
        );
        assert_ne!(from, task["data"]["request_id"].as_str().unwrap());
        assert_eq!(label, truth[from], "the neighbour's own label");
        let distance = p["score"].as_f64().unwrap();
        assert!((0.0..=3.0).contains(&distance), "{distance}");
        propagated += 1;
        right += usize::from(label == truth[task["data"]["request_id"].as_str().unwrap()]);
    }
    println!("{propagated} of 200 exported tasks got a propagated label, {right} of them right");
    assert!(propagated > 0);
    assert!(right as f64 >= 0.9 * propagated as f64);
}
