//! End-to-end tests of `cpipe --serve tts` on the real en_US-joe-medium Piper voice (installed
//! by scripts/fetch-models.sh piper), headless: speech is timed on the clock, audio comes back
//! as audio events or WAV files.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use pipe_core::audio::AudioChunk;
use pipe_core::{Client, ErrorCode, Event, Step};
use serde_json::{json, Value};

fn start(dir: &TestDir, extra: &[&str]) -> Server {
    let mut args = vec!["--voice", "joe", "--playback", "none"];
    args.extend_from_slice(extra);
    dir.serve_loaded("tts", &args)
}

fn state(dir: &TestDir) -> String {
    dir.state_of("tts")
}

fn client(dir: &TestDir) -> Client {
    dir.client_of("tts", Duration::from_secs(60))
}

fn samples(event: &Event) -> (u32, Vec<f32>) {
    let chunk = AudioChunk::from_fields(event.fields()).unwrap();
    assert_eq!(chunk.channels, 1);
    (chunk.rate, chunk.to_f32())
}

fn rms(samples: &[f32]) -> f32 {
    (samples.iter().map(|s| s * s).sum::<f32>() / samples.len().max(1) as f32).sqrt()
}

#[test]
fn synthesize_returns_speech_of_plausible_length_at_the_voices_rate() {
    let dir = TestDir::new("tts-synth");
    let _server = start(&dir, &[]);
    let mut client = client(&dir);
    let wav = dir.path().join("out.wav");
    let events = client
        .call(
            "synthesize",
            json!({"text": "The quick brown fox jumps over the lazy dog.", "wav": wav}),
        )
        .unwrap();
    let mut audio = Vec::new();
    for event in events.iter().filter(|e| e.name() == "audio") {
        let (rate, s) = samples(event);
        assert_eq!(rate, 22_050);
        audio.extend(s);
    }
    let seconds = audio.len() as f32 / 22_050.0;
    assert!((1.5..5.0).contains(&seconds), "{seconds} s of audio");
    assert!(rms(&audio) > 0.05, "silent: rms {}", rms(&audio));
    let summary = events.iter().find(|e| e.name() == "synthesized").unwrap();
    assert_eq!(summary.get("samples"), Some(&json!(audio.len())));
    let written = hound::WavReader::open(&wav).unwrap();
    assert_eq!(written.spec().sample_rate, 22_050);
    assert_eq!(written.len() as usize, audio.len());

    // The same path again: a WAV the server wrote may be replaced.
    let again = json!({"text": "Again.", "wav": wav});
    assert!(client.call("synthesize", again).is_ok());

    // Nothing else the user can write is overwritten, followed or resolved elsewhere.
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "keep me").unwrap();
    let link = dir.path().join("link.wav");
    std::os::unix::fs::symlink(&notes, &link).unwrap();
    for (path, says) in [
        (json!(notes), "is not a mono 16-bit WAV"),
        (json!(link), "is a symbolic link"),
        (json!("relative.wav"), "absolute path"),
        (json!(dir.path()), "is not a file"),
    ] {
        let args = json!({"text": "Hello.", "wav": path});
        let error = client.call("synthesize", args).unwrap_err().to_string();
        assert!(error.contains(says), "{path}: {error}");
    }
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "keep me");
    assert!(!Path::new("relative.wav").exists());
}

/// Speech starts before the text ends: the first sentence's audio arrives while the second
/// sentence is still being typed.
#[test]
fn the_first_sentence_is_spoken_before_the_text_ends() {
    let dir = TestDir::new("tts-stream");
    let _server = start(&dir, &[]);
    let mut client = client(&dir);
    let opts = json!({"audio": true, "play": false});
    let mut first_audio = None;
    for token in ["The capital ", "of France ", "is Paris. ", "It is "] {
        let mut args = opts.clone();
        args["data"] = token.into();
        for event in client.request("text", args).unwrap() {
            let event = event.unwrap();
            if event.name() == "audio" && first_audio.is_none() {
                first_audio = Some(token);
            }
        }
    }
    assert_eq!(
        first_audio,
        Some("is Paris. "),
        "the first sentence is spoken as soon as it is complete"
    );
    for token in ["a lovely ", "city."] {
        let mut args = opts.clone();
        args["data"] = token.into();
        let events = client.call("text", args).unwrap();
        assert!(events.is_empty(), "no sentence was complete yet");
    }
    let flushed = client.call("flush", opts).unwrap();
    let audio: Vec<f32> = flushed
        .iter()
        .filter(|e| e.name() == "audio")
        .flat_map(|e| samples(e).1)
        .collect();
    assert!(audio.len() > 22_050 / 2, "the rest was spoken on flush");
    assert_eq!(flushed[0].str("text"), Some("It is a lovely city."));
}

