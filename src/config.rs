//! Configuration: the TOML file, `SHIFTWATCH__SECTION__KEY` overrides, and validation.
//!
//! Each module owns its section: the raw serde struct (`deny_unknown_fields`, so a typo is an
//! error naming the key), its defaults and its `validate`, which reports problems through a
//! callback. This module composes them: [`load`] merges the environment into the parsed table,
//! deserializes it, and [`RawConfig::validate`] turns it into a [`Config`], reporting every
//! problem at once. `config/shiftwatch.toml` documents every key; a test checks it stays
//! complete.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::api::config::{RawAuth, RawServer, ServerConfig};
use crate::feedback::RawFeedback;
use crate::inference::{InferenceConfig, RawInference};
use crate::log::{LogConfig, RawLog};
use crate::model::config::{ModelConfig, RawModel, RawModelEntry};
use crate::model::runtime::RawRuntime;
use crate::model::{LoadOptions, LoadedModel, ModelError};
use crate::monitor::{MonitorConfig, RawMonitor};
use crate::preprocess::{DecodeLimits, RawLimits};
use crate::relabel::{CandidatesConfig, RawCandidates};
use crate::telemetry::{LoggingConfig, RawLogging};

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
    /// Several models: `[models.<name>]`, instead of `[model]`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, RawModelEntry>,
    pub inference: RawInference,
    pub limits: RawLimits,
    pub logging: RawLogging,
    pub log: RawLog,
    pub feedback: RawFeedback,
    pub auth: RawAuth,
    pub monitor: RawMonitor,
    pub candidates: RawCandidates,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub runtime_library: Option<PathBuf>,
    /// The served models, in name order; at least one.
    pub models: Vec<ModelConfig>,
    pub inference: InferenceConfig,
    pub limits: DecodeLimits,
    pub logging: LoggingConfig,
    /// `None` when `log.enabled` is false.
    pub log: Option<LogConfig>,
    /// Recent request ids remembered (per model) for matching feedback.
    pub feedback_match_window: usize,
    /// Bearer token for feedback, candidates and admin routes; `None` leaves them open.
    pub auth_token: Option<crate::api::config::Token>,
    /// `None` when `monitor.enabled` is false.
    pub monitor: Option<MonitorConfig>,
    /// `None` when `candidates.enabled` is false.
    pub candidates: Option<CandidatesConfig>,
}

impl Config {
    /// The first served model (the only one with `[model]`).
    pub fn first_model(&self) -> &ModelConfig {
        &self.models[0]
    }

    /// The model named `name`.
    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The model `name` when given, else the first; an error lists the configured ones.
    pub fn select_model(&self, name: Option<&str>) -> anyhow::Result<&ModelConfig> {
        match name {
            None => Ok(self.first_model()),
            Some(n) => self.model(n).ok_or_else(|| {
                let names: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
                anyhow::anyhow!(
                    "no model `{n}` in the config (configured: {})",
                    names.join(", ")
                )
            }),
        }
    }

    /// Loads `model` from its configured file with this config's runtime and inference settings.
    pub fn load_model(&self, model: &ModelConfig) -> Result<LoadedModel, ModelError> {
        self.load_model_with(model, &self.inference)
    }

    /// [`Config::load_model`] with one session whatever `inference.sessions` says, and the
    /// offline batch ([`InferenceConfig::offline_batch`]): for the commands that run the model
    /// from one thread (`reference`, `estimates`), which need no run timed.
    pub fn load_model_one_session(&self, model: &ModelConfig) -> Result<LoadedModel, ModelError> {
        let inference = InferenceConfig {
            sessions: crate::inference::Sessions::Fixed(1),
            max_batch: crate::inference::MaxBatch::Fixed(self.inference.max_batch.or_default()),
            ..self.inference.clone()
        };
        self.load_model_with(model, &inference)
    }

