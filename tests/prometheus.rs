//! Prometheus: `promtool` lints the sidecar's real `/metrics` and checks and unit-tests the rules
//! in config/; the dashboard's queries are checked for shape; and a real Prometheus (Debian's
//! `prometheus` package, on loopback) scrapes a real sidecar through normal then shifted traffic,
//! after which every PromQL expression of dashboards/shiftwatch.json must return data and a shift
//! alert must be pending or firing.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Server, labels_csv, parse_response, read, repo};

/// The model every test server serves (support.rs's base config), standing in for `$model`.
const MODEL: &str = "digits";

/// Environment overrides for the end-to-end sidecar. The monitor's settings (window size, how
/// often it evaluates, SHIFTWATCH__MONITOR__...) go here when the traffic below needs them.
const E2E_SIDECAR_ENV: &[(&str, &str)] = &[];

/// What Grafana's built-in variables become when the tests evaluate the dashboard's queries.
const GRAFANA_VARIABLES: &[(&str, &str)] = &[
    ("${__rate_interval}", "1m"),
    ("$__rate_interval", "1m"),
    ("${__interval}", "15s"),
    ("$__interval", "15s"),
    ("${__range}", "5m"),
    ("$__range", "5m"),
    ("${model}", MODEL),
    ("$model", MODEL),
];

/// The alerts of config/alerts.yml that report shift (each test family, and the fleet's class mix).
const SHIFT_ALERTS: &[&str] = &[
    "ShiftwatchPredictionShift",
    "ShiftwatchBBSDShift",
    "ShiftwatchConfidenceShift",
    "ShiftwatchEntropyShift",
    "ShiftwatchInputShift",
    "ShiftwatchEmbeddingShift",
    "ShiftwatchFleetClassMixShift",
];

/// A program from Debian's `prometheus` package.
fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("{name} is not on PATH: install Debian's prometheus package (apt-get install -y prometheus)")
    })
}

/// Runs promtool with `args` from the repository root; returns (success, stdout + stderr).
fn promtool(args: &[&str], stdin: Option<&[u8]>) -> (bool, String) {
    let mut child = Command::new(tool("promtool"))
        .args(args)
        .current_dir(repo())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("promtool's stdin");
        pipe.write_all(input).expect("writing to promtool");
    }
    let out = child.wait_with_output().expect("waiting for promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// One raw HTTP/1.1 request; None when the connection fails (the peer is not up yet).
fn http(addr: SocketAddr, raw: &[u8]) -> Option<crate::support::Response> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    stream.write_all(raw).ok()?;
    let mut data = Vec::new();
    stream.read_to_end(&mut data).ok()?;
    if data.is_empty() {
        return None;
    }
    Some(parse_response(&data))
}

fn http_get(addr: SocketAddr, path: &str) -> Option<crate::support::Response> {
    let raw = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    http(addr, raw.as_bytes())
}

