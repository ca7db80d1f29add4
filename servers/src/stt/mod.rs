//! `cpipe --serve stt`: a resident Whisper model. Live audio (a microphone, or a WAV file
//! played in real time) is cut into utterances by Silero VAD and transcribed, with partial text
//! while an utterance goes on, broadcast to every subscriber. Clients can also push audio and
//! get its transcript.

mod source;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use models::stt::{
    audio::to_16k_mono, Segment, Segmenter, SileroVad, SttError, VadEvent, VadSettings, Whisper,
    SAMPLE_RATE,
};
use pipe_core::audio::AudioChunk;
use pipe_core::{
    CommandSpec, ErrorCode, Event, Fields, Request, Responder, ServerHandle, ToolError, ToolServer,
};
use serde_json::{json, Value};

pub use source::{list_devices, Source};

/// What `get_help` answers: this server's part of the cpipe skill (skills/cpipe/).
const HELP: &str = include_str!("../../../skills/cpipe/stt.md");
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

/// A transcription for the Whisper thread.
struct Job {
    samples: Vec<f32>,
    purpose: Purpose,
    /// Set when the result is no longer wanted: the Whisper thread skips or interrupts the job.
    stop: Arc<AtomicBool>,
    reply: SyncSender<Result<Vec<Segment>, ToolError>>,
}

/// A transcription's result, once the Whisper thread gets to it.
type Answer = Receiver<Result<Vec<Segment>, ToolError>>;

/// A queued transcription: its result, and its off switch.
struct Ticket {
    result: Answer,
    stop: Arc<AtomicBool>,
}

