//! Live transcription: a source's audio cut into utterances by the VAD, partial text while
//! one goes on, an early final at a pause, and results published to every subscriber in the
//! order they were asked for.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};

use models::stt::{Segmenter, SileroVad, VadEvent, VadSettings, SAMPLE_RATE};
use pipe_core::{
    CancelReason, CancelToken, ErrorCode, Event, ProtocolEvent, Request, Responder, ServerHandle,
    ToolError,
};

use super::engine::{Answer, Purpose, Ticket, Transcriber};
use super::{
    joined, round, source, transcript_event, with_words, words_json, Source, PARTIAL_EVERY,
};
use crate::lock;
use crate::vocab::{ServerEvent, ServerState};

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
        /// Its words were timed.
        words: bool,
    },
}

/// Broadcasts live results as they complete, in order.
fn publish_in_order(server: &ServerHandle, partial_busy: &AtomicBool, pending: Receiver<Live>) {
    for item in pending {
        match item {
            Live::Partial { result, start } => {
                if let Ok(segments) = result.outcome() {
                    let text = joined(&segments);
                    if !text.is_empty() {
                        server.broadcast(
                            &Event::new(ServerEvent::Partial)
                                .with("text", text.clone())
                                .with("start", round(start)),
                        );
                        // named-pipes 0.7's clients show the utterance so far from `speech`.
                        server.broadcast(&Event::new(ServerEvent::Speech).with("text", text));
                    }
                }
                partial_busy.store(false, Ordering::Release);
            }
            Live::Final {
                result,
                start,
                end,
                words,
            } => match result.outcome() {
                Ok(segments) => {
                    let text = joined(&segments);
                    server.broadcast(&transcript_event(&segments, start, end, words));
                    if !text.is_empty() {
                        let speech = Event::new(ServerEvent::Speech).with("text", text.clone());
                        let timed = words.then(|| words_json(&segments, start));
                        server.broadcast(&with_words(speech, timed));
                        // named-pipes 0.4's stt clients read transcribed text as token events.
                        server.broadcast(
                            &Event::new(ProtocolEvent::Token).with("text", format!("{text} ")),
                        );
                    }
                }
                Err(e) if e.code == ErrorCode::Cancelled => {}
                Err(e) => server.broadcast(&e.to_event()),
            },
        }
    }
}

/// Whether live audio runs, which decides the server's state at rest.
#[derive(Clone, Default)]
pub(super) struct LiveInput {
    /// The live source, when one runs.
    running: Arc<Mutex<Option<source::Running>>>,
    /// Listening was stopped by `pause` (the state rests at `paused`, not `ready`).
    paused: Arc<AtomicBool>,
}

impl LiveInput {
    /// The state with no transcription running: `listening` while a source runs, `paused`
    /// after `pause`, else `ready`.
    pub(super) fn rest_state(&self) -> ServerState {
        if lock(&self.running).is_some() {
            ServerState::Listening
        } else if self.paused.load(Ordering::Acquire) {
            ServerState::Paused
        } else {
            ServerState::Ready
        }
    }

    /// What runs now, if anything.
    pub(super) fn source(&self) -> Option<Source> {
        lock(&self.running).as_ref().map(|r| r.source.clone())
    }

    /// Makes `running` the live source, stopping the one before.
    fn replace(&self, running: source::Running) {
        *lock(&self.running) = Some(running);
        self.paused.store(false, Ordering::Release);
    }

    /// Forgets source `id` once it has ended by itself (a file ran out).
    fn ended(&self, id: usize) {
        let mut running = lock(&self.running);
        if running.as_ref().is_some_and(|r| r.id() == id) {
            *running = None;
        }
    }

    /// Stops the live source (`pause`); says whether one ran.
    fn pause(&self) -> bool {
        self.paused.store(true, Ordering::Release);
        lock(&self.running).take().is_some()
    }
}

