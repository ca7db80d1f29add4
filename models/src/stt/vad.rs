//! Voice activity detection with Silero VAD (its ONNX model, on ONNX Runtime): the probability
//! that each 32 ms window of 16 kHz audio is speech, and the cutting of a live stream into
//! utterances.

use std::path::Path;

use ort::session::Session;
use ort::value::Tensor;

use super::SttError;
use crate::onnx;

/// Samples per window at 16 kHz.
pub const WINDOW: usize = 512;
/// Samples of the previous window the model also sees.
const CONTEXT: usize = 64;

/// A loaded Silero VAD with its recurrent state.
pub struct SileroVad {
    session: Session,
    state: Vec<f32>,
    context: Vec<f32>,
}

impl std::fmt::Debug for SileroVad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SileroVad")
    }
}

impl SileroVad {
    /// Loads `silero_vad.onnx` with ONNX Runtime from `runtime` (else `ORT_DYLIB_PATH`).
    pub fn load(model: &Path, runtime: Option<&Path>) -> Result<Self, SttError> {
        let environment = onnx::environment(runtime)?;
        let session = onnx::session(environment, model, 1)?;
        Ok(Self {
            session,
            state: vec![0.0; 2 * 128],
            context: vec![0.0; CONTEXT],
        })
    }

    /// Forgets the audio seen so far.
    pub fn reset(&mut self) {
        self.state.fill(0.0);
        self.context.fill(0.0);
    }

    /// The probability that one window of [`WINDOW`] samples is speech.
    pub fn probability(&mut self, window: &[f32]) -> Result<f32, SttError> {
        assert_eq!(
            window.len(),
            WINDOW,
            "Silero VAD takes windows of {WINDOW} samples"
        );
        let mut input = Vec::with_capacity(CONTEXT + WINDOW);
        input.extend_from_slice(&self.context);
        input.extend_from_slice(window);
        let run = |e: ort::Error| SttError::Vad(e.to_string());
        let outputs = self
            .session
            .run(ort::inputs![
                "input" => Tensor::from_array(([1usize, CONTEXT + WINDOW], input)).map_err(run)?,
                "state" => Tensor::from_array(([2usize, 1, 128], self.state.clone())).map_err(run)?,
                "sr" => Tensor::from_array(([0usize; 0], vec![16_000i64])).map_err(run)?,
            ])
            .map_err(run)?;
        let (_, probability) = outputs["output"].try_extract_tensor::<f32>().map_err(run)?;
        let probability = probability.first().copied().unwrap_or(0.0);
        let (_, state) = outputs["stateN"].try_extract_tensor::<f32>().map_err(run)?;
        self.state.copy_from_slice(state);
        self.context.copy_from_slice(&window[WINDOW - CONTEXT..]);
        Ok(probability)
    }
}

/// How speech is told from silence.
#[derive(Debug, Clone, Copy)]
pub struct VadSettings {
    /// Probability above which a window is speech.
    pub threshold: f32,
    /// Silence that ends an utterance, in ms.
    pub min_silence_ms: u32,
    /// Shortest utterance kept, in ms.
    pub min_speech_ms: u32,
    /// Audio kept before the speech starts, in ms: Whisper needs the onset the VAD is slow to
    /// call speech, or it mishears first syllables.
    pub lead_ms: u32,
    /// Silence kept after the speech, in ms. An utterance's final transcription can start once
    /// this much of a pause is heard (see [`Segmenter::likely_end`]), so it is short.
    pub tail_ms: u32,
    /// Longest utterance before it is cut, in seconds.
    pub max_utterance_s: f32,
}

impl Default for VadSettings {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            min_silence_ms: 300,
            min_speech_ms: 250,
            lead_ms: 200,
            tail_ms: 64,
            max_utterance_s: 30.0,
        }
    }
}

/// What feeding audio to a [`Segmenter`] produced.
#[derive(Debug, Clone, PartialEq)]
pub enum VadEvent {
    /// Speech began, `at` seconds into the stream.
    SpeechStart {
        /// Seconds into the stream.
        at: f32,
    },
    /// An utterance ended: its audio (16 kHz mono), and where it starts and ends.
    Utterance {
        /// Seconds into the stream where it starts.
        start: f32,
        /// Seconds into the stream where it ends.
        end: f32,
        /// Its samples.
        samples: Vec<f32>,
    },
}

/// Cuts a live 16 kHz stream into utterances.
#[derive(Debug)]
pub struct Segmenter {
    vad: SileroVad,
    settings: VadSettings,
    pending: Vec<f32>,
    /// Samples seen so far (the stream clock).
    position: usize,
    /// Recent audio before speech, for padding.
    before: std::collections::VecDeque<f32>,
    speech: Option<Speech>,
}

#[derive(Debug)]
struct Speech {
    start: usize,
    samples: Vec<f32>,
    silent_windows: usize,
    speech_windows: usize,
}

impl Segmenter {
    /// A segmenter over `vad`.
    pub fn new(vad: SileroVad, settings: VadSettings) -> Self {
        Self {
            vad,
            settings,
            pending: Vec::new(),
            position: 0,
            before: Default::default(),
            speech: None,
        }
    }

