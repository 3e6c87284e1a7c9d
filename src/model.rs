//! Loading the classifier: the ONNX Runtime library, the model's self-description, sessions.
//!
//! [`load`] resolves everything a request needs into a [`ModelSpec`] (input name and shape,
//! preprocessing, output names, labels, version, the execution provider in use) and opens the
//! sessions; [`run_batch`] runs one batch on one session. Preprocessing comes from the model's
//! `shiftwatch` metadata (written by `training/`), each key overridable in config, with the
//! model's declared shapes as the last resort; a mismatch between them is an error at load.

pub mod config;
mod cuda;
pub mod runtime;

use std::path::Path;

use ort::ep::ExecutionProvider as _;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{TensorElementType, TensorRef, ValueType};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use self::config::{ExecutionProvider, ModelConfig, RawOutputs, RawPreprocess};
pub use self::runtime::{ORT_VERSION, environment, resolve_library};
use crate::inference::{InferenceConfig, Sessions};
use crate::preprocess::{Color, Layout, Preprocess, Resize};

/// The metadata key under which a model describes itself (a JSON document).
pub const METADATA_KEY: &str = "shiftwatch";

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{0}")]
    Runtime(String),
    #[error("cannot read model file {path}: {message}")]
    File { path: String, message: String },
    #[error("onnx runtime failed to {action}: {message}")]
    Ort {
        action: &'static str,
        message: String,
    },
    #[error("model does not fit the config: {0}")]
    Mismatch(String),
    #[error("execution provider: {0}")]
    Provider(String),
}

fn ort_err(action: &'static str) -> impl FnOnce(String) -> ModelError {
    move |message| ModelError::Ort { action, message }
}

/// Whether the probability output holds probabilities or logits (softmax applied here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    Probabilities,
    Logits,
}

/// Everything about the model that serving needs, resolved and checked at load.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    /// First 12 hex digits of the model file's sha256.
    pub version: String,
    pub labels: Vec<String>,
    pub input_name: String,
    /// The input's declared shape, dynamic dimensions as -1.
    pub input_shape: Vec<i64>,
    pub preprocess: Preprocess,
    pub probabilities_output: String,
    pub output_kind: OutputKind,
    pub embedding_output: Option<String>,
    pub embedding_dim: Option<usize>,
    /// The largest batch the model accepts (1 when its batch dimension is fixed).
    pub max_batch: usize,
    pub execution_provider: ExecutionProvider,
    /// Where the preprocessing came from, for the start-up log.
    pub described_by: &'static str,
}

impl ModelSpec {
    pub fn num_classes(&self) -> usize {
        self.labels.len()
    }
}

/// The model's own description, as written by `training/` into the ONNX metadata.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ModelMetadata {
    pub format: String,
    pub labels: Vec<String>,
    pub input: MetadataInput,
    pub outputs: MetadataOutputs,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct MetadataInput {
    pub name: Option<String>,
    pub layout: Option<String>,
    pub color: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub resize: Option<String>,
    pub scale: Option<f32>,
    pub mean: Option<Vec<f32>>,
    pub std: Option<Vec<f32>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct MetadataOutputs {
    pub probabilities: Option<String>,
    pub kind: Option<String>,
    pub embedding: Option<String>,
}

/// One image's raw result.
#[derive(Debug, Clone, PartialEq)]
pub struct RawOutput {
    pub probabilities: Vec<f32>,
    pub embedding: Option<Vec<f32>>,
}

/// A loaded model: its spec and one session per inference worker.
pub struct LoadedModel {
    pub spec: ModelSpec,
    pub sessions: Vec<Session>,
    /// With `sessions` or `max_batch` `"auto"` on CPU: the median one-image run that decided
    /// them.
    pub auto_run: Option<std::time::Duration>,
    /// The largest batch a run takes: `inference.max_batch` resolved
    /// ([`crate::inference::MaxBatch::resolve`]) within what the model's input allows.
    pub max_batch: usize,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("spec", &self.spec)
            .field("sessions", &self.sessions.len())
            .field("auto_run", &self.auto_run)
            .field("max_batch", &self.max_batch)
            .finish()
    }
}

/// The `model_version` of the file at `path`.
pub fn version_of_file(path: &Path) -> std::io::Result<String> {
    std::fs::read(path).map(|b| model_version(&b))
}

