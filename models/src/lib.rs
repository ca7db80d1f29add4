//! models: cpipe's inference engines. It knows nothing of pipes: each engine takes plain Rust
//! values (messages, text, samples) and returns or streams plain Rust values, so the `servers`
//! crate can wire it to any transport.
//!
//! - [`llm`]: chat models in quantized GGUF files, on candle.
//! - [`stt`]: speech-to-text with Whisper (whisper.cpp), Silero VAD, and a CTranslate2 importer.
//! - `tts`: text-to-speech with Piper voices, phonemized by espeak-ng (the `tts` feature, on
//!   by default: it links the GPL-3.0-or-later libespeak-ng).
//! - [`embed`]: sentence embeddings with BERT-family models (all-MiniLM, BGE), on candle.
//! - [`onnx`]: ONNX Runtime, loaded at run time, for the ONNX models.
//! - [`sentences`]: cutting streamed text into sentences, so speech can start early.
//! - [`source`]: where model files come from (a local path, or the Hugging Face hub).
//! - [`device`]: the compute device, GPU when built with `cuda` or `metal`.

pub mod device;
pub mod embed;
pub mod llm;
pub mod onnx;
pub mod sentences;
pub mod source;
pub mod stt;
#[cfg(feature = "tts")]
pub mod tts;
