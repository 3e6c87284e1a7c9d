//! The model sections of the config: `[model]` (one model) or `[models.<name>]` (several), each
//! with its file, reference profile, labels, execution providers, preprocessing and output
//! overrides. Validated into [`ModelConfig`]s; every problem is reported with its key.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[model]`: the single served model (its name is a key here).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawModel {
    pub name: String,
    pub path: String,
    pub reference: String,
    pub labels: Vec<String>,
    pub execution_providers: Vec<String>,
    pub require_cuda: bool,
    pub watch_seconds: f64,
    pub preprocess: RawPreprocess,
    pub outputs: RawOutputs,
}

impl Default for RawModel {
    fn default() -> Self {
        RawModel {
            name: "digits".into(),
            path: "models/digits.onnx".into(),
            reference: String::new(),
            labels: Vec::new(),
            execution_providers: vec!["cpu".into()],
            require_cuda: false,
            watch_seconds: 0.0,
            preprocess: RawPreprocess::default(),
            outputs: RawOutputs::default(),
        }
    }
}

/// `[models.<name>]`: one of several served models; the table's key is its name.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawModelEntry {
    pub path: String,
    pub reference: String,
    pub labels: Vec<String>,
    pub execution_providers: Vec<String>,
    pub require_cuda: bool,
    pub watch_seconds: f64,
    pub preprocess: RawPreprocess,
    pub outputs: RawOutputs,
}

impl Default for RawModelEntry {
    fn default() -> Self {
        let RawModel {
            reference,
            labels,
            execution_providers,
            require_cuda,
            watch_seconds,
            preprocess,
            outputs,
            ..
        } = RawModel::default();
        RawModelEntry {
            path: String::new(),
            reference,
            labels,
            execution_providers,
            require_cuda,
            watch_seconds,
            preprocess,
            outputs,
        }
    }
}

impl RawModel {
    /// The same model as a `[models.<name>]` entry.
    pub fn into_entry(self) -> (String, RawModelEntry) {
        let RawModel {
            name,
            path,
            reference,
            labels,
            execution_providers,
            require_cuda,
            watch_seconds,
            preprocess,
            outputs,
        } = self;
        (
            name,
            RawModelEntry {
                path,
                reference,
                labels,
                execution_providers,
                require_cuda,
                watch_seconds,
                preprocess,
                outputs,
            },
        )
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionProvider {
    Cuda,
    Cpu,
}

impl ExecutionProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionProvider::Cuda => "cuda",
            ExecutionProvider::Cpu => "cpu",
        }
    }
}

impl fmt::Display for ExecutionProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One served model, validated.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub name: String,
    pub path: PathBuf,
    /// The monitor's reference profile for this model file; `None`: no reference (the
    /// monitor's tests say `insufficient_data`).
    pub reference: Option<PathBuf>,
    pub labels: Vec<String>,
    pub execution_providers: Vec<ExecutionProvider>,
    pub require_cuda: bool,
    /// Reload when the file changes, checking this often (`None`: only on request).
    pub watch: Option<Duration>,
    pub preprocess: RawPreprocess,
    pub outputs: RawOutputs,
}

/// Whether `name` can be a model name (it appears in URLs, paths and metric labels).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !name.starts_with('.')
}

