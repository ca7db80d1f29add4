//! `cpipe --serve tts`: a resident Piper voice. Text arrives in pieces (LLM tokens), is cut
//! into sentences per client, and each sentence is synthesized as soon as it is complete, then
//! played, streamed back to its client as audio events, or both. The voice runs on the engine
//! worker ([`crate::engine`]), taking clients' sentences in turn.

mod playback;

use crate::lock;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::{Args, FromArgMatches};
use models::sentences::SentenceSplitter;
use models::tts::{voice_name, PiperVoice, SpeakOptions};
use pipe_core::audio::AudioChunk;
use pipe_core::{
    CommandSpec, ErrorCode, Event, Fields, Request, Responder, ServerHandle, StateName, ToolError,
    ToolServer,
};
use serde_json::{json, Value};

use super::Kind;
use crate::engine::{Engine, Place, Work, Worker};
use crate::vocab::{ServerEvent, ServerState};
use playback::Playback;
pub use playback::PlaybackMode;

/// The tts kind.
pub const KIND: Kind = Kind {
    name: "tts",
    summary: "Text-to-speech server: a resident Piper voice, speaking sentences as they arrive.",
    help: include_str!("../../../../skills/cpipe/tts.md"),
    args: TtsArgs::augment_args,
    build: |matches, builder| build(TtsArgs::from_arg_matches(matches)?, builder),
};

/// The voice real users get by default: fetched once from the Hugging Face hub.
pub const DEFAULT_HUB_VOICE: &str =
    "rhasspy/piper-voices:en/en_US/lessac/medium/en_US-lessac-medium.onnx";

/// The tts server's own flags.
#[derive(Debug, Args)]
pub struct TtsArgs {
    /// The Piper voice. `joe` (en_US-joe-medium, installed by scripts/fetch-models.sh piper),
    /// a local NAME.onnx (NAME.onnx.json beside it), or a voice on the Hugging Face hub as
    /// owner/repo:path/NAME.onnx.
    #[arg(long, value_name = "VOICE", default_value = DEFAULT_HUB_VOICE)]
    pub voice: String,

    /// Where speech is played. auto: the speakers if there is an audio device, else nowhere
    /// (said in the log); speaker: the speakers or fail; none: nowhere. Speech is timed
    /// either way, for speech_start / speech_end.
    #[arg(long, value_enum, default_value = "auto", value_name = "WHERE")]
    pub playback: PlaybackMode,

    /// Record everything spoken to this WAV file.
    #[arg(long, value_name = "FILE")]
    pub wav: Option<PathBuf>,

    /// The longest text one request may bring, in characters: a bound on the work (and, for
    /// synthesize, the audio held in memory) one request can cause. 20,000 characters are
    /// about 20 minutes of speech; longer texts are refused, not cut: send them in parts.
    #[arg(long, default_value_t = 20_000, value_name = "CHARS")]
    pub max_text_chars: usize,
}

/// How the tts server is set up, once its flags are resolved to files.
pub struct TtsOptions {
    /// The voice's `.onnx` (its `.onnx.json` beside it).
    pub voice: PathBuf,
    /// The ONNX Runtime library (else `ORT_DYLIB_PATH`).
    pub runtime: Option<PathBuf>,
    /// Where speech is played.
    pub playback: PlaybackMode,
    /// A WAV file recording everything played.
    pub wav: Option<PathBuf>,
    /// The longest text one request may bring, in characters.
    pub max_text_chars: usize,
}

/// One sentence for the voice.
struct Job {
    text: String,
    speaker: Option<String>,
    speed: Option<f32>,
    epoch: u64,
}

/// A piece of one sentence's audio.
struct Audio {
    samples: Vec<f32>,
    rate: u32,
}

/// Refuses a text longer than a request may bring (`--max-text-chars`), before any work.
fn check_length(text: &str, max_chars: usize) -> Result<(), ToolError> {
    let chars = text.chars().count();
    if chars > max_chars {
        return Err(ToolError::invalid(format!(
            "the text is {chars} characters long, more than the {max_chars} this server takes per \
             request (--max-text-chars); send it in parts"
        )));
    }
    Ok(())
}

/// Per-client text waiting for its sentence to end.
type Buffers = Arc<Mutex<HashMap<Option<u32>, SentenceSplitter>>>;

fn build(args: TtsArgs, builder: pipe_core::Builder) -> anyhow::Result<ToolServer> {
    let options = TtsOptions {
        voice: crate::assets::piper_voice(&args.voice)?,
        runtime: Some(crate::assets::onnx_runtime()),
        playback: args.playback,
        wav: args.wav,
        max_text_chars: args.max_text_chars,
    };
    build_with(builder, options)
}

