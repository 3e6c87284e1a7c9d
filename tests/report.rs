//! `shiftwatch report` over a log the sidecar wrote: its JSON statistics recomputed by scipy and
//! numpy (`check_report.py`), and the HTML opened and screenshotted by headless Chromium.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Server, classify_request, labels_csv, python, read, repo, request};

/// Classifies every image of `data/traffic/<folder>` as `<folder>-<i>`; the ids and true labels.
fn send(server: &Server, folder: &str) -> Vec<(String, String)> {
    labels_csv(format!("data/traffic/{folder}/labels.csv"))
        .into_iter()
        .enumerate()
        .map(|(i, (file, label))| {
            let id = format!("{folder}-{i:04}");
            let png = read(format!("data/traffic/{folder}/{file}"));
            let r = request(server.addr, &classify_request("", &id, &png));
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            (id, label)
        })
        .collect()
}

fn report(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_shiftwatch"))
        .arg("report")
        .args(args)
        .current_dir(repo())
        .env("SHIFTWATCH__LOGGING__LEVEL", "warn")
        .output()
        .expect("running shiftwatch report")
}

/// Headless Chromium (Debian's `chromium`, installed by .ci/run) renders `html` to a PNG.
fn screenshot(html: &Path, png: &Path) {
    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("chromium is not installed: apt-get install chromium (.ci/run does)");
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1400,2750",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("running chromium");
    assert!(
        out.status.success() && png.exists(),
        "chromium failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_report_agrees_with_scipy_and_renders_every_plot_in_chromium() {
    let store = tempfile::tempdir().unwrap();
    let store_dir = store.path().to_str().unwrap().to_string();
    let mut server = Server::start(&[
        ("SHIFTWATCH__LOG__ROTATE_SECONDS", "1"),
        ("SHIFTWATCH__CANDIDATES__DIR", store_dir.as_str()),
    ]);
    let mut labeled = send(&server, "normal");
    // A shift after the normal traffic, from `split` on.
    let split = shiftwatch::time::rfc3339(shiftwatch::time::now_us());
    labeled.extend(send(&server, "rotation"));
    // Delayed labels for every other prediction.
    let feedback: Vec<(String, String)> = labeled.iter().step_by(2).cloned().collect();
    for chunk in feedback.chunks(200) {
        server.send_labels(chunk);
    }
    server.terminate();
    assert!(server.wait(Duration::from_secs(60)).success());

    let out_dir = tempfile::tempdir().unwrap();
    let html = out_dir.path().join("report.html");
    let summary = out_dir.path().join("summary.json");
    let log = server.log_dir.to_str().unwrap().to_string();
    let out = report(&[
        "--log",
        &log,
        "--reference",
        "models/digits.reference.json",
        "--out",
        html.to_str().unwrap(),
        "--json",
        summary.to_str().unwrap(),
        "--buckets",
        "4",
        "--candidates",
        &store_dir,
    ]);
    assert!(
        out.status.success(),
        "report failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{}", String::from_utf8_lossy(&out.stdout).trim());
    // Not a terminal here: plain progress lines, not a bar.
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading the log:"));

    let s: Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    assert_eq!(s["rows"].as_u64(), Some(labeled.len() as u64));
    assert_eq!(s["labeled_rows"].as_u64(), Some(feedback.len() as u64));
    // The store's best candidates, best first, inlined as images.
    let shown = s["candidates"].as_array().unwrap();
    assert!(!shown.is_empty() && shown.len() <= 12, "{shown:?}");
    let scores: Vec<f64> = shown.iter().map(|c| c["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    for block in std::iter::once(&s["period"]).chain(s["buckets"].as_array().unwrap()) {
        for key in ["tests", "estimates", "labeled", "window"] {
            assert!(block.get(key).is_some(), "no {key} in {block}");
        }
    }
    assert_eq!(s["buckets"].as_array().unwrap().len(), 4);

    let checked = Command::new(python())
        .arg(repo().join("tests/check_report.py"))
        .arg(&summary)
        .arg(&server.log_dir)
        .arg(repo().join("models/digits.reference.json"))
        .output()
        .expect("running check_report.py");
    assert!(
        checked.status.success(),
        "check_report.py failed:\n{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    println!(
        "scipy agrees: {}",
        String::from_utf8_lossy(&checked.stdout).trim()
    );

    // Self-contained: no script, nothing fetched; every plot is an inline SVG.
    let text = std::fs::read_to_string(&html).unwrap();
    assert!(!text.contains("<script"), "a script in the report");
    let without_namespace = text.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    assert!(
        !without_namespace.contains("http://") && !without_namespace.contains("https://"),
        "the report refers to the network"
    );
    for plot in [
        "plot-class-mix",
        "plot-confidence",
        "plot-entropy",
        "plot-tests",
        "plot-accuracy",
        "plot-reliability",
        "plot-embeddings",
        "plot-candidates",
    ] {
        let at = text
            .find(&format!("<figure id=\"{plot}\">"))
            .unwrap_or_else(|| panic!("no {plot}"));
        assert!(text[at..].starts_with(&format!("<figure id=\"{plot}\"><figcaption>")));
        assert!(
            text[at..].contains("<svg") || text[at..].contains("src=\"data:image/"),
            "{plot} has no SVG or inlined image"
        );
    }
    let png = out_dir.path().join("report.png");
    screenshot(&html, &png);
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    assert!(
        bytes.len() > 50_000,
        "a {} byte screenshot is blank",
        bytes.len()
    );
    // Kept for a look (`target/report-screenshot.png`).
    let keep = repo().join("target/report-screenshot.png");
    let _ = std::fs::copy(&png, &keep);

    // --from and --to cut the period: the rotation alone alerts on the class mix, the normal
    // traffic before it does not.
    let chi2_status = |from: Option<&str>, to: Option<&str>| -> (Value, Value) {
        let json_path = out_dir.path().join("part.json");
        let mut args = vec![
            "--log",
            log.as_str(),
            "--reference",
            "models/digits.reference.json",
            "--out",
            html.to_str().unwrap(),
            "--json",
            json_path.to_str().unwrap(),
        ];
        if let Some(f) = from {
            args.extend(["--from", f]);
        }
        if let Some(t) = to {
            args.extend(["--to", t]);
        }
        let out = report(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let part: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
        let status = part["period"]["tests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["test"] == "class_chi2")
            .map(|t| t["status"].clone())
            .unwrap();
        (part["rows"].clone(), status)
    };
    assert_eq!(chi2_status(None, Some(&split)), (json!(540), json!("ok")));
    assert_eq!(
        chi2_status(Some(&split), None),
        (json!(200), json!("alert"))
    );

    // A bad period and a missing log are clear errors, not panics.
    let out = report(&[
        "--log",
        &log,
        "--reference",
        "models/digits.reference.json",
        "--out",
        html.to_str().unwrap(),
        "--from",
        "yesterday",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not an RFC 3339 time"));
    let out = report(&[
        "--log",
        "/nonexistent/log",
        "--reference",
        "models/digits.reference.json",
        "--out",
        html.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such folder"));
}

#[test]
fn a_report_on_100000_predictions_agrees_with_scipy() {
    let log = tempfile::tempdir().unwrap();
    let made = Command::new(python())
        .arg(repo().join("scripts/make_report_log.py"))
        .arg(log.path())
        .arg("100000")
        .output()
        .expect("running make_report_log.py");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let out_dir = tempfile::tempdir().unwrap();
    let summary = out_dir.path().join("summary.json");
    let started = std::time::Instant::now();
    let out = report(&[
        "--log",
        log.path().to_str().unwrap(),
        "--reference",
        "models/digits.reference.json",
        "--out",
        out_dir.path().join("report.html").to_str().unwrap(),
        "--json",
        summary.to_str().unwrap(),
        "--buckets",
        "24",
    ]);
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "report failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    assert_eq!(s["rows"], 100_000);
    let buckets = s["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 24);
    // The class mix shifts from the 13th hour on.
    let chi2 = |b: &Value| {
        b["tests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["test"] == "class_chi2")
            .map(|t| t["status"].clone())
            .unwrap()
    };
    assert_eq!(chi2(&buckets[0]), json!("ok"));
    assert_eq!(chi2(&buckets[23]), json!("alert"));
    let checked = Command::new(python())
        .arg(repo().join("tests/check_report.py"))
        .arg(&summary)
        .arg(log.path())
        .arg(repo().join("models/digits.reference.json"))
        .output()
        .expect("running check_report.py");
    assert!(
        checked.status.success(),
        "check_report.py failed:\n{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    println!(
        "report on 100,000 predictions (debug build): {:.1} s; scipy agrees on the period and 24 buckets",
        took.as_secs_f64()
    );
}