/// First 12 hex digits of the sha256 of `bytes`.
pub fn model_version(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))[..12].to_string()
}

/// What [`load`] needs beside the model's own section.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions<'a> {
    /// The file to load (the configured path, or another one on reload).
    pub path: &'a Path,
    pub inference: &'a InferenceConfig,
    /// `[runtime] library`.
    pub library: Option<&'a Path>,
}

/// Loads the runtime, opens `inference.sessions` sessions (`"auto"`: see [`auto_sessions`]),
/// resolves the spec and `max_batch` ([`crate::inference::MaxBatch::resolve`]) and warms every
/// session up with a full batch.
pub fn load(model: &ModelConfig, options: LoadOptions<'_>) -> Result<LoadedModel, ModelError> {
    let env = environment(options.library)?;
    let path = options.path;
    let bytes = std::fs::read(path).map_err(|e| ModelError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let version = model_version(&bytes);

    let wanted = match options.inference.sessions {
        Sessions::Fixed(n) => n,
        Sessions::Auto => 1,
    };
    let (provider, mut sessions) = open_sessions(&env, model, options.inference, wanted, path)?;
    let first = &sessions[0];
    let metadata = read_metadata(first)?;
    let described_by = if metadata.is_some() {
        "model metadata and config"
    } else {
        "config and the model's shapes"
    };
    let metadata = metadata.unwrap_or_default();
    let mut spec = resolve_spec(
        first,
        &metadata,
        &model.preprocess,
        &model.outputs,
        &model.labels,
    )?;
    spec.name = model.name.clone();
    spec.version = version;
    spec.execution_provider = provider;
    spec.described_by = described_by;

    // Sessions warm up with the batch they will run. An "auto" limit is known only once one
    // image's run is timed, so until then they warm up with one image.
    let first_batch = match options.inference.max_batch {
        crate::inference::MaxBatch::Fixed(_) => options.inference.batch_limit(None, spec.max_batch),
        crate::inference::MaxBatch::Auto => 1,
    };
    warm_up(&mut sessions, &mut spec, first_batch)?;
    let mut auto_run = None;
    let timed = options.inference.sessions == Sessions::Auto
        || options.inference.max_batch == crate::inference::MaxBatch::Auto;
    if timed && provider == ExecutionProvider::Cpu {
        auto_run = Some(one_image_run(&mut sessions[0], &spec)?);
    }
    let max_batch = options.inference.batch_limit(auto_run, spec.max_batch);
    if max_batch > first_batch {
        warm_up(&mut sessions, &mut spec, max_batch)?;
    }
    if let (Some(run), Sessions::Auto) = (auto_run, options.inference.sessions) {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let target = auto_sessions(run, cores, options.inference.intra_threads);
        let mut more = (sessions.len()..target)
            .map(|_| cpu_session(&env, options.inference, path))
            .collect::<Result<Vec<_>, _>>()?;
        warm_up(&mut more, &mut spec, max_batch)?;
        sessions.append(&mut more);
    }
    if let Some(run) = auto_run {
        tracing::info!(
            model = %spec.name,
            one_image_run_us = run.as_micros() as u64,
            sessions = sessions.len(),
            max_batch,
            "inference \"auto\": {}",
            if run >= AUTO_SESSIONS_MIN_RUN {
                format!(
                    "a compute-heavy model (one image's run of {} µs or more): a session per core, one image a run, where those are \"auto\"",
                    AUTO_SESSIONS_MIN_RUN.as_micros()
                )
            } else {
                format!(
                    "a light model (one image's run under {} µs): one session, batches of up to {}, where those are \"auto\"",
                    AUTO_SESSIONS_MIN_RUN.as_micros(),
                    crate::inference::AUTO_MAX_BATCH
                )
            }
        );
    }
    Ok(LoadedModel {
        spec,
        sessions,
        auto_run,
        max_batch,
    })
}

/// Warm-up: a batch of `batch` through every session, which also checks the output shapes (and
/// learns a dynamic embedding width).
fn warm_up(sessions: &mut [Session], spec: &mut ModelSpec, batch: usize) -> Result<(), ModelError> {
    let zeros = vec![0f32; batch * spec.preprocess.tensor_len()];
    for session in sessions {
        let out = run_batch(session, spec, &zeros, batch)?;
        if spec.embedding_dim.is_none() {
            // Declared dynamic: learn it from the warm-up.
            spec.embedding_dim = out.first().and_then(|o| o.embedding.as_ref().map(Vec::len));
        }
    }
    Ok(())
}

/// One session on the CPU provider.
fn cpu_session(
    env: &ort::environment::Environment,
    inference: &InferenceConfig,
    path: &Path,
) -> Result<Session, ModelError> {
    session_builder(env, inference.intra_threads, inference.inter_threads)?
        .commit_from_file(path)
        .map_err(|e| ort_err("load the model")(e.to_string()))
}

/// With `sessions = "auto"`, a model whose one-image run takes at least this long gets one
/// session per core (cores ÷ `intra_threads`); a lighter one gets one session. Measured on two
/// cores: the bundled digits model (about 6 µs a run) serves most requests per second from one
/// session that batches whatever is queued, as a second session adds only thread hand-offs to
/// a request path of 60–130 µs of CPU; a model of a few milliseconds a run leaves a core idle
/// with one session (0.39 of bare ONNX Runtime's images/s against 0.55 with two, README).
/// 500 µs sits between the two, several times the rest of a request's CPU.
pub const AUTO_SESSIONS_MIN_RUN: std::time::Duration = std::time::Duration::from_micros(500);

/// How many sessions `"auto"` opens for a one-image run of `run` on `cores` cores.
pub fn auto_sessions(run: std::time::Duration, cores: usize, intra_threads: usize) -> usize {
    if run >= AUTO_SESSIONS_MIN_RUN {
        (cores / intra_threads.max(1)).clamp(1, 64)
    } else {
        1
    }
}

/// The median of a few one-image runs (zeros) after the warm-up: at most 9 runs or about
/// 200 ms, whichever comes first, so a slow model delays its start by a fraction of a second.
fn one_image_run(
    session: &mut Session,
    spec: &ModelSpec,
) -> Result<std::time::Duration, ModelError> {
    let zeros = vec![0f32; spec.preprocess.tensor_len()];
    let started = std::time::Instant::now();
    let mut runs = Vec::with_capacity(9);
    while runs.len() < 9 && (runs.len() < 3 || started.elapsed().as_millis() < 200) {
        let t = std::time::Instant::now();
        run_batch(session, spec, &zeros, 1)?;
        runs.push(t.elapsed());
    }
    runs.sort_unstable();
    Ok(runs[runs.len() / 2])
}

/// Opens the sessions, on CUDA when it is listed and can start. CUDA is never dropped
/// silently: every reason it cannot run is named (see [`cuda::diagnose`]), fatal with
/// `model.require_cuda`, otherwise a warning and CPU sessions.
fn open_sessions(
    env: &ort::environment::Environment,
    config: &ModelConfig,
    inference: &InferenceConfig,
    count: usize,
    path: &Path,
) -> Result<(ExecutionProvider, Vec<Session>), ModelError> {
    let wants_cuda = config
        .execution_providers
        .contains(&ExecutionProvider::Cuda);
    let require_cuda = config.require_cuda;
    let (intra, inter) = (inference.intra_threads, inference.inter_threads);
    let mut use_cuda = wants_cuda && cuda_can_start(require_cuda)?;
    let mut sessions = Vec::with_capacity(count);
    while sessions.len() < count {
        let mut builder = session_builder(env, intra, inter)?;
        if use_cuda {
            // Registered strictly: ort's default would fall back to CPU with only a log line.
            if let Err(e) = ort::ep::CUDA::default().register(&mut builder) {
                without_cuda(require_cuda, &format!("CUDA failed to register: {e}"))?;
                use_cuda = false;
                sessions.clear();
                continue;
            }
        }
        match builder.commit_from_file(path) {
            Ok(session) => sessions.push(session),
            Err(e) if use_cuda => {
                // A device error only shows here; the CPU retry tells a model error apart.
                without_cuda(
                    require_cuda,
                    &format!("a CUDA session cannot load the model: {e}"),
                )?;
                use_cuda = false;
                sessions.clear();
            }
            Err(e) => return Err(ort_err("load the model")(e.to_string())),
        }
    }
    let provider = if use_cuda {
        ExecutionProvider::Cuda
    } else {
        ExecutionProvider::Cpu
    };
    Ok((provider, sessions))
}

/// Whether the loaded runtime has a CUDA provider and everything it needs is there; when not,
/// the reason goes through [`without_cuda`].
fn cuda_can_start(require_cuda: bool) -> Result<bool, ModelError> {
    let library = runtime::loaded_library()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "the loaded ONNX Runtime library".to_string());
    match ort::ep::CUDA::is_available() {
        Ok(true) => {}
        Ok(false) => {
            without_cuda(
                require_cuda,
                &format!(
                    "CUDA is listed in model.execution_providers but {library} has no CUDA \
                     provider (it is the CPU build; use the onnxruntime-gpu library)"
                ),
            )?;
            return Ok(false);
        }
        Err(e) => {
            return Err(ModelError::Provider(format!(
                "cannot list the runtime's providers: {e}"
            )));
        }
    }
    let Some(path) = runtime::loaded_library() else {
        return Ok(true);
    };
    let diagnosis = cuda::diagnose(path, &cuda::expected_libraries());
    if diagnosis.is_clear() {
        return Ok(true);
    }
    without_cuda(
        require_cuda,
        &format!("CUDA cannot start with {library}: {diagnosis}"),
    )?;
    Ok(false)
}