impl Ticket {
    /// Stops the transcription, queued or running (it then answers `cancelled`).
    fn cancel(&self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Live transcriptions in flight, published in the order they were asked for.
enum Pending {
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
fn publish_in_order(server: &ServerHandle, partial_busy: &AtomicBool, pending: Receiver<Pending>) {
    for item in pending {
        match item {
            Pending::Partial { result, start } => {
                if let Ok(Ok(segments)) = result.recv() {
                    let text = joined(&segments);
                    if !text.is_empty() {
                        server.broadcast(
                            &Event::new("partial")
                                .with("text", text)
                                .with("start", round(start)),
                        );
                    }
                }
                partial_busy.store(false, Ordering::Release);
            }
            Pending::Final { result, start, end } => match result.recv() {
                Ok(Ok(segments)) => {
                    let text = joined(&segments);
                    server.broadcast(&transcript_event(&segments, start, end));
                    if !text.is_empty() {
                        // named-pipes' stt clients read transcribed text as token events.
                        server.broadcast(&Event::new("token").with("text", format!("{text} ")));
                    }
                }
                Ok(Err(e)) => server.broadcast(&e.to_event()),
                Err(_) => return,
            },
        }
    }
}

/// The `transcript` event of one utterance.
fn transcript_event(segments: &[Segment], start: f32, end: f32) -> Event {
    Event::new("transcript")
        .with("text", joined(segments))
        .with("start", round(start))
        .with("end", round(end))
        .with("segments", segments_json(segments, start))
}

/// Sends audio to the Whisper thread and waits for its text.
#[derive(Clone)]
struct Transcriber {
    jobs: Sender<Job>,
}

impl Transcriber {
    /// Queues audio for transcription.
    fn submit(&self, samples: Vec<f32>, purpose: Purpose) -> Result<Ticket, ToolError> {
        let (reply, result) = mpsc::sync_channel(1);
        let stop = Arc::new(AtomicBool::new(false));
        let job = Job {
            samples,
            purpose,
            stop: Arc::clone(&stop),
            reply,
        };
        self.jobs.send(job).map_err(|_| {
            ToolError::new(ErrorCode::Unavailable, "the Whisper thread has stopped")
        })?;
        Ok(Ticket { result, stop })
    }

    /// Transcribes audio, waiting for the result; `out`'s cancellation stops the work too.
    fn transcribe(&self, samples: Vec<f32>, out: &Responder) -> Result<Vec<Segment>, ToolError> {
        let ticket = self.submit(samples, Purpose::Request)?;
        loop {
            match ticket.result.recv_timeout(Duration::from_millis(100)) {
                Ok(result) => return result,
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(e) = out.check() {
                        ticket.cancel();
                        return Err(e.into());
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(ToolError::internal(
                        "the Whisper thread stopped mid-transcription",
                    ))
                }
            }
        }
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
                if shared.server.state() == "listening" {
                    shared.server.set_state("idle");
                }
            })
            .map_err(|e| ToolError::internal(format!("cannot start the live loop: {e}")))?;
        self.server.set_state("listening");
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
        let (publish, pending) = mpsc::channel::<Pending>();
        let publisher = {
            let (server, busy) = (self.server.clone(), Arc::clone(&partial_busy));
            std::thread::spawn(move || publish_in_order(&server, &busy, pending))
        };
        let partial_every = (PARTIAL_EVERY.as_secs_f64() * SAMPLE_RATE as f64) as usize;
        let mut since_partial = 0usize;
        // The off switch of the partial transcription last asked for.
        let mut partial: Option<Arc<AtomicBool>> = None;
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
                        .broadcast(&Event::new("speech_start").with("at", round(at))),
                    VadEvent::Utterance {
                        start,
                        end,
                        samples,
                    } => {
                        self.server
                            .broadcast(&Event::new("speech_end").with("at", round(end)));
                        if let Some(partial) = partial.take() {
                            partial.store(true, Ordering::Release);
                        }
                        let ticket = match early.take() {
                            Some((s, len, ticket)) if s == start && len == samples.len() => {
                                tracing::debug!("the early final transcription stands");
                                Ok(ticket)
                            }
                            other => {
                                if let Some((_, _, ticket)) = other {
                                    ticket.cancel();
                                }
                                self.transcriber.submit(samples, Purpose::Final)
                            }
                        };
                        if let Ok(ticket) = ticket {
                            let result = ticket.result;
                            let _ = publish.send(Pending::Final { result, start, end });
                        }
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
                        partial.store(true, Ordering::Release);
                    }
                    if let Ok(ticket) = self.transcriber.submit(samples.to_vec(), Purpose::Final) {
                        early = Some((start, samples.len(), ticket));
                    }
                }
            }
            if let Some((start, samples)) = segmenter.current() {
                since_partial += chunk.len();
                if since_partial >= partial_every && !partial_busy.swap(true, Ordering::AcqRel) {
                    since_partial = 0;
                    match self.transcriber.submit(samples.to_vec(), Purpose::Partial) {
                        Ok(Ticket { result, stop }) => {
                            let _ = publish.send(Pending::Partial { result, start });
                            partial = Some(stop);
                        }
                        Err(_) => partial_busy.store(false, Ordering::Release),
                    }
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
    fn reply_vad(&self, event: VadEvent, out: &Responder) -> Result<(), ToolError> {
        match event {
            VadEvent::SpeechStart { at } => {
                out.emit(Event::new("speech_start").with("at", round(at)))?;
            }
            VadEvent::Utterance {
                start,
                end,
                samples,
            } => {
                out.emit(Event::new("speech_end").with("at", round(end)))?;
                let segments = self.transcriber.transcribe(samples, out)?;
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

/// Binds the stt server and starts loading the model in the background.
pub fn build(builder: pipe_core::Builder, options: SttOptions) -> anyhow::Result<ToolServer> {
    let mut server = builder
        .description(
            "Speech-to-text server: a resident Whisper model transcribing live and pushed audio.",
        )
        .help(HELP)
        .initial_state("loading")
        .bind()?;
    let handle = server.handle_ref();
    let (jobs, queue) = mpsc::channel::<Job>();
    let shared = Shared {
        transcriber: Transcriber { jobs },
        vad: options.vad.clone(),
        runtime: options.runtime.clone(),
        server: handle.clone(),
        live: Arc::default(),
        pushed: Arc::default(),
        idle_vads: Arc::default(),
    };
    {
        let shared = shared.clone();
        let listen = options.listen.clone();
        std::thread::Builder::new()
            .name("whisper".into())
            .spawn(move || whisper_thread(options, shared, listen, queue))?;
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
        .emits(&["listening"]),
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
            out.emit(Event::new("listening").with("source", source.to_string()))?;
            Ok(())
        },
    );
    let s = shared.clone();
    server.handle_inline(
        CommandSpec::new("pause", "Stops live transcription.").emits(&["paused"]),
        move |_req, out| {
            let was = lock(&s.live).take().is_some();
            out.emit(Event::new("paused").with("was_listening", was))?;
            Ok(())
        },
    );
    server.handle(
        CommandSpec::new("list_devices", "The microphones this machine has.").emits(&["devices"]),
        move |_req, out| {
            let (devices, default) = list_devices();
            out.emit(
                Event::new("devices")
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
        .emits(&["transcript"]),
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
                let found = s.transcriber.transcribe(audio[a..b].to_vec(), out)?;
                texts.push(joined(&found));
                segments.extend(segments_json(&found, a as f32 / SAMPLE_RATE as f32));
            }
            out.emit(
                Event::new("transcript")
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
        .emits(&["speech_start", "speech_end", "transcript"]),
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
                s.reply_vad(event, out)?;
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

/// Loads the model, starts the first live source, then transcribes jobs in order.
fn whisper_thread(
    options: SttOptions,
    shared: Shared,
    listen: Option<Source>,
    jobs: Receiver<Job>,
) {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let loaded = Whisper::load(&options.model, threads).and_then(|w| {
        // The VAD must load too, or audio cannot be cut into utterances; it is the first idle one.
        let vad = SileroVad::load(&options.vad, Some(&options.runtime))?;
        lock(&shared.idle_vads).push(vad);
        Ok(w)
    });
    let server = shared.server.clone();
    let mut whisper = match loaded {
        Ok(w) => w,
        Err(e) => {
            crate::loading::failed(&server, "model", &e.to_string(), jobs, |job, error| {
                let _ = job.reply.send(Err(error));
            });
            return;
        }
    };
    server.set_config(Fields::from_iter([
        ("model", options.model.display().to_string().into()),
        ("vad", options.vad.display().to_string().into()),
        ("multilingual", whisper.is_multilingual().into()),
        ("language", json!(options.language)),
        ("sample_rate", SAMPLE_RATE.into()),
    ]));
    server.set_state("idle");
    if let Some(source) = listen {
        if let Err(e) = shared.listen(source.clone()) {
            tracing::error!("cannot listen to {source}: {}", e.message);
        }
    }
    let mut waiting: Vec<Job> = Vec::new();
    loop {
        if waiting.is_empty() {
            match jobs.recv() {
                Ok(job) => waiting.push(job),
                Err(_) => return,
            }
        }
        waiting.extend(jobs.try_iter());
        // Live finals first, then requests in order, partials last.
        let next = waiting
            .iter()
            .position(|j| j.purpose == Purpose::Final)
            .or_else(|| waiting.iter().position(|j| j.purpose == Purpose::Request))
            .unwrap_or(0);
        let job = waiting.remove(next);
        if job.stop.load(Ordering::Acquire) {
            let _ = job.reply.send(Err(ToolError::new(
                ErrorCode::Cancelled,
                "transcription cancelled",
            )));
            continue;
        }
        server.set_state("transcribing");
        let started = std::time::Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            whisper.transcribe_unless(&job.samples, options.language.as_deref(), &job.stop)
        }));
        tracing::debug!(
            "whisper ({:?}): {:.2} s of audio in {:?}",
            job.purpose,
            job.samples.len() as f32 / SAMPLE_RATE as f32,
            started.elapsed()
        );
        let _ = job.reply.send(match result {
            Ok(Ok(segments)) => Ok(segments),
            Ok(Err(SttError::Language(m))) => Err(ToolError::invalid(m)),
            Ok(Err(SttError::Interrupted)) => Err(ToolError::new(
                ErrorCode::Cancelled,
                "transcription cancelled",
            )),
            Ok(Err(e)) => Err(ToolError::internal(e.to_string())),
            Err(_) => Err(ToolError::internal(
                "whisper crashed on this audio; the server is still running",
            )),
        });
        let listening = lock(&shared.live).is_some();
        server.set_state(if listening { "listening" } else { "idle" });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
