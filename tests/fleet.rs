//! The README's fleet recipes (DuckDB and pyarrow) over a bucket that two replicas ship to and
//! over one replica's folder, compared with what the replicas answered and with the sidecar's
//! own chi-square (`check_fleet_recipes.py` runs the blocks taken from README.md).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{S3Server, Server, classify_request, labels_csv, python, read, repo, request};

const BUCKET: &str = "fleet-logs";

/// `n` images of a traffic folder (`data/traffic/<name>/`), cycling.
fn images(name: &str, n: usize) -> Vec<Vec<u8>> {
    let files = labels_csv(format!("data/traffic/{name}/labels.csv"));
    (0..n)
        .map(|i| read(format!("data/traffic/{name}/{}", files[i % files.len()].0)))
        .collect()
}

/// Classifies each image; per answer its model version, top label and confidence.
fn classify_all(server: &Server, prefix: &str, images: &[Vec<u8>]) -> Vec<(String, String, f64)> {
    images
        .iter()
        .enumerate()
        .map(|(i, png)| {
            let r = request(
                server.addr,
                &classify_request("", &format!("{prefix}-{i:04}"), png),
            );
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            let v = r.json();
            (
                v["model_version"].as_str().unwrap().to_string(),
                v["predictions"][0]["label"].as_str().unwrap().to_string(),
                v["confidence"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// What the recipes must find in `answers`: class counts and confidences per version.
fn expected(answers: &[(String, String, f64)]) -> Value {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut versions: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (version, label, confidence) in answers {
        *counts.entry(format!("digits/{label}")).or_default() += 1;
        versions
            .entry(format!("digits/{version}"))
            .or_default()
            .push(*confidence);
    }
    json!({"class_counts": counts, "versions": versions})
}

fn run_recipes(env: &[(String, String)], args: &[&str], expected: &Value) -> Value {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(expected).unwrap()).unwrap();
    let mut cmd = Command::new(python());
    cmd.arg(repo().join("tests/check_fleet_recipes.py"))
        .arg(repo().join("README.md"))
        .args(&args[..3])
        .arg(file.path())
        .args(&args[3..])
        .current_dir(repo());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("running check_fleet_recipes.py");
    assert!(
        out.status.success(),
        "check_fleet_recipes.py failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("check_fleet_recipes.py prints JSON")
}

#[test]
fn the_readme_fleet_recipes_agree_with_the_answers_and_the_sidecars_chi_square() {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let url = format!("s3://{BUCKET}/fleet");
    let local = tempfile::tempdir().unwrap();
    let stable_dir = local.path().to_str().unwrap().to_string();
    let mut env: Vec<(String, String)> = s3.env();
    env.push(("SHIFTWATCH__LOG__UPLOAD_URL".into(), url.clone()));
    env.push(("SHIFTWATCH__LOG__ROTATE_SECONDS".into(), "1".into()));
    env.push((
        "SHIFTWATCH__MONITOR__EVALUATE_EVERY_SECONDS".into(),
        "0.5".into(),
    ));
    let pairs = |extra: &[(&str, &str)]| -> Vec<(String, String)> {
        env.iter()
            .cloned()
            .chain(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .collect()
    };
    let start = |env: &[(String, String)]| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Server::start(&env)
    };
    // Two replicas of one model, shipping to one bucket: the stable version (keeping its files
    // locally too, for the folder recipes) and an overconfident canary.
    let stable_env = pairs(&[
        ("SHIFTWATCH__LOG__DIR", stable_dir.as_str()),
        ("SHIFTWATCH__LOG__UPLOAD_KEEP_LOCAL", "true"),
    ]);
    let mut stable = start(&stable_env);
    let mut canary = start(&pairs(&[
        (
            "SHIFTWATCH__MODEL__PATH",
            "models/digits-overconfident.onnx",
        ),
        (
            "SHIFTWATCH__MONITOR__REFERENCE",
            "models/digits-overconfident.reference.json",
        ),
    ]));

    // The stable replica sees normal traffic, then a class-prior shift: its chi-square moves.
    let mut stable_images = images("normal", 150);
    stable_images.extend(images("class_prior", 150));
    let stable_answers = classify_all(&stable, "stable", &stable_images);
    let canary_answers = classify_all(&canary, "canary", &images("normal", 200));
    assert_ne!(
        stable_answers[0].0, canary_answers[0].0,
        "two model versions"
    );

    // The stable replica's monitor once it has evaluated all 300 predictions.
    let deadline = Instant::now() + Duration::from_secs(60);
    let snapshot = loop {
        let v = stable.get("/v1/monitor").json();
        let chi2 = v["tests"].as_array().and_then(|t| {
            t.iter()
                .find(|t| t["test"] == "class_chi2" && t["feature"] == "predicted_class")
        });
        if chi2.is_some_and(|t| t["n_window"] == 300 && t["statistic"].is_number()) {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "the monitor never evaluated 300: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let monitor = local.path().join("monitor-snapshot.json");
    std::fs::write(&monitor, snapshot.to_string()).unwrap();

    for server in [&mut stable, &mut canary] {
        server.terminate();
        assert!(server.wait(Duration::from_secs(60)).success());
    }

    let all: Vec<_> = stable_answers
        .iter()
        .chain(&canary_answers)
        .cloned()
        .collect();
    let monitor = monitor.to_str().unwrap();
    let fleet = run_recipes(
        &s3.env(),
        &[&url, monitor, "models/digits.reference.json"],
        &expected(&all),
    );
    println!("fleet recipes over {url}: {fleet}");
    let folder_url = format!("file://{stable_dir}");
    let folder = run_recipes(
        &[],
        &[
            &folder_url,
            monitor,
            "models/digits.reference.json",
            &stable_dir,
        ],
        &expected(&stable_answers),
    );
    println!("fleet recipes over the stable replica's folder: {folder}");
    assert_eq!(folder["folder_view"], true);
    assert_eq!(fleet["chi_square"]["window"], 300);
    // The shift is visible: the chi-square is large, its p-value small.
    assert!(
        fleet["chi_square"]["p_value"].as_f64().unwrap() < 0.01,
        "{fleet}"
    );
}
