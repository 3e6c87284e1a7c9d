//! Configuration: the TOML file, `SHIFTWATCH__SECTION__KEY` overrides, and validation.
//!
//! The raw structs mirror the file one to one (`deny_unknown_fields`, so a typo is an error
//! naming the key). [`load`] merges the environment into the parsed table, deserializes it, and
//! [`RawConfig::validate`] turns it into a [`Config`], reporting every problem at once.
//! `config/shiftwatch.toml` documents every key; a test checks it stays complete.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::log::{Durability, LogConfig};
use crate::monitor::MonitorConfig;
use crate::monitor::evaluate::Settings;
use crate::relabel::CandidatesConfig;
use crate::relabel::select::{SelectionConfig, Uncertainty};

/// The prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "SHIFTWATCH__";

/// Everything wrong with a config, one line per problem, each naming its key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Many(Vec<ConfigError>),
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub server: RawServer,
    pub runtime: RawRuntime,
    pub model: RawModel,
    pub inference: RawInference,
    pub limits: RawLimits,
    pub logging: RawLogging,
    pub log: RawLog,
    pub feedback: RawFeedback,
    pub auth: RawAuth,
    pub monitor: RawMonitor,
    pub candidates: RawCandidates,
}

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

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRuntime {
    pub library: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawModel {
    pub name: String,
    pub path: String,
    pub labels: Vec<String>,
    pub execution_providers: Vec<String>,
    pub require_cuda: bool,
    pub preprocess: RawPreprocess,
    pub outputs: RawOutputs,
}

impl Default for RawModel {
    fn default() -> Self {
        RawModel {
            name: "digits".into(),
            path: "models/digits.onnx".into(),
            labels: Vec::new(),
            execution_providers: vec!["cpu".into()],
            require_cuda: false,
            preprocess: RawPreprocess::default(),
            outputs: RawOutputs::default(),
        }
    }
}

/// Preprocessing overrides. Every key left out comes from the model's own metadata.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPreprocess {
    pub input: Option<String>,
    pub layout: Option<String>,
    pub color: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub resize: Option<String>,
    pub scale: Option<f32>,
    pub mean: Option<Vec<f32>>,
    pub std: Option<Vec<f32>>,
}

/// Output overrides. Every key left out comes from the model's own metadata.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawOutputs {
    pub probabilities: Option<String>,
    pub kind: Option<String>,
    pub embedding: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawInference {
    pub sessions: usize,
    pub intra_threads: usize,
    pub inter_threads: usize,
    pub max_batch: usize,
    pub max_batch_delay_us: u64,
    pub max_in_flight: usize,
}

impl Default for RawInference {
    fn default() -> Self {
        RawInference {
            sessions: 1,
            intra_threads: 1,
            inter_threads: 1,
            max_batch: 32,
            max_batch_delay_us: 0,
            max_in_flight: 256,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    pub max_image_width: u32,
    pub max_image_height: u32,
    pub max_image_pixels: u64,
    pub max_decode_bytes: u64,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_image_width: 8192,
            max_image_height: 8192,
            max_image_pixels: 40_000_000,
            max_decode_bytes: 256 * 1024 * 1024,
        }
    }
}

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

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    pub enabled: bool,
    pub dir: String,
    pub durability: String,
    pub fsync_interval_ms: u64,
    pub queue_capacity: usize,
    pub rotate_rows: usize,
    pub rotate_bytes: u64,
    pub rotate_seconds: f64,
    pub row_group_rows: usize,
    pub retention_hours: f64,
    pub max_disk_bytes: u64,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            enabled: true,
            dir: "runs/log".into(),
            durability: "interval".into(),
            fsync_interval_ms: 1000,
            queue_capacity: 65_536,
            rotate_rows: 1_000_000,
            rotate_bytes: 128 * 1024 * 1024,
            rotate_seconds: 60.0,
            row_group_rows: 65_536,
            retention_hours: 0.0,
            max_disk_bytes: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFeedback {
    pub match_window: usize,
}

