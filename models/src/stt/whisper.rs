//! Whisper on whisper.cpp (through whisper-rs): a GGML model loaded once, transcribing 16 kHz
//! mono audio into timed segments.

use std::path::Path;

use whisper_rs::{
    FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters, WhisperState,
};

use super::{SttError, SAMPLE_RATE};

/// A stretch of transcribed speech.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Start, in seconds from the start of the audio.
    pub start: f32,
    /// End, in seconds.
    pub end: f32,
    /// What was said.
    pub text: String,
}

/// A loaded Whisper model with its decoding state.
pub struct Whisper {
    // The state borrows the context's model inside whisper.cpp: keep both.
    state: WhisperState,
    _context: WhisperContext,
    multilingual: bool,
    threads: usize,
}

impl std::fmt::Debug for Whisper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Whisper")
            .field("multilingual", &self.multilingual)
            .finish()
    }
}

impl Whisper {
    /// Loads a whisper.cpp GGML model, onto the GPU when built with `cuda` or `metal`.
    pub fn load(model: &Path, threads: usize) -> Result<Self, SttError> {
        whisper_rs::install_logging_hooks();
        if !model.is_file() {
            return Err(SttError::Model {
                path: model.into(),
                reason: "no such file".into(),
            });
        }
        let params = WhisperContextParameters {
            use_gpu: cfg!(any(feature = "cuda", feature = "metal")),
            // whisper.cpp 1.9's CPU encoder is ~4x faster with flash attention than without, and
            // its own CLI turns it on by default; whisper-rs defaults it off.
            flash_attn: true,
            ..WhisperContextParameters::default()
        };
        let context =
            WhisperContext::new_with_params(model, params).map_err(|e| SttError::Model {
                path: model.into(),
                reason: format!("whisper.cpp cannot load it ({e}); is it a whisper.cpp GGML file?"),
            })?;
        let state = context.create_state().map_err(|e| SttError::Model {
            path: model.into(),
            reason: format!("cannot create a decoding state: {e}"),
        })?;
        Ok(Self {
            multilingual: context.is_multilingual(),
            state,
            _context: context,
            threads: threads.max(1),
        })
    }

    /// Whether the model knows languages besides English.
    pub fn is_multilingual(&self) -> bool {
        self.multilingual
    }

    /// Transcribes 16 kHz mono samples. `language` is a code such as `en` (English-only models
    /// take only `en`); `None` detects it on multilingual models.
    pub fn transcribe(
        &mut self,
        samples: &[f32],
        language: Option<&str>,
    ) -> Result<Vec<Segment>, SttError> {
        // whisper.cpp needs at least a second of audio to decode reliably: pad with silence.
        let mut audio = samples.to_vec();
        if audio.len() < SAMPLE_RATE as usize {
            audio.resize(SAMPLE_RATE as usize + SAMPLE_RATE as usize / 10, 0.0);
        }
        let language = match (self.multilingual, language) {
            (false, Some(l)) if l != "en" => {
                return Err(SttError::Language(format!(
                    "this model understands only English, not '{l}'"
                )))
            }
            (false, _) => Some("en"),
            (true, l) => Some(l.unwrap_or("auto")),
        };
        let mut params = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
        params.set_n_threads(self.threads as i32);
        params.set_language(language);
        params.set_no_context(true);
        params.set_suppress_blank(true);
        params.set_print_progress(false);
        params.set_print_realtime(false);
        params.set_print_special(false);
        params.set_print_timestamps(false);
        self.state
            .full(params, &audio)
            .map_err(|e| SttError::Transcribe(e.to_string()))?;
        let mut segments = Vec::new();
        for segment in self.state.as_iter() {
            let text = segment
                .to_str_lossy()
                .map_err(|e| SttError::Transcribe(e.to_string()))?
                .trim()
                .to_string();
            if text.is_empty() || is_non_speech(&text) {
                continue;
            }
            segments.push(Segment {
                // whisper.cpp counts in centiseconds.
                start: segment.start_timestamp() as f32 / 100.0,
                end: (segment.end_timestamp() as f32 / 100.0)
                    .min(samples.len() as f32 / SAMPLE_RATE as f32),
                text,
            });
        }
        Ok(segments)
    }
}

/// Whisper's markers for what is not speech: `[BLANK_AUDIO]`, `(music)`, `[ Silence ]`.
fn is_non_speech(text: &str) -> bool {
    let t = text.trim();
    (t.starts_with('[') && t.ends_with(']')) || (t.starts_with('(') && t.ends_with(')'))
}
