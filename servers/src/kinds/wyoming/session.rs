//! One Wyoming client: what Home Assistant does over a connection, mapped onto the pipe
//! servers. Speech to text gathers the audio until `audio-stop` and has the stt server
//! `transcribe` it whole (transcribing each utterance as it ended, with `push`, answered
//! sooner but lost words at the cuts: "fellow Americans" became "fellow America"), then
//! streams its segments as `transcript-chunk`s, as wyoming-faster-whisper does. Text to speech
//! asks the tts server to `synthesize`; streamed text is cut into sentences here, each spoken
//! as soon as it is complete.

use std::sync::Arc;

use base64::Engine;
use models::sentences::SentenceSplitter;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::sync::mpsc;

use super::event::{read_event, write_event, FrameError, WyEvent};
use super::Bridge;

/// The most audio one stream may gather: ten minutes of 16 kHz mono, far over a voice command.
const MAX_AUDIO_BYTES: usize = 10 * 60 * 16_000 * 2;
use crate::bridge::services::Role;
use crate::bridge::upstream::remote_error;
use crate::bridge::BridgeError;

/// Serves one connection until the client leaves or sends what cannot be read.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    bridge: Arc<Bridge>,
    stream: S,
    connection: u64,
) {
    let (reader, mut writer) = tokio::io::split(stream);
    let mut reader = BufReader::new(reader);
    let (out, mut outbox) = mpsc::unbounded_channel::<WyEvent>();
    let writing = tokio::spawn(async move {
        while let Some(event) = outbox.recv().await {
            if write_event(&mut writer, &event).await.is_err() {
                break; // the client left; the reader sees it too
            }
        }
    });
    let mut session = Session {
        bridge,
        out,
        listening: None,
        speaking: None,
    };
    loop {
        match read_event(&mut reader).await {
            Ok(event) => {
                if let Err(e) = session.handle(event).await {
                    session.send(WyEvent::error(e.to_string(), code(&e)));
                }
                if session.out.is_closed() {
                    break;
                }
            }
            Err(FrameError::Closed) => break,
            Err(e) => {
                tracing::info!("wyoming client {connection}: {e}");
                let code = match e {
                    FrameError::TooLarge(_) => "too_large",
                    _ => "invalid_event",
                };
                session.send(WyEvent::error(format!("{e}; closing the connection"), code));
                break;
            }
        }
    }
    drop(session);
    let _ = writing.await;
}

/// The error code of a bridge error in a Wyoming `error` event (a server's own code passes
/// through: PROTOCOL.md §3.2).
fn code(e: &BridgeError) -> &str {
    match e {
        BridgeError::NotRunning { .. } | BridgeError::NoService { .. } => "server_not_running",
        BridgeError::UnknownModel { .. } => "not_found",
        BridgeError::Lost { .. } => "server_lost",
        BridgeError::Remote { code, .. } => code,
        BridgeError::Internal(_) => "internal",
    }
}

struct Session {
    bridge: Arc<Bridge>,
    out: mpsc::UnboundedSender<WyEvent>,
    /// The audio stream being gathered.
    listening: Option<Listening>,
    /// The text stream being spoken (between `synthesize-start` and `synthesize-stop`).
    speaking: Option<Speaking>,
}

/// An audio stream being gathered for the stt server.
#[derive(Default)]
struct Listening {
    /// The rate and channels from `audio-start` (or the first chunk), which every chunk must
    /// keep.
    format: Option<(u64, u64)>,
    /// The 16-bit PCM so far.
    audio: Vec<u8>,
}

struct Speaking {
    splitter: SentenceSplitter,
    voice: Option<Value>,
}

impl Session {
    fn send(&self, event: WyEvent) {
        let _ = self.out.send(event);
    }