    /// Gives back the VAD, its state forgotten, for another stream.
    pub fn into_vad(mut self) -> SileroVad {
        self.vad.reset();
        self.vad
    }

    /// The utterance in progress so far (for partial transcripts), while its speaker is
    /// talking: not in a pause, which may be its end (its final transcript is near).
    pub fn current(&self) -> Option<(f32, &[f32])> {
        self.speech
            .as_ref()
            .filter(|s| s.silent_windows == 0 && s.speech_windows >= self.min_speech_windows())
            .map(|s| (s.start as f32 / 16_000.0, s.samples.as_slice()))
    }

    /// The utterance as it will be cut if the pause under way turns out to be its end: `Some`
    /// from the moment the pause has lasted the silence kept after speech (the utterance's
    /// samples no longer change then) until speech resumes or the utterance ends. Transcribing
    /// it at once stands in for the final transcription and saves waiting out the pause.
    pub fn likely_end(&self) -> Option<(f32, &[f32])> {
        let speech = self.speech.as_ref()?;
        if speech.silent_windows < self.kept_silence() {
            return None;
        }
        let kept = self.kept(speech)?;
        Some((speech.start as f32 / 16_000.0, &speech.samples[..kept]))
    }

    /// Feeds 16 kHz mono samples; returns what happened.
    pub fn push(&mut self, samples: &[f32]) -> Result<Vec<VadEvent>, SttError> {
        self.pending.extend_from_slice(samples);
        let mut events = Vec::new();
        let lead = (self.settings.lead_ms as usize * 16).max(WINDOW);
        let end_after = (self.settings.min_silence_ms as usize * 16).div_ceil(WINDOW);
        let max_len = (self.settings.max_utterance_s * 16_000.0) as usize;
        let mut offset = 0;
        while self.pending.len() - offset >= WINDOW {
            let window = &self.pending[offset..offset + WINDOW];
            offset += WINDOW;
            let is_speech = self.vad.probability(window)? >= self.settings.threshold;
            let window_start = self.position;
            self.position += WINDOW;
            match &mut self.speech {
                None if is_speech => {
                    let padding: Vec<f32> = self.before.drain(..).collect();
                    let start = window_start - padding.len();
                    let mut samples = padding;
                    samples.extend_from_slice(window);
                    self.speech = Some(Speech {
                        start,
                        samples,
                        silent_windows: 0,
                        speech_windows: 0,
                    });
                    events.extend(self.count_speech_window());
                }
                None => {
                    self.before.extend(window.iter().copied());
                    while self.before.len() > lead {
                        self.before.pop_front();
                    }
                }
                Some(speech) => {
                    speech.samples.extend_from_slice(window);
                    if is_speech {
                        speech.silent_windows = 0;
                        events.extend(self.count_speech_window());
                    } else {
                        speech.silent_windows += 1;
                    }
                    let speech = self.speech.as_ref().expect("speech goes on");
                    if speech.silent_windows >= end_after || speech.samples.len() >= max_len {
                        events.extend(self.finish());
                    }
                }
            }
        }
        self.pending.drain(..offset);
        Ok(events)
    }

    /// Counts a window of speech in the utterance under way. Speech is announced once it has
    /// lasted long enough to be more than a click (`min_speech_ms`): every `SpeechStart` is then
    /// followed by its `Utterance`, and a click announces nothing.
    fn count_speech_window(&mut self) -> Option<VadEvent> {
        let min_windows = self.min_speech_windows();
        let speech = self.speech.as_mut()?;
        speech.speech_windows += 1;
        (speech.speech_windows == min_windows.max(1)).then(|| VadEvent::SpeechStart {
            at: speech.start as f32 / 16_000.0,
        })
    }

    /// Ends the stream: the utterance in progress, if any, is complete.
    pub fn flush(&mut self) -> Vec<VadEvent> {
        self.finish().into_iter().collect()
    }

    fn finish(&mut self) -> Option<VadEvent> {
        let speech = self.speech.take()?;
        let kept = self.kept(&speech)?;
        let mut samples = speech.samples;
        samples.truncate(kept);
        Some(VadEvent::Utterance {
            start: speech.start as f32 / 16_000.0,
            end: (speech.start + kept) as f32 / 16_000.0,
            samples,
        })
    }

    /// How many of `speech`'s samples its utterance keeps, were it to end now: all but the
    /// trailing silence beyond `tail_ms`. `None` for a click, too short to be speech.
    fn kept(&self, speech: &Speech) -> Option<usize> {
        if speech.speech_windows < self.min_speech_windows() {
            return None;
        }
        let trim = speech.silent_windows.saturating_sub(self.kept_silence()) * WINDOW;
        Some(speech.samples.len().saturating_sub(trim))
    }

    /// Windows of speech an utterance needs: fewer are a click.
    fn min_speech_windows(&self) -> usize {
        (self.settings.min_speech_ms as usize * 16).div_ceil(WINDOW)
    }

    /// Windows of silence kept at the end of an utterance.
    fn kept_silence(&self) -> usize {
        (self.settings.tail_ms as usize * 16).div_ceil(WINDOW)
    }
}
