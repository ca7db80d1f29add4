//! `cpipe bench stt`: the stt server against whisper.cpp's own CLI on the same GGML file and
//! against faster-whisper (int8) on the same CTranslate2 folder, on the same clips; then the
//! delay from the end of a live utterance to its final transcript.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use models::stt::{audio::to_16k_mono, encoder_window, word_error_rate};
use pipe_core::Client;

use super::median;
use crate::vocab::ServerEvent;
use serde_json::{json, Value};

use super::{connect_ready, serve};
use crate::wav::{read_wav, write_wav};

/// Options of `cpipe bench stt`.
#[derive(Debug, clap::Args)]
pub struct SttBench {
    /// The CTranslate2 (faster-whisper) folder; it is also imported to GGML for cpipe and
    /// whisper.cpp.
    #[arg(long, default_value = "tiny.en")]
    pub model: String,
    /// whisper.cpp's CLI (default: what scripts/build-whisper-cli.sh built).
    #[arg(long, env = "WHISPER_CLI")]
    pub whisper_cli: Option<PathBuf>,
    /// A Python with faster-whisper installed (scripts/bench-stt.sh makes one).
    #[arg(long, env = "CPIPE_BENCH_PYTHON", default_value = ".venv/bin/python")]
    pub python: PathBuf,
    /// Repetitions of each clip (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub repetitions: usize,
}