impl Default for RawFeedback {
    fn default() -> Self {
        RawFeedback {
            match_window: 100_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMonitor {
    pub enabled: bool,
    pub reference: String,
    pub window: usize,
    pub max_age_seconds: f64,
    pub evaluate_every_seconds: f64,
    pub min_samples: usize,
    pub alpha: f64,
    pub clear_after: u32,
    pub labeled_window: usize,
    pub apply_temperature: bool,
    pub state_file: String,
    pub persist_every_seconds: f64,
    pub mmd_permutations: usize,
    pub mmd_max_window: usize,
    pub seed: u64,
    pub min_effect: RawMinEffect,
}

impl Default for RawMonitor {
    fn default() -> Self {
        RawMonitor {
            enabled: true,
            reference: "models/digits.reference.json".into(),
            window: 1000,
            max_age_seconds: 0.0,
            evaluate_every_seconds: 5.0,
            min_samples: 100,
            alpha: 0.01,
            clear_after: 3,
            labeled_window: 1000,
            apply_temperature: false,
            state_file: "runs/monitor-window.json".into(),
            persist_every_seconds: 60.0,
            mmd_permutations: 100,
            mmd_max_window: 200,
            seed: 42,
            min_effect: RawMinEffect::default(),
        }
    }
}

/// Minimum effect size for an alert, per test family.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMinEffect {
    pub class_chi2: f64,
    pub class_psi: f64,
    pub class_js: f64,
    pub bbsd_ks: f64,
    pub confidence_ks: f64,
    pub confidence_psi: f64,
    pub entropy_ks: f64,
    pub entropy_psi: f64,
    pub input_ks: f64,
    pub embedding_mmd: f64,
}

impl Default for RawMinEffect {
    fn default() -> Self {
        RawMinEffect {
            class_chi2: 0.3,
            class_psi: 0.2,
            class_js: 0.15,
            bbsd_ks: 0.2,
            confidence_ks: 0.2,
            confidence_psi: 0.2,
            entropy_ks: 0.2,
            entropy_psi: 0.2,
            input_ks: 0.2,
            embedding_mmd: 0.05,
        }
    }
}

impl RawMinEffect {
    fn as_array(&self) -> [f64; 10] {
        [
            self.class_chi2,
            self.class_psi,
            self.class_js,
            self.bbsd_ks,
            self.confidence_ks,
            self.confidence_psi,
            self.entropy_ks,
            self.entropy_psi,
            self.input_ks,
            self.embedding_mmd,
        ]
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCandidates {
    pub enabled: bool,
    pub dir: String,
    pub export_dir: String,
    pub uncertainty: String,
    pub pool_size: usize,
    pub random_rate: f64,
    pub random_max: usize,
    pub max_disk_bytes: u64,
    pub retention_hours: f64,
    pub ood_boost: f64,
    pub shift_boost: f64,
    pub dhash_threshold: u32,
    pub random_share: f64,
    pub kcenter_pool_factor: usize,
    pub default_limit: usize,
}

impl Default for RawCandidates {
    fn default() -> Self {
        RawCandidates {
            enabled: true,
            dir: "runs/candidates".into(),
            export_dir: "runs/exports".into(),
            uncertainty: "entropy".into(),
            pool_size: 1000,
            random_rate: 0.01,
            random_max: 100,
            max_disk_bytes: 100 * 1024 * 1024,
            retention_hours: 168.0,
            ood_boost: 1.0,
            shift_boost: 0.5,
            dhash_threshold: 4,
            random_share: 0.1,
            kcenter_pool_factor: 3,
            default_limit: 100,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    pub token: String,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub runtime_library: Option<PathBuf>,
    pub model: ModelConfig,
    pub inference: InferenceConfig,
    pub limits: DecodeLimits,
    pub logging: LoggingConfig,
    /// `None` when `log.enabled` is false.
    pub log: Option<LogConfig>,
    /// Recent request ids remembered for matching feedback.
    pub feedback_match_window: usize,
    /// Bearer token for feedback and admin routes; `None` leaves them open.
    pub auth_token: Option<String>,
    /// `None` when `monitor.enabled` is false.
    pub monitor: Option<MonitorConfig>,
    /// `None` when `candidates.enabled` is false.
    pub candidates: Option<CandidatesConfig>,
    /// How many candidates `GET /v1/candidates` and exports return without a limit.
    pub candidates_default_limit: usize,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
    pub retry_after_seconds: u64,
    pub default_top_k: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionProvider {
    Cuda,
    Cpu,
}

impl fmt::Display for ExecutionProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExecutionProvider::Cuda => "cuda",
            ExecutionProvider::Cpu => "cpu",
        })
    }
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub name: String,
    pub path: PathBuf,
    pub labels: Vec<String>,
    pub execution_providers: Vec<ExecutionProvider>,
    pub require_cuda: bool,
    pub preprocess: RawPreprocess,
    pub outputs: RawOutputs,
}

#[derive(Debug, Clone)]
pub struct InferenceConfig {
    pub sessions: usize,
    pub intra_threads: usize,
    pub inter_threads: usize,
    pub max_batch: usize,
    pub max_batch_delay: Duration,
    pub max_in_flight: usize,
}

/// Limits applied before and while decoding an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    pub max_width: u32,
    pub max_height: u32,
    pub max_pixels: u64,
    pub max_alloc_bytes: u64,
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

/// Reads `path`, applies environment overrides from `vars`, and validates.
pub fn load(
    path: &Path,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    load_str(&text, path, vars)
}

/// Like [`load`], from the file's text (`origin` names it in errors).
pub fn load_str(
    text: &str,
    origin: &Path,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let mut table: toml::Table =
        text.parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax {
                path: origin.to_path_buf(),
                message: e.to_string().trim_end().to_string(),
            })?;
    apply_env(&mut table, vars)?;
    let raw = parse_table(table)?;
    raw.validate()
}

/// Deserializes a merged table, naming the full key path of the first mismatch.
pub fn parse_table(table: toml::Table) -> Result<RawConfig, ConfigError> {
    let de = toml::Value::Table(table);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let message = e.inner().to_string();
        // serde reports an unknown field at its parent: name the field itself.
        let (key, message) = match message.strip_prefix("unknown field `") {
            Some(rest) => {
                let field = rest.split('`').next().unwrap_or_default();
                let full = if key == "." || key.is_empty() {
                    field.to_string()
                } else {
                    format!("{key}.{field}")
                };
                (full, format!("unknown key ({message})"))
            }
            None => (key, message),
        };
        ConfigError::Key { key, message }
    })
}