/// Played speech is announced, reported by is_speaking, recorded, and silenced by
/// stop_speaking within moments; the server takes text again afterwards.
#[test]
fn speech_start_end_is_speaking_and_barge_in() {
    let dir = TestDir::new("tts-play");
    let wav = dir.path().join("played.wav");
    let _server = start(&dir, &["--wav", wav.to_str().unwrap()]);
    let mut listener = client(&dir);
    // The speaking side is the CLI: a second client needs a second process. With the other
    // tests' voices loading alongside, the default 10 s for an answer ran out in CI.
    let speaker = |args: &[&str]| dir.run(&[args, &["--timeout", "120"]].concat());
    let long = "This is a long text that keeps the voice busy for a while. ".repeat(20);
    let sent = speaker(&["tts", "text", "--data", &long]);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    let started = Instant::now();
    let mut saw_start = false;
    while started.elapsed() < Duration::from_secs(30) && !saw_start {
        if let Some(e) = listener.try_next_event(Duration::from_millis(100)).unwrap() {
            saw_start = e.name() == "speech_start";
        }
    }
    assert!(saw_start, "no speech_start");
    let speaking = json_lines(&speaker(&["tts", "is_speaking"]));
    assert_eq!(speaking[0]["speaking"], true);
    let stop = speaker(&["tts", "stop_speaking"]);
    assert!(stop.status.success());
    let stopped_at = Instant::now();
    let mut saw_end = false;
    while stopped_at.elapsed() < Duration::from_secs(5) && !saw_end {
        if let Some(e) = listener.try_next_event(Duration::from_millis(50)).unwrap() {
            saw_end = e.name() == "speech_end";
        }
    }
    assert!(saw_end, "no speech_end after stop_speaking");
    assert!(
        stopped_at.elapsed() < Duration::from_secs(1),
        "speech went on for {:?} after stop_speaking",
        stopped_at.elapsed()
    );
    assert_eq!(
        json_lines(&speaker(&["tts", "is_speaking"]))[0]["speaking"],
        false
    );
    let recorded = hound::WavReader::open(&wav).unwrap();
    assert!(recorded.len() > 22_050, "the played speech was recorded");

    // The server speaks again after a barge-in.
    assert!(speaker(&["tts", "text", "--data", "Hello again. "])
        .status
        .success());
    assert!(eventually(Duration::from_secs(10), || {
        json_lines(&speaker(&["tts", "is_speaking"]))[0]["speaking"] == true
    }));
}

#[test]
fn bad_input_gets_clear_errors_or_silence_and_the_server_stays_up() {
    let dir = TestDir::new("tts-bad");
    let _server = start(&dir, &[]);
    let mut client = client(&dir);
    let mut fails = |cmd: &str, args: Value| -> (ErrorCode, String) {
        match client.call(cmd, args) {
            Err(pipe_core::Error::Remote { code, message }) => (code, message),
            other => panic!("{cmd} should fail, got {other:?}"),
        }
    };
    let (code, message) = fails("synthesize", json!({"text": "hi", "voice": "nobody"}));
    assert_eq!(code, ErrorCode::NotFound);
    assert!(message.contains("en_US-joe-medium"), "{message}");
    let (code, message) = fails("synthesize", json!({"text": "hi", "speaker": "7"}));
    assert_eq!(code, ErrorCode::NotFound);
    assert!(message.contains("single speaker"), "{message}");
    let (code, _) = fails("synthesize", json!({"text": "hi", "speed": 0}));
    assert_eq!(code, ErrorCode::InvalidRequest);
    let (code, _) = fails("text", json!({"data": 42}));
    assert_eq!(code, ErrorCode::InvalidRequest);
    let (code, _) = fails("synthesize", json!({}));
    assert_eq!(code, ErrorCode::InvalidRequest);

    // Silence where silence is right.
    for text in ["", "?!... ,,,", "   "] {
        let events = client.call("synthesize", json!({"text": text})).unwrap();
        let summary = events.iter().find(|e| e.name() == "synthesized").unwrap();
        assert_eq!(summary.get("samples"), Some(&json!(0)), "{text:?}");
    }
    assert!(client.call("text", json!({"data": ""})).unwrap().is_empty());
    // Emoji and characters espeak-ng cannot say: no crash, the rest is spoken.
    let events = client
        .call("synthesize", json!({"text": "Hello 😀 ☃ ⟁ world."}))
        .unwrap();
    assert!(events.iter().any(|e| e.name() == "audio"));

    // 18 KB of text, near the limit a request may bring: accepted, interruptible, and the
    // server stays responsive.
    let huge = "All work and no play makes a dull voice. ".repeat(450);
    let id = client.send("text", json!({"data": huge})).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(dir.run(&["tts", "ping"]).status.success());
    assert!(dir.run(&["tts", "stop_speaking"]).status.success());
    let mut ended_with = None;
    let mut events = client.events_of(id);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match events.next_within(Duration::from_millis(100)).unwrap() {
            Step::Event(e) => ended_with = e.as_error().map(|e| e.code),
            Step::End => break,
            Step::Pending => {}
        }
    }
    assert_eq!(ended_with, Some(ErrorCode::Cancelled));
    assert!(dir.run(&["tts", "ping"]).status.success());
}

