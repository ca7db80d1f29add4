//! Whisper on whisper.cpp (through whisper-rs): a GGML model loaded once, transcribing 16 kHz
//! mono audio into timed segments.

use std::ffi::c_void;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

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
        self.transcribe_unless(samples, language, &AtomicBool::new(false))
    }

    /// Like [`Whisper::transcribe`], but gives up with [`SttError::Interrupted`] soon after
    /// `stop` is set (whisper.cpp checks between steps of its graph): for work that something
    /// newer has made worthless, or that its client cancelled.
    pub fn transcribe_unless(
        &mut self,
        samples: &[f32],
        language: Option<&str>,
        stop: &AtomicBool,
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
        let window = encoder_window(audio.len());
        let (segments, no_speech) = self.decode(&audio, language, window, samples.len(), stop)?;
        if window < FULL_WINDOW && looks_hallucinated(&segments, no_speech, samples.len()) {
            tracing::debug!(
                "whisper: implausible text in a {window}-frame window, re-decoding in 30 s"
            );
            return Ok(self
                .decode(&audio, language, FULL_WINDOW, samples.len(), stop)?
                .0);
        }
        Ok(segments)
    }

    /// One whisper.cpp pass with the encoder reading `window` frames: the segments, and the
    /// highest probability Whisper gave to there being no speech.
    fn decode(
        &mut self,
        audio: &[f32],
        language: Option<&str>,
        window: usize,
        spoken: usize,
        stop: &AtomicBool,
    ) -> Result<(Vec<Segment>, f32), SttError> {
        let mut params = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
        params.set_n_threads(self.threads as i32);
        params.set_language(language);
        params.set_no_context(true);
        params.set_suppress_blank(true);
        params.set_print_progress(false);
        params.set_print_realtime(false);
        params.set_print_special(false);
        params.set_print_timestamps(false);
        // 0 is whisper.cpp's "the model's own", 30 s.
        params.set_audio_ctx(if window >= FULL_WINDOW {
            0
        } else {
            window as i32
        });
        // SAFETY: whisper.cpp calls the callback with this pointer only during `full`, which
        // `stop` outlives.
        unsafe {
            params.set_abort_callback(Some(stop_is_set));
            params.set_abort_callback_user_data(stop as *const AtomicBool as *mut c_void);
        }
        let result = self.state.full(params, audio);
        if stop.load(Ordering::Acquire) {
            return Err(SttError::Interrupted);
        }
        result.map_err(|e| SttError::Transcribe(e.to_string()))?;
        let mut segments = Vec::new();
        let mut no_speech = 0.0f32;
        for segment in self.state.as_iter() {
            no_speech = no_speech.max(segment.no_speech_probability());
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
                    .min(spoken as f32 / SAMPLE_RATE as f32),
                text,
            });
        }
        Ok((segments, no_speech))
    }
}

/// whisper.cpp's abort callback: whether the `AtomicBool` behind `stop` is set.
unsafe extern "C" fn stop_is_set(stop: *mut c_void) -> bool {
    // SAFETY: `decode` passes a pointer to an `AtomicBool` that outlives the call.
    unsafe { (*(stop as *const AtomicBool)).load(Ordering::Acquire) }
}

/// The encoder's full window: 30 s in frames of 20 ms.
const FULL_WINDOW: usize = 1500;

/// How many 20 ms frames the encoder reads for `samples` of 16 kHz audio.
///
/// Whisper's encoder reads 30 s whatever the audio's length, and on a CPU that dominates the
/// time of a short utterance. whisper.cpp can encode a shorter window (`audio_ctx`), but the
/// models were trained on 30 s and misbehave when the window barely holds the speech: tiny.en
/// repeats a 5.2 s sentence forever in a 5.1 s window and gets it right in 7.7 s. So the window
/// is half as long again as the audio plus 2.5 s, never below 5 s; from about 18 s of audio on it
/// is the full 30 s. [`looks_hallucinated`] catches what slips through.
pub fn encoder_window(samples: usize) -> usize {
    let frames = samples.div_ceil(SAMPLE_RATE as usize / 50);
    (frames * 3 / 2 + 128)
        .next_multiple_of(64)
        .clamp(256, FULL_WINDOW)
}

/// Whether a transcript from a short encoder window is suspect: more words than the audio can
/// hold (fast speech is about 4 words a second; this allows 6, plus 3), the loops and babble a
/// short window can cause; or Whisper itself doubting there is speech at all (its own threshold,
/// 0.6), as when it hears "you" in silence. Speech scores under 0.4 on the tested clips.
fn looks_hallucinated(segments: &[Segment], no_speech: f32, samples: usize) -> bool {
    let words: usize = segments
        .iter()
        .map(|s| s.text.split_whitespace().count())
        .sum();
    no_speech > 0.6 || words as f32 > 3.0 + 6.0 * samples as f32 / SAMPLE_RATE as f32
}

/// Whisper's markers for what is not speech: `[BLANK_AUDIO]`, `(music)`, `[ Silence ]`.
fn is_non_speech(text: &str) -> bool {
    let t = text.trim();
    (t.starts_with('[') && t.ends_with(']')) || (t.starts_with('(') && t.ends_with(')'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(text: &str) -> Vec<Segment> {
        vec![Segment {
            start: 0.0,
            end: 1.0,
            text: text.into(),
        }]
    }

    #[test]
    fn the_encoder_window_leaves_room_around_the_audio() {
        let second = SAMPLE_RATE as usize;
        assert_eq!(encoder_window(0), 256);
        assert_eq!(encoder_window(second), 256); // 50 frames: the 5 s floor
        assert_eq!(encoder_window(5 * second + second / 5), 576); // 260 frames × 1.5 + 128
        assert_eq!(encoder_window(11 * second), 960);
        assert_eq!(encoder_window(18 * second), FULL_WINDOW);
        assert_eq!(encoder_window(60 * second), FULL_WINDOW);
        assert!(
            (1..40).all(|s| encoder_window(s * second).is_multiple_of(64)
                || encoder_window(s * second) == FULL_WINDOW)
        );
    }

    #[test]
    fn loops_babble_and_doubted_speech_look_hallucinated() {
        let second = SAMPLE_RATE as usize;
        assert!(!looks_hallucinated(
            &said("Please open the window."),
            0.1,
            2 * second
        ));
        let looped = "the meeting moved to Thursday ".repeat(10);
        assert!(looks_hallucinated(&said(&looped), 0.1, 5 * second));
        assert!(looks_hallucinated(&said("you"), 0.98, 5 * second));
        assert!(!looks_hallucinated(&said("Ask not!"), 0.39, second));
    }
}