/// Binds the tts server and starts loading the voice on the engine worker.
pub fn build_with(builder: pipe_core::Builder, options: TtsOptions) -> anyhow::Result<ToolServer> {
    let mut server = builder
        .initial_state(ServerState::Loading)
        .broadcasts(&[ServerEvent::SpeechStart, ServerEvent::SpeechEnd])
        .bind()?;
    let handle = server.handle_ref();
    let max_chars = options.max_text_chars;
    let playback = Playback::start(options.playback, options.wav.clone(), handle.clone())?;
    let voice_name = voice_name(&options.voice);
    let worker = Worker::new();
    {
        let playback = playback.clone();
        worker.start("voice", "voice", handle.clone(), move || {
            load(options, &handle, playback)
        })?;
    }
    let buffers: Buffers = Arc::default();
    let speaker = Speaker {
        worker,
        playback: playback.clone(),
        voice_name,
        listeners: Arc::default(),
        server: server.handle_ref(),
    };

    let (s, b) = (speaker.clone(), Arc::clone(&buffers));
    server.handle(
        CommandSpec::new(
            "text",
            "Adds text (e.g. LLM tokens) to your buffer; each sentence is spoken as soon as it is complete.",
        )
        .args(speak_args(json!({"data": {"type": "string", "description": "The text to add."}})))
        .emits(&[pipe_core::ProtocolEvent::Audio]),
        move |req, out| {
            let text = match req.get("data").or_else(|| req.get("text")) {
                None | Some(Value::Null) => "",
                Some(Value::String(s)) => s.as_str(),
                Some(other) => {
                    return Err(ToolError::invalid(format!("text: data must be a string, got {other}")))
                }
            };
            check_length(text, max_chars)?;
            let epoch = s.playback.epoch();
            let sentences = lock(&b).entry(req.pid).or_default().push(text);
            let options = s.options(req, false)?;
            for sentence in sentences {
                s.speak(req, out, &sentence, &options, epoch)?;
            }
            Ok(())
        },
    );
    let (s, b) = (speaker.clone(), Arc::clone(&buffers));
    server.handle(
        CommandSpec::new(
            "flush",
            "Speaks whatever is left in your buffer (send it at the end of a text stream).",
        )
        .args(speak_args(json!({})))
        .emits(&[pipe_core::ProtocolEvent::Audio]),
        move |req, out| {
            let epoch = s.playback.epoch();
            let rest = lock(&b).get_mut(&req.pid).and_then(SentenceSplitter::flush);
            let options = s.options(req, false)?;
            if let Some(sentence) = rest {
                s.speak(req, out, &sentence, &options, epoch)?;
            }
            Ok(())
        },
    );
    let s = speaker.clone();
    server.handle(
        CommandSpec::new(
            "synthesize",
            "Speaks a whole text and returns its audio (not played unless play is true).",
        )
        .args(speak_args(
            json!({
                "text": {"type": "string", "description": "The text to speak (or give it as data)."},
                "data": {"type": "string"},
                "wav": {"type": "string", "description": "Also write the audio to this WAV file (a path on the server's machine)."}
            }),
        ))
        .emits(&[pipe_core::EventName::from(pipe_core::ProtocolEvent::Audio), ServerEvent::Synthesized.into()]),
        move |req, out| {
            let text = req.opt_str("text")?.or(req.opt_str("data")?).ok_or_else(|| {
                ToolError::invalid("synthesize: give the text as \"text\" (or \"data\")")
            })?;
            check_length(text, max_chars)?;
            let options = s.options(req, true)?;
            let wav = req.opt_str("wav")?.map(PathBuf::from);
            if let Some(path) = &wav {
                crate::wav::check_client_path(path).map_err(ToolError::invalid)?;
            }
            let mut splitter = SentenceSplitter::default();
            let mut sentences = splitter.push(text);
            sentences.extend(splitter.flush());
            let epoch = s.playback.epoch();
            let mut all = Vec::new();
            for sentence in &sentences {
                all.extend(s.speak(req, out, sentence, &options, epoch)?);
            }
            let rate = s.playback.rate().unwrap_or(0);
            if let Some(path) = &wav {
                crate::wav::write_client_wav(path, rate, &all).map_err(ToolError::invalid)?;
            }
            out.emit(
                Event::new(ServerEvent::Synthesized)
                    .with("sentences", sentences.len())
                    .with("samples", all.len())
                    .with("rate", rate)
                    .with("seconds", (all.len() as f64 / rate.max(1) as f64 * 1000.0).round() / 1000.0)
                    .with("wav", wav.map(|p| p.display().to_string())),
            )?;
            Ok(())
        },
    );
    let s = speaker.clone();
    server.handle_inline(
        CommandSpec::new(
            "subscribe_audio",
            "Sends you the audio of everything spoken from now on, as audio events (on: false stops).",
        )
        .args(json!({"type": "object", "properties": {"on": {"type": "boolean"}}}))
        .emits(&[ServerEvent::AudioSubscribed]),
        move |req, out| {
            let on = req.opt_bool("on")?.unwrap_or(true);
            let pid = req.pid.ok_or_else(|| {
                ToolError::invalid("subscribe_audio needs your pid: subscribe first")
            })?;
            let mut listeners = lock(&s.listeners);
            if on {
                listeners.insert(pid);
            } else {
                listeners.remove(&pid);
            }
            out.emit(Event::new(ServerEvent::AudioSubscribed).with("on", on))?;
            Ok(())
        },
    );
    let p = playback.clone();
    server.handle_inline(
        CommandSpec::new("is_speaking", "Whether speech is playing.")
            .emits(&[ServerEvent::IsSpeaking]),
        move |_req, out| {
            out.emit(Event::new(ServerEvent::IsSpeaking).with("speaking", p.is_speaking()))?;
            Ok(())
        },
    );
    let (p, b) = (playback, buffers);
    server.handle_inline(
        CommandSpec::new(
            "stop_speaking",
            "Barge-in: silences speech at once and drops all queued text (the protocol's stop stops the server).",
        )
        .emits(&[ServerEvent::SpeechStopped]),
        move |_req, out| {
            p.stop();
            lock(&b).values_mut().for_each(SentenceSplitter::clear);
            out.emit(Event::new(ServerEvent::SpeechStopped))?;
            Ok(())
        },
    );
    Ok(server)
}