/// Times faster-whisper on each clip: prints one JSON line per clip.
const FASTER_WHISPER: &str = r#"
import json, sys, time
from faster_whisper import WhisperModel
folder, clips, reps, threads = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model = WhisperModel(folder, device="cpu", compute_type="int8", cpu_threads=threads)
list(model.transcribe(clips[0], beam_size=1)[0])
for clip in clips:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        segments, _ = model.transcribe(clip, beam_size=1, language="en")
        text = " ".join(s.text.strip() for s in segments)
        times.append(time.perf_counter() - start)
    print(json.dumps({"clip": clip, "seconds": sorted(times)[len(times) // 2], "text": text}), flush=True)
"#;

/// faster-whisper's word times on each clip (`word_timestamps=True`, float32 like cpipe's
/// weights): one JSON line per clip.
const FASTER_WHISPER_WORDS: &str = r#"
import json, sys
from faster_whisper import WhisperModel
folder, clips, threads = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
model = WhisperModel(folder, device="cpu", compute_type="float32", cpu_threads=threads)
for clip in clips:
    segments, _ = model.transcribe(clip, beam_size=1, language="en", word_timestamps=True)
    words = [[w.word.strip(), w.start, w.end] for s in segments for w in s.words]
    print(json.dumps({"clip": clip, "words": words}), flush=True)
"#;

fn default_whisper_cli() -> PathBuf {
    super::tools_dir().join("whisper.cpp/build/bin/whisper-cli")
}

/// The clips: JFK, and sentences spoken by flite, as 16 kHz mono files, with what they say.
fn clips(dir: &Path) -> Result<Vec<(PathBuf, String, f64)>> {
    let jfk = crate::assets::offline("jfk.wav", "jfk.wav", "whisper")?;
    let mut clips = vec![(
        jfk,
        "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.".to_string(),
    )];
    for (i, text) in [
        "Please open the window and let the fresh air in.",
        "The meeting moved to Thursday afternoon, so we have two more days to finish the report.",
    ]
    .iter()
    .enumerate()
    {
        let raw = dir.join(format!("flite{i}.wav"));
        let status = Command::new("flite")
            .args(["-voice", "slt", "-t", text, "-o"])
            .arg(&raw)
            .status()
            .context("running flite (apt-get install flite)")?;
        ensure!(status.success(), "flite failed");
        clips.push((raw, text.to_string()));
    }
    clips
        .into_iter()
        .enumerate()
        .map(|(i, (path, text))| {
            let (samples, rate, channels) = read_wav(&path)?;
            let audio = to_16k_mono(&samples, rate, channels);
            let out = dir.join(format!("clip{i}.wav"));
            write_wav(&out, 16_000, &audio)?;
            Ok((out, text, audio.len() as f64 / 16_000.0))
        })
        .collect()
}

/// whisper-cli's processing time (its total minus model loading), in seconds, with its encoder
/// reading `window` frames (`None`: its default, 30 s).
fn whisper_cpp(
    cli: &Path,
    model: &Path,
    clip: &Path,
    threads: usize,
    window: Option<usize>,
) -> Result<(f64, String)> {
    let out = Command::new(cli)
        .args([
            "-m".as_ref(),
            model.as_os_str(),
            "-f".as_ref(),
            clip.as_os_str(),
        ])
        .args([
            "-t",
            &threads.to_string(),
            "-bs",
            "1",
            "-bo",
            "1",
            "-nt",
            "-l",
            "en",
            "-ac",
            &window.unwrap_or(0).to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {}", cli.display()))?;
    ensure!(
        out.status.success(),
        "whisper-cli failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = String::from_utf8_lossy(&out.stderr);
    let ms = |label: &str| -> Result<f64> {
        let line = log
            .lines()
            .find(|l| l.contains(label))
            .with_context(|| format!("no '{label}' in whisper-cli's timings"))?;
        let value = line.split('=').nth(1).unwrap_or("").trim();
        Ok(value
            .split_whitespace()
            .next()
            .unwrap_or("")
            .parse::<f64>()?)
    };
    let took = (ms("total time")? - ms("load time")?) / 1000.0;
    Ok((
        took,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

fn faster_whisper(
    python: &Path,
    folder: &Path,
    clips: &[PathBuf],
    reps: usize,
    threads: usize,
) -> Result<Vec<(f64, String)>> {
    let out = Command::new(python)
        .args(["-c", FASTER_WHISPER])
        .arg(folder)
        .arg(serde_json::to_string(clips)?)
        .arg(reps.to_string())
        .arg(threads.to_string())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    ensure!(
        out.status.success(),
        "faster-whisper failed: install it with scripts/bench-stt.sh (or pass --python)"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l)?;
            Ok((
                v["seconds"].as_f64().unwrap_or(f64::NAN),
                v["text"].as_str().unwrap_or("").to_string(),
            ))
        })
        .collect()
}

/// faster-whisper's words of each clip: `(word, start, end)`.
fn faster_whisper_words(
    python: &Path,
    folder: &Path,
    clips: &[PathBuf],
    threads: usize,
) -> Result<Vec<Vec<(String, f64, f64)>>> {
    let out = Command::new(python)
        .args(["-c", FASTER_WHISPER_WORDS])
        .arg(folder)
        .arg(serde_json::to_string(clips)?)
        .arg(threads.to_string())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    ensure!(out.status.success(), "faster-whisper's word timing failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l)?;
            Ok(v["words"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|w| {
                    (
                        w[0].as_str().unwrap_or("").to_lowercase(),
                        w[1].as_f64().unwrap_or(f64::NAN),
                        w[2].as_f64().unwrap_or(f64::NAN),
                    )
                })
                .collect())
        })
        .collect()
}

/// The mean absolute difference of word boundaries (starts and ends) between `ours` and
/// `theirs`, over the words both heard in the same order; and how many those are.
fn boundary_difference(ours: &[Value], theirs: &[(String, f64, f64)]) -> (f64, usize) {
    let normal = |w: &str| {
        w.trim_matches(|c: char| !c.is_alphanumeric())
            .to_lowercase()
    };
    let mut differences = Vec::new();
    let mut j = 0;
    for word in ours {
        let text = normal(word["word"].as_str().unwrap_or(""));
        // Skip their words until the same one: the two may hear a word differently.
        let Some(k) = theirs[j..]
            .iter()
            .take(3)
            .position(|t| normal(&t.0) == text)
        else {
            continue;
        };
        let (_, start, end) = &theirs[j + k];
        differences.push((word["start"].as_f64().unwrap_or(f64::NAN) - start).abs());
        differences.push((word["end"].as_f64().unwrap_or(f64::NAN) - end).abs());
        j += k + 1;
    }
    let n = differences.len() / 2;
    (
        differences.iter().sum::<f64>() / differences.len().max(1) as f64,
        n,
    )
}

/// The delays from the end of a live utterance (a clip played as the microphone) to its
/// `speech_end` event and to its transcript, in seconds.
fn end_to_transcript(client: &mut Client, clip: &Path, speech_end: f64) -> Result<(f64, f64)> {
    let reply = client.call("listen", json!({"file": clip}))?;
    // The file starts playing before the server answers: time from the answer, not from the
    // request, which may wait for a VAD to load.
    let started = Instant::now();
    ensure!(
        reply.iter().any(|e| e.is(ServerEvent::Listening)),
        "listen failed"
    );
    let mut vad_end = f64::NAN;
    loop {
        let Some(event) = client.try_next_event(Duration::from_secs(30))? else {
            bail!("no transcript within 30 s");
        };
        let after_end = started.elapsed().as_secs_f64() - speech_end;
        match event.name() {
            "speech_end" => vad_end = after_end,
            "transcript" => return Ok((vad_end, after_end)),
            _ => {}
        }
    }
}

/// Runs the benchmark and prints the tables.
pub fn run(options: &SttBench) -> Result<()> {
    let repetitions = options.repetitions.max(1);
    let folder = if options.model == "tiny.en" {
        crate::assets::offline("tiny.en", "faster-whisper-tiny.en", "whisper")?
    } else {
        PathBuf::from(&options.model)
    };
    let ggml = crate::assets::whisper_model(&folder.to_string_lossy())?;
    let cli = options
        .whisper_cli
        .clone()
        .unwrap_or_else(default_whisper_cli);
    ensure!(
        cli.exists(),
        "whisper-cli not found at {}: build it with scripts/build-whisper-cli.sh (or pass --whisper-cli)",
        cli.display()
    );
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dir = std::env::temp_dir().join(format!("cpipe-bench-stt-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let clips = clips(&dir)?;

    let ggml_arg = ggml.to_string_lossy().into_owned();
    let _server = serve(&dir, &["stt", "--listen", "none", "--whisper", &ggml_arg])?;
    let mut client = connect_ready(&dir, "stt")?;
    client.call("transcribe", json!({"wav": clips[0].0}))?; // warm-up

    let paths: Vec<PathBuf> = clips.iter().map(|c| c.0.clone()).collect();
    let anchor = faster_whisper(&options.python, &folder, &paths, repetitions, threads)?;
    println!(
        "Model {} on {threads} threads, greedy decoding, median of {repetitions}",
        ggml.display()
    );
    println!(
        "{:<6} {:>7} | {:>9} | {:>11} {:>6} | {:>11} {:>6} | {:>14} {:>6} | {:>5} {:>5} {:>5}",
        "clip",
        "audio s",
        "RTF cpipe",
        "w.cpp 30 s",
        "ratio",
        "w.cpp same",
        "ratio",
        "faster-whisper",
        "ratio",
        "WER",
        "w.cpp",
        "f-w"
    );
    let mut all = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for (i, (clip, text, seconds)) in clips.iter().enumerate() {
        // whisper.cpp as its CLI runs by default (a 30 s encoder window), and with the window
        // cpipe chose for this clip: the same work. Interleaved, so all three share the
        // machine's moods.
        let window = encoder_window((seconds * 16_000.0) as usize);
        let (mut took, mut full, mut same) = (Vec::new(), Vec::new(), Vec::new());
        let (mut heard, mut cpp_text) = (String::new(), String::new());
        for _ in 0..repetitions {
            let t = Instant::now();
            let events = client.call("transcribe", json!({"wav": clip}))?;
            took.push(t.elapsed().as_secs_f64());
            heard = events[0].str("text").unwrap_or("").to_string();
            let (t, text) = whisper_cpp(&cli, &ggml, clip, threads, None)?;
            full.push(t);
            cpp_text = text;
            same.push(whisper_cpp(&cli, &ggml, clip, threads, Some(window))?.0);
        }
        let rtf = [
            median(took) / seconds,
            median(full) / seconds,
            median(same) / seconds,
            anchor[i].0 / seconds,
        ];
        for (all, rtf) in all.iter_mut().zip(rtf) {
            all.push(rtf);
        }
        let [ours, full, same, fw] = rtf;
        println!(
            "{:<6} {seconds:>7.2} | {ours:>9.3} | {full:>11.3} {:>5.2}x | {same:>11.3} {:>5.2}x | {fw:>14.3} {:>5.2}x | {:>5.2} {:>5.2} {:>5.2}",
            i + 1,
            ours / full,
            ours / same,
            ours / fw,
            word_error_rate(text, &heard),
            word_error_rate(text, &cpp_text),
            word_error_rate(text, &anchor[i].1),
        );
    }
    let [ours, full, same, fw] = all.map(median);
    println!(
        "real-time factor (median over clips; below 1 is faster): cpipe {ours:.3}; whisper.cpp {full:.3} ({:.2}x), with cpipe's window {same:.3} ({:.2}x); faster-whisper int8 {fw:.3} ({:.2}x)",
        ours / full,
        ours / same,
        ours / fw
    );

    // Word timing: its cost in real-time factor, and its agreement with faster-whisper's.
    let theirs = faster_whisper_words(&options.python, &folder, &paths, threads)?;
    let (mut plain_rtf, mut timed_rtf, mut differences, mut compared) =
        (Vec::new(), Vec::new(), Vec::new(), 0);
    for (i, (clip, _, seconds)) in clips.iter().enumerate() {
        let (mut plain, mut timed) = (Vec::new(), Vec::new());
        let mut words = Vec::new();
        for _ in 0..repetitions {
            let t = Instant::now();
            client.call("transcribe", json!({"wav": clip}))?;
            plain.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let events = client.call("transcribe", json!({"wav": clip, "words": true}))?;
            timed.push(t.elapsed().as_secs_f64());
            words = events[0]
                .get("words")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
        }
        plain_rtf.push(median(plain) / seconds);
        timed_rtf.push(median(timed) / seconds);
        let (difference, n) = boundary_difference(&words, &theirs[i]);
        differences.push(difference * n as f64);
        compared += n;
    }
    let (plain, timed) = (median(plain_rtf), median(timed_rtf));
    println!(
        "word timing: mean boundary difference from faster-whisper's word_timestamps {:.0} ms over {compared} words (target <= 60 ms); real-time factor {timed:.3} with words, {plain:.3} without ({:+.0}%)",
        differences.iter().sum::<f64>() / compared.max(1) as f64 * 1000.0,
        (timed / plain - 1.0) * 100.0
    );

    // Latency: a 5-second utterance played as the microphone, then silence.
    let (samples, _, _) = read_wav(&clips[2].0)?;
    let mut utterance = vec![0.0f32; 8_000];
    utterance.extend(&samples);
    let speech_end = utterance
        .iter()
        .rposition(|s| s.abs() > 0.01)
        .unwrap_or(utterance.len()) as f64
        / 16_000.0;
    utterance.extend(vec![0.0; 48_000]);
    let live = dir.join("live.wav");
    write_wav(&live, 16_000, &utterance)?;
    let (mut vad_ends, mut delays) = (Vec::new(), Vec::new());
    for _ in 0..repetitions {
        let (vad_end, delay) = end_to_transcript(&mut client, &live, speech_end)?;
        vad_ends.push(vad_end * 1000.0);
        delays.push(delay * 1000.0);
    }
    println!(
        "live: final transcript {:.0} ms after the end of a {:.1} s utterance (target < 500 ms); the VAD called the end after {:.0} ms",
        median(delays),
        speech_end - 0.5,
        median(vad_ends)
    );
    let _ = client.call("stop", Value::Null);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
