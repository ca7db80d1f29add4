//! The voice pipeline chat → tts: asks the chat server a question, forwards each token of the
//! reply to the tts server as it streams, flushes at the end, and waits until the speech is
//! over. It reports the time from the request to the first audio.
//!
//! ```text
//! cpipe --serve chat --model smollm2 --system 'You are a helpful assistant.' &
//! cpipe --serve tts --voice joe &
//! cargo run --release -p examples --bin voice_agent -- --wav reply.wav "What is the capital of France? Answer in one word."
//! ```
//!
//! `--wav FILE` asks the tts server for the audio too and writes it to FILE, so the pipeline
//! also runs headless; `--no-play` leaves the server's speakers out of it.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pipe_core::audio::AudioChunk;
use pipe_core::{Client, ConnectOptions, Event};
use serde_json::{json, Value};

struct Args {
    question: String,
    wav: Option<String>,
    play: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        question: String::new(),
        wav: None,
        play: true,
    };
    let mut words = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--wav" => args.wav = Some(it.next().context("--wav needs a file name")?),
            "--no-play" => args.play = false,
            "-h" | "--help" => {
                println!("usage: voice_agent [--wav FILE] [--no-play] QUESTION");
                std::process::exit(0);
            }
            _ => words.push(arg),
        }
    }
    args.question = words.join(" ");
    if args.question.trim().is_empty() {
        bail!("usage: voice_agent [--wav FILE] [--no-play] QUESTION");
    }
    if args.wav.is_none() && !args.play {
        bail!("with --no-play, give --wav FILE: otherwise the speech goes nowhere");
    }
    Ok(args)
}

/// What the tts side has received so far.
#[derive(Default)]
struct Speech {
    samples: Vec<i16>,
    rate: u32,
    first_audio: Option<Duration>,
    first_spoken: Option<Duration>,
    ended: bool,
}

impl Speech {
    fn take(&mut self, event: &Event, since: Instant) -> anyhow::Result<()> {
        if let Some(error) = event.as_error() {
            bail!("the tts server answered: {error}");
        }
        match event.name() {
            "audio" => {
                let chunk = AudioChunk::from_fields(event.fields())
                    .map_err(|e| anyhow::anyhow!("bad audio event: {e}"))?;
                self.first_audio.get_or_insert_with(|| since.elapsed());
                self.rate = chunk.rate;
                self.samples.extend(
                    chunk
                        .to_f32()
                        .iter()
                        .map(|s| (s.clamp(-1.0, 1.0) * 32767.0) as i16),
                );
            }
            "speech_start" => {
                self.first_spoken.get_or_insert_with(|| since.elapsed());
                self.ended = false;
            }
            "speech_end" => self.ended = true,
            _ => {}
        }
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let options = ConnectOptions {
        // The first reply may wait for a model to load.
        timeout: Some(Duration::from_secs(120)),
        ..ConnectOptions::default()
    };
    let mut chat =
        Client::connect_with("chat", &options).context("is `cpipe --serve chat` running?")?;
    let mut tts =
        Client::connect_with("tts", &options).context("is `cpipe --serve tts` running?")?;
    let speak = json!({"audio": args.wav.is_some(), "play": args.play});
    let text_request = |data: &str| {
        let mut request = speak.clone();
        request["data"] = Value::from(data);
        request
    };

    let started = Instant::now();
    let mut speech = Speech::default();
    let mut reply = String::new();
    for event in chat.request("chat", json!({"data": args.question}))? {
        let event = event?;
        if let Some(error) = event.as_error() {
            bail!("the chat server answered: {error}");
        }
        if event.name() == "token" {
            let text = event.str("text").unwrap_or_default();
            if !text.is_empty() {
                print!("{text}");
                std::io::Write::flush(&mut std::io::stdout())?;
                reply.push_str(text);
                tts.send("text", text_request(text))?;
            }
        }
        while let Some(event) = tts.try_next_event(Duration::ZERO)? {
            speech.take(&event, started)?;
        }
    }
    println!();
    let flush = tts.send("flush", speak.clone())?;
    // Everything the tts server sends until the flush ends, in order.
    loop {
        let event = tts.next_event()?;
        let flushed = event.name() == "end" && event.id().and_then(Value::as_u64) == Some(flush);
        speech.take(&event, started)?;
        if flushed {
            break;
        }
    }
    if args.play {
        while !speech.ended {
            speech.take(&tts.next_event()?, started)?;
        }
    }
    if let Some(path) = &args.wav {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: speech.rate.max(1),
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut wav = hound::WavWriter::create(path, spec)
            .with_context(|| format!("cannot create {path}"))?;
        for s in &speech.samples {
            wav.write_sample(*s)?;
        }
        wav.finalize()?;
        eprintln!(
            "[wrote {path}: {:.1} s of speech]",
            speech.samples.len() as f64 / speech.rate.max(1) as f64
        );
    }
    let ms = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{} ms", d.as_millis()));
    eprintln!(
        "[request → first audio: {}; → first word spoken: {}; total {} ms]",
        ms(speech.first_audio),
        ms(speech.first_spoken),
        started.elapsed().as_millis()
    );
    if reply.trim().is_empty() {
        bail!("the chat server replied with nothing to say");
    }
    Ok(())
}