    async fn handle(&mut self, event: WyEvent) -> Result<(), BridgeError> {
        match event.kind.as_str() {
            "describe" => {
                let info = self.bridge.info().await;
                self.send(WyEvent::new("info", info));
            }
            "ping" => self.send(WyEvent::new("pong", json!({"text": event.str("text")}))),
            // Names a program for the connection; this bridge offers one of each.
            "select-program" => {}
            "transcribe" => self.listening = Some(Listening::default()),
            "audio-start" => {
                let format = audio_format(&event)?;
                let listening = self.listening.get_or_insert_with(Listening::default);
                listening.format = Some(format);
                listening.audio.clear();
            }
            "audio-chunk" => self.gather(&event)?,
            "audio-stop" => self.transcribe().await?,
            "synthesize" => {
                // Inside a stream the same text comes in chunks; this copy is for old servers.
                if self.speaking.is_none() {
                    let text = event.str("text").unwrap_or_default().to_string();
                    let voice = event.data.get("voice").cloned();
                    self.speak(&text, voice.as_ref()).await?;
                }
            }
            "synthesize-start" => {
                self.speaking = Some(Speaking {
                    splitter: SentenceSplitter::default(),
                    voice: event.data.get("voice").cloned(),
                });
            }
            "synthesize-chunk" => {
                let Some(speaking) = self.speaking.as_mut() else {
                    return Err(BridgeError::Remote {
                        code: "invalid_request".into(),
                        message: "synthesize-chunk outside a stream: send synthesize-start first"
                            .into(),
                    });
                };
                let sentences = speaking
                    .splitter
                    .push(event.str("text").unwrap_or_default());
                let voice = speaking.voice.clone();
                for sentence in sentences {
                    self.speak(&sentence, voice.as_ref()).await?;
                }
            }
            "synthesize-stop" => {
                if let Some(mut speaking) = self.speaking.take() {
                    if let Some(rest) = speaking.splitter.flush() {
                        self.speak(&rest, speaking.voice.as_ref()).await?;
                    }
                }
                self.send(WyEvent::new("synthesize-stopped", Value::Null));
            }
            other => {
                return Err(BridgeError::Remote {
                    code: "unknown_event".into(),
                    message: format!(
                        "unknown event type '{other}': this server handles describe, transcribe, \
                         audio-start/-chunk/-stop, synthesize and synthesize-start/-chunk/-stop"
                    ),
                })
            }
        }
        Ok(())
    }

    fn gather(&mut self, event: &WyEvent) -> Result<(), BridgeError> {
        let format = audio_format(event)?;
        let Some(listening) = self.listening.as_mut() else {
            return Err(invalid(
                "audio-chunk outside a stream: send transcribe and audio-start first",
            ));
        };
        if *listening.format.get_or_insert(format) != format {
            return Err(invalid(
                "an audio-chunk changed the rate or channels audio-start gave",
            ));
        }
        let frame = 2 * format.1 as usize;
        if !event.payload.len().is_multiple_of(frame) {
            return Err(invalid(format!(
                "an audio-chunk of {} bytes is not whole 16-bit frames of {} channel(s)",
                event.payload.len(),
                format.1
            )));
        }
        if listening.audio.len() + event.payload.len() > MAX_AUDIO_BYTES {
            self.listening = None;
            return Err(invalid(format!(
                "the audio is over {} MB: send audio-stop sooner (a voice command is seconds long)",
                MAX_AUDIO_BYTES >> 20
            )));
        }
        listening.audio.extend_from_slice(&event.payload);
        Ok(())
    }