/// CUDA was asked for and cannot run: an error with `model.require_cuda`, else a warning.
fn without_cuda(require_cuda: bool, reason: &str) -> Result<(), ModelError> {
    if require_cuda {
        return Err(ModelError::Provider(format!(
            "{reason}; model.require_cuda is true, so this is fatal"
        )));
    }
    tracing::warn!(
        "{reason}; running on CPU instead (set model.require_cuda = true to make this fatal)"
    );
    Ok(())
}

fn session_builder(
    env: &ort::environment::Environment,
    intra_threads: usize,
    inter_threads: usize,
) -> Result<ort::session::builder::SessionBuilder, ModelError> {
    Session::builder(env)
        .map_err(|e| e.to_string())
        .map_err(ort_err("create a session builder"))?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| e.to_string())
        .map_err(ort_err("set the optimization level"))?
        .with_intra_threads(intra_threads)
        .map_err(|e| e.to_string())
        .map_err(ort_err("set intra-op threads"))?
        .with_inter_threads(inter_threads)
        .map_err(|e| e.to_string())
        .map_err(ort_err("set inter-op threads"))
}

fn read_metadata(session: &Session) -> Result<Option<ModelMetadata>, ModelError> {
    let meta = session
        .metadata()
        .map_err(|e| e.to_string())
        .map_err(ort_err("read model metadata"))?;
    match meta.custom(METADATA_KEY) {
        None => Ok(None),
        Some(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
            ModelError::Mismatch(format!(
                "the model's `{METADATA_KEY}` metadata is not valid: {e}"
            ))
        }),
    }
}

