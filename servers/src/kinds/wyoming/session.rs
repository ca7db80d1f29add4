//! One Wyoming client: what Home Assistant does over a connection, mapped onto the pipe
//! servers. Speech to text pushes each audio chunk to the stt server as it comes (a `push`
//! stream of this connection's own), so utterances are transcribed while the user still
//! speaks and only the last one is left after `audio-stop`; each utterance's text is a
//! `transcript-chunk`. Text to speech asks the tts server to `synthesize`, and streamed text
//! is cut into sentences here, each spoken as soon as it is complete.

use std::sync::Arc;

use base64::Engine;
use models::sentences::SentenceSplitter;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::sync::mpsc;

use super::event::{read_event, write_event, FrameError, WyEvent};
use super::Bridge;
use crate::bridge::services::Role;
use crate::bridge::upstream::{remote_error, Call, Upstream};
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
        connection,
        streams: 0,
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
    session.leave();
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
    connection: u64,
    /// Audio streams started so far, for their names on the stt server.
    streams: u64,
    /// The audio stream being transcribed.
    listening: Option<Listening>,
    /// The text stream being spoken (between `synthesize-start` and `synthesize-stop`).
    speaking: Option<Speaking>,
}

/// An audio stream on its way to the stt server.
struct Listening {
    upstream: Arc<Upstream>,
    /// The stream's name in the stt server's `push`.
    stream: String,
    /// The pushes, in order, for the forwarder that turns their transcripts into events;
    /// `None` after the last.
    pushes: mpsc::UnboundedSender<Option<Call>>,
    forwarder: tokio::task::JoinHandle<()>,
    /// The audio format from `audio-start`, which every chunk must keep.
    format: Option<(u64, u64)>,
    ended: bool,
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
            "transcribe" => self.start_listening().await?,
            "audio-start" => {
                if self.listening.as_ref().is_none_or(|l| l.ended) {
                    self.start_listening().await?;
                }
                let listening = self.listening.as_mut().expect("started above");
                listening.format = Some(audio_format(&event)?);
            }
            "audio-chunk" => self.push(&event).await?,
            "audio-stop" => self.finish_listening().await?,
            "synthesize" => {
                // Inside a stream the same text comes in chunks; this copy is for old servers.
                if self.speaking.is_none() {
                    let text = event.str("text").unwrap_or_default().to_string();
                    let voice = event.data.get("voice").cloned();
                    self.speak(&[text], voice.as_ref()).await?;
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
                    self.speak(&[sentence], voice.as_ref()).await?;
                }
            }
            "synthesize-stop" => {
                if let Some(mut speaking) = self.speaking.take() {
                    if let Some(rest) = speaking.splitter.flush() {
                        self.speak(&[rest], speaking.voice.as_ref()).await?;
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

    /// Starts a new audio stream (after `transcribe`, or at an `audio-start` without one).
    async fn start_listening(&mut self) -> Result<(), BridgeError> {
        self.abandon_listening();
        let (upstream, _) = self.bridge.server(Role::Transcribe).await?;
        self.streams += 1;
        let stream = format!("wyoming-{}-{}", self.connection, self.streams);
        let (pushes, calls) = mpsc::unbounded_channel();
        let forwarder = tokio::spawn(forward_transcripts(calls, self.out.clone()));
        self.send(WyEvent::new("transcript-start", Value::Null));
        self.listening = Some(Listening {
            upstream,
            stream,
            pushes,
            forwarder,
            format: None,
            ended: false,
        });
        Ok(())
    }

    async fn push(&mut self, event: &WyEvent) -> Result<(), BridgeError> {
        let (rate, channels) = audio_format(event)?;
        let Some(listening) = self.listening.as_mut().filter(|l| !l.ended) else {
            return Err(invalid(
                "audio-chunk outside a stream: send transcribe and audio-start first",
            ));
        };
        if listening.format.is_some_and(|f| f != (rate, channels)) {
            return Err(invalid(
                "an audio-chunk changed the rate or channels audio-start gave",
            ));
        }
        let frame = 2 * channels as usize;
        if event.payload.len() % frame != 0 {
            return Err(invalid(format!(
                "an audio-chunk of {} bytes is not whole 16-bit frames of {channels} channel(s)",
                event.payload.len()
            )));
        }
        if event.payload.is_empty() {
            return Ok(());
        }
        let args = json!({
            "stream": listening.stream,
            "rate": rate, "width": 2, "channels": channels, "encoding": "pcm_s16le",
            "data": base64::engine::general_purpose::STANDARD.encode(&event.payload),
        });
        let call = listening.upstream.call("push", args).await?;
        let _ = listening.pushes.send(Some(call));
        Ok(())
    }

    async fn finish_listening(&mut self) -> Result<(), BridgeError> {
        let Some(listening) = self.listening.as_mut().filter(|l| !l.ended) else {
            return Err(invalid(
                "audio-stop outside a stream: send transcribe and audio-start first",
            ));
        };
        listening.ended = true;
        let args = json!({"stream": listening.stream, "end": true});
        let call = listening.upstream.call("push", args).await?;
        let _ = listening.pushes.send(Some(call));
        let _ = listening.pushes.send(None);
        Ok(())
    }

    /// Drops an unfinished audio stream on the stt server (the client left, or began anew).
    fn abandon_listening(&mut self) {
        if let Some(listening) = self.listening.take().filter(|l| !l.ended) {
            let upstream = listening.upstream.clone();
            let stream = listening.stream.clone();
            // Its pushes are dropped with it, which cancels those still running.
            listening.forwarder.abort();
            tokio::spawn(async move {
                let args = json!({"stream": stream, "end": true, "discard": true});
                if let Ok(call) = upstream.call("push", args).await {
                    call.detach();
                }
            });
        }
    }

    /// The client has gone: nothing of its must keep a server busy.
    fn leave(&mut self) {
        self.abandon_listening();
    }

    /// Speaks `texts`, each as one `audio-start` … `audio-stop` run (so a stream's sentences
    /// each make one, as wyoming-piper sends them).
    async fn speak(&mut self, texts: &[String], voice: Option<&Value>) -> Result<(), BridgeError> {
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
        for text in texts.iter().filter(|t| !t.trim().is_empty()) {
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
                let pcm: Vec<u8> = chunk
                    .to_f32()
                    .iter()
                    .flat_map(|&s| crate::wav::to_pcm16(s).to_le_bytes())
                    .collect();
                self.send(WyEvent::new("audio-chunk", format).with_payload(pcm));
                if self.out.is_closed() {
                    return Ok(()); // dropping the call cancels the rest
                }
            }
            if started {
                self.send(WyEvent::new("audio-stop", Value::Null));
            }
        }
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.leave();
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

/// Turns the transcripts of a stream's pushes, in order, into `transcript-chunk` events,
/// and after the last push `transcript-stop` and the whole `transcript`.
async fn forward_transcripts(
    mut calls: mpsc::UnboundedReceiver<Option<Call>>,
    out: mpsc::UnboundedSender<WyEvent>,
) {
    let mut texts: Vec<String> = Vec::new();
    loop {
        let mut call = match calls.recv().await {
            Some(Some(call)) => call,
            Some(None) => break,
            None => return, // abandoned
        };
        while let Some(event) = call.next().await {
            if let Some(e) = event.as_error() {
                let _ = out.send(WyEvent::error(e.message, "server_error"));
                continue;
            }
            if event.is(crate::vocab::ServerEvent::Transcript) {
                let text = event.str("text").unwrap_or_default().trim().to_string();
                if !text.is_empty() {
                    let separator = if texts.is_empty() { "" } else { " " };
                    let chunk = json!({"text": format!("{separator}{text}")});
                    let _ = out.send(WyEvent::new("transcript-chunk", chunk));
                    texts.push(text);
                }
            }
        }
    }
    let _ = out.send(WyEvent::new("transcript-stop", Value::Null));
    let _ = out.send(WyEvent::new("transcript", json!({"text": texts.join(" ")})));
}