/// Percent-encodes a query-string value.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// POSTs an image to classify with a request id; returns the status code.
fn classify(addr: SocketAddr, model: &str, id: &str, content_type: &str, body: &[u8]) -> u16 {
    let mut raw = format!(
        "POST /v1/models/{model}/classify HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
         Content-Type: {content_type}\r\nx-request-id: {id}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    http(addr, &raw).map_or(0, |r| r.status)
}

/// The images of one folder of data/traffic, with their labels ("" when unknown).
fn traffic(set: &str) -> Vec<(String, Vec<u8>, String)> {
    labels_csv(format!("data/traffic/{set}/labels.csv"))
        .into_iter()
        .map(|(file, label)| {
            let bytes = read(format!("data/traffic/{set}/{file}"));
            (file, bytes, label)
        })
        .collect()
}

/// Sends every image of `set` to classify (ids `<set>-<file>`), asserting 200s; returns the
/// (request id, label) pairs of the labeled ones.
fn replay(server: &Server, set: &str) -> Vec<(String, String)> {
    let mut labeled = Vec::new();
    for (file, bytes, label) in traffic(set) {
        let id = format!("{set}-{file}");
        let status = classify(server.addr, MODEL, &id, "image/png", &bytes);
        assert_eq!(status, 200, "classify {id}: stderr:\n{}", server.stderr());
        if !label.is_empty() {
            labeled.push((id, label));
        }
    }
    labeled
}

/// A few requests that fail on the client's side: an undecodable image, an unknown model.
fn send_client_errors(server: &Server) {
    let png = read("data/traffic/normal/normal-0000.png");
    assert_eq!(
        classify(server.addr, MODEL, "bad-1", "image/png", b"not a png"),
        400
    );
    assert_eq!(
        classify(
            server.addr,
            MODEL,
            "bad-2",
            "image/png",
            &png[..png.len() / 2]
        ),
        400
    );
    assert_eq!(
        classify(server.addr, "no-such-model", "bad-3", "image/png", &png),
        404
    );
}

// ---- the dashboard ---------------------------------------------------------------------------

fn dashboard() -> Value {
    serde_json::from_slice(&read("dashboards/shiftwatch.json")).expect("the dashboard is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Every PromQL expression in the dashboard (any `expr` at any depth), with its panel's title.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(v: &Value, title: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(map) => {
                let title = map
                    .get("title")
                    .and_then(Value::as_str)
                    .filter(|_| map.contains_key("type"))
                    .unwrap_or(title);
                for (k, child) in map {
                    match (k.as_str(), child) {
                        ("expr", Value::String(expr)) => {
                            out.push((title.to_string(), expr.clone()));
                        }
                        _ => walk(child, title, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, title, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, "", &mut out);
    out
}

/// A dashboard query as Prometheus evaluates it: Grafana's variables substituted.
fn for_prometheus(expr: &str) -> String {
    let mut out = expr.to_string();
    for (var, value) in GRAFANA_VARIABLES {
        out = out.replace(var, value);
    }
    assert!(!out.contains('$'), "unknown variable left in {out}");
    out
}

/// The metric selectors of an expression: each `shiftwatch...` name with its `{...}` (if any).
fn selectors(expr: &str) -> Vec<(String, Option<String>)> {
    let b = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut out = Vec::new();
    let mut i = 0;
    let mut in_string = false;
    while i < b.len() {
        let c = b[i];
        if c == b'"' {
            in_string = !in_string;
            i += 1;
            continue;
        }
        if in_string || !ident(c) || (i > 0 && ident(b[i - 1])) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && ident(b[i]) {
            i += 1;
        }
        let name = &expr[start..i];
        if !name.starts_with("shiftwatch") {
            continue;
        }
        let rest = expr[i..].trim_start();
        let matchers = rest
            .strip_prefix('{')
            .and_then(|r| r.split_once('}'))
            .map(|(m, _)| m.to_string());
        out.push((name.to_string(), matchers));
    }
    out
}

#[test]
fn dashboard_has_current_schema_variables_and_model_filtered_queries() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 39),
        "schemaVersion {}",
        d["schemaVersion"]
    );
    let vars = d["templating"]["list"]
        .as_array()
        .expect("template variables");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
    };
    let ds = var("datasource");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let model = var("model");
    assert_eq!(model["type"], "query");
    assert_eq!(model["datasource"]["uid"], "${datasource}");
    assert_eq!(
        model["definition"],
        "label_values(shiftwatch_build_info, model)"
    );
    assert_eq!(
        model["query"]["query"],
        "label_values(shiftwatch_build_info, model)"
    );

    let all = panels(&d);
    let mut ids = BTreeSet::new();
    for p in &all {
        assert!(ids.insert(p["id"].as_u64().expect("panel id")), "{p}");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{} has no query", p["title"]);
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
    }
    // Rows the issue asks for.
    let rows: Vec<&str> = all
        .iter()
        .filter(|p| p["type"] == "row")
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        rows,
        [
            "Traffic",
            "Predictions",
            "Shift",
            "Performance",
            "Prediction log and relabel candidates"
        ]
    );

    // Every series selected is filtered by the model variable.
    let queries = dashboard_queries(&d);
    assert!(queries.len() > 30, "{} queries", queries.len());
    for (title, expr) in &queries {
        let sel = selectors(expr);
        assert!(!sel.is_empty(), "{title}: no shiftwatch series in {expr}");
        for (name, matchers) in sel {
            assert!(
                matchers
                    .as_deref()
                    .is_some_and(|m| m.contains("model=~\"$model\"")),
                "{title}: {name} is not filtered by model=~\"$model\" in {expr}"
            );
        }
    }
    let exprs: Vec<&str> = queries.iter().map(|(_, e)| e.as_str()).collect();
    for metric in [
        "shiftwatch_requests_total",
        "shiftwatch_request_duration_seconds_bucket",
        "shiftwatch_inference_duration_seconds_bucket",
        "shiftwatch_inference_batch_size_bucket",
        "shiftwatch_predictions_total",
        "shiftwatch_reference_class_ratio",
        "shiftwatch_prediction_confidence_bucket",
        "shiftwatch_prediction_entropy_ratio_bucket",
        "shiftwatch_drift_statistic",
        "shiftwatch_drift_p_value",
        "shiftwatch_drift_status",
        "shiftwatch_window_predictions",
        "shiftwatch_window_capacity",
        "shiftwatch_estimated_accuracy",
        "shiftwatch_overconfidence_gap",
        "shiftwatch_overconfidence_status",
        "shiftwatch_estimated_class_ratio",
        "shiftwatch_labeled_accuracy",
        "shiftwatch_calibration_error",
        "shiftwatch_feedback_total",
        "shiftwatch_log_rows_written_total",
        "shiftwatch_log_rows_dropped_total",
        "shiftwatch_log_queue_depth",
        "shiftwatch_log_files_written_total",
        "shiftwatch_candidates_stored",
        "shiftwatch_candidates_exported_total",
        "shiftwatch:class_psi:rate5m",
    ] {
        assert!(
            exprs
                .iter()
                .any(|e| selectors(e).iter().any(|(n, _)| n == metric)),
            "no panel shows {metric}"
        );
    }

    // Confidence and entropy are heatmaps of their buckets.
    for metric in [
        "shiftwatch_prediction_confidence_bucket",
        "shiftwatch_prediction_entropy_ratio_bucket",
    ] {
        let heatmap = all
            .iter()
            .find(|p| {
                p["type"] == "heatmap"
                    && p["targets"][0]["expr"]
                        .as_str()
                        .is_some_and(|e| e.contains(metric))
            })
            .unwrap_or_else(|| panic!("no heatmap of {metric}"));
        let t = &heatmap["targets"][0];
        assert_eq!(
            t["expr"],
            format!("sum by (le) (rate({metric}{{model=~\"$model\"}}[$__rate_interval]))")
        );
        assert_eq!(t["format"], "heatmap");
        assert_eq!(heatmap["options"]["calculate"], false);
    }

    // The class mix is drawn against the reference ratios, in one panel.
    let mix = all
        .iter()
        .find(|p| p["title"] == "Class mix against the reference")
        .expect("class mix panel");
    let mix_exprs: Vec<&str> = mix["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["expr"].as_str())
        .collect();
    assert!(
        mix_exprs
            .iter()
            .any(|e| e.contains("shiftwatch_predictions_total"))
    );
    assert!(
        mix_exprs
            .iter()
            .any(|e| e.contains("shiftwatch_reference_class_ratio"))
    );

    // Substitution leaves valid-looking PromQL.
    for (_, expr) in &queries {
        let q = for_prometheus(expr);
        assert!(q.contains(&format!("model=~\"{MODEL}\"")), "{q}");
    }
}

