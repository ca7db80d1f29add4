//! `cpipe bench tts`: the tts server against piper-tts (Piper's own Python runtime) on the
//! same voice and sentences: real-time factor and time to first audio; then the delay from a
//! streamed sentence's end to its first audio, and (with `--pipeline`) the chat → tts pipeline
//! from request to first word.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use super::median;
use super::{connect_ready, serve};
use pipe_core::audio::AudioChunk;
use pipe_core::{Client, Event, ProtocolEvent};

use crate::vocab::ServerEvent;
use serde_json::{json, Value};

/// Options of `cpipe bench tts`.
#[derive(Debug, clap::Args)]
pub struct TtsBench {
    /// The voice (as for `--serve tts --voice`).
    #[arg(long, default_value = "joe")]
    pub voice: String,
    /// A Python with piper-tts installed (scripts/bench-tts.sh makes one).
    #[arg(long, env = "CPIPE_BENCH_PYTHON", default_value = ".venv/bin/python")]
    pub python: PathBuf,
    /// Repetitions of each sentence (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repetitions: usize,
    /// Also time the chat → tts pipeline on the offline chat model (smollm2).
    #[arg(long)]
    pub pipeline: bool,
}

/// Sentences of everyday length, short to long.
const SENTENCES: [&str; 4] = [
    "Hello there.",
    "The capital of France is Paris.",
    "Named pipes let programs on one machine talk without a network stack.",
    "A resident model answers at once, because nothing has to be loaded again, and it streams its answer as it is made.",
];

/// Times piper-tts on each sentence: prints one JSON line per run.
const PIPER_ANCHOR: &str = r#"
import json, sys, time
from piper import PiperVoice
voice = PiperVoice.load(sys.argv[1])
sentences = json.loads(sys.argv[2]); reps = int(sys.argv[3])
list(voice.synthesize("Warm up."))
for text in sentences:
    for _ in range(reps):
        start = time.perf_counter(); first = None; samples = 0
        for chunk in voice.synthesize(text):
            first = first or time.perf_counter() - start
            samples += len(chunk.audio_float_array); rate = chunk.sample_rate
        print(json.dumps({"text": text, "first": first, "took": time.perf_counter() - start,
                          "audio": samples / rate}), flush=True)
"#;

/// One measured synthesis.
struct Run {
    first: f64,
    took: f64,
    audio: f64,
}

fn audio_seconds(event: &Event) -> Result<f64> {
    let chunk = AudioChunk::from_fields(event.fields()).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(chunk.frames() as f64 / chunk.rate as f64)
}

/// Our server: `synthesize` of each sentence over the pipes.
fn ours(tts: &mut Client, text: &str) -> Result<Run> {
    let start = Instant::now();
    let mut first = None;
    let mut audio = 0.0;
    for event in tts.request("synthesize", json!({"text": text}))? {
        let event = event?;
        if let Some(e) = event.as_error() {
            bail!("synthesize failed: {e}");
        }
        if event.is(ProtocolEvent::Audio) {
            first.get_or_insert(start.elapsed().as_secs_f64());
            audio += audio_seconds(&event)?;
        }
    }
    Ok(Run {
        first: first.context("no audio")?,
        took: start.elapsed().as_secs_f64(),
        audio,
    })
}

fn piper_tts(python: &Path, voice: &Path, repetitions: usize) -> Result<Vec<(String, Run)>> {
    let out = Command::new(python)
        .args(["-c", PIPER_ANCHOR])
        .arg(voice)
        .arg(serde_json::to_string(&SENTENCES)?)
        .arg(repetitions.to_string())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    ensure!(
        out.status.success(),
        "piper-tts failed: install it with scripts/bench-tts.sh (or pass --python)"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line)?;
            Ok((
                v["text"].as_str().unwrap_or_default().to_string(),
                Run {
                    first: v["first"].as_f64().unwrap_or(f64::NAN),
                    took: v["took"].as_f64().unwrap_or(f64::NAN),
                    audio: v["audio"].as_f64().unwrap_or(f64::NAN),
                },
            ))
        })
        .collect()
}