/// What handlers share.
#[derive(Clone)]
pub(super) struct Shared {
    pub(super) transcriber: Transcriber,
    pub(super) vad: PathBuf,
    pub(super) runtime: PathBuf,
    pub(super) server: ServerHandle,
    /// The live source, when one runs.
    pub(super) live: LiveInput,
    /// The input device `start` listens on (`None`: the default), as `set_device` chose it.
    pub(super) device: Arc<Mutex<Option<source::InputDevice>>>,
    /// Per-client streams of pushed audio.
    pub(super) pushed: Arc<Mutex<HashMap<Option<u32>, Segmenter>>>,
    /// Loaded VADs not in use: each stream needs its own state, but not its own load.
    pub(super) idle_vads: Arc<Mutex<Vec<SileroVad>>>,
}

impl Shared {
    /// A segmenter for a new stream, on an idle VAD when there is one.
    pub(super) fn segmenter(&self) -> Result<Segmenter, ToolError> {
        let vad = match lock(&self.idle_vads).pop() {
            Some(vad) => vad,
            None => SileroVad::load(&self.vad, Some(&self.runtime))
                .map_err(|e| ToolError::new(ErrorCode::Unavailable, e.to_string()))?,
        };
        Ok(Segmenter::new(vad, VadSettings::default()))
    }

    /// Returns a finished stream's VAD for the next one.
    pub(super) fn recycle(&self, segmenter: Segmenter) {
        lock(&self.idle_vads).push(segmenter.into_vad());
    }

    /// Starts `source` as the live input, replacing (and stopping) any running one.
    pub(super) fn listen(&self, source: Source) -> Result<(), ToolError> {
        let segmenter = self.segmenter()?;
        let (running, chunks) = source::start(&source)
            .map_err(|e| ToolError::new(ErrorCode::Unavailable, format!("{e:#}")))?;
        let id = running.id();
        self.live.replace(running);
        // Before the loop starts: a short file may end before this thread runs on.
        self.server.set_state(ServerState::Listening);
        let shared = self.clone();
        let label = source.to_string();
        let spawned = std::thread::Builder::new()
            .name("stt-live".into())
            .spawn(move || {
                shared.live_loop(chunks, segmenter, &label);
                // The source ended by itself (a file ran out): it is no longer live.
                shared.live.ended(id);
                shared.settle();
            });
        if let Err(e) = spawned {
            self.live.ended(id);
            self.settle();
            return Err(ToolError::internal(format!(
                "cannot start the live loop: {e}"
            )));
        }
        Ok(())
    }

    /// Moves a server left `listening` to its rest state. The check and the change are one
    /// step, and the engine's worker computes its rest state in such a step too, so a source
    /// ending while a transcription finishes cannot leave the state at `listening`.
    fn settle(&self) {
        self.server.update_state(|state| {
            (state == ServerState::Listening.into()).then(|| self.live.rest_state().into())
        });
    }

    /// The microphone `start` listens on: the one `set_device` chose, else the default.
    pub(super) fn microphone(&self) -> Source {
        Source::Microphone(lock(&self.device).as_ref().map(|d| d.index.to_string()))
    }

    /// Stops live audio (`pause`): says whether a source was running.
    pub(super) fn pause(&self) -> bool {
        let was = self.live.pause();
        self.server.update_state(|state| {
            [ServerState::Listening, ServerState::Ready]
                .iter()
                .any(|&s| state == s.into())
                .then(|| ServerState::Paused.into())
        });
        was
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
                        let _ = publish.send(Live::Final {
                            result: ticket.result,
                            start,
                            end,
                            words: self.transcriber.words_by_default,
                        });
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
    pub(super) fn reply_vad(
        &self,
        event: VadEvent,
        req: &Request,
        out: &Responder,
    ) -> Result<(), ToolError> {
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
                let words = self.transcriber.words_for(req)?;
                let segments = self.transcriber.transcribe(samples, words, req, out)?;
                out.emit(transcript_event(&segments, start, end, words))?;
            }
        }
        Ok(())
    }
}
