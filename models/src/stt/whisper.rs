//! Whisper on whisper.cpp (through whisper-rs): a GGML model loaded once, transcribing 16 kHz
//! mono audio into timed segments.

use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use whisper_rs::{
    DtwMode, DtwModelPreset, DtwParameters, FullParams, SamplingStrategy, WhisperContext,
    WhisperContextParameters, WhisperState,
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
    /// Its words with their times, when asked for (else empty).
    pub words: Vec<Word>,
}

/// A word with its time, from whisper.cpp's token timestamps.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    /// The word, with the punctuation that follows it and without the space before it.
    pub text: String,
    /// Start, in seconds from the start of the audio.
    pub start: f32,
    /// End, in seconds.
    pub end: f32,
    /// The mean probability Whisper gave its tokens.
    pub probability: f32,
}

/// A loaded Whisper model.
pub struct Whisper {
    /// The model as it transcribes: with flash attention, the fast way on a CPU.
    fast: Loaded,
    /// The model loaded again for word timing, on the first request for it: whisper.cpp times
    /// tokens by dynamic time warping over the cross-attention of the model's alignment heads,
    /// which needs the attention weights that flash attention never forms.
    aligning: Option<Loaded>,
    path: PathBuf,
    multilingual: bool,
    threads: usize,
}

/// A whisper.cpp context with its decoding state.
struct Loaded {
    // The state borrows the context's model inside whisper.cpp: keep both.
    state: WhisperState,
    context: WhisperContext,
}

impl Loaded {
    fn new(path: &Path, params: WhisperContextParameters<'_>) -> Result<Self, SttError> {
        let context =
            WhisperContext::new_with_params(path, params).map_err(|e| SttError::Model {
                path: path.into(),
                reason: format!("whisper.cpp cannot load it ({e}); is it a whisper.cpp GGML file?"),
            })?;
        let state = context.create_state().map_err(|e| SttError::Model {
            path: path.into(),
            reason: format!("cannot create a decoding state: {e}"),
        })?;
        Ok(Self { state, context })
    }
}

