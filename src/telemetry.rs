//! Structured logs with `tracing`: text for people, JSON for log pipelines, to stderr.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use serde::{Deserialize, Serialize};

/// `[logging]`: the sidecar's own log lines.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLogging {
    pub format: String,
    pub level: String,
}

impl Default for RawLogging {
    fn default() -> Self {
        RawLogging {
            format: "text".into(),
            level: "info,ort=warn".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LoggingConfig {
    pub format: LogFormat,
    pub level: String,
}

impl RawLogging {
    pub fn validate(self, bad: &mut dyn FnMut(&str, String)) -> LoggingConfig {
        let format = match self.format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                bad(
                    "logging.format",
                    format!("`{other}` is neither `text` nor `json`"),
                );
                LogFormat::Text
            }
        };
        if let Err(e) = EnvFilter::try_new(&self.level) {
            bad("logging.level", format!("not a valid filter: {e}"));
        }
        LoggingConfig {
            format,
            level: self.level,
        }
    }
}

/// Installs the global subscriber. `RUST_LOG`, when set, replaces `logging.level`.
pub fn init(config: &LoggingConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(&config.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match config.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}