#[test]
fn a_corrupt_voice_leaves_the_server_up_with_a_clear_error() {
    let dir = TestDir::new("tts-corrupt");
    let voice = dir.path().join("broken.onnx");
    std::fs::write(&voice, b"this is not an ONNX model").unwrap();
    std::fs::write(
        dir.path().join("broken.onnx.json"),
        r#"{"audio":{"sample_rate":22050},"espeak":{"voice":"en-us"},"phoneme_id_map":{"_":[0],"^":[1],"$":[2]}}"#,
    )
    .unwrap();
    let _server = dir.serve(
        "tts",
        &["--voice", voice.to_str().unwrap(), "--playback", "none"],
    );
    assert!(eventually(Duration::from_secs(10), || state(&dir) == "error"));
    let out = dir.run(&["tts", "synthesize", "-j", "text=hello"]);
    assert_eq!(out.status.code(), Some(1));
    let error = &json_lines(&out)[0];
    assert_eq!(error["code"], "unavailable");
    assert!(error["message"].as_str().unwrap().contains("broken.onnx"));
    assert!(dir.run(&["tts", "ping"]).status.success());
}

#[test]
fn a_missing_audio_device_is_a_clear_error_when_playback_is_required() {
    let dir = TestDir::new("tts-nodevice");
    let mut child = dir
        .cpipe()
        .args(["--serve", "tts", "--voice", "joe", "--playback", "speaker"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if !eventually(Duration::from_secs(10), || {
        child.try_wait().unwrap().is_some()
    }) {
        let _ = child.kill(); // this machine has an audio device: the server runs
        return;
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let message = text(&out.stderr);
    assert!(message.contains("no audio output device"), "{message}");
    assert!(message.contains("--playback none"), "{message}");
}

/// A subscriber that asks gets the audio of everything spoken, whoever sent the text; one
/// that does not ask gets none.
#[test]
fn subscribers_that_ask_get_everyones_audio() {
    let dir = TestDir::new("tts-listeners");
    let _server = start(&dir, &[]);
    let mut listener = client(&dir);
    let reply = listener.call("subscribe_audio", Value::Null).unwrap();
    assert_eq!(reply[0].get("on"), Some(&json!(true)));
    // Another process speaks, without asking for audio itself.
    let out = dir.run(&["tts", "text", "--data", "Hello there. ", "-j", "play=false"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).is_empty(),
        "the speaker did not ask for audio"
    );
    let mut heard = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while heard.is_none() && Instant::now() < deadline {
        if let Some(e) = listener.try_next_event(Duration::from_millis(100)).unwrap() {
            if e.name() == "audio" {
                heard = Some(e);
            }
        }
    }
    let heard = heard.expect("the listener got no audio");
    assert_eq!(heard.str("text"), Some("Hello there."));
    let (rate, audio) = samples(&heard);
    assert_eq!(rate, 22_050);
    assert!(rms(&audio) > 0.05);
    let off = listener
        .call("subscribe_audio", json!({"on": false}))
        .unwrap();
    assert_eq!(off[0].get("on"), Some(&json!(false)));
}

/// One client's big text neither holds up the others (the listener answers them while it is
/// spoken) nor goes beyond the limit a request may bring.
#[test]
fn a_big_text_keeps_others_served_and_a_too_big_one_is_refused() {
    let dir = TestDir::new("tts-big");
    let _server = start(&dir, &["--max-text-chars", "5000"]);
    let mut big = client(&dir);
    let long = "Hi there. ".repeat(480);
    let id = big.send("text", json!({"data": long})).unwrap();
    // Another client (another process) is answered while the big text is being spoken.
    assert!(eventually(Duration::from_secs(30), || state(&dir) == "synthesizing"));
    let pong = dir.run(&["tts", "ping"]);
    assert!(pong.status.success() && text(&pong.stdout).contains("pong"));
    assert_eq!(
        state(&dir),
        "synthesizing",
        "the big text ended too soon to tell"
    );
    big.cancel(id).unwrap();
    let ended: Vec<Event> = big.events_of(id).map(Result::unwrap).collect();
    assert!(
        ended
            .last()
            .and_then(Event::as_error)
            .is_some_and(|e| e.code == ErrorCode::Cancelled),
        "{ended:?}"
    );

    let too_big = "Hi there. ".repeat(501);
    let error = big
        .call("text", json!({"data": too_big}))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("--max-text-chars") && error.contains("5010"),
        "{error}"
    );
    let error = big
        .call("synthesize", json!({"text": too_big}))
        .unwrap_err()
        .to_string();
    assert!(error.contains("send it in parts"), "{error}");
    assert_eq!(big.call("ping", Value::Null).unwrap()[0].name(), "pong");
}
