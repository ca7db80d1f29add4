//! Where the offline models live, and how a `--model` or `--voice` argument becomes a file.

use std::path::PathBuf;

use models::source::ModelSource;

/// Where offline models live: `CPIPE_MODELS`, else `~/.cache/cpipe/models`.
pub fn models_dir() -> PathBuf {
    match std::env::var_os("CPIPE_MODELS") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
            .join(".cache/cpipe/models"),
    }
}

/// The ONNX Runtime library: `ORT_DYLIB_PATH`, else the one scripts/fetch-models.sh installs.
pub fn onnx_runtime() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH")
        .filter(|p| !p.is_empty())
        .map_or_else(|| models_dir().join("libonnxruntime.so"), PathBuf::from)
}

/// An offline file installed by `scripts/fetch-models.sh WHICH`, or a clear error saying so.
pub fn offline(name: &str, file: &str, which: &str) -> anyhow::Result<PathBuf> {
    let path = models_dir().join(file);
    anyhow::ensure!(
        path.exists(),
        "the offline model '{name}' is not installed at {}: run scripts/fetch-models.sh {which}",
        path.display()
    );
    Ok(path)
}

/// A Piper voice (`--voice`): an offline name, a local `.onnx`, or `owner/repo:path.onnx` on the
/// Hugging Face hub (its `.onnx.json` is fetched beside it). Returns the local `.onnx`.
pub fn piper_voice(voice: &str) -> anyhow::Result<PathBuf> {
    if voice == "joe" {
        return offline(voice, "en_US-joe-medium.onnx", "piper");
    }
    match ModelSource::parse(voice)? {
        ModelSource::Local(path) => Ok(path),
        ModelSource::Hub { repo, file } => {
            let config = ModelSource::Hub {
                repo: repo.clone(),
                file: format!("{file}.json"),
            };
            config.resolve()?;
            Ok(ModelSource::Hub { repo, file }.resolve()?)
        }
    }
}
