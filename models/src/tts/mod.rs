//! Text-to-speech: Piper voices ([`PiperVoice`]) phonemized by espeak-ng.

mod espeak;
mod piper;

use std::path::PathBuf;

pub use espeak::EspeakError;
pub use piper::{voice_name, PiperVoice, SpeakOptions};

use crate::onnx::OnnxError;

/// Text-to-speech failed.
#[derive(Debug, thiserror::Error)]
pub enum TtsError {
    /// The voice files are missing or malformed.
    #[error("bad Piper voice {path}: {reason}")]
    Voice {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// ONNX Runtime or the model could not be loaded.
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    /// espeak-ng failed.
    #[error(transparent)]
    Espeak(#[from] EspeakError),
    /// No such speaker in the voice.
    #[error("voice '{voice}' has no speaker '{wanted}': {available}")]
    Speaker {
        /// What was asked for.
        wanted: String,
        /// The voice.
        voice: String,
        /// What there is.
        available: String,
    },
    /// The model failed while running.
    #[error("synthesis failed: {0}")]
    Inference(String),
}