/// Merges `SHIFTWATCH__SECTION__KEY=value` variables into the table. A value is read as a
/// TOML value when it parses as one (`8`, `true`, `["cuda", "cpu"]`), else as a string.
pub fn apply_env(
    table: &mut toml::Table,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut overrides: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in vars {
        if let Some(rest) = name.strip_prefix(ENV_PREFIX) {
            overrides.insert(rest.to_string(), value);
        }
    }
    for (rest, value) in overrides {
        let var = format!("{ENV_PREFIX}{rest}");
        let segments: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if segments.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                var,
                message: "expected SHIFTWATCH__SECTION__KEY".into(),
            });
        }
        let parsed = parse_env_value(&value);
        let (last, parents) = segments.split_last().expect("split yields a segment");
        let mut node = &mut *table;
        for segment in parents {
            let entry = node
                .entry(segment.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            node = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError::Env {
                        var,
                        message: format!("`{segment}` is not a section"),
                    });
                }
            };
        }
        node.insert(last.clone(), parsed);
    }
    Ok(())
}

fn parse_env_value(value: &str) -> toml::Value {
    let probe = format!("v = {value}");
    match probe.parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| value.into()),
        Err(_) => toml::Value::String(value.to_string()),
    }
}

impl RawConfig {
    /// Checks every value and collects every problem before reporting.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let mut errors = Vec::new();
        let mut bad = |key: &str, message: String| {
            errors.push(ConfigError::Key {
                key: key.to_string(),
                message,
            })
        };

