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
    CancelReason, CancelToken, ErrorCode, Event, Request, Responder, ServerHandle, ToolError,
};

use super::engine::{Answer, Purpose, Ticket, Transcriber};
use super::{joined, round, source, transcript_event, Source, PARTIAL_EVERY};
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
                                .with("text", text)
                                .with("start", round(start)),
                        );
                    }
                }
                partial_busy.store(false, Ordering::Release);
            }
            Live::Final { result, start, end } => match result.outcome() {
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

/// What handlers share.
#[derive(Clone)]
pub(super) struct Shared {
    pub(super) transcriber: Transcriber,
    pub(super) vad: PathBuf,
    pub(super) runtime: PathBuf,
    pub(super) server: ServerHandle,
    /// The live source, when one runs.
    pub(super) live: Arc<Mutex<Option<source::Running>>>,
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
                let segments = self.transcriber.transcribe(samples, req, out)?;
                out.emit(transcript_event(&segments, start, end))?;
            }
        }
        Ok(())
    }
}