    /// Transcribes the gathered audio: `transcript-start`, a `transcript-chunk` per segment,
    /// `transcript-stop`, then the whole `transcript`.
    async fn transcribe(&mut self) -> Result<(), BridgeError> {
        let Some(listening) = self.listening.take() else {
            return Err(invalid(
                "audio-stop outside a stream: send transcribe and audio-start first",
            ));
        };
        let text_of = |segment: &Value| segment["text"].as_str().unwrap_or_default().to_string();
        let (text, segments) = match listening.format.filter(|_| !listening.audio.is_empty()) {
            None => (String::new(), Vec::new()), // no audio: nothing was said
            Some((rate, channels)) => {
                let (upstream, _) = self.bridge.server(Role::Transcribe).await?;
                let args = json!({
                    "rate": rate, "width": 2, "channels": channels, "encoding": "pcm_s16le",
                    "data": base64::engine::general_purpose::STANDARD.encode(&listening.audio),
                });
                let events = upstream.collect("transcribe", args).await?;
                let transcript = events
                    .iter()
                    .find(|e| e.is(crate::vocab::ServerEvent::Transcript))
                    .ok_or_else(|| {
                        BridgeError::Internal("the stt server sent no transcript".into())
                    })?;
                let segments = transcript
                    .get("segments")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                (
                    transcript.str("text").unwrap_or_default().to_string(),
                    segments,
                )
            }
        };
        self.send(WyEvent::new("transcript-start", Value::Null));
        // Chunks concatenate to the transcript, as faster-whisper's segments do.
        for (i, segment) in segments.iter().enumerate() {
            let separator = if i == 0 { "" } else { " " };
            let chunk = format!("{separator}{}", text_of(segment));
            self.send(WyEvent::new("transcript-chunk", json!({"text": chunk})));
        }
        self.send(WyEvent::new("transcript-stop", Value::Null));
        self.send(WyEvent::new("transcript", json!({"text": text})));
        Ok(())
    }

    /// Speaks `text` as one `audio-start` … `audio-stop` run (so a stream's sentences each
    /// make one, as wyoming-piper sends them).
    async fn speak(&mut self, text: &str, voice: Option<&Value>) -> Result<(), BridgeError> {
        let (upstream, service) = self.bridge.server(Role::Speak).await?;
        let speaker = voice
            .and_then(|v| v.get("speaker"))
            .and_then(Value::as_str)
            .map(String::from);
        if let Some(name) = voice.and_then(|v| v.get("name")).and_then(Value::as_str) {
            let loaded = service
                .config
                .get("voice")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if name != loaded {
                return Err(BridgeError::UnknownModel {
                    model: name.into(),
                    what: "voice",
                    available: format!("'{loaded}'"),
                });
            }
        }
        if text.trim().is_empty() {
            return Ok(());
        }
        let mut args = json!({"text": text, "audio": true, "play": false});
        if let Some(speaker) = &speaker {
            args["speaker"] = speaker.clone().into();
        }
        let mut call = upstream.call("synthesize", args).await?;
        let mut started = false;
        while let Some(event) = call.next().await {
            let event = remote_error(event)?;
            if !event.is(pipe_core::ProtocolEvent::Audio) {
                continue;
            }
            let chunk = pipe_core::audio::AudioChunk::from_fields(event.fields())
                .map_err(|e| BridgeError::Internal(e.message))?;
            let format = json!({"rate": chunk.rate, "width": 2, "channels": chunk.channels});
            if !started {
                self.send(WyEvent::new("audio-start", format.clone()));
                started = true;
            }
            let pcm = crate::wav::pcm16_bytes(&chunk);
            self.send(WyEvent::new("audio-chunk", format).with_payload(pcm));
            if self.out.is_closed() {
                return Ok(()); // dropping the call cancels the rest
            }
        }
        if started {
            self.send(WyEvent::new("audio-stop", Value::Null));
        }
        Ok(())
    }
}

/// The rate and channels of an audio event; only 16-bit PCM (width 2) is taken.
fn audio_format(event: &WyEvent) -> Result<(u64, u64), BridgeError> {
    let field = |key: &str| event.data.get(key).and_then(Value::as_u64);
    match (field("rate"), field("width"), field("channels")) {
        (Some(rate), Some(2), Some(channels))
            if (8_000..=384_000).contains(&rate) && (1..=32).contains(&channels) =>
        {
            Ok((rate, channels))
        }
        (Some(_), Some(width), Some(_)) if width != 2 => Err(invalid(format!(
            "audio of width {width} is not taken: send 16-bit PCM (width 2)"
        ))),
        _ => Err(invalid(format!(
            "{} needs rate (8000-384000), width 2 and channels (1-32), got {}",
            event.kind,
            Value::Object(event.data.clone())
        ))),
    }
}

fn invalid(message: impl Into<String>) -> BridgeError {
    BridgeError::Remote {
        code: "invalid_request".into(),
        message: message.into(),
    }
}
