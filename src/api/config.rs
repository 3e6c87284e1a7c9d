//! `[server]` and `[auth]`: the HTTP side's settings.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub listen: String,
    pub max_body_bytes: u64,
    pub shutdown_grace_seconds: f64,
    pub retry_after_seconds: u64,
    pub default_top_k: usize,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 20 * 1024 * 1024,
            shutdown_grace_seconds: 30.0,
            retry_after_seconds: 1,
            default_top_k: 5,
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
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    pub token: String,
}

impl RawAuth {
    /// The bearer token for feedback, candidates and admin routes; `None` leaves them open.
    pub fn validate(self, bad: &mut dyn FnMut(&str, String)) -> Option<String> {
        if !self.token.is_empty() && self.token.len() < 16 {
            bad(
                "auth.token",
                "must be at least 16 characters (or empty for no auth)".into(),
            );
        }
        (!self.token.is_empty()).then_some(self.token)
    }
}
