//! Fixture helpers: start the real `shiftwatch serve` on an ephemeral port, talk raw HTTP/1.1.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The project's Python (`make venv`), for the cross-checks.
pub fn python() -> std::path::PathBuf {
    let p = repo().join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run `make venv` (make test does) to install the cross-check packages",
        p.display()
    );
    p
}

pub fn read(path: impl AsRef<Path>) -> Vec<u8> {
    let path = repo().join(path);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A running sidecar, killed on drop.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// The server's log folder (a temporary one unless the test set SHIFTWATCH__LOG__DIR).
    pub log_dir: PathBuf,
    stderr: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

/// The base config every test server starts from; tests adjust it through environment
/// variables, the same overrides users have.
const BASE_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace_seconds = 20.0
[model]
name = "digits"
path = "models/digits.onnx"
[logging]
level = "info,ort=warn"
"#;

impl Server {
    /// Starts the digits model with `env` overrides (`SHIFTWATCH__...`) and waits until ready.
    pub fn start(env: &[(&str, &str)]) -> Server {
        Self::start_with_config(BASE_CONFIG, env)
    }

    pub fn start_with_config(config: &str, env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("shiftwatch.toml");
        std::fs::write(&config_path, config).expect("writing config");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shiftwatch"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .current_dir(repo())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Every folder a server writes is its own, so tests can run side by side.
        let mut log_dir = dir.path().join("log");
        cmd.env("SHIFTWATCH__LOG__DIR", &log_dir)
            .env(
                "SHIFTWATCH__MONITOR__STATE_FILE",
                dir.path().join("monitor-window.json"),
            )
            .env("SHIFTWATCH__CANDIDATES__DIR", dir.path().join("candidates"))
            .env(
                "SHIFTWATCH__CANDIDATES__EXPORT_DIR",
                dir.path().join("exports"),
            );
        for (k, v) in env {
            cmd.env(k, v);
            if *k == "SHIFTWATCH__LOG__DIR" {
                log_dir = PathBuf::from(v);
            }
        }
        let mut child = cmd.spawn().expect("spawning shiftwatch");

        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let sink = Arc::clone(&stderr);
            let pipe = child.stderr.take().expect("stderr");
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut s = sink.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                }
            });
        }
        let (tx, rx) = mpsc::channel();
        {
            let pipe = child.stdout.take().expect("stdout");
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut addr = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("shiftwatch listening on http://") {
                        addr = Some(rest.trim().parse().expect("listen address"));
                    }
                    if line.trim() == "shiftwatch ready" {
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "shiftwatch did not become ready; stderr:\n{}",
                        stderr.lock().unwrap()
                    );
                }
            }
        }
        Server {
            child,
            addr: addr.expect("the listen line comes before ready"),
            log_dir,
            stderr,
            _dir: dir,
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A `/proc/<pid>/status` field in bytes (`VmRSS` now, `VmHWM` the peak so far).
    pub fn memory(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("reading /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }

    pub fn post(&self, path: &str, content_type: Option<&str>, body: &[u8]) -> Response {
        let mut head = format!("POST {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
        if let Some(ct) = content_type {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut raw = head.into_bytes();
        raw.extend_from_slice(body);
        request(self.addr, &raw)
    }

    pub fn get(&self, path: &str) -> Response {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        request(self.addr, raw.as_bytes())
    }

    /// The value of the first `/metrics` line starting with `series` (name and leading labels).
    pub fn metric(&self, series: &str) -> f64 {
        let text = String::from_utf8(self.get("/metrics").body).unwrap();
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
    }

    /// Posts delayed labels (`(request id, label)` pairs) to /v1/feedback and expects 202.
    pub fn send_labels(&self, labeled: &[(String, String)]) -> Response {
        let items: Vec<serde_json::Value> = labeled
            .iter()
            .map(|(id, label)| serde_json::json!({"request_id": id, "label": label}))
            .collect();
        let r = self.post(
            "/v1/feedback",
            Some("application/json"),
            &serde_json::to_vec(&items).unwrap(),
        );
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        r
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "shiftwatch did not exit in {limit:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Asserts an error answer: this status, this code, and a message.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        let v = self.json();
        assert_eq!(v["code"], code, "{v}");
        assert!(
            v["error"].as_str().is_some_and(|m| !m.is_empty()),
            "no message: {v}"
        );
    }
}

/// A raw `classify` request for a PNG with a request id (`query` such as `?top_k=10` or "").
pub fn classify_request(query: &str, request_id: &str, png: &[u8]) -> Vec<u8> {
    let mut raw = format!(
        "POST /v1/models/digits/classify{query} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
         Content-Type: image/png\r\nx-request-id: {request_id}\r\nContent-Length: {}\r\n\r\n",
        png.len()
    )
    .into_bytes();
    raw.extend_from_slice(png);
    raw
}

/// Sends raw bytes, reads the whole response (the request must say `Connection: close`).
pub fn request(addr: SocketAddr, raw: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connecting");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream.write_all(raw).expect("sending");
    read_response(&mut stream)
}

pub fn read_response(stream: &mut TcpStream) -> Response {
    let mut data = Vec::new();
    stream.read_to_end(&mut data).expect("reading response");
    parse_response(&data)
}

pub fn parse_response(data: &[u8]) -> Response {
    let split = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(data)));
    let head = std::str::from_utf8(&data[..split]).expect("header text");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = data[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(
            std::str::from_utf8(&data[..end])
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 2 + size + 2..];
    }
}

/// Reads a `file,label` CSV.
pub fn labels_csv(path: impl AsRef<Path>) -> Vec<(String, String)> {
    let text = String::from_utf8(read(path)).unwrap();
    text.lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (f, label) = l.split_once(',').unwrap();
            (f.to_string(), label.to_string())
        })
        .collect()
}