// ---- rules -----------------------------------------------------------------------------------

/// Parses a Prometheus duration such as `10m`, `1h30m`, `5s`.
fn duration(s: &str) -> Duration {
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().unwrap_or_else(|_| panic!("bad duration {s}"));
        num.clear();
        total += n * match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => panic!("unit {c} in {s}"),
        };
    }
    assert!(num.is_empty(), "duration {s} has no unit");
    Duration::from_secs(total)
}

/// The alerting rules of alerts.yml as (name, the lines of its block).
fn alert_blocks(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut current: Option<usize> = None;
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(name) = t.strip_prefix("- alert:") {
            out.push((name.trim().to_string(), Vec::new()));
            current = Some(out.len() - 1);
        } else if t.starts_with("- record:") || t.starts_with("- name:") {
            current = None;
        } else if let Some(i) = current {
            out[i].1.push(t.to_string());
        }
    }
    out
}

/// alerts.yml with every `for:` shortened to `for_`, for a test that cannot wait minutes.
fn with_short_for(text: &str, for_: &str) -> String {
    let mut out = String::new();
    let mut n = 0;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("for:") {
            out.push_str(&line[..line.len() - t.len()]);
            out.push_str(&format!("for: {for_}"));
            n += 1;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    assert!(n > 0, "no for: in the rules");
    out
}

#[test]
fn promtool_checks_and_unit_tests_the_rules() {
    let (ok, out) = promtool(&["check", "rules", "config/alerts.yml"], None);
    assert!(ok, "promtool check rules:\n{out}");
    let (ok, out) = promtool(&["check", "config", "config/prometheus.yml"], None);
    assert!(ok, "promtool check config:\n{out}");
    let (ok, out) = promtool(&["test", "rules", "config/alerts.test.yml"], None);
    assert!(ok, "promtool test rules:\n{out}");

    // Every alert: a severity, a summary, a description, a production `for:`.
    let rules = String::from_utf8(read("config/alerts.yml")).unwrap();
    assert!(
        rules.contains("- name: shiftwatch\n"),
        "no shiftwatch group"
    );
    let alerts = alert_blocks(&rules);
    assert!(alerts.len() >= 10, "{} alerts", alerts.len());
    for family in SHIFT_ALERTS {
        assert!(alerts.iter().any(|(n, _)| n == family), "no alert {family}");
    }
    for (name, lines) in &alerts {
        let has = |prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
        assert!(
            has("severity: page") || has("severity: ticket"),
            "{name}: severity page or ticket"
        );
        assert!(has("summary:"), "{name}: no summary");
        assert!(has("description:"), "{name}: no description");
        let for_ = lines
            .iter()
            .find_map(|l| l.strip_prefix("for:"))
            .unwrap_or_else(|| panic!("{name}: no for:"));
        assert!(
            duration(for_.trim()) >= Duration::from_secs(60),
            "{name}: for: {for_} is not a production duration"
        );
    }

    // Every alert is unit-tested both firing and not firing.
    let tests = String::from_utf8(read("config/alerts.test.yml")).unwrap();
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    let mut seen: BTreeMap<&str, (bool, bool)> = BTreeMap::new();
    for (i, line) in lines.iter().enumerate() {
        if let Some(name) = line.strip_prefix("alertname:") {
            let next = lines.get(i + 1).copied().unwrap_or("");
            let entry = seen.entry(name.trim()).or_default();
            match next {
                "exp_alerts: []" => entry.1 = true,
                "exp_alerts:" => entry.0 = true,
                other => panic!("alertname {name} followed by {other}"),
            }
        }
    }
    for (name, _) in &alerts {
        let (fires, quiet) = seen.get(name.as_str()).copied().unwrap_or_default();
        assert!(fires, "{name}: no unit test where it fires");
        assert!(quiet, "{name}: no unit test where it does not fire");
    }
}

// ---- /metrics --------------------------------------------------------------------------------

#[test]
fn promtool_accepts_the_real_metrics_output() {
    let server = Server::start(&[]);
    let labeled: Vec<(String, String)> = replay_some(&server, "normal", 40);
    server.send_labels(&labeled[..20]);
    server.send_labels(&[("never-seen".to_string(), "3".to_string())]);
    send_client_errors(&server);
    let r = server.get("/metrics");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        r.headers
    );
    let (ok, out) = promtool(&["check", "metrics"], Some(&r.body));
    assert!(
        ok && out.trim().is_empty(),
        "promtool check metrics (ok={ok}):\n{out}\n--- /metrics:\n{}",
        String::from_utf8_lossy(&r.body)
    );
}

