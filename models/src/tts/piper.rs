//! Piper (VITS) voices: `NAME.onnx` plus `NAME.onnx.json`, run with ONNX Runtime, phonemized
//! by espeak-ng. One sentence in, its samples out.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::Tensor;
use serde::Deserialize;
use unicode_normalization::UnicodeNormalization;

use super::espeak;
use super::TtsError;
use crate::onnx;

const BOS: char = '^';
const EOS: char = '$';
const PAD: char = '_';
/// Longest phoneme string synthesized in one pass; longer sentences are cut at spaces, so one
/// huge sentence cannot exhaust memory or delay the first audio for long.
const MAX_PHONEMES: usize = 400;

/// The voice's `.onnx.json`, the parts synthesis needs.
#[derive(Debug, Clone, Deserialize)]
struct VoiceFile {
    audio: AudioSection,
    espeak: EspeakSection,
    #[serde(default)]
    inference: InferenceSection,
    phoneme_id_map: HashMap<String, Vec<i64>>,
    #[serde(default)]
    num_speakers: u32,
    #[serde(default)]
    speaker_id_map: BTreeMap<String, i64>,
    #[serde(default)]
    phoneme_type: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct AudioSection {
    sample_rate: u32,
}

#[derive(Debug, Clone, Deserialize)]
struct EspeakSection {
    voice: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct InferenceSection {
    noise_scale: f32,
    length_scale: f32,
    noise_w: f32,
}

impl Default for InferenceSection {
    fn default() -> Self {
        Self {
            noise_scale: 0.667,
            length_scale: 1.0,
            noise_w: 0.8,
        }
    }
}

/// Per-request choices.
#[derive(Debug, Clone, Default)]
pub struct SpeakOptions {
    /// Speaker id of a multi-speaker voice (default: the first).
    pub speaker: Option<i64>,
    /// Speaking rate: 2.0 is twice as fast (default 1.0).
    pub speed: Option<f32>,
}

/// A loaded Piper voice.
pub struct PiperVoice {
    name: String,
    session: Session,
    config: VoiceFile,
    ids: HashMap<char, Vec<i64>>,
}

impl std::fmt::Debug for PiperVoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PiperVoice")
            .field("name", &self.name)
            .field("sample_rate", &self.config.audio.sample_rate)
            .finish()
    }
}

impl PiperVoice {
    /// Loads `model` (`NAME.onnx`, with `NAME.onnx.json` beside it) on `threads` threads,
    /// with ONNX Runtime from `runtime` (else `ORT_DYLIB_PATH`).
    pub fn load(model: &Path, runtime: Option<&Path>, threads: usize) -> Result<Self, TtsError> {
        let config_path = PathBuf::from(format!("{}.json", model.display()));
        let text = std::fs::read_to_string(&config_path).map_err(|e| TtsError::Voice {
            path: config_path.clone(),
            reason: format!("cannot read the voice's configuration: {e}"),
        })?;
        let config: VoiceFile = serde_json::from_str(&text).map_err(|e| TtsError::Voice {
            path: config_path.clone(),
            reason: format!("not a Piper voice configuration: {e}"),
        })?;
        if let Some(kind) = config.phoneme_type.as_deref().filter(|k| *k != "espeak") {
            return Err(TtsError::Voice {
                path: config_path,
                reason: format!("phoneme_type '{kind}' is not supported (only espeak voices)"),
            });
        }
        let mut ids = HashMap::new();
        for (symbol, id) in &config.phoneme_id_map {
            let mut chars = symbol.chars();
            if let (Some(c), None) = (chars.next(), chars.next()) {
                ids.insert(c, id.clone());
            }
        }
        for needed in [BOS, EOS, PAD] {
            if !ids.contains_key(&needed) {
                return Err(TtsError::Voice {
                    path: config_path,
                    reason: format!("phoneme_id_map has no '{needed}'"),
                });
            }
        }
        let environment = onnx::environment(runtime)?;
        let session = onnx::session(environment, model, threads)?;
        Ok(Self {
            name: voice_name(model),
            session,
            config,
            ids,
        })
    }

    /// The voice's name (its file name without `.onnx`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Samples per second of its audio.
    pub fn sample_rate(&self) -> u32 {
        self.config.audio.sample_rate
    }

    /// Its speakers by name (empty for single-speaker voices).
    pub fn speakers(&self) -> &BTreeMap<String, i64> {
        &self.config.speaker_id_map
    }

    /// The espeak-ng voice it phonemizes with (e.g. `en-us`).
    pub fn language(&self) -> &str {
        &self.config.espeak.voice
    }