        let listen = match self.server.listen.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                bad(
                    "server.listen",
                    format!(
                        "`{}` is not a socket address like 127.0.0.1:8080",
                        self.server.listen
                    ),
                );
                None
            }
        };
        if self.server.max_body_bytes == 0 {
            bad("server.max_body_bytes", "must be at least 1".into());
        }
        if !(self.server.shutdown_grace_seconds.is_finite()
            && self.server.shutdown_grace_seconds >= 0.0)
        {
            bad(
                "server.shutdown_grace_seconds",
                "must be a non-negative number".into(),
            );
        }
        if self.server.default_top_k == 0 {
            bad("server.default_top_k", "must be at least 1".into());
        }

        if self.model.name.is_empty()
            || !self
                .model
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            bad(
                "model.name",
                "must be non-empty and use only letters, digits, `-`, `_` and `.`".into(),
            );
        }
        if self.model.path.is_empty() {
            bad("model.path", "must name the .onnx file".into());
        }
        let mut providers = Vec::new();
        for (i, p) in self.model.execution_providers.iter().enumerate() {
            match p.to_ascii_lowercase().as_str() {
                "cuda" => providers.push(ExecutionProvider::Cuda),
                "cpu" => providers.push(ExecutionProvider::Cpu),
                other => bad(
                    &format!("model.execution_providers[{i}]"),
                    format!("unknown execution provider `{other}` (known: cuda, cpu)"),
                ),
            }
        }
        if self.model.execution_providers.is_empty() {
            bad(
                "model.execution_providers",
                "must list at least one provider, e.g. [\"cpu\"]".into(),
            );
        }
        if self.model.require_cuda && !providers.contains(&ExecutionProvider::Cuda) {
            bad(
                "model.require_cuda",
                "is true but model.execution_providers does not list \"cuda\"".into(),
            );
        }
        validate_preprocess(&self.model.preprocess, &mut bad);
        if let Some(kind) = &self.model.outputs.kind
            && !matches!(kind.as_str(), "probabilities" | "logits")
        {
            bad(
                "model.outputs.kind",
                format!("`{kind}` is neither `probabilities` nor `logits`"),
            );
        }

        let inf = &self.inference;
        for (key, v, lo, hi) in [
            ("inference.sessions", inf.sessions, 1, 64),
            ("inference.intra_threads", inf.intra_threads, 1, 256),
            ("inference.inter_threads", inf.inter_threads, 1, 256),
            ("inference.max_batch", inf.max_batch, 1, 4096),
            ("inference.max_in_flight", inf.max_in_flight, 1, 1_000_000),
        ] {
            if v < lo || v > hi {
                bad(key, format!("{v} is outside {lo}..={hi}"));
            }
        }
        if inf.max_batch_delay_us > 1_000_000 {
            bad(
                "inference.max_batch_delay_us",
                "must be at most 1000000 (one second)".into(),
            );
        }

        let lim = &self.limits;
        for (key, v) in [
            ("limits.max_image_width", u64::from(lim.max_image_width)),
            ("limits.max_image_height", u64::from(lim.max_image_height)),
            ("limits.max_image_pixels", lim.max_image_pixels),
            ("limits.max_decode_bytes", lim.max_decode_bytes),
        ] {
            if v == 0 {
                bad(key, "must be at least 1".into());
            }
        }

        let format = match self.logging.format.as_str() {
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
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.logging.level) {
            bad("logging.level", format!("not a valid filter: {e}"));
        }

        let log = &self.log;
        let durability = Durability::parse(&log.durability);
        if durability.is_none() {
            bad(
                "log.durability",
                format!(
                    "`{}` is not one of `strict`, `interval`, `none`",
                    log.durability
                ),
            );
        }
        if log.enabled && log.dir.is_empty() {
            bad(
                "log.dir",
                "must name a folder (or set log.enabled = false)".into(),
            );
        }
        for (key, v) in [
            ("log.queue_capacity", log.queue_capacity as u64),
            ("log.rotate_rows", log.rotate_rows as u64),
            ("log.rotate_bytes", log.rotate_bytes),
            ("log.row_group_rows", log.row_group_rows as u64),
            ("log.fsync_interval_ms", log.fsync_interval_ms),
        ] {
            if v == 0 {
                bad(key, "must be at least 1".into());
            }
        }
        for (key, v) in [
            ("log.rotate_seconds", log.rotate_seconds),
            ("log.retention_hours", log.retention_hours),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                bad(key, "must be a non-negative number".into());
            }
        }
        if log.rotate_seconds == 0.0 {
            bad("log.rotate_seconds", "must be above 0".into());
        }
        if self.feedback.match_window == 0 {
            bad("feedback.match_window", "must be at least 1".into());
        }
        if !self.auth.token.is_empty() && self.auth.token.len() < 16 {
            bad(
                "auth.token",
                "must be at least 16 characters (or empty for no auth)".into(),
            );
        }

        let m = &self.monitor;
        if m.enabled && m.reference.is_empty() {
            bad(
                "monitor.reference",
                "must name a reference profile (build one with `shiftwatch reference`), or set monitor.enabled = false".into(),
            );
        }
        for (key, v) in [
            ("monitor.window", m.window as u64),
            ("monitor.min_samples", m.min_samples as u64),
            ("monitor.labeled_window", m.labeled_window as u64),
            ("monitor.clear_after", u64::from(m.clear_after)),
            ("monitor.mmd_max_window", m.mmd_max_window as u64),
        ] {
            if v == 0 {
                bad(key, "must be at least 1".into());
            }
        }
        if m.window > 1_000_000 {
            bad("monitor.window", "must be at most 1000000".into());
        }
        if !(m.alpha > 0.0 && m.alpha < 1.0) {
            bad("monitor.alpha", "must be between 0 and 1".into());
        }
        for (key, v) in [
            ("monitor.max_age_seconds", m.max_age_seconds),
            ("monitor.evaluate_every_seconds", m.evaluate_every_seconds),
            ("monitor.persist_every_seconds", m.persist_every_seconds),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                bad(key, "must be a non-negative number".into());
            }
        }
        if m.evaluate_every_seconds < 0.05 {
            bad(
                "monitor.evaluate_every_seconds",
                "must be at least 0.05".into(),
            );
        }
        let names = [
            "class_chi2",
            "class_psi",
            "class_js",
            "bbsd_ks",
            "confidence_ks",
            "confidence_psi",
            "entropy_ks",
            "entropy_psi",
            "input_ks",
            "embedding_mmd",
        ];
        for (name, v) in names.iter().zip(m.min_effect.as_array()) {
            if !(v.is_finite() && v > 0.0) {
                bad(
                    &format!("monitor.min_effect.{name}"),
                    "must be a positive number".into(),
                );
            }
        }

        let c = &self.candidates;
        let uncertainty = Uncertainty::parse(&c.uncertainty);
        if uncertainty.is_none() {
            bad(
                "candidates.uncertainty",
                format!(
                    "`{}` is not one of `entropy`, `margin`, `least_confidence`",
                    c.uncertainty
                ),
            );
        }
        if c.enabled && (c.dir.is_empty() || c.export_dir.is_empty()) {
            bad(
                "candidates.dir",
                "candidates.dir and candidates.export_dir must name folders".into(),
            );
        }
        for (key, v) in [
            ("candidates.pool_size", c.pool_size as u64),
            ("candidates.max_disk_bytes", c.max_disk_bytes),
            (
                "candidates.kcenter_pool_factor",
                c.kcenter_pool_factor as u64,
            ),
            ("candidates.default_limit", c.default_limit as u64),
        ] {
            if v == 0 {
                bad(key, "must be at least 1".into());
            }
        }
        for (key, v, hi) in [
            ("candidates.random_rate", c.random_rate, 1.0),
            ("candidates.random_share", c.random_share, 1.0),
            ("candidates.ood_boost", c.ood_boost, 100.0),
            ("candidates.shift_boost", c.shift_boost, 100.0),
            ("candidates.retention_hours", c.retention_hours, f64::MAX),
        ] {
            if !(v.is_finite() && (0.0..=hi).contains(&v)) {
                bad(key, format!("must be a number in 0..={hi}"));
            }
        }
        if c.dhash_threshold > 64 {
            bad(
                "candidates.dhash_threshold",
                "must be at most 64 (bits)".into(),
            );
        }

        if !errors.is_empty() {
            return Err(if errors.len() == 1 {
                errors.pop().expect("one error")
            } else {
                ConfigError::Many(errors)
            });
        }

        Ok(Config {
            server: ServerConfig {
                listen: listen.expect("validated"),
                max_body_bytes: usize::try_from(self.server.max_body_bytes).unwrap_or(usize::MAX),
                shutdown_grace: Duration::from_secs_f64(self.server.shutdown_grace_seconds),
                retry_after_seconds: self.server.retry_after_seconds,
                default_top_k: self.server.default_top_k,
            },
            runtime_library: (!self.runtime.library.is_empty())
                .then(|| PathBuf::from(&self.runtime.library)),
            model: ModelConfig {
                name: self.model.name,
                path: PathBuf::from(self.model.path),
                labels: self.model.labels,
                execution_providers: providers,
                require_cuda: self.model.require_cuda,
                preprocess: self.model.preprocess,
                outputs: self.model.outputs,
            },
            inference: InferenceConfig {
                sessions: inf.sessions,
                intra_threads: inf.intra_threads,
                inter_threads: inf.inter_threads,
                max_batch: inf.max_batch,
                max_batch_delay: Duration::from_micros(inf.max_batch_delay_us),
                max_in_flight: inf.max_in_flight,
            },
            limits: DecodeLimits {
                max_width: lim.max_image_width,
                max_height: lim.max_image_height,
                max_pixels: lim.max_image_pixels,
                max_alloc_bytes: lim.max_decode_bytes,
            },
            logging: LoggingConfig {
                format,
                level: self.logging.level,
            },
            log: self.log.enabled.then(|| LogConfig {
                dir: PathBuf::from(&self.log.dir),
                durability: durability.expect("validated"),
                fsync_interval: Duration::from_millis(self.log.fsync_interval_ms),
                queue_capacity: self.log.queue_capacity,
                rotate_rows: self.log.rotate_rows,
                rotate_bytes: usize::try_from(self.log.rotate_bytes).unwrap_or(usize::MAX),
                rotate_age: Duration::from_secs_f64(self.log.rotate_seconds),
                row_group_rows: self.log.row_group_rows,
                retention: (self.log.retention_hours > 0.0)
                    .then(|| Duration::from_secs_f64(self.log.retention_hours * 3600.0)),
                max_disk_bytes: (self.log.max_disk_bytes > 0).then_some(self.log.max_disk_bytes),
            }),
            feedback_match_window: self.feedback.match_window,
            auth_token: (!self.auth.token.is_empty()).then_some(self.auth.token),
            monitor: self.monitor.enabled.then(|| {
                let m = self.monitor;
                MonitorConfig {
                    reference: PathBuf::from(m.reference),
                    window: m.window,
                    max_age: (m.max_age_seconds > 0.0)
                        .then(|| Duration::from_secs_f64(m.max_age_seconds)),
                    evaluate_every: Duration::from_secs_f64(m.evaluate_every_seconds),
                    settings: Settings {
                        min_samples: m.min_samples,
                        alpha: m.alpha,
                        min_effect: m.min_effect.as_array(),
                        mmd_permutations: m.mmd_permutations,
                        mmd_max_window: m.mmd_max_window,
                        seed: m.seed,
                    },
                    clear_after: m.clear_after,
                    labeled_window: m.labeled_window,
                    apply_temperature: m.apply_temperature,
                    state_file: (!m.state_file.is_empty()).then(|| PathBuf::from(m.state_file)),
                    persist_every: Duration::from_secs_f64(m.persist_every_seconds),
                }
            }),
            candidates_default_limit: self.candidates.default_limit,
            candidates: self.candidates.enabled.then(|| {
                let c = self.candidates;
                CandidatesConfig {
                    dir: PathBuf::from(c.dir),
                    export_dir: PathBuf::from(c.export_dir),
                    pool_size: c.pool_size,
                    random_rate: c.random_rate,
                    random_max: c.random_max,
                    max_disk_bytes: c.max_disk_bytes,
                    retention: (c.retention_hours > 0.0)
                        .then(|| Duration::from_secs_f64(c.retention_hours * 3600.0)),
                    selection: SelectionConfig {
                        uncertainty: uncertainty.expect("validated"),
                        classes: 0,
                        ood_boost: c.ood_boost,
                        shift_boost: c.shift_boost,
                        dhash_threshold: c.dhash_threshold,
                        random_share: c.random_share,
                        candidate_pool_factor: c.kcenter_pool_factor,
                    },
                }
            }),
        })
    }
}