/// Like `replay`, for the first `n` images of `set`.
fn replay_some(server: &Server, set: &str, n: usize) -> Vec<(String, String)> {
    let mut labeled = Vec::new();
    for (file, bytes, label) in traffic(set).into_iter().take(n) {
        let id = format!("{set}-{file}");
        assert_eq!(classify(server.addr, MODEL, &id, "image/png", &bytes), 200);
        if !label.is_empty() {
            labeled.push((id, label));
        }
    }
    labeled
}

// ---- end to end with a real Prometheus --------------------------------------------------------

/// A Prometheus server on loopback with its own storage; killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Prometheus {
    /// Starts `prometheus` with `config` on a free loopback port; waits until /-/ready.
    fn start(dir: &Path, config: &Path) -> Prometheus {
        let mut last_log = String::new();
        // A port found free may be taken before Prometheus binds it: then try another.
        for attempt in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let log = dir.join(format!("prometheus-{attempt}.log"));
            let storage = dir.join(format!("data-{attempt}"));
            let sink = File::create(&log).expect("creating the Prometheus log");
            let child = Command::new(tool("prometheus"))
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", storage.display()))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=info")
                .current_dir(dir)
                .stdin(Stdio::null())
                .stdout(Stdio::from(sink.try_clone().unwrap()))
                .stderr(Stdio::from(sink))
                .spawn()
                .expect("spawning prometheus");
            let mut prom = Prometheus { child, addr, log };
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if prom.child.try_wait().expect("try_wait").is_some() {
                    last_log = prom.log();
                    break;
                }
                if http_get(addr, "/-/ready").is_some_and(|r| r.status == 200) {
                    return prom;
                }
                assert!(
                    Instant::now() < deadline,
                    "prometheus not ready in 30 s:\n{}",
                    prom.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            if !last_log.contains("address already in use") {
                break;
            }
        }
        panic!("prometheus exited at start:\n{last_log}");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET an API path; the parsed `data` of a successful answer, else Err(the answer).
    fn api(&self, path: &str) -> Result<Value, String> {
        let r = http_get(self.addr, path).ok_or_else(|| "no answer".to_string())?;
        let v: Value = serde_json::from_slice(&r.body)
            .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&r.body)))?;
        if r.status == 200 && v["status"] == "success" {
            Ok(v["data"].clone())
        } else {
            Err(format!("{} {v}", r.status))
        }
    }

    /// An instant query's result vector.
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(expr)))?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The single value of `expr`, when it has exactly one.
    fn value(&self, expr: &str) -> Option<f64> {
        match self.query(expr).ok()?.as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }

    /// Polls until `expr` has one value >= `at_least`, or panics at `deadline`.
    fn wait_for_value(&self, expr: &str, at_least: f64, deadline: Instant) {
        loop {
            let v = self.value(expr);
            if v.is_some_and(|v| v >= at_least) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{expr} is {v:?}, not >= {at_least}, at the deadline; Prometheus log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_the_sidecar_and_sees_the_shift() {
    let started = Instant::now();
    // Everything below polls against this one deadline; the whole test stays within ~90 s.
    let deadline = started + Duration::from_secs(85);
    let server = Server::start(E2E_SIDECAR_ENV);

    let dir = tempfile::tempdir().expect("temp dir");
    let rules = dir.path().join("alerts.yml");
    let text = String::from_utf8(read("config/alerts.yml")).unwrap();
    std::fs::write(&rules, with_short_for(&text, "5s")).unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: shiftwatch\n    static_configs:\n      \
             - targets: [\"{target}\"]\n",
            rules = rules.display(),
            target = server.addr,
        ),
    )
    .unwrap();
    let prom = Prometheus::start(dir.path(), &config);

    prom.wait_for_value("up{job=\"shiftwatch\"}", 1.0, deadline);

    // Normal traffic, its delayed labels, a few client errors; seen by Prometheus before the shift.
    let normal = replay(&server, "normal");
    server.send_labels(&normal);
    send_client_errors(&server);
    let n_normal = traffic("normal").len() as f64;
    let total = format!("sum(shiftwatch_predictions_total{{model=\"{MODEL}\"}})");
    prom.wait_for_value(&total, n_normal, deadline);

    // Shifted traffic: out-of-distribution images, then rotated digits.
    let ood = replay(&server, "ood");
    let rotation = replay(&server, "rotation");
    server.send_labels(&ood);
    server.send_labels(&rotation);
    let n_all = n_normal + (traffic("ood").len() + traffic("rotation").len()) as f64;
    prom.wait_for_value(&total, n_all, deadline);
    println!(
        "traffic replayed and scraped after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The model variable's query finds the model.
    prom.wait_for_value(
        &format!("count(shiftwatch_build_info{{model=\"{MODEL}\"}})"),
        1.0,
        deadline,
    );

    // Poll: every dashboard query returns data, every rule evaluates without error, and a shift
    // alert is pending or firing.
    let queries: Vec<(String, String)> = dashboard_queries(&dashboard())
        .into_iter()
        .map(|(title, expr)| (title, for_prometheus(&expr)))
        .collect();
    let mut waiting: BTreeMap<String, String> = queries
        .iter()
        .map(|(title, q)| (q.clone(), title.clone()))
        .collect();
    let mut errors: Vec<String> = Vec::new();
    let mut rule_errors: Vec<String> = Vec::new();
    let mut rules_unevaluated = true;
    let mut shift_alert: Option<String> = None;
    let mut alerts_seen = BTreeSet::new();
    loop {
        waiting.retain(|q, title| match prom.query(q) {
            Ok(result) => result.is_empty(),
            Err(e) => {
                errors.push(format!("{title}: {q}: {e}"));
                false
            }
        });

        if let Ok(data) = prom.api("/api/v1/rules") {
            let rules: Vec<&Value> = data["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().into_iter().flatten())
                .collect();
            rules_unevaluated = rules.is_empty() || rules.iter().any(|r| r["health"] == "unknown");
            rule_errors = rules
                .iter()
                .filter(|r| r["health"] == "err")
                .map(|r| format!("{}: {}", r["name"], r["lastError"]))
                .collect();
            for r in rules.iter().filter(|r| r["type"] == "alerting") {
                let name = r["name"].as_str().unwrap_or_default();
                let severity = r["labels"]["severity"].as_str().unwrap_or_default();
                assert!(
                    ["page", "ticket"].contains(&severity),
                    "{name}: severity {severity:?}"
                );
                for a in ["summary", "description"] {
                    assert!(
                        r["annotations"][a].as_str().is_some_and(|s| !s.is_empty()),
                        "{name}: no {a}"
                    );
                }
            }
        }

        if let Ok(data) = prom.api("/api/v1/alerts") {
            for a in data["alerts"].as_array().into_iter().flatten() {
                let name = a["labels"]["alertname"].as_str().unwrap_or_default();
                let state = a["state"].as_str().unwrap_or_default();
                alerts_seen.insert(format!("{name} ({state}) {}", a["labels"]));
                if SHIFT_ALERTS.contains(&name) && ["pending", "firing"].contains(&state) {
                    shift_alert.get_or_insert_with(|| format!("{name} {state}: {}", a["labels"]));
                }
            }
        }

        let done =
            waiting.is_empty() && !rules_unevaluated && shift_alert.is_some() && errors.is_empty();
        if done || !errors.is_empty() || !rule_errors.is_empty() || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!(
        "{} of {} dashboard queries returned data after {:.1} s; shift alert: {shift_alert:?}",
        queries.len() - waiting.len(),
        queries.len(),
        started.elapsed().as_secs_f64()
    );

    let mut failures = Vec::new();
    if !errors.is_empty() {
        failures.push(format!(
            "dashboard queries Prometheus rejected:\n  {}",
            errors.join("\n  ")
        ));
    }
    if !waiting.is_empty() {
        failures.push(format!(
            "dashboard queries with no data:\n  {}",
            waiting
                .iter()
                .map(|(q, title)| format!("[{title}] {q}"))
                .collect::<Vec<_>>()
                .join("\n  ")
        ));
    }
    if !rule_errors.is_empty() {
        failures.push(format!("rules failing:\n  {}", rule_errors.join("\n  ")));
    }
    if rules_unevaluated {
        failures.push("the rules were never all evaluated".to_string());
    }
    if shift_alert.is_none() {
        failures.push(format!(
            "no shift alert ({}) pending or firing; alerts seen:\n  {}",
            SHIFT_ALERTS.join(", "),
            alerts_seen.into_iter().collect::<Vec<_>>().join("\n  ")
        ));
    }
    assert!(
        failures.is_empty(),
        "{}\n--- /v1/monitor: {}",
        failures.join("\n"),
        String::from_utf8_lossy(&server.get("/v1/monitor").body)
    );
}

#[test]
fn the_short_for_copy_keeps_everything_else() {
    let text = String::from_utf8(read("config/alerts.yml")).unwrap();
    let short = with_short_for(&text, "5s");
    assert_eq!(text.lines().count(), short.lines().count());
    for (a, b) in text.lines().zip(short.lines()) {
        if a.trim_start().starts_with("for:") {
            assert_eq!(b.trim_start(), "for: 5s");
            assert_eq!(
                a.len() - a.trim_start().len(),
                b.len() - b.trim_start().len()
            );
        } else {
            assert_eq!(a, b);
        }
    }
}
