//! Where the offline models live, and how a `--model` or `--voice` argument becomes a file.

use std::path::{Path, PathBuf};

pub use models::source::offline_models_dir as models_dir;
use models::source::ModelSource;

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

/// A Whisper model (`--whisper`) as a whisper.cpp GGML file: `tiny.en` (the offline model,
/// imported from its CTranslate2 folder on first use), a GGML file, a CTranslate2 folder
/// (imported once, next to the offline models), or `owner/repo:file` on the hub.
pub fn whisper_model(model: &str) -> anyhow::Result<PathBuf> {
    let folder = if model == "tiny.en" {
        offline(model, "faster-whisper-tiny.en", "whisper")?
    } else {
        PathBuf::from(model)
    };
    if folder.is_dir() {
        let name = folder
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "whisper".into());
        let ggml = models_dir().join(format!("ggml-{name}.bin"));
        if !ggml.exists() {
            std::fs::create_dir_all(models_dir())?;
            import_whisper(&folder, &ggml)?;
        }
        return Ok(ggml);
    }
    Ok(ModelSource::parse(model)?.resolve()?)
}

/// `cpipe import-whisper`: converts a CTranslate2 Whisper folder to a GGML file.
pub fn import_whisper(folder: &Path, output: &Path) -> anyhow::Result<()> {
    tracing::info!(
        "importing the CTranslate2 model {} into {}",
        folder.display(),
        output.display()
    );
    let summary = models::stt::import_ct2_whisper(folder, output)?;
    eprintln!(
        "wrote {}: {} encoder and {} decoder layers, {} tokens, {} tensors",
        summary.output.display(),
        summary.layers.0,
        summary.layers.1,
        summary.vocabulary,
        summary.tensors
    );
    Ok(())
}

/// `--listen`: auto (the default microphone when there is one), none, mic, mic:NAME, or a
/// WAV file.
pub fn listen_source(listen: &str) -> anyhow::Result<Option<crate::kinds::stt::Source>> {
    use crate::kinds::stt::Source;
    Ok(match listen {
        "none" => None,
        "auto" => {
            let (_, default) = crate::kinds::stt::input_devices();
            if default.is_none() {
                tracing::warn!(
                    "no microphone: not listening (send listen with a file, or push audio)"
                );
            }
            default.map(|_| Source::Microphone(None))
        }
        "mic" => Some(Source::Microphone(None)),
        other => match other.strip_prefix("mic:") {
            Some(name) => Some(Source::Microphone(Some(name.into()))),
            None => {
                let path = PathBuf::from(other);
                anyhow::ensure!(
                    path.is_file(),
                    "--listen {other}: not auto, none, mic, mic:NAME, or an existing WAV file"
                );
                Some(Source::File {
                    path,
                    realtime: true,
                })
            }
        },
    })
}