/// What handlers share to get sentences spoken.
#[derive(Clone)]
struct Speaker {
    worker: Worker<VoiceEngine>,
    playback: Playback,
    voice_name: String,
    /// Clients that asked for the audio of everything spoken.
    listeners: Arc<Mutex<std::collections::HashSet<u32>>>,
    server: ServerHandle,
}

/// Per-request choices.
struct RequestOptions {
    speak: SpeakOptions,
    speaker: Option<String>,
    /// Send the audio to the client as audio events.
    audio: bool,
    /// Play it on the server.
    play: bool,
}

impl Speaker {
    /// Reads voice, speaker, speed, audio and play from the request.
    fn options(&self, req: &Request, one_shot: bool) -> Result<RequestOptions, ToolError> {
        if let Some(voice) = req.opt_str("voice")? {
            if voice != self.voice_name {
                return Err(ToolError::new(
                    ErrorCode::NotFound,
                    format!(
                        "unknown voice '{voice}': this server speaks with '{}' (start another \
                         server with --voice for a second voice)",
                        self.voice_name
                    ),
                ));
            }
        }
        let speaker = match req.get("speaker") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(other) => {
                return Err(ToolError::invalid(format!(
                    "speaker must be a name or a number, got {other}"
                )))
            }
        };
        let speed = req.opt_f64("speed")?.map(|s| s as f32);
        Ok(RequestOptions {
            speak: SpeakOptions {
                speaker: None,
                speed,
            },
            speaker,
            audio: req.opt_bool("audio")?.unwrap_or(one_shot),
            play: req.opt_bool("play")?.unwrap_or(!one_shot),
        })
    }

    /// Synthesizes one sentence for `req`: plays it and/or emits its audio as it comes.
    /// Returns the samples. `epoch` is the barge-in epoch the request began in: a
    /// `stop_speaking` since then drops the sentence.
    fn speak(
        &self,
        req: &Request,
        out: &Responder,
        sentence: &str,
        options: &RequestOptions,
        epoch: u64,
    ) -> Result<Vec<f32>, ToolError> {
        if epoch != self.playback.epoch() {
            return Err(stopped());
        }
        let on_its_way = options.play.then(|| self.playback.expect());
        let cancel = out.cancel_token();
        let job = Job {
            text: sentence.into(),
            speaker: options.speaker.clone(),
            speed: options.speak.speed,
            epoch,
        };
        let mut all = Vec::new();
        let pending = self.worker.submit(job, Place::client(req.pid), &cancel);
        pending.finish_with(|Audio { samples, rate }| {
            let listeners: Vec<u32> = lock(&self.listeners)
                .iter()
                .copied()
                .filter(|pid| !(options.audio && req.pid == Some(*pid)))
                .collect();
            if options.audio || !listeners.is_empty() {
                let pcm: Vec<i16> = samples.iter().map(|s| crate::wav::to_pcm16(*s)).collect();
                let event = AudioChunk::from_i16(rate, 1, &pcm)
                    .to_event()
                    .with("text", sentence);
                for pid in listeners {
                    if !self.server.send_to(pid, &event) {
                        lock(&self.listeners).remove(&pid); // gone, or not reading
                    }
                }
                if options.audio {
                    out.emit(event)?;
                }
            }
            if options.play
                && !self
                    .playback
                    .play(samples.clone(), rate, epoch, || cancel.is_cancelled())
            {
                return Err(stopped());
            }
            all.extend(samples);
            Ok(())
        })?;
        drop(on_its_way);
        Ok(all)
    }
}