impl RawModelEntry {
    /// Validates one model; `section` is its key prefix (`model` or `models.<name>`).
    /// `default_reference` is used when the entry names none (`[monitor] reference` for the
    /// single `[model]`).
    pub fn validate(
        self,
        name: &str,
        section: &str,
        default_reference: Option<PathBuf>,
        bad: &mut dyn FnMut(&str, String),
    ) -> ModelConfig {
        let key = |k: &str| format!("{section}.{k}");
        if !valid_name(name) {
            bad(
                &if section == "model" {
                    key("name")
                } else {
                    section.to_string()
                },
                format!(
                    "`{name}` is not a model name: 1 to 64 letters, digits, `-`, `_` and `.`, not starting with `.`"
                ),
            );
        }
        if self.path.is_empty() {
            bad(&key("path"), "must name the .onnx file".into());
        }
        let mut providers = Vec::new();
        for (i, p) in self.execution_providers.iter().enumerate() {
            match p.to_ascii_lowercase().as_str() {
                "cuda" => providers.push(ExecutionProvider::Cuda),
                "cpu" => providers.push(ExecutionProvider::Cpu),
                other => bad(
                    &format!("{section}.execution_providers[{i}]"),
                    format!("unknown execution provider `{other}` (known: cuda, cpu)"),
                ),
            }
        }
        if self.execution_providers.is_empty() {
            bad(
                &key("execution_providers"),
                "must list at least one provider, e.g. [\"cpu\"]".into(),
            );
        }
        if self.require_cuda && !providers.contains(&ExecutionProvider::Cuda) {
            bad(
                &key("require_cuda"),
                format!("is true but {section}.execution_providers does not list \"cuda\""),
            );
        }
        if !(self.watch_seconds.is_finite() && (0.0..=86_400.0).contains(&self.watch_seconds)) {
            bad(
                &key("watch_seconds"),
                "must be a number of seconds in 0..=86400 (0: no watch)".into(),
            );
        }
        validate_preprocess(&self.preprocess, section, bad);
        if let Some(kind) = &self.outputs.kind
            && !matches!(kind.as_str(), "probabilities" | "logits")
        {
            bad(
                &key("outputs.kind"),
                format!("`{kind}` is neither `probabilities` nor `logits`"),
            );
        }
        ModelConfig {
            name: name.to_string(),
            path: PathBuf::from(self.path),
            reference: if self.reference.is_empty() {
                default_reference
            } else {
                Some(PathBuf::from(self.reference))
            },
            labels: self.labels,
            execution_providers: providers,
            require_cuda: self.require_cuda,
            watch: (self.watch_seconds > 0.0 && self.watch_seconds.is_finite())
                .then(|| Duration::from_secs_f64(self.watch_seconds)),
            preprocess: self.preprocess,
            outputs: self.outputs,
        }
    }
}

fn validate_preprocess(p: &RawPreprocess, section: &str, bad: &mut dyn FnMut(&str, String)) {
    let key = |k: &str| format!("{section}.preprocess.{k}");
    if let Some(layout) = &p.layout
        && !matches!(layout.as_str(), "nchw" | "nhwc")
    {
        bad(
            &key("layout"),
            format!("`{layout}` is neither `nchw` nor `nhwc`"),
        );
    }
    if let Some(color) = &p.color
        && !matches!(color.as_str(), "rgb" | "bgr" | "grayscale")
    {
        bad(
            &key("color"),
            format!("`{color}` is not one of `rgb`, `bgr`, `grayscale`"),
        );
    }
    if let Some(resize) = &p.resize
        && !matches!(resize.as_str(), "area" | "bilinear" | "nearest")
    {
        bad(
            &key("resize"),
            format!("`{resize}` is not one of `area`, `bilinear`, `nearest`"),
        );
    }
    for (k, v) in [("width", p.width), ("height", p.height)] {
        if let Some(v) = v
            && !(1..=8192).contains(&v)
        {
            bad(&key(k), format!("{v} is outside 1..=8192"));
        }
    }
    if let Some(scale) = p.scale
        && !(scale.is_finite() && scale > 0.0)
    {
        bad(&key("scale"), "must be a positive number".into());
    }
    if let Some(mean) = &p.mean
        && (mean.is_empty() || mean.iter().any(|m| !m.is_finite()))
    {
        bad(
            &key("mean"),
            "must list one finite number per channel".into(),
        );
    }
    if let Some(std) = &p.std
        && (std.is_empty() || std.iter().any(|s| !(s.is_finite() && *s > 0.0)))
    {
        bad(
            &key("std"),
            "must list one positive number per channel".into(),
        );
    }
}
