//! Finding and loading the ONNX Runtime shared library (ort's `load-dynamic`).
//!
//! Order: the `runtime.library` config key, then `ORT_DYLIB_PATH`, then `make runtime`'s folder
//! `vendor/onnxruntime/` beside the working directory or above the executable. When none has it,
//! the error says how to get it. One environment per process, made on first use.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

use super::ModelError;

/// The ONNX Runtime release `make runtime` installs (from the PyPI wheel).
pub const ORT_VERSION: &str = "1.31.1";

const VENDOR_DIR: &str = "vendor/onnxruntime";

/// `[runtime]`: where the ONNX Runtime library is.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRuntime {
    pub library: String,
}

impl RawRuntime {
    pub fn validate(self, _bad: &mut dyn FnMut(&str, String)) -> Option<PathBuf> {
        (!self.library.is_empty()).then(|| PathBuf::from(self.library))
    }
}

fn library_file_names() -> [String; 3] {
    [
        format!("libonnxruntime.so.{ORT_VERSION}"),
        "libonnxruntime.so.1".to_string(),
        "libonnxruntime.so".to_string(),
    ]
}

/// The library to load, or an error listing where it looked and how to get it.
pub fn resolve_library(configured: Option<&Path>) -> Result<PathBuf, ModelError> {
    if let Some(path) = configured {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(missing(&[format!("{} (runtime.library)", path.display())]))
        };
    }
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(missing(&[format!("{} (ORT_DYLIB_PATH)", path.display())]))
        };
    }
    let mut dirs = vec![PathBuf::from(VENDOR_DIR)];
    if let Ok(exe) = std::env::current_exe() {
        // target/{debug,release}/shiftwatch → the checkout's vendor folder, and beside the binary.
        for ancestor in exe.ancestors().skip(1).take(4) {
            dirs.push(ancestor.join(VENDOR_DIR));
        }
    }
    let mut looked: Vec<String> = Vec::new();
    for dir in dirs {
        for name in library_file_names() {
            let candidate = dir.join(&name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
        let shown = dir.display().to_string();
        if !looked.contains(&shown) {
            looked.push(shown);
        }
    }
    Err(missing(&[format!(
        "libonnxruntime.so[.1|.{ORT_VERSION}] in {}",
        looked.join(", ")
    )]))
}

fn missing(looked: &[String]) -> ModelError {
    ModelError::Runtime(format!(
        "ONNX Runtime library not found (looked for {}). Run `make runtime` in the shiftwatch \
         checkout: it downloads the onnxruntime=={ORT_VERSION} wheel from PyPI and unpacks \
         libonnxruntime.so into {VENDOR_DIR}/. Or point the runtime.library config key \
         (SHIFTWATCH__RUNTIME__LIBRARY) or ORT_DYLIB_PATH at an existing libonnxruntime.so \
         of version 1.31 or newer",
        looked.join(", ")
    ))
}

static ENVIRONMENT: OnceLock<Result<(PathBuf, Environment), String>> = OnceLock::new();

/// The process's ONNX Runtime environment, loading the library on first call.
pub fn environment(configured: Option<&Path>) -> Result<Environment, ModelError> {
    let path = resolve_library(configured)?;
    let loaded = ENVIRONMENT.get_or_init(|| {
        let builder = ort::init_from(&path).map_err(|e| {
            format!(
                "cannot load ONNX Runtime from {}: {e}. Run `make runtime` to install \
                 onnxruntime {ORT_VERSION}",
                path.display()
            )
        })?;
        let env = builder
            .with_name("shiftwatch")
            .build()
            .map_err(|e| format!("cannot create the ONNX Runtime environment: {e}"))?;
        tracing::info!(library = %path.display(), "loaded ONNX Runtime");
        Ok((path.clone(), env))
    });
    match loaded {
        Ok((_, env)) => Ok(env.clone()),
        Err(message) => Err(ModelError::Runtime(message.clone())),
    }
}

/// The library the process's environment was loaded from, once [`environment`] succeeded.
pub fn loaded_library() -> Option<&'static Path> {
    match ENVIRONMENT.get() {
        Some(Ok((path, _))) => Some(path.as_path()),
        _ => None,
    }
}
