//! `[server]` and `[auth]`: the HTTP side's settings.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::inference::AutoCount;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub listen: String,
    pub max_body_bytes: u64,
    pub shutdown_grace_seconds: f64,
    pub retry_after_seconds: u64,
    pub default_top_k: usize,
    /// Open connections at most; one more is answered 503 and closed at once.
    pub max_connections: usize,
    /// A request's headers must arrive within this many seconds of the connection turning idle
    /// (a new connection, or the previous answer sent): it is also the keep-alive idle timeout.
    pub header_read_timeout_seconds: f64,
    /// A request's whole body must arrive within this many seconds of its headers (408 after).
    pub body_timeout_seconds: f64,
    /// Bytes of request bodies received and held at once, all requests together (503 beyond).
    pub max_body_bytes_in_flight: u64,
    /// Threads of the async runtime (HTTP, small decodes, what follows inference), or `"auto"`.
    pub io_threads: AutoCount,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 20 * 1024 * 1024,
            shutdown_grace_seconds: 30.0,
            retry_after_seconds: 1,
            default_top_k: 5,
            max_connections: 1024,
            header_read_timeout_seconds: 10.0,
            body_timeout_seconds: 10.0,
            max_body_bytes_in_flight: 256 * 1024 * 1024,
            io_threads: AutoCount::Auto,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
    pub retry_after_seconds: u64,
    pub default_top_k: usize,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub body_timeout: Duration,
    pub max_body_bytes_in_flight: usize,
    pub io_threads: AutoCount,
}

impl ServerConfig {
    /// The async runtime's threads on a machine of `cores` cores: the configured number, or
    /// with `"auto"` half the cores (at least one). The rest is left to the inference threads,
    /// the log writer and the application this sidecar serves: on 2 cores one async thread
    /// served more requests than two at 8 connections and as many at 64, with a lower tail
    /// latency (the README's sizing section).
    pub fn io_threads(&self, cores: usize) -> usize {
        match self.io_threads {
            AutoCount::Fixed(n) => n,
            AutoCount::Auto => (cores / 2).max(1),
        }
    }
}

/// A positive, finite number of seconds (`bad` otherwise; `fallback` then).
fn seconds(value: f64, key: &str, fallback: f64, bad: &mut dyn FnMut(&str, String)) -> Duration {
    if value.is_finite() && value > 0.0 && value <= 86_400.0 {
        Duration::from_secs_f64(value)
    } else {
        bad(
            key,
            "must be a number of seconds above 0 and at most 86400".into(),
        );
        Duration::from_secs_f64(fallback)
    }
}

impl RawServer {
    pub fn validate(self, bad: &mut dyn FnMut(&str, String)) -> ServerConfig {
        let listen = match self.listen.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                bad(
                    "server.listen",
                    format!(
                        "`{}` is not a socket address like 127.0.0.1:8080",
                        self.listen
                    ),
                );
                SocketAddr::from(([127, 0, 0, 1], 8080))
            }
        };
        if self.max_body_bytes == 0 {
            bad("server.max_body_bytes", "must be at least 1".into());
        }
        let grace = self.shutdown_grace_seconds;
        if !(grace.is_finite() && grace >= 0.0) {
            bad(
                "server.shutdown_grace_seconds",
                "must be a non-negative number".into(),
            );
        }
        if self.default_top_k == 0 {
            bad("server.default_top_k", "must be at least 1".into());
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            bad(
                "server.max_connections",
                "must be between 1 and 1000000".into(),
            );
        }
        if self.max_body_bytes_in_flight < self.max_body_bytes {
            bad(
                "server.max_body_bytes_in_flight",
                format!(
                    "must be at least server.max_body_bytes ({}), or no body that large could be read",
                    self.max_body_bytes
                ),
            );
        }
        let io_threads = self.io_threads.checked("server.io_threads", 1024, bad);
        let header_read_timeout = seconds(
            self.header_read_timeout_seconds,
            "server.header_read_timeout_seconds",
            10.0,
            bad,
        );
        let body_timeout = seconds(
            self.body_timeout_seconds,
            "server.body_timeout_seconds",
            10.0,
            bad,
        );
        ServerConfig {
            listen,
            max_body_bytes: usize::try_from(self.max_body_bytes).unwrap_or(usize::MAX),
            shutdown_grace: Duration::from_secs_f64(if grace.is_finite() {
                grace.max(0.0)
            } else {
                0.0
            }),
            retry_after_seconds: self.retry_after_seconds,
            default_top_k: self.default_top_k,
            max_connections: self.max_connections.clamp(1, 1_000_000),
            header_read_timeout,
            body_timeout,
            max_body_bytes_in_flight: usize::try_from(self.max_body_bytes_in_flight)
                .unwrap_or(usize::MAX)
                .min(tokio::sync::Semaphore::MAX_PERMITS),
            io_threads,
        }
    }
}