fn stopped() -> ToolError {
    ToolError::new(
        ErrorCode::Cancelled,
        "speech was stopped (stop_speaking) before this text was spoken",
    )
}

/// Loads the voice (on the worker thread) and reports it in `get_config`.
fn load(
    options: TtsOptions,
    server: &ServerHandle,
    playback: Playback,
) -> Result<VoiceEngine, String> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let voice = PiperVoice::load(&options.voice, options.runtime.as_deref(), threads)
        .map_err(|e| e.to_string())?;
    playback.set_rate(voice.sample_rate());
    server.set_config(Fields::from_iter([
        ("voice", voice.name().into()),
        ("path", options.voice.display().to_string().into()),
        ("sample_rate", voice.sample_rate().into()),
        ("language", voice.language().into()),
        ("speakers", json!(voice.speakers())),
        ("playback", playback.device.to_string().into()),
        ("wav", json!(options.wav.map(|p| p.display().to_string()))),
    ]));
    Ok(VoiceEngine { voice, playback })
}

/// The loaded voice on the engine worker: speaks one sentence per job, piece by piece.
struct VoiceEngine {
    voice: PiperVoice,
    playback: Playback,
}

impl Engine for VoiceEngine {
    type Job = Job;
    type Piece = Audio;
    type Output = ();
    const BUSY: StateName = ServerState::Synthesizing.name();

    /// Sends each piece's audio as it is made; a `stop_speaking` since the job was queued
    /// (a new barge-in epoch) drops it.
    fn run(&mut self, job: Job, work: &Work<Audio>) -> Result<(), ToolError> {
        let voice = &mut self.voice;
        let speaker = match &job.speaker {
            Some(s) => Some(
                voice
                    .speaker(s)
                    .map_err(|e| ToolError::new(ErrorCode::NotFound, e.to_string()))?,
            ),
            None => None,
        };
        if let Some(speed) = job.speed {
            if !(0.1..=10.0).contains(&speed) {
                return Err(ToolError::invalid(format!(
                    "speed must be between 0.1 and 10 (1 is normal), got {speed}"
                )));
            }
        }
        let options = SpeakOptions {
            speaker,
            speed: job.speed,
        };
        let pieces = voice
            .phonemize(&job.text)
            .map_err(|e| ToolError::internal(e.to_string()))?;
        for phonemes in pieces {
            if work.stopped() || job.epoch != self.playback.epoch() {
                return Err(stopped());
            }
            let samples = voice
                .speak_phonemes(&phonemes, &options)
                .map_err(|e| ToolError::internal(e.to_string()))?;
            let rate = voice.sample_rate();
            if !work.send(Audio { samples, rate }) {
                return Err(stopped());
            }
        }
        Ok(())
    }
}

/// The argument schema of a speaking command: its own fields plus the shared options.
fn speak_args(own: Value) -> Value {
    let mut properties = json!({
        "voice": {"type": "string", "description": "Must be the loaded voice (see get_config)."},
        "speaker": {"type": ["string", "integer"], "description": "Speaker name or id, for multi-speaker voices."},
        "speed": {"type": "number", "minimum": 0.1, "maximum": 10, "description": "Speaking rate; 1 is normal, 2 twice as fast."},
        "audio": {"type": "boolean", "description": "Send the audio back to you as audio events (default: false for text/flush, true for synthesize)."},
        "play": {"type": "boolean", "description": "Play it on the server (default: true for text/flush, false for synthesize)."}
    });
    if let (Some(all), Value::Object(own)) = (properties.as_object_mut(), own) {
        all.extend(own);
    }
    json!({"type": "object", "properties": properties})
}