impl std::fmt::Debug for Whisper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Whisper")
            .field("path", &self.path)
            .field("multilingual", &self.multilingual)
            .field("aligning", &self.aligning.is_some())
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
        let fast = Loaded::new(model, params)?;
        Ok(Self {
            multilingual: fast.context.is_multilingual(),
            fast,
            aligning: None,
            path: model.into(),
            threads: threads.max(1),
        })
    }

    /// Loads what word timing needs now, rather than on the first request for words.
    pub fn load_word_timing(&mut self) -> Result<(), SttError> {
        self.aligning().map(|_| ())
    }

    /// Loads the model for word timing, unless it is loaded: with the alignment heads of its
    /// size (whisper.cpp's presets, told apart by the model's dimensions), or the top half of
    /// its decoder layers for a model of another shape.
    fn aligning(&mut self) -> Result<&mut Loaded, SttError> {
        if self.aligning.is_none() {
            let c = &self.fast.context;
            let english = !self.multilingual;
            let preset = match (
                c.model_n_audio_state(),
                c.model_n_text_layer(),
                c.model_n_mels(),
            ) {
                (384, 4, _) => Some(if english {
                    DtwModelPreset::TinyEn
                } else {
                    DtwModelPreset::Tiny
                }),
                (512, 6, _) => Some(if english {
                    DtwModelPreset::BaseEn
                } else {
                    DtwModelPreset::Base
                }),
                (768, 12, _) => Some(if english {
                    DtwModelPreset::SmallEn
                } else {
                    DtwModelPreset::Small
                }),
                (1024, 24, _) => Some(if english {
                    DtwModelPreset::MediumEn
                } else {
                    DtwModelPreset::Medium
                }),
                (1280, 32, 128) => Some(DtwModelPreset::LargeV3),
                (1280, 32, _) => Some(DtwModelPreset::LargeV2),
                (1280, 4, _) => Some(DtwModelPreset::LargeV3Turbo),
                _ => None,
            };
            let mode = match preset {
                Some(model_preset) => DtwMode::ModelPreset { model_preset },
                None => DtwMode::TopMost {
                    n_top: (c.model_n_text_layer() / 2).max(1),
                },
            };
            let params = WhisperContextParameters {
                use_gpu: cfg!(any(feature = "cuda", feature = "metal")),
                flash_attn: false,
                dtw_parameters: DtwParameters {
                    mode,
                    ..DtwParameters::default()
                },
                ..WhisperContextParameters::default()
            };
            self.aligning = Some(Loaded::new(&self.path, params)?);
        }
        Ok(self.aligning.as_mut().expect("loaded above"))
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
        self.transcribe_unless(samples, language, false, &AtomicBool::new(false))
    }

    /// Like [`Whisper::transcribe`], but gives up with [`SttError::Interrupted`] soon after
    /// `stop` is set (whisper.cpp checks between steps of its graph): for work that something
    /// newer has made worthless, or that its client cancelled.
    ///
    /// With `words`, each segment also carries its words' times.
    pub fn transcribe_unless(
        &mut self,
        samples: &[f32],
        language: Option<&str>,
        words: bool,
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
        let spoken = samples.len();
        let (segments, no_speech) = self.decode(&audio, language, window, spoken, words, stop)?;
        if window < FULL_WINDOW && looks_hallucinated(&segments, no_speech, samples.len()) {
            tracing::debug!(
                "whisper: implausible text in a {window}-frame window, re-decoding in 30 s"
            );
            return Ok(self
                .decode(&audio, language, FULL_WINDOW, spoken, words, stop)?
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
        words: bool,
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
        let loaded = if words {
            self.aligning()?
        } else {
            &mut self.fast
        };
        let result = loaded.state.full(params, audio);
        if stop.load(Ordering::Acquire) {
            return Err(SttError::Interrupted);
        }
        result.map_err(|e| SttError::Transcribe(e.to_string()))?;
        let eot = loaded.context.token_eot();
        let mut segments = Vec::new();
        let mut no_speech = 0.0f32;
        for segment in loaded.state.as_iter() {
            no_speech = no_speech.max(segment.no_speech_probability());
            let text = segment
                .to_str_lossy()
                .map_err(|e| SttError::Transcribe(e.to_string()))?
                .trim()
                .to_string();
            if text.is_empty() || is_non_speech(&text) {
                continue;
            }
            let heard = spoken as f32 / SAMPLE_RATE as f32;
            // whisper.cpp counts in centiseconds.
            let start = segment.start_timestamp() as f32 / 100.0;
            let end = (segment.end_timestamp() as f32 / 100.0).min(heard);
            segments.push(Segment {
                start,
                end,
                text,
                words: if words {
                    words_of(&segment, eot, start, end)
                } else {
                    Vec::new()
                },
            });
        }
        Ok((segments, no_speech))
    }
}

/// A segment's words: its text tokens joined into words at the tokens that begin with a space
/// (timestamps and other special tokens, from `eot` on, left out). whisper.cpp's dynamic time
/// warping gives each token the time it ends: a word ends where its last token does and starts
/// where the word before it ended (the first: where the token before it ended, else at the
/// segment's start), within the segment; as faster-whisper times words, so a pause belongs to
/// the word after it.
fn words_of(segment: &whisper_rs::WhisperSegment<'_>, eot: i32, start: f32, end: f32) -> Vec<Word> {
    // Each word's bytes, the time its last token ends, and its tokens' probabilities.
    let mut words: Vec<(Vec<u8>, f32, Vec<f32>)> = Vec::new();
    let mut first_start = start;
    for i in 0..segment.n_tokens() {
        let Some(token) = segment.get_token(i) else {
            continue;
        };
        let data = token.token_data();
        // whisper.cpp counts in centiseconds; -1 where it has no time.
        let ends = (data.t_dtw >= 0).then(|| (data.t_dtw as f32 / 100.0).clamp(start, end));
        let bytes = token.to_bytes().unwrap_or_default();
        if data.id >= eot || bytes.is_empty() {
            if words.is_empty() {
                first_start = ends.unwrap_or(first_start);
            }
            continue;
        }
        let ends = ends.unwrap_or(end);
        match words.last_mut() {
            Some(word) if !bytes.starts_with(b" ") => {
                word.0.extend_from_slice(bytes);
                word.1 = ends;
                word.2.push(data.p);
            }
            _ => words.push((bytes.to_vec(), ends, vec![data.p])),
        }
    }
    let mut word_start = first_start;
    words
        .into_iter()
        .filter_map(|(bytes, ends, p)| {
            let text = String::from_utf8_lossy(&bytes).trim().to_string();
            let begins = word_start;
            word_start = ends.max(begins);
            (!text.is_empty()).then(|| Word {
                text,
                start: begins,
                end: ends.max(begins),
                probability: p.iter().sum::<f32>() / p.len() as f32,
            })
        })
        .collect()
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
            words: Vec::new(),
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
