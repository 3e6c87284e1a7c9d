//! Why the CUDA execution provider cannot start, named precisely.
//!
//! ONNX Runtime reports only the first shared library that fails to load, and a machine without
//! a GPU only once a session is created, through its own log. [`diagnose`] looks at every piece
//! the provider needs before a session is built: the provider libraries beside
//! `libonnxruntime.so`, each NVIDIA library it loads (opened by name, as the runtime will, so
//! `LD_LIBRARY_PATH` and the loader cache count the same), the driver, and the devices the CUDA
//! runtime sees. Libraries that load are kept loaded: the runtime opens them next anyway.

use std::ffi::{CStr, c_char, c_int};
use std::fmt;
use std::path::Path;

/// The provider's own libraries; ONNX Runtime looks for them beside `libonnxruntime.so`.
const PROVIDER_LIBRARIES: [&str; 2] = [
    "libonnxruntime_providers_shared.so",
    "libonnxruntime_providers_cuda.so",
];

/// The driver's library. It comes with the NVIDIA driver on the host (the container toolkit
/// mounts it into a container), never from a wheel; without it no GPU is visible.
const DRIVER_LIBRARY: &str = "libcuda.so.1";

/// What the CUDA runtime library is called; the device count is asked through it.
const CUDA_RUNTIME_LIBRARY: &str = "libcudart.so.13";

/// One library that cannot be loaded, with the loader's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unloadable {
    pub library: String,
    pub reason: String,
}

impl fmt::Display for Unloadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The loader's usual text repeats the name; keep only what it adds.
        let not_found = format!(
            "{}: cannot open shared object file: No such file or directory",
            self.library
        );
        if self.reason == not_found {
            write!(f, "{} (not found)", self.library)
        } else {
            write!(f, "{} ({})", self.library, self.reason)
        }
    }
}

/// Everything that stands between the loaded runtime and a CUDA session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnosis {
    /// Provider libraries missing beside the runtime library (full paths).
    pub missing_provider: Vec<String>,
    /// NVIDIA libraries (CUDA, cuBLAS, cuDNN, …) that the loader cannot open.
    pub unloadable: Vec<Unloadable>,
    /// The driver library, when it cannot be opened.
    pub driver: Option<Unloadable>,
    /// The CUDA runtime's device count, or its error; `None` when it could not be asked
    /// (`libcudart` itself did not load).
    pub devices: Option<Result<u32, String>>,
}

impl Diagnosis {
    /// True when nothing stands in the way: every library loads and at least one device is seen.
    pub fn is_clear(&self) -> bool {
        self.missing_provider.is_empty()
            && self.unloadable.is_empty()
            && self.driver.is_none()
            && matches!(self.devices, Some(Ok(n)) if n > 0)
    }
}

impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if !self.missing_provider.is_empty() {
            parts.push(format!(
                "the runtime library has no CUDA provider beside it (missing {}): use the \
                 libraries of the onnxruntime-gpu wheel",
                self.missing_provider.join(", ")
            ));
        }
        if !self.unloadable.is_empty() {
            let list: Vec<String> = self.unloadable.iter().map(|u| u.to_string()).collect();
            parts.push(format!(
                "NVIDIA libraries that cannot be loaded: {} (install the CUDA 13 runtime, cuBLAS, \
                 cuFFT, cuRAND, NVRTC and cuDNN 9, e.g. their nvidia-* wheels, and put their lib \
                 folders on LD_LIBRARY_PATH)",
                list.join(", ")
            ));
        }
        if let Some(driver) = &self.driver {
            parts.push(format!(
                "no NVIDIA driver: {driver}, so no GPU is visible to this process (on Kubernetes \
                 request nvidia.com/gpu; with Docker run with --gpus)"
            ));
        }
        match &self.devices {
            Some(Ok(0)) => parts.push("the CUDA runtime sees no device".to_string()),
            Some(Err(e)) => parts.push(format!("the CUDA runtime cannot count devices: {e}")),
            Some(Ok(_)) | None => {}
        }
        if parts.is_empty() {
            return f.write_str("nothing missing");
        }
        f.write_str(&parts.join("; "))
    }
}

/// Checks every piece the CUDA provider of the runtime at `runtime_library` needs.
/// `libraries` are the NVIDIA libraries to open, dependencies first.
pub fn diagnose(runtime_library: &Path, libraries: &[&str]) -> Diagnosis {
    let dir = runtime_library.parent().unwrap_or(Path::new("."));
    let missing_provider = PROVIDER_LIBRARIES
        .iter()
        .map(|name| dir.join(name))
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    let mut unloadable = Vec::new();
    let mut cudart = None;
    for &name in libraries {
        match open(name) {
            Ok(lib) if name == CUDA_RUNTIME_LIBRARY => cudart = Some(lib),
            Ok(lib) => keep(lib),
            Err(e) => unloadable.push(e),
        }
    }
    let driver = match open(DRIVER_LIBRARY) {
        Ok(lib) => {
            keep(lib);
            None
        }
        Err(e) => Some(e),
    };
    let devices = cudart.map(|lib| {
        let count = device_count(&lib);
        keep(lib);
        count
    });
    Diagnosis {
        missing_provider,
        unloadable,
        driver,
        devices,
    }
}