/// Streams a reply token by token; returns the delay from the token that completes the first
/// sentence to its first audio.
fn streamed_first_audio(tts: &mut Client) -> Result<f64> {
    let tokens = [
        "The capital",
        " of France",
        " is Paris.",
        " It is",
        " lovely.",
    ];
    let mut sentence_end = None;
    let mut previous = "";
    for token in tokens {
        // The first sentence is complete when the token after its period arrives.
        if previous.ends_with('.') && sentence_end.is_none() {
            sentence_end = Some(Instant::now());
        }
        tts.send("text", json!({"data": token, "audio": true, "play": false}))?;
        previous = token;
        std::thread::sleep(Duration::from_millis(30)); // tokens arrive at LLM speed
    }
    let flush = tts.send("flush", json!({"audio": true, "play": false}))?;
    let mut first = None;
    loop {
        let event = tts.next_event()?;
        if event.is(ProtocolEvent::Audio) && first.is_none() {
            first = Some(Instant::now());
        }
        if event.is(ProtocolEvent::End) && event.id().and_then(Value::as_u64) == Some(flush) {
            break;
        }
    }
    let (end, first) = (
        sentence_end.context("no sentence end")?,
        first.context("no audio")?,
    );
    Ok((first - end).as_secs_f64())
}

/// The chat → tts pipeline: from the chat request to speech_start (playback timed on the
/// clock, as headless).
fn pipeline(dir: &Path, tts: &mut Client) -> Result<f64> {
    let _chat_server = serve(
        dir,
        &[
            "chat",
            "--model",
            "smollm2",
            "--system",
            "You are a helpful assistant.",
        ],
    )?;
    let mut chat = connect_ready(dir, "chat")?;
    let start = Instant::now();
    for event in chat.request("chat", json!({"data": "What is the capital of France?"}))? {
        let event = event?;
        if let Some(text) = event.str("text").filter(|t| !t.is_empty()) {
            tts.send("text", json!({"data": text}))?;
        }
    }
    tts.send("flush", Value::Null)?;
    loop {
        let event = tts.next_event()?;
        if event.is(ServerEvent::SpeechStart) {
            return Ok(start.elapsed().as_secs_f64());
        }
    }
}

/// Runs the benchmark and prints the tables.
pub fn run(options: &TtsBench) -> Result<()> {
    let repetitions = options.repetitions.max(1);
    let voice = crate::assets::piper_voice(&options.voice)?;
    let dir = std::env::temp_dir().join(format!("cpipe-bench-tts-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let voice_arg = voice.to_string_lossy().into_owned();
    let _server = serve(&dir, &["tts", "--voice", &voice_arg, "--playback", "none"])?;
    let mut tts = connect_ready(&dir, "tts")?;
    ours(&mut tts, "Warm up.")?;
    let anchor = piper_tts(&options.python, &voice, repetitions)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "Voice {} on {threads} threads, median of {repetitions}",
        voice.display()
    );
    println!(
        "{:<8} {:>7} | {:>12} {:>12} {:>6} | {:>14} {:>14} {:>6}",
        "sentence",
        "audio s",
        "RTF cpipe",
        "piper-tts",
        "ratio",
        "1st audio ms",
        "piper-tts",
        "ratio"
    );
    let (mut all_ours, mut all_piper) = (Vec::new(), Vec::new());
    for (i, text) in SENTENCES.iter().enumerate() {
        let runs: Vec<Run> = (0..repetitions)
            .map(|_| ours(&mut tts, text))
            .collect::<Result<_>>()?;
        let theirs: Vec<&Run> = anchor
            .iter()
            .filter(|(t, _)| t == text)
            .map(|(_, r)| r)
            .collect();
        let rtf = median(runs.iter().map(|r| r.took / r.audio).collect());
        let first = median(runs.iter().map(|r| r.first * 1000.0).collect());
        let a_rtf = median(theirs.iter().map(|r| r.took / r.audio).collect());
        let a_first = median(theirs.iter().map(|r| r.first * 1000.0).collect());
        all_ours.push(rtf);
        all_piper.push(a_rtf);
        println!(
            "{:<8} {:>7.2} | {rtf:>12.3} {a_rtf:>12.3} {:>5.2}x | {first:>14.1} {a_first:>14.1} {:>5.2}x",
            i + 1,
            runs[0].audio,
            rtf / a_rtf,
            first / a_first
        );
    }
    let (ours_rtf, piper_rtf) = (median(all_ours), median(all_piper));
    println!(
        "real-time factor (median over sentences): cpipe {ours_rtf:.3}, piper-tts {piper_rtf:.3} ({:.2}x; below 1 is faster)",
        ours_rtf / piper_rtf
    );
    let delays: Vec<f64> = (0..repetitions)
        .map(|_| streamed_first_audio(&mut tts).map(|s| s * 1000.0))
        .collect::<Result<_>>()?;
    println!(
        "streamed reply: first audio {:.0} ms after its first sentence ended (target < 200 ms)",
        median(delays)
    );
    if options.pipeline {
        let took = pipeline(&dir, &mut tts)?;
        println!(
            "chat → tts pipeline (smollm2 + joe): first word {:.0} ms after the request (target < 1500 ms)",
            took * 1000.0
        );
    }
    let _ = tts.call("stop", Value::Null);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