#[derive(Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    pub token: String,
    /// A file holding the token (its trailing newline dropped), read at start.
    pub token_file: String,
}

impl std::fmt::Debug for RawAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a secret: never in a debug print or a log line.
        f.debug_struct("RawAuth")
            .field("token", &if self.token.is_empty() { "" } else { "<set>" })
            .field("token_file", &self.token_file)
            .finish()
    }
}

/// The shortest token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

impl RawAuth {
    /// The bearer token for feedback, candidates and admin routes; `None` leaves them open.
    /// Messages never include the token.
    pub fn validate(self, bad: &mut dyn FnMut(&str, String)) -> Option<Token> {
        let (token, key) = match (self.token.is_empty(), self.token_file.is_empty()) {
            (_, true) => (self.token, "auth.token"),
            (true, false) => match std::fs::read_to_string(&self.token_file) {
                Ok(text) => (
                    text.strip_suffix('\n')
                        .map(|t| t.strip_suffix('\r').unwrap_or(t))
                        .unwrap_or(&text)
                        .to_string(),
                    "auth.token_file",
                ),
                Err(e) => {
                    bad(
                        "auth.token_file",
                        format!("cannot read `{}`: {e}", self.token_file),
                    );
                    return None;
                }
            },
            (false, false) => {
                bad(
                    "auth.token_file",
                    "give auth.token or auth.token_file, not both".into(),
                );
                return None;
            }
        };
        if token.is_empty() {
            if key == "auth.token_file" {
                bad(key, "the file is empty".into());
            }
            return None;
        }
        if token.chars().count() < MIN_TOKEN_LEN {
            bad(
                key,
                format!(
                    "the token must be at least {MIN_TOKEN_LEN} characters (or no token for no auth)"
                ),
            );
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bad(
                key,
                "the token must not contain whitespace or control characters".into(),
            );
        }
        Some(Token(token))
    }
}

/// The configured bearer token. Its debug form hides it; [`Token::matches`] compares in time
/// that does not depend on where (or whether) the given token differs.
#[derive(Clone, PartialEq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<hidden>)")
    }
}

impl Token {
    /// Whether `given` is the token. Both sides are hashed first, so the comparison runs over
    /// 32 bytes whatever the lengths, and the byte loop has no early exit.
    pub fn matches(&self, given: &str) -> bool {
        use sha2::{Digest, Sha256};
        let a = Sha256::digest(self.0.as_bytes());
        let b = Sha256::digest(given.as_bytes());
        let diff = a
            .iter()
            .zip(b.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y));
        std::hint::black_box(diff) == 0
    }
}

/// The token of an `Authorization` header in the `Bearer` scheme (the scheme's name in any
/// case, RFC 9110 §11.1), or `None`.
pub fn bearer_token(header: &str) -> Option<&str> {
    let header = header.trim();
    let (scheme, rest) = header.split_once([' ', '\t'])?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(raw: RawAuth) -> (Option<Token>, Vec<(String, String)>) {
        let mut problems = Vec::new();
        let token = raw.validate(&mut |k: &str, m: String| problems.push((k.to_string(), m)));
        (token, problems)
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_the_token_exact() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER   abc  "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearerabc"), None);
        let t = Token("0123456789abcdef".into());
        assert!(t.matches("0123456789abcdef"));
        assert!(!t.matches("0123456789abcdeF"));
        assert!(!t.matches("0123456789abcde"));
        assert!(!t.matches(""));
    }

    #[test]
    fn token_file_is_read_without_its_newline_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret-s3cret-s3cret\n").unwrap();
        let (token, problems) = validate(RawAuth {
            token: String::new(),
            token_file: path.display().to_string(),
        });
        assert!(problems.is_empty(), "{problems:?}");
        let token = token.unwrap();
        assert!(token.matches("s3cret-s3cret-s3cret"));
        assert!(!format!("{token:?}").contains("s3cret"));

        // Too short: the message names the key, not the value.
        std::fs::write(&path, "short-secret\r\n").unwrap();
        let (_, problems) = validate(RawAuth {
            token: String::new(),
            token_file: path.display().to_string(),
        });
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, "auth.token_file");
        assert!(!problems[0].1.contains("short-secret"), "{problems:?}");

        let (_, problems) = validate(RawAuth {
            token: "0123456789abcdef".into(),
            token_file: path.display().to_string(),
        });
        assert!(problems[0].1.contains("not both"), "{problems:?}");
        let (_, problems) = validate(RawAuth {
            token: String::new(),
            token_file: dir.path().join("missing").display().to_string(),
        });
        assert!(problems[0].1.contains("cannot read"), "{problems:?}");
        let raw = RawAuth {
            token: "visible-or-not-1234".into(),
            token_file: String::new(),
        };
        assert!(!format!("{raw:?}").contains("visible-or-not"));
    }
}