/// A real S3 API on loopback: moto's server (`moto[server]` from the project's Python, pinned
/// in `training/requirements.txt`) on a free port, killed on drop. Unsigned requests are
/// accepted; the sidecar signs with the credentials `testing`.
pub struct S3Server {
    child: Child,
    pub port: u16,
    output: Arc<Mutex<String>>,
}

impl S3Server {
    pub fn start() -> S3Server {
        let moto = repo().join(".venv/bin/moto_server");
        assert!(
            moto.exists(),
            "{} is missing: run `make venv` (make test does) to install moto[server]",
            moto.display()
        );
        // A port the OS says is free; another process may take it before moto binds it, so a
        // moto that exits at once is started again on another.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port();
            let mut child = Command::new(&moto)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("starting moto_server");
            let output = Arc::new(Mutex::new(String::new()));
            {
                let sink = Arc::clone(&output);
                let pipe = child.stderr.take().expect("stderr");
                std::thread::spawn(move || {
                    for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                        let mut s = sink.lock().unwrap();
                        // Keep the tail only: moto logs every request.
                        if s.len() > 64 * 1024 {
                            s.drain(..32 * 1024);
                        }
                        s.push_str(&line);
                        s.push('\n');
                    }
                });
            }
            let mut server = S3Server {
                child,
                port,
                output,
            };
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if server.child.try_wait().expect("try_wait").is_some() {
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return server;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = server.child.kill();
            let _ = server.child.wait();
            eprintln!(
                "moto_server did not start on port {port}:\n{}",
                server.output()
            );
        }
        panic!("moto_server did not start");
    }

    /// `host:port`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Creates a bucket (path-style `PUT /<bucket>`).
    pub fn create_bucket(&self, bucket: &str) {
        let raw = format!(
            "PUT /{bucket} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            self.endpoint()
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let r = request(addr, raw.as_bytes());
        assert_eq!(
            r.status,
            200,
            "creating bucket {bucket}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }

    /// The environment a sidecar needs to ship its log here (`[log] upload_url` aside).
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "testing".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ENDPOINT_URL", format!("http://{}", self.endpoint())),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Stops the server where it is (SIGSTOP): connections are accepted by the kernel and never
    /// answered, as with a store that hangs. Its objects stay.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill {sig} failed");
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