/// The libraries ort's CUDA support expects (CUDA 13, then cuDNN 9), dependencies first.
pub fn expected_libraries() -> Vec<&'static str> {
    ort::ep::cuda::CUDA_DYLIBS
        .iter()
        .chain(ort::ep::cuda::CUDNN_DYLIBS)
        .copied()
        .collect()
}

fn open(name: &str) -> Result<libloading::Library, Unloadable> {
    // SAFETY: these are NVIDIA's libraries, loaded by name exactly as ONNX Runtime's CUDA
    // provider would load them; their initialisers have no preconditions.
    unsafe { libloading::Library::new(name) }.map_err(|e| Unloadable {
        library: name.to_string(),
        reason: std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_else(|| e.to_string()),
    })
}

/// Leaves a library loaded for the life of the process: unloading NVIDIA's libraries can run
/// their exit handlers early, and ONNX Runtime is about to open them again.
fn keep(lib: libloading::Library) {
    std::mem::forget(lib);
}

/// `cudaGetDeviceCount` through the loaded CUDA runtime, its error as CUDA words it.
fn device_count(cudart: &libloading::Library) -> Result<u32, String> {
    type GetDeviceCount = unsafe extern "C" fn(*mut c_int) -> c_int;
    type GetErrorString = unsafe extern "C" fn(c_int) -> *const c_char;
    // SAFETY: the signatures are those of the CUDA runtime API (cudaError_t is a C int enum).
    let (count_fn, error_fn) = unsafe {
        (
            cudart
                .get::<GetDeviceCount>(b"cudaGetDeviceCount\0")
                .map_err(|e| format!("{CUDA_RUNTIME_LIBRARY} has no cudaGetDeviceCount: {e}"))?,
            cudart.get::<GetErrorString>(b"cudaGetErrorString\0").ok(),
        )
    };
    let mut count: c_int = 0;
    // SAFETY: `count` is a valid out-pointer for the duration of the call.
    let code = unsafe { count_fn(&mut count) };
    if code == 0 {
        return Ok(count.max(0) as u32);
    }
    let words = error_fn
        // SAFETY: cudaGetErrorString returns a static NUL-terminated string for any code.
        .map(|f| unsafe { f(code) })
        .filter(|p| !p.is_null())
        .map(|p| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        .unwrap_or_default();
    Err(format!("cudaGetDeviceCount returned error {code}: {words}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_named_with_the_loaders_reason() {
        let d = diagnose(
            Path::new("/nonexistent/libonnxruntime.so.1"),
            &["libshiftwatch-no-such-library.so.7"],
        );
        assert_eq!(
            d.missing_provider,
            vec![
                "/nonexistent/libonnxruntime_providers_shared.so".to_string(),
                "/nonexistent/libonnxruntime_providers_cuda.so".to_string(),
            ]
        );
        assert_eq!(d.unloadable.len(), 1);
        assert_eq!(
            d.unloadable[0].library,
            "libshiftwatch-no-such-library.so.7"
        );
        assert_eq!(
            d.unloadable[0].to_string(),
            "libshiftwatch-no-such-library.so.7 (not found)"
        );
        assert_eq!(
            d.devices, None,
            "libcudart was not in the list, so not asked"
        );
        assert!(!d.is_clear());
        let text = d.to_string();
        assert!(text.contains("libonnxruntime_providers_cuda.so"), "{text}");
        assert!(
            text.contains("libshiftwatch-no-such-library.so.7 (not found)"),
            "{text}"
        );
    }

    #[test]
    fn a_library_that_loads_is_not_reported() {
        // The C library is on every Linux machine.
        let d = diagnose(
            Path::new("/nonexistent/libonnxruntime.so.1"),
            &["libc.so.6"],
        );
        assert!(d.unloadable.is_empty(), "{d:?}");
    }

    #[test]
    fn the_expected_libraries_are_cuda_13_and_cudnn_9() {
        let libs = expected_libraries();
        assert_eq!(libs.first(), Some(&CUDA_RUNTIME_LIBRARY));
        assert!(libs.contains(&"libcublas.so.13"), "{libs:?}");
        assert!(libs.contains(&"libcudnn.so.9"), "{libs:?}");
    }
}