    /// Resolves a speaker given by name or number; `None` for the default.
    pub fn speaker(&self, wanted: &str) -> Result<i64, TtsError> {
        let count = self.config.num_speakers.max(1) as i64;
        let found = self.config.speaker_id_map.get(wanted).copied().or_else(|| {
            wanted
                .parse::<i64>()
                .ok()
                .filter(|id| (0..count).contains(id))
        });
        found.ok_or_else(|| TtsError::Speaker {
            wanted: wanted.into(),
            voice: self.name.clone(),
            available: if count == 1 {
                "it has a single speaker".into()
            } else {
                format!(
                    "its speakers are 0..{} or {}",
                    count - 1,
                    self.config
                        .speaker_id_map
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
        })
    }

    /// The phonemes of `text`, one string per sentence (long ones cut into pieces).
    pub fn phonemize(&self, text: &str) -> Result<Vec<String>, TtsError> {
        let sentences = espeak::phonemize(&self.config.espeak.voice, text)?;
        Ok(sentences.iter().flat_map(|s| split_long(s)).collect())
    }

    /// The ids of one sentence's phonemes: `^`, then each phoneme (a codepoint of the NFD
    /// form) followed by the pad `_`, then `$`. Unknown phonemes are skipped.
    fn phoneme_ids(&self, phonemes: &str) -> Vec<i64> {
        let id = |c: char| self.ids.get(&c).map(Vec::as_slice).unwrap_or(&[]);
        let mut ids = Vec::with_capacity(phonemes.len() * 2 + 3);
        ids.extend_from_slice(id(BOS));
        ids.extend_from_slice(id(PAD));
        for c in phonemes.nfd() {
            if let Some(known) = self.ids.get(&c) {
                ids.extend_from_slice(known);
                ids.extend_from_slice(id(PAD));
            }
        }
        ids.extend_from_slice(id(EOS));
        ids
    }

    /// Speaks one sentence's phonemes: samples in [-1, 1], peak-normalised as Piper does.
    pub fn speak_phonemes(
        &mut self,
        phonemes: &str,
        options: &SpeakOptions,
    ) -> Result<Vec<f32>, TtsError> {
        let ids = self.phoneme_ids(phonemes);
        let speed = options.speed.unwrap_or(1.0);
        let inference = &self.config.inference;
        let scales = vec![
            inference.noise_scale,
            inference.length_scale / speed,
            inference.noise_w,
        ];
        let len = ids.len() as i64;
        let run = |e: ort::Error| TtsError::Inference(e.to_string());
        let input = Tensor::from_array(([1usize, ids.len()], ids)).map_err(run)?;
        let lengths = Tensor::from_array(([1usize], vec![len])).map_err(run)?;
        let scales = Tensor::from_array(([3usize], scales)).map_err(run)?;
        let mut inputs = ort::inputs![
            "input" => input,
            "input_lengths" => lengths,
            "scales" => scales,
        ];
        if self.config.num_speakers > 1 {
            let sid =
                Tensor::from_array(([1usize], vec![options.speaker.unwrap_or(0)])).map_err(run)?;
            inputs.push(("sid".into(), sid.into()));
        }
        let outputs = self.session.run(inputs).map_err(run)?;
        let (_, samples) = outputs[0].try_extract_tensor::<f32>().map_err(run)?;
        let peak = samples.iter().fold(0f32, |m, s| m.max(s.abs()));
        if peak < 1e-8 {
            return Ok(vec![0.0; samples.len()]);
        }
        Ok(samples
            .iter()
            .map(|s| (s / peak).clamp(-1.0, 1.0))
            .collect())
    }

    /// Speaks a whole text, sentence after sentence.
    pub fn synthesize(&mut self, text: &str, options: &SpeakOptions) -> Result<Vec<f32>, TtsError> {
        let mut audio = Vec::new();
        for sentence in self.phonemize(text)? {
            audio.extend(self.speak_phonemes(&sentence, options)?);
        }
        Ok(audio)
    }
}

/// A voice's name: its file name without `.onnx` (`en_US-joe-medium`).
pub fn voice_name(model: &Path) -> String {
    model
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.trim_end_matches(".onnx").to_string())
        .unwrap_or_default()
}

/// Cuts a phoneme string longer than [`MAX_PHONEMES`] at spaces.
fn split_long(phonemes: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut piece = String::new();
    for word in phonemes.split(' ') {
        if !piece.is_empty() && piece.chars().count() + word.chars().count() >= MAX_PHONEMES {
            pieces.push(std::mem::take(&mut piece));
        }
        if !piece.is_empty() {
            piece.push(' ');
        }
        piece.push_str(word);
    }
    if !piece.trim().is_empty() {
        pieces.push(piece);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_phoneme_strings_are_cut_at_spaces() {
        let long = vec!["həlˈoʊ"; 200].join(" ");
        let pieces = split_long(&long);
        assert!(pieces.len() > 1);
        assert!(pieces.iter().all(|p| p.chars().count() < MAX_PHONEMES));
        assert_eq!(pieces.join(" "), long);
    }
}
