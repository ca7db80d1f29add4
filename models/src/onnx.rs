//! ONNX Runtime, loaded at run time from its shared library (`load-dynamic`), shared by the
//! engines that run ONNX models (Piper voices, Silero VAD).
//!
//! The library is found at the path the caller gives, else `ORT_DYLIB_PATH`. It is loaded
//! once per process; later calls reuse it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;

/// ONNX Runtime could not be loaded, or a model could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The shared library is missing or unusable.
    #[error(
        "cannot load ONNX Runtime from {path}: {reason}. Install it with \
         scripts/fetch-models.sh piper (or point ORT_DYLIB_PATH at a libonnxruntime.so 1.31)"
    )]
    Runtime {
        /// Where it was looked for.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The model file could not be opened as an ONNX model.
    #[error("cannot load the ONNX model {path}: {reason}")]
    Model {
        /// The model file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

/// Loads ONNX Runtime from `library` (or `ORT_DYLIB_PATH` when `None`) unless already loaded.
pub fn environment(library: Option<&Path>) -> Result<&'static Environment, OnnxError> {
    let path = library
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("libonnxruntime.so"));
    let loaded = ENVIRONMENT.get_or_init(|| {
        if path.is_absolute() && !path.exists() {
            return Err("no such file".into());
        }
        ort::init_from(&path)
            .map_err(|e| e.to_string())?
            .with_name("cpipe")
            .build()
            .map_err(|e| e.to_string())
    });
    loaded.as_ref().map_err(|reason| OnnxError::Runtime {
        path,
        reason: reason.clone(),
    })
}

/// Opens an ONNX model for inference on `threads` threads.
pub fn session(
    environment: &Environment,
    model: &Path,
    threads: usize,
) -> Result<Session, OnnxError> {
    let fail = |e: ort::Error| OnnxError::Model {
        path: model.into(),
        reason: e.to_string(),
    };
    if !model.is_file() {
        return Err(OnnxError::Model {
            path: model.into(),
            reason: "no such file".into(),
        });
    }
    Session::builder(environment)
        .map_err(fail)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| fail(e.into()))?
        .with_intra_threads(threads.max(1))
        .map_err(|e| fail(e.into()))?
        .commit_from_file(model)
        .map_err(fail)
}
