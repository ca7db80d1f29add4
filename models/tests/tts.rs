//! The Piper engine on the real en_US-joe-medium voice (installed by
//! `scripts/fetch-models.sh piper`, with the ONNX Runtime library beside it).
#![cfg(feature = "tts")]

use models::source::offline_models_dir as models_dir;
use models::tts::{PiperVoice, SpeakOptions, TtsError};

fn joe() -> PiperVoice {
    let dir = models_dir();
    let model = dir.join("en_US-joe-medium.onnx");
    assert!(
        model.exists(),
        "{} is missing: run scripts/fetch-models.sh piper",
        model.display()
    );
    PiperVoice::load(&model, Some(&dir.join("libonnxruntime.so")), 2).unwrap()
}

fn rms(samples: &[f32]) -> f32 {
    (samples.iter().map(|s| s * s).sum::<f32>() / samples.len().max(1) as f32).sqrt()
}

#[test]
fn phonemes_match_piper_tts() {
    let voice = joe();
    // What piper-tts 1.8.0 (Piper's own runtime) makes of the same texts.
    assert_eq!(
        voice.phonemize("Hello, world. How are you?").unwrap(),
        vec!["həlˈoʊ, wˈɜːld.", "hˈaʊ ɑːɹ juː?"]
    );
}

#[test]
fn a_sentence_is_speech_of_plausible_length_at_the_voices_rate() {
    let mut voice = joe();
    assert_eq!(voice.sample_rate(), 22_050);
    let audio = voice
        .synthesize(
            "The quick brown fox jumps over the lazy dog.",
            &SpeakOptions::default(),
        )
        .unwrap();
    let seconds = audio.len() as f32 / 22_050.0;
    assert!((1.5..5.0).contains(&seconds), "{seconds} s");
    assert!(rms(&audio) > 0.05, "too quiet: rms {}", rms(&audio));
    let fast = voice
        .synthesize(
            "The quick brown fox jumps over the lazy dog.",
            &SpeakOptions {
                speed: Some(2.0),
                ..SpeakOptions::default()
            },
        )
        .unwrap();
    assert!(fast.len() < audio.len() * 7 / 10, "speed 2 is not faster");
}

#[test]
fn bad_input_gets_clear_errors_or_silence() {
    let mut voice = joe();
    assert!(voice
        .synthesize("", &SpeakOptions::default())
        .unwrap()
        .is_empty());
    assert!(voice
        .synthesize("?!...", &SpeakOptions::default())
        .unwrap()
        .is_empty());
    assert!(matches!(voice.speaker("7"), Err(TtsError::Speaker { .. })));
    let missing = PiperVoice::load(&models_dir().join("nope.onnx"), None, 1).unwrap_err();
    assert!(missing.to_string().contains("nope.onnx.json"), "{missing}");
}

#[test]
fn a_corrupt_voice_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("cpipe-corrupt-voice-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("bad.onnx");
    std::fs::write(&model, b"not an onnx model").unwrap();
    std::fs::copy(
        models_dir().join("en_US-joe-medium.onnx.json"),
        dir.join("bad.onnx.json"),
    )
    .unwrap();
    let error =
        PiperVoice::load(&model, Some(&models_dir().join("libonnxruntime.so")), 1).unwrap_err();
    assert!(matches!(error, TtsError::Onnx(_)), "{error}");
    assert!(error.to_string().contains("bad.onnx"), "{error}");
    std::fs::remove_dir_all(dir).unwrap();
}