/// One declared input or output: its name, and its element type and shape when it is a tensor.
pub type Port = (String, Option<(TensorElementType, Vec<i64>)>);

/// The inputs and outputs a session declares, as plain data.
#[derive(Debug, Clone)]
pub struct Signature {
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
}

fn tensor_info(ty: &ValueType) -> Option<(TensorElementType, Vec<i64>)> {
    match ty {
        ValueType::Tensor { ty, shape, .. } => Some((*ty, shape.to_vec())),
        _ => None,
    }
}

impl Signature {
    pub fn of(session: &Session) -> Self {
        Signature {
            inputs: session
                .inputs()
                .iter()
                .map(|o| (o.name().to_string(), tensor_info(o.dtype())))
                .collect(),
            outputs: session
                .outputs()
                .iter()
                .map(|o| (o.name().to_string(), tensor_info(o.dtype())))
                .collect(),
        }
    }
}

fn resolve_spec(
    session: &Session,
    meta: &ModelMetadata,
    pre: &RawPreprocess,
    outs: &RawOutputs,
    labels: &[String],
) -> Result<ModelSpec, ModelError> {
    resolve(&Signature::of(session), meta, pre, outs, labels)
}

/// Resolves the spec from a signature, the model's metadata and the config overrides
/// (config wins, then metadata, then what the shapes imply).
pub fn resolve(
    sig: &Signature,
    meta: &ModelMetadata,
    pre: &RawPreprocess,
    outs: &RawOutputs,
    labels: &[String],
) -> Result<ModelSpec, ModelError> {
    let mismatch = |m: String| ModelError::Mismatch(m);
    let names = |list: &[Port]| {
        list.iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };

    // Input.
    let input_name = match pre.input.clone().or_else(|| meta.input.name.clone()) {
        Some(n) => n,
        None if sig.inputs.len() == 1 => sig.inputs[0].0.clone(),
        None => {
            return Err(mismatch(format!(
                "the model has inputs [{}]; set model.preprocess.input",
                names(&sig.inputs)
            )));
        }
    };
    if sig.inputs.len() != 1 {
        return Err(mismatch(format!(
            "the model has {} inputs [{}]; only single-input image classifiers are served",
            sig.inputs.len(),
            names(&sig.inputs)
        )));
    }
    let Some((_, Some((in_ty, in_shape)))) = sig.inputs.iter().find(|(n, _)| *n == input_name)
    else {
        return Err(mismatch(format!(
            "input `{input_name}` is not a tensor input of the model (it has [{}])",
            names(&sig.inputs)
        )));
    };
    if *in_ty != TensorElementType::Float32 {
        return Err(mismatch(format!(
            "input `{input_name}` is {in_ty:?}; only float32 image inputs are served"
        )));
    }
    if in_shape.len() != 4 {
        return Err(mismatch(format!(
            "input `{input_name}` has shape {in_shape:?}; expected 4 dimensions (NCHW or NHWC)"
        )));
    }
    let is_channels = |d: i64| d == 1 || d == 3;
    let layout_name = pre.layout.clone().or_else(|| meta.input.layout.clone());
    let layout = match layout_name.as_deref() {
        Some(s) => Layout::parse(s).ok_or_else(|| mismatch(format!("unknown layout `{s}`")))?,
        None if is_channels(in_shape[1]) && !is_channels(in_shape[3]) => Layout::Nchw,
        None if is_channels(in_shape[3]) && !is_channels(in_shape[1]) => Layout::Nhwc,
        None => {
            return Err(mismatch(format!(
                "cannot tell the layout of input shape {in_shape:?}; set model.preprocess.layout"
            )));
        }
    };
    let (c_dim, h_dim, w_dim) = match layout {
        Layout::Nchw => (in_shape[1], in_shape[2], in_shape[3]),
        Layout::Nhwc => (in_shape[3], in_shape[1], in_shape[2]),
    };
    let color = match pre.color.clone().or_else(|| meta.input.color.clone()) {
        Some(s) => Color::parse(&s).ok_or_else(|| mismatch(format!("unknown color `{s}`")))?,
        None if c_dim == 1 => Color::Grayscale,
        None if c_dim == 3 => Color::Rgb,
        None => {
            return Err(mismatch(format!(
                "cannot tell the colour mode of input shape {in_shape:?}; set model.preprocess.color"
            )));
        }
    };
    let channels = color.channels();
    if c_dim >= 0 && c_dim as usize != channels {
        return Err(mismatch(format!(
            "colour mode {color:?} has {channels} channels but input `{input_name}` has {c_dim} ({layout:?} {in_shape:?})"
        )));
    }
    let dim = |key: &str, configured: Option<u32>, declared: i64| -> Result<u32, ModelError> {
        match (configured, declared) {
            (Some(v), d) if d >= 0 && i64::from(v) != d => Err(mismatch(format!(
                "model.preprocess.{key} is {v} but the model's input has {d}"
            ))),
            (Some(v), _) => Ok(v),
            (None, d) if d > 0 => Ok(d as u32),
            (None, _) => Err(mismatch(format!(
                "the model's input {key} is dynamic; set model.preprocess.{key}"
            ))),
        }
    };
    let width = dim("width", pre.width.or(meta.input.width), w_dim)?;
    let height = dim("height", pre.height.or(meta.input.height), h_dim)?;
    let resize = match pre.resize.clone().or_else(|| meta.input.resize.clone()) {
        Some(s) => Resize::parse(&s).ok_or_else(|| mismatch(format!("unknown resize `{s}`")))?,
        None => Resize::Bilinear,
    };
    let scale = pre.scale.or(meta.input.scale).unwrap_or(1.0 / 255.0);
    let broadcast =
        |key: &str, v: Option<Vec<f32>>, default: f32| -> Result<Vec<f32>, ModelError> {
            match v {
                None => Ok(vec![default; channels]),
                Some(v) if v.len() == 1 => Ok(vec![v[0]; channels]),
                Some(v) if v.len() == channels => Ok(v),
                Some(v) => Err(mismatch(format!(
                    "model.preprocess.{key} has {} values; the input has {channels} channels",
                    v.len()
                ))),
            }
        };
    let mean = broadcast(
        "mean",
        pre.mean.clone().or_else(|| meta.input.mean.clone()),
        0.0,
    )?;
    let std = broadcast(
        "std",
        pre.std.clone().or_else(|| meta.input.std.clone()),
        1.0,
    )?;
    if std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(mismatch("every std value must be positive".into()));
    }
    let max_batch = match in_shape[0] {
        d if d < 0 => usize::MAX,
        1 => 1,
        d => {
            return Err(mismatch(format!(
                "input `{input_name}` has a fixed batch of {d}; export it with a dynamic batch or batch 1"
            )));
        }
    };

    // Outputs.
    let find_output = |name: &str| sig.outputs.iter().find(|(n, _)| n == name);
    let probabilities_output = match outs
        .probabilities
        .clone()
        .or_else(|| meta.outputs.probabilities.clone())
    {
        Some(n) => n,
        None if sig.outputs.len() == 1 => sig.outputs[0].0.clone(),
        None => {
            return Err(mismatch(format!(
                "the model has outputs [{}]; set model.outputs.probabilities",
                names(&sig.outputs)
            )));
        }
    };
    let num_classes = match find_output(&probabilities_output) {
        Some((_, Some((TensorElementType::Float32, shape)))) if shape.len() == 2 => shape[1],
        Some((_, info)) => {
            return Err(mismatch(format!(
                "output `{probabilities_output}` must be a float32 [batch, classes] tensor, found {info:?}"
            )));
        }
        None => {
            return Err(mismatch(format!(
                "the model has no output `{probabilities_output}` (it has [{}])",
                names(&sig.outputs)
            )));
        }
    };
    let output_kind = match outs
        .kind
        .clone()
        .or_else(|| meta.outputs.kind.clone())
        .as_deref()
    {
        Some("probabilities") => OutputKind::Probabilities,
        Some("logits") => OutputKind::Logits,
        Some(other) => return Err(mismatch(format!("unknown output kind `{other}`"))),
        None if probabilities_output.to_ascii_lowercase().contains("prob") => {
            OutputKind::Probabilities
        }
        None => OutputKind::Logits,
    };
    let embedding_output = match outs.embedding.clone() {
        Some(e) if e.is_empty() => None,
        Some(e) => Some(e),
        None => meta.outputs.embedding.clone(),
    };
    let embedding_dim = match &embedding_output {
        None => None,
        Some(name) => match find_output(name) {
            Some((_, Some((TensorElementType::Float32, shape)))) if shape.len() == 2 => {
                (shape[1] > 0).then_some(shape[1] as usize)
            }
            Some((_, info)) => {
                return Err(mismatch(format!(
                    "embedding output `{name}` must be a float32 [batch, dim] tensor, found {info:?}"
                )));
            }
            None => {
                return Err(mismatch(format!(
                    "the model has no output `{name}` (it has [{}]); fix model.outputs.embedding or set it to \"\"",
                    names(&sig.outputs)
                )));
            }
        },
    };

    let labels = if !labels.is_empty() {
        labels.to_vec()
    } else if !meta.labels.is_empty() {
        meta.labels.clone()
    } else if num_classes > 0 {
        (0..num_classes).map(|i| i.to_string()).collect()
    } else {
        return Err(mismatch(format!(
            "output `{probabilities_output}` has a dynamic class count; set model.labels"
        )));
    };
    if num_classes > 0 && labels.len() != num_classes as usize {
        return Err(mismatch(format!(
            "{} labels for {num_classes} classes in output `{probabilities_output}`",
            labels.len()
        )));
    }

    Ok(ModelSpec {
        name: String::new(),
        version: String::new(),
        labels,
        input_name: input_name.clone(),
        input_shape: in_shape.clone(),
        preprocess: Preprocess {
            width,
            height,
            color,
            layout,
            resize,
            scale,
            mean,
            std,
        },
        probabilities_output,
        output_kind,
        embedding_output,
        embedding_dim,
        max_batch,
        execution_provider: ExecutionProvider::Cpu,
        described_by: "",
    })
}