    fn load_model_with(
        &self,
        model: &ModelConfig,
        inference: &InferenceConfig,
    ) -> Result<LoadedModel, ModelError> {
        crate::model::load(
            model,
            LoadOptions {
                path: &model.path,
                inference,
                library: self.runtime_library.as_deref(),
            },
        )
    }
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
    if table.contains_key("model")
        && table
            .get("models")
            .and_then(toml::Value::as_table)
            .is_some_and(|t| !t.is_empty())
    {
        return Err(ConfigError::Key {
            key: "models".into(),
            message: "give either one [model] table or [models.<name>] tables, not both".into(),
        });
    }
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
        // serde's messages quote the offending value: not for a secret.
        let message = if key
            .rsplit('.')
            .next()
            .is_some_and(|k| SECRET_KEYS.contains(&k))
        {
            "must be a string (the value is a secret and is not shown)".to_string()
        } else {
            message
        };
        ConfigError::Key { key, message }
    })
}

/// Keys whose values are secrets: kept as strings from the environment, never echoed in errors.
const SECRET_KEYS: [&str; 1] = ["token"];

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
        // Secrets stay strings whatever they look like (a numeric token is not a number), and
        // never reach an error message.
        let parsed = if segments
            .last()
            .is_some_and(|k| SECRET_KEYS.contains(&k.as_str()))
        {
            toml::Value::String(value)
        } else {
            parse_env_value(&value)
        };
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

        let server = self.server.validate(&mut bad);
        let runtime_library = self.runtime.validate(&mut bad);
        let inference = self.inference.validate(&mut bad);
        let limits = self.limits.validate(&mut bad);
        let logging = self.logging.validate(&mut bad);
        let log = self.log.validate(&mut bad);
        let feedback_match_window = self.feedback.validate(&mut bad);
        let auth_token = self.auth.validate(&mut bad);
        let monitor = self.monitor.validate(&mut bad);
        let candidates = self.candidates.validate(&mut bad);
        let models: Vec<ModelConfig> = if self.models.is_empty() {
            let (name, entry) = self.model.into_entry();
            // The single model's reference defaults to `[monitor] reference`.
            let reference = monitor.as_ref().and_then(|m| m.reference.clone());
            vec![entry.validate(&name, "model", reference, &mut bad)]
        } else {
            self.models
                .into_iter()
                .map(|(name, entry)| {
                    let section = format!("models.{name}");
                    entry.validate(&name, &section, None, &mut bad)
                })
                .collect()
        };

        if !errors.is_empty() {
            return Err(if errors.len() == 1 {
                errors.pop().expect("one error")
            } else {
                ConfigError::Many(errors)
            });
        }
        Ok(Config {
            server,
            runtime_library,
            models,
            inference,
            limits,
            logging,
            log,
            feedback_match_window,
            auth_token,
            monitor,
            candidates,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::{ExecutionProvider, RawOutputs, RawPreprocess};

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
        assert_eq!(
            c.first_model().execution_providers,
            vec![ExecutionProvider::Cpu]
        );
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
        assert!(err.contains("\"auto\""), "{err}");
    }

    #[test]
    fn sessions_are_a_number_or_auto() {
        use crate::inference::Sessions;
        let sessions =
            |text: &str, env: &[(&str, &str)]| load_text(text, env).map(|c| c.inference.sessions);
        assert_eq!(sessions("", &[]).unwrap(), Sessions::Auto);
        assert_eq!(
            sessions("[inference]\nsessions = 3\n", &[]).unwrap(),
            Sessions::Fixed(3)
        );
        assert_eq!(
            sessions("[inference]\nsessions = \"auto\"\n", &[]).unwrap(),
            Sessions::Auto
        );
        assert_eq!(
            sessions("", &[("SHIFTWATCH__INFERENCE__SESSIONS", "2")]).unwrap(),
            Sessions::Fixed(2)
        );
        assert_eq!(
            sessions(
                "[inference]\nsessions = 2\n",
                &[("SHIFTWATCH__INFERENCE__SESSIONS", "auto")]
            )
            .unwrap(),
            Sessions::Auto
        );
        for bad in ["0", "65", "-1", "2.5", "\"two\""] {
            let err = sessions(&format!("[inference]\nsessions = {bad}\n"), &[])
                .unwrap_err()
                .to_string();
            assert!(err.contains("inference.sessions"), "{bad}: {err}");
            assert!(err.contains("auto"), "{bad}: {err}");
        }
    }

    #[test]
    fn max_batch_is_a_number_or_auto() {
        use crate::inference::MaxBatch;
        let max_batch =
            |text: &str, env: &[(&str, &str)]| load_text(text, env).map(|c| c.inference.max_batch);
        assert_eq!(max_batch("", &[]).unwrap(), MaxBatch::Auto);
        assert_eq!(
            max_batch("[inference]\nmax_batch = 8\n", &[]).unwrap(),
            MaxBatch::Fixed(8)
        );
        assert_eq!(
            max_batch("", &[("SHIFTWATCH__INFERENCE__MAX_BATCH", "auto")]).unwrap(),
            MaxBatch::Auto
        );
        for bad in ["0", "4097", "-1", "\"many\""] {
            let err = max_batch(&format!("[inference]\nmax_batch = {bad}\n"), &[])
                .unwrap_err()
                .to_string();
            assert!(err.contains("inference.max_batch"), "{bad}: {err}");
        }
    }

    /// `server.io_threads`: a number, or "auto" for half the cores (at least one).
    #[test]
    fn io_threads_are_a_number_or_half_the_cores() {
        use crate::inference::AutoCount;
        let server = |text: &str, env: &[(&str, &str)]| load_text(text, env).map(|c| c.server);
        let auto = server("", &[]).unwrap();
        assert_eq!(auto.io_threads, AutoCount::Auto);
        assert_eq!(
            [1, 2, 3, 4, 16].map(|cores| auto.io_threads(cores)),
            [1, 1, 1, 2, 8]
        );
        let three = server("[server]\nio_threads = 3\n", &[]).unwrap();
        assert_eq!([1, 16].map(|cores| three.io_threads(cores)), [3, 3]);
        let env = server("", &[("SHIFTWATCH__SERVER__IO_THREADS", "2")]).unwrap();
        assert_eq!(env.io_threads(16), 2);
        for bad in ["0", "1025", "-1", "2.5", "\"many\""] {
            let err = server(&format!("[server]\nio_threads = {bad}\n"), &[])
                .unwrap_err()
                .to_string();
            assert!(err.contains("server.io_threads"), "{bad}: {err}");
            assert!(err.contains("auto"), "{bad}: {err}");
        }
    }

    /// Hours too many for a `Duration` mean "never" rather than a panic (a retention of 1e300
    /// hours used to abort the start); a negative half-life is named with its key.
    #[test]
    fn hour_settings_of_any_size_load() {
        let candidates = |text: &str| load_text(text, &[]).map(|c| c.candidates.unwrap());
        let c =
            candidates("[candidates]\nretention_hours = 1e300\nrandom_half_life_hours = 1e300\n")
                .unwrap();
        assert_eq!((c.retention, c.random_half_life), (None, None));
        let c = candidates("[candidates]\nrandom_half_life_hours = 0\n").unwrap();
        assert_eq!(c.random_half_life, None);
        let c = candidates("").unwrap();
        assert_eq!(
            c.random_half_life,
            Some(std::time::Duration::from_secs(24 * 3600))
        );
        let err = candidates("[candidates]\nrandom_half_life_hours = -1\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("candidates.random_half_life_hours")
                && err.contains("must be a number of at least 0"),
            "{err}"
        );
        // A half-life of nanoseconds would make every priority infinite.
        let err = candidates("[candidates]\nrandom_half_life_hours = 1e-12\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 0.001 hours"), "{err}");
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
        assert_eq!(c.inference.max_batch, crate::inference::MaxBatch::Fixed(8));
        assert_eq!(
            c.first_model().execution_providers,
            vec![ExecutionProvider::Cuda, ExecutionProvider::Cpu]
        );
        assert_eq!(c.first_model().preprocess.width, Some(64));
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
    fn several_models_each_with_its_table() {
        let text = "[models.digits]\npath = \"models/digits.onnx\"\nreference = \"models/digits.reference.json\"\n\
                    [models.overconfident]\npath = \"models/digits-overconfident.onnx\"\nwatch_seconds = 2\n";
        let c = load_text(
            text,
            &[("SHIFTWATCH__MODELS__OVERCONFIDENT__REFERENCE", "x.json")],
        )
        .unwrap();
        let names: Vec<&str> = c.models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["digits", "overconfident"]);
        let o = c.model("overconfident").unwrap();
        assert_eq!(o.reference.as_deref(), Some(Path::new("x.json")));
        assert_eq!(o.watch, Some(std::time::Duration::from_secs(2)));
        assert_eq!(c.model("digits").unwrap().watch, None);
        // One [model] still means one entry, its reference from [monitor].
        let single = load_text("", &[]).unwrap();
        assert_eq!(single.models.len(), 1);
        assert_eq!(
            single.first_model().reference.as_deref(),
            Some(Path::new("models/digits.reference.json"))
        );
    }

    #[test]
    fn several_models_problems_are_named() {
        let err = load_text(
            "[model]\nname = \"a\"\n[models.b]\npath = \"b.onnx\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`models`") && err.contains("not both"),
            "{err}"
        );
        let err = load_text(
            "[models.b]\nlabels = []\n[models.\"bad name\"]\npath = \"x\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("models.b.path"), "{err}");
        assert!(err.contains("`models.bad name`"), "{err}");
        let err = load_text("[models.b]\npath = \"b.onnx\"\nnmae = 1\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("models.b.nmae"), "{err}");
    }

    #[test]
    fn min_effect_keys_are_the_test_families() {
        let c = load_text("[monitor.min_effect]\nbbsd_ks = 0.3\n", &[]).unwrap();
        let kind = crate::monitor::evaluate::TestKind::BbsdKs;
        assert_eq!(c.monitor.unwrap().settings.min_effect(kind), 0.3);
        let err = load_text("[monitor.min_effect]\nbbsd = 0.3\nclass_psi = -1\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("monitor.min_effect.bbsd") && err.contains("known: class_chi2"),
            "{err}"
        );
        assert!(err.contains("monitor.min_effect.class_psi"), "{err}");
    }

    #[test]
    fn sequential_and_prediction_set_keys_are_validated() {
        use crate::monitor::evaluate::TestKind;
        let c = load_text(
            "[monitor]\nrun_length = 500.0\nprediction_set_coverage = 0\n[monitor.tolerance]\ninput_ks = 0.25\n",
            &[],
        )
        .unwrap();
        let m = c.monitor.unwrap();
        let seq = m.sequential.unwrap();
        assert_eq!(seq.run_length, 500.0);
        assert_eq!(seq.tolerance[TestKind::InputKs.index()], Some(0.25));
        assert_eq!(seq.tolerance[TestKind::ClassPsi.index()], None);
        assert_eq!(m.prediction_set_coverage, None, "0 is off");
        let err = load_text(
            "[monitor]\nrun_length = 0.5\ntail_quantile = 0.7\nprediction_set_coverage = 1.5\n[monitor.tolerance]\nclass_psi = 0.1\nbbsd_ks = 2\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        for key in [
            "monitor.run_length",
            "monitor.tail_quantile",
            "monitor.prediction_set_coverage",
            "monitor.tolerance.class_psi",
            "monitor.tolerance.bbsd_ks",
        ] {
            assert!(err.contains(key), "{key}: {err}");
        }
        let c = load_text("[monitor]\nsequential = false\n", &[]).unwrap();
        assert!(c.monitor.unwrap().sequential.is_none());
    }

    #[test]
    fn require_cuda_needs_cuda_listed() {
        let err = load_text("[model]\nrequire_cuda = true\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("model.require_cuda"), "{err}");
    }
}
