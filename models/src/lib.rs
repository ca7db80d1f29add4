//! models: cpipe's inference engines. It knows nothing of pipes: each engine takes plain
//! Rust values (messages, text, samples) and returns or streams plain Rust values, so the
//! `servers` crate can wire it to any transport.
//!
//! The engines (LLM on candle, speech-to-text on whisper-rs, Piper text-to-speech, Silero
//! VAD, embeddings) arrive with their servers; see the open issues.