/// Runs `n` images (concatenated in `input`) through `session`. Probabilities come back
/// softmaxed when the model outputs logits; the output shapes are checked.
pub fn run_batch(
    session: &mut Session,
    spec: &ModelSpec,
    input: &[f32],
    n: usize,
) -> Result<Vec<RawOutput>, ModelError> {
    let per_image = spec.preprocess.tensor_len();
    assert_eq!(
        input.len(),
        n * per_image,
        "input length does not match the batch"
    );
    let mut shape = Vec::with_capacity(4);
    shape.push(n as i64);
    shape.extend(spec.preprocess.image_shape());
    let tensor = TensorRef::from_array_view((shape, input))
        .map_err(|e| e.to_string())
        .map_err(ort_err("wrap the input tensor"))?;
    let outputs = session
        .run(ort::inputs![spec.input_name.as_str() => tensor])
        .map_err(|e| e.to_string())
        .map_err(ort_err("run the model"))?;

    let k = spec.num_classes();
    let (p_shape, probs) = outputs
        .get(&spec.probabilities_output)
        .ok_or_else(|| ModelError::Mismatch(format!("no output `{}`", spec.probabilities_output)))?
        .try_extract_tensor::<f32>()
        .map_err(|e| e.to_string())
        .map_err(ort_err("read the probabilities"))?;
    if p_shape.len() != 2 || p_shape[0] != n as i64 || p_shape[1] != k as i64 {
        return Err(ModelError::Mismatch(format!(
            "output `{}` has shape {:?}; expected [{n}, {k}]",
            spec.probabilities_output,
            p_shape.to_vec()
        )));
    }
    let embeddings = match &spec.embedding_output {
        None => None,
        Some(name) => {
            let (e_shape, e) = outputs
                .get(name)
                .ok_or_else(|| ModelError::Mismatch(format!("no output `{name}`")))?
                .try_extract_tensor::<f32>()
                .map_err(|e| e.to_string())
                .map_err(ort_err("read the embedding"))?;
            if e_shape.len() != 2
                || e_shape[0] != n as i64
                || spec.embedding_dim.is_some_and(|d| e_shape[1] != d as i64)
            {
                return Err(ModelError::Mismatch(format!(
                    "output `{name}` has shape {:?}; expected [{n}, {}]",
                    e_shape.to_vec(),
                    spec.embedding_dim.map_or("d".into(), |d| d.to_string())
                )));
            }
            Some((e_shape[1] as usize, e))
        }
    };

    let mut results = Vec::with_capacity(n);
    for i in 0..n {
        let mut probabilities = probs[i * k..(i + 1) * k].to_vec();
        if spec.output_kind == OutputKind::Logits {
            crate::prediction::softmax_in_place(&mut probabilities);
        }
        let embedding = embeddings
            .as_ref()
            .map(|(d, e)| e[i * d..(i + 1) * d].to_vec());
        results.push(RawOutput {
            probabilities,
            embedding,
        });
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_sessions_follow_the_run_time() {
        let us = std::time::Duration::from_micros;
        // Light: one session whatever the cores.
        assert_eq!(auto_sessions(us(6), 2, 1), 1);
        assert_eq!(auto_sessions(us(499), 16, 1), 1);
        // Heavy: one per core, divided by the threads each session uses.
        assert_eq!(auto_sessions(us(500), 2, 1), 2);
        assert_eq!(auto_sessions(us(4_900), 16, 1), 16);
        assert_eq!(auto_sessions(us(4_900), 16, 4), 4);
        assert_eq!(auto_sessions(us(4_900), 2, 4), 1);
        assert_eq!(auto_sessions(us(4_900), 256, 1), 64);
    }

    fn sig(input: Vec<i64>, outputs: Vec<(&str, Vec<i64>)>) -> Signature {
        Signature {
            inputs: vec![("image".into(), Some((TensorElementType::Float32, input)))],
            outputs: outputs
                .into_iter()
                .map(|(n, s)| (n.to_string(), Some((TensorElementType::Float32, s))))
                .collect(),
        }
    }

    fn digits_meta() -> ModelMetadata {
        serde_json::from_str(
            r#"{"format": "shiftwatch.model/v1", "labels": ["0","1","2","3","4","5","6","7","8","9"],
                "input": {"name": "image", "layout": "nchw", "color": "grayscale", "width": 8, "height": 8,
                          "resize": "area", "scale": 0.004166666666666667, "mean": [0.0], "std": [1.0]},
                "outputs": {"probabilities": "probabilities", "kind": "probabilities", "embedding": "embedding"},
                "training": {"variant": "anything"}}"#,
        )
        .unwrap()
    }

    #[test]
    fn metadata_describes_the_model() {
        let s = sig(
            vec![-1, 1, 8, 8],
            vec![("probabilities", vec![-1, 10]), ("embedding", vec![-1, 32])],
        );
        let spec = resolve(
            &s,
            &digits_meta(),
            &RawPreprocess::default(),
            &RawOutputs::default(),
            &[],
        )
        .unwrap();
        assert_eq!(spec.preprocess.layout, Layout::Nchw);
        assert_eq!(spec.preprocess.color, Color::Grayscale);
        assert_eq!((spec.preprocess.width, spec.preprocess.height), (8, 8));
        assert_eq!(spec.preprocess.resize, Resize::Area);
        assert_eq!(spec.output_kind, OutputKind::Probabilities);
        assert_eq!(spec.embedding_dim, Some(32));
        assert_eq!(spec.labels.len(), 10);
        assert_eq!(spec.max_batch, usize::MAX);
    }

    #[test]
    fn config_alone_describes_an_unlabelled_model() {
        let s = Signature {
            inputs: vec![(
                "input".into(),
                Some((TensorElementType::Float32, vec![-1, 64, 64, 3])),
            )],
            outputs: vec![(
                "logits".into(),
                Some((TensorElementType::Float32, vec![-1, 5])),
            )],
        };
        let pre = RawPreprocess {
            mean: Some(vec![0.485, 0.456, 0.406]),
            std: Some(vec![0.229, 0.224, 0.225]),
            ..Default::default()
        };
        let spec = resolve(
            &s,
            &ModelMetadata::default(),
            &pre,
            &RawOutputs::default(),
            &[],
        )
        .unwrap();
        assert_eq!(spec.preprocess.layout, Layout::Nhwc);
        assert_eq!(spec.preprocess.color, Color::Rgb);
        assert_eq!(spec.output_kind, OutputKind::Logits);
        assert_eq!(spec.labels, vec!["0", "1", "2", "3", "4"]);
        assert_eq!(spec.embedding_output, None);
    }

    #[test]
    fn mismatches_are_reported() {
        let s = sig(vec![-1, 1, 8, 8], vec![("probabilities", vec![-1, 10])]);
        let pre = RawPreprocess {
            width: Some(16),
            ..Default::default()
        };
        let e = resolve(
            &s,
            &ModelMetadata::default(),
            &pre,
            &RawOutputs::default(),
            &[],
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("model.preprocess.width is 16"),
            "{e}"
        );

        let pre = RawPreprocess {
            color: Some("rgb".into()),
            ..Default::default()
        };
        let e = resolve(
            &s,
            &ModelMetadata::default(),
            &pre,
            &RawOutputs::default(),
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("3 channels"), "{e}");

        let labels: Vec<String> = vec!["a".into(), "b".into()];
        let e = resolve(
            &s,
            &ModelMetadata::default(),
            &RawPreprocess::default(),
            &RawOutputs::default(),
            &labels,
        )
        .unwrap_err();
        assert!(e.to_string().contains("2 labels for 10 classes"), "{e}");

        let outs = RawOutputs {
            embedding: Some("features".into()),
            ..Default::default()
        };
        let e = resolve(
            &s,
            &ModelMetadata::default(),
            &RawPreprocess::default(),
            &outs,
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("no output `features`"), "{e}");

        let fixed = sig(vec![4, 1, 8, 8], vec![("probabilities", vec![4, 10])]);
        let e = resolve(
            &fixed,
            &ModelMetadata::default(),
            &RawPreprocess::default(),
            &RawOutputs::default(),
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("fixed batch of 4"), "{e}");
    }

    #[test]
    fn version_is_twelve_hex_digits_of_sha256() {
        // sha256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
        assert_eq!(model_version(b"abc"), "ba7816bf8f01");
    }
}
