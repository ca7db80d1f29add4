//! Speech-to-text: Whisper on whisper.cpp ([`Whisper`]), Silero voice activity detection to cut
//! live audio into utterances ([`Segmenter`]), resampling of any common audio to 16 kHz mono,
//! and the importer from faster-whisper's CTranslate2 folders to whisper.cpp's GGML files.

pub mod audio;
mod ct2;
mod import;
pub mod vad;
mod wer;
mod whisper;

use std::path::PathBuf;

pub use import::{import_ct2_whisper, mel_filters, ImportSummary};
pub use vad::{Segmenter, SileroVad, VadEvent, VadSettings};
pub use wer::word_error_rate;
pub use whisper::{encoder_window, Segment, Whisper, Word};

use crate::onnx::OnnxError;

/// The language codes Whisper's multilingual models know (`en`, `zh`, `de`, ...).
pub fn languages() -> Vec<&'static str> {
    (0..=whisper_rs::get_lang_max_id())
        .filter_map(whisper_rs::get_lang_str)
        .collect()
}

/// The sample rate Whisper and the VAD work at.
pub const SAMPLE_RATE: u32 = 16_000;

/// Speech-to-text failed.
#[derive(Debug, thiserror::Error)]
pub enum SttError {
    /// The Whisper model could not be loaded.
    #[error("cannot load the Whisper model {path}: {reason}")]
    Model {
        /// The model file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A CTranslate2 folder could not be converted.
    #[error("cannot import {path}: {reason}")]
    Import {
        /// The folder or file at fault.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The language cannot be transcribed by this model.
    #[error("{0}")]
    Language(String),
    /// whisper.cpp failed on the audio.
    #[error("transcription failed: {0}")]
    Transcribe(String),
    /// The transcription was stopped before it finished.
    #[error("transcription interrupted")]
    Interrupted,
    /// The VAD failed.
    #[error("voice activity detection failed: {0}")]
    Vad(String),
    /// ONNX Runtime or the VAD model could not be loaded.
    #[error(transparent)]
    Onnx(#[from] OnnxError),
}