fn validate_preprocess(p: &RawPreprocess, bad: &mut impl FnMut(&str, String)) {
    if let Some(layout) = &p.layout
        && !matches!(layout.as_str(), "nchw" | "nhwc")
    {
        bad(
            "model.preprocess.layout",
            format!("`{layout}` is neither `nchw` nor `nhwc`"),
        );
    }
    if let Some(color) = &p.color
        && !matches!(color.as_str(), "rgb" | "bgr" | "grayscale")
    {
        bad(
            "model.preprocess.color",
            format!("`{color}` is not one of `rgb`, `bgr`, `grayscale`"),
        );
    }
    if let Some(resize) = &p.resize
        && !matches!(resize.as_str(), "area" | "bilinear" | "nearest")
    {
        bad(
            "model.preprocess.resize",
            format!("`{resize}` is not one of `area`, `bilinear`, `nearest`"),
        );
    }
    for (key, v) in [
        ("model.preprocess.width", p.width),
        ("model.preprocess.height", p.height),
    ] {
        if let Some(v) = v
            && !(1..=8192).contains(&v)
        {
            bad(key, format!("{v} is outside 1..=8192"));
        }
    }
    if let Some(scale) = p.scale
        && !(scale.is_finite() && scale > 0.0)
    {
        bad("model.preprocess.scale", "must be a positive number".into());
    }
    if let Some(mean) = &p.mean
        && (mean.is_empty() || mean.iter().any(|m| !m.is_finite()))
    {
        bad(
            "model.preprocess.mean",
            "must list one finite number per channel".into(),
        );
    }
    if let Some(std) = &p.std
        && (std.is_empty() || std.iter().any(|s| !(s.is_finite() && *s > 0.0)))
    {
        bad(
            "model.preprocess.std",
            "must list one positive number per channel".into(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        load_str(
            text,
            Path::new("test.toml"),
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_are_valid() {
        let c = load_text("", &[]).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.server.max_body_bytes, 20 * 1024 * 1024);
        assert_eq!(c.model.execution_providers, vec![ExecutionProvider::Cpu]);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load_text("[server]\nlisten = \"127.0.0.1:1\"\nlistne = 3\n", &[]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("server.listne"), "{msg}");
        let err = load_text("[sever]\n", &[]).unwrap_err().to_string();
        assert!(err.contains("`sever`"), "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = load_text("[inference]\nsessions = \"two\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("inference.sessions"), "{err}");
    }

    #[test]
    fn every_problem_is_reported() {
        let err = load_text(
            "[server]\nlisten = \"nowhere\"\n[inference]\nsessions = 0\n[logging]\nformat = \"xml\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        for key in ["server.listen", "inference.sessions", "logging.format"] {
            assert!(err.contains(key), "{key} missing from: {err}");
        }
    }

    #[test]
    fn environment_overrides_file() {
        let c = load_text(
            "[server]\nlisten = \"127.0.0.1:1\"\n",
            &[
                ("SHIFTWATCH__SERVER__LISTEN", "0.0.0.0:9000"),
                ("SHIFTWATCH__INFERENCE__MAX_BATCH", "8"),
                (
                    "SHIFTWATCH__MODEL__EXECUTION_PROVIDERS",
                    "[\"cuda\", \"cpu\"]",
                ),
                ("SHIFTWATCH__MODEL__PREPROCESS__WIDTH", "64"),
                ("UNRELATED", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(c.inference.max_batch, 8);
        assert_eq!(
            c.model.execution_providers,
            vec![ExecutionProvider::Cuda, ExecutionProvider::Cpu]
        );
        assert_eq!(c.model.preprocess.width, Some(64));
    }

    #[test]
    fn unknown_environment_key_is_rejected() {
        let err = load_text("", &[("SHIFTWATCH__SERVER__LISTN", "x")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.listn"), "{err}");
    }

    /// The shipped file parses, shows every default as it is, and has a comment above every key
    /// (options that default to "from the model" appear commented out).
    #[test]
    fn shipped_config_documents_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/shiftwatch.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let table: toml::Table = text.parse().unwrap();
        let parsed = parse_table(table).unwrap();
        assert_eq!(
            parsed,
            RawConfig::default(),
            "the file's values are the defaults"
        );
        load_str(&text, &path, Vec::new()).unwrap();

        let mut every = RawConfig::default();
        every.model.preprocess = RawPreprocess {
            input: Some(String::new()),
            layout: Some(String::new()),
            color: Some(String::new()),
            width: Some(1),
            height: Some(1),
            resize: Some(String::new()),
            scale: Some(1.0),
            mean: Some(vec![0.0]),
            std: Some(vec![1.0]),
        };
        every.model.outputs = RawOutputs {
            probabilities: Some(String::new()),
            kind: Some(String::new()),
            embedding: Some(String::new()),
        };
        let tree = toml::Value::try_from(&every).unwrap();
        let mut keys = Vec::new();
        collect_keys(&tree, "", &mut keys);
        assert!(keys.len() > 30, "{keys:?}");
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let is_key = |l: &str, k: &str| {
            let l = l.trim_start_matches('#').trim_start();
            l.strip_prefix(k)
                .is_some_and(|r| r.trim_start().starts_with('='))
        };
        for (section, key) in keys {
            let header = format!("[{section}]");
            let start = lines
                .iter()
                .position(|l| *l == header)
                .unwrap_or_else(|| panic!("no section {header}"));
            let end = lines[start + 1..]
                .iter()
                .position(|l| l.starts_with('['))
                .map_or(lines.len(), |i| start + 1 + i);
            let at = (start + 1..end)
                .find(|&i| is_key(lines[i], &key))
                .unwrap_or_else(|| panic!("{section}.{key} is not in the shipped config"));
            // Above it (past neighbouring keys that share the comment) stands a real comment.
            let mut i = at;
            while i > start + 1 && lines[i - 1].contains(" = ") {
                i -= 1;
            }
            let above = lines[i - 1];
            assert!(
                above.starts_with('#') && !above.contains(" = "),
                "{section}.{key} has no comment above it"
            );
        }
    }

    fn collect_keys(value: &toml::Value, section: &str, out: &mut Vec<(String, String)>) {
        if let toml::Value::Table(t) = value {
            for (k, v) in t {
                match v {
                    toml::Value::Table(_) => {
                        let name = if section.is_empty() {
                            k.clone()
                        } else {
                            format!("{section}.{k}")
                        };
                        collect_keys(v, &name, out);
                    }
                    _ => out.push((section.to_string(), k.clone())),
                }
            }
        }
    }

    #[test]
    fn require_cuda_needs_cuda_listed() {
        let err = load_text("[model]\nrequire_cuda = true\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("model.require_cuda"), "{err}");
    }
}
