//! Whisper on the engine worker: what a transcription is for decides its place in line (live
//! finals first, clients' audio next, partials last), and every job has an off switch.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use models::stt::{Segment, SileroVad, SttError, Whisper, SAMPLE_RATE};
use pipe_core::{
    CancelReason, CancelToken, ErrorCode, Fields, Request, Responder, StateName, ToolError,
};
use serde_json::json;

use super::live::{LiveInput, Shared};
use super::{Source, SttOptions};
use crate::engine::{Engine, Pending, Place, Work, Worker};
use crate::lock;
use crate::vocab::ServerState;

/// What a transcription is for, which decides its place in line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// A client's audio.
    Request,
    /// The final text of a live utterance: first in line.
    Final,
    /// Partial text of a live utterance: last in line.
    Partial,
}

impl Purpose {
    /// Its place in line: live finals first, clients' audio next, partials last.
    pub(super) fn priority(self) -> u8 {
        match self {
            Self::Final => 0,
            Self::Request => 1,
            Self::Partial => 2,
        }
    }
}

/// A transcription for the engine.
pub(super) struct Job {
    pub(super) samples: Vec<f32>,
    pub(super) purpose: Purpose,
    /// Time its words too.
    pub(super) words: bool,
}

/// A transcription's result, once the engine gets to it.
pub(super) type Answer = Pending<Infallible, Vec<Segment>>;

/// Waits for a client's transcription: its cancel ends the wait at once.
fn wait(answer: Answer) -> Result<Vec<Segment>, ToolError> {
    answer.finish_with(|never| match never {})
}

/// A queued transcription: its result, and its off switch.
pub(super) struct Ticket {
    pub(super) result: Answer,
    pub(super) stop: CancelToken,
}

impl Ticket {
    /// Stops the transcription, queued or running (it then answers `cancelled`).
    pub(super) fn cancel(&self) {
        self.stop.cancel(CancelReason::Requested);
    }
}

/// Sends audio to the engine and waits for its text.
#[derive(Clone)]
pub(super) struct Transcriber {
    pub(super) worker: Worker<WhisperEngine>,
    /// `--word-timestamps`: live transcripts carry words, and requests do unless they say not.
    pub(super) words_by_default: bool,
}

impl Transcriber {
    /// Queues live audio for transcription, with an off switch of its own.
    pub(super) fn submit(&self, samples: Vec<f32>, purpose: Purpose) -> Ticket {
        let stop = CancelToken::new();
        let place = Place {
            client: None,
            priority: purpose.priority(),
        };
        let words = purpose == Purpose::Final && self.words_by_default;
        let job = Job {
            samples,
            purpose,
            words,
        };
        let result = self.worker.submit(job, place, &stop);
        Ticket { result, stop }
    }

    /// Whether a request wants its words timed: its `words`, else the server's default.
    pub(super) fn words_for(&self, req: &Request) -> Result<bool, ToolError> {
        Ok(req.opt_bool("words")?.unwrap_or(self.words_by_default))
    }

    /// Transcribes a client's audio (timing its words if `words`), waiting for the result;
    /// `out`'s cancellation stops the work too.
    pub(super) fn transcribe(
        &self,
        samples: Vec<f32>,
        words: bool,
        req: &Request,
        out: &Responder,
    ) -> Result<Vec<Segment>, ToolError> {
        let purpose = Purpose::Request;
        let place = Place {
            client: req.pid,
            priority: purpose.priority(),
        };
        wait(self.worker.submit(
            Job {
                samples,
                purpose,
                words,
            },
            place,
            &out.cancel_token(),
        ))
    }
}

/// Loads Whisper and the VAD (on the worker thread) and reports them in `get_config`.
pub(super) fn load(options: SttOptions, shared: Shared) -> Result<WhisperEngine, String> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut whisper = Whisper::load(&options.model, threads).map_err(|e| e.to_string())?;
    if options.word_timestamps {
        whisper.load_word_timing().map_err(|e| e.to_string())?;
    }
    // The VAD must load too, or audio cannot be cut into utterances; it is the first idle one.
    let vad = SileroVad::load(&options.vad, Some(&options.runtime)).map_err(|e| e.to_string())?;
    lock(&shared.idle_vads).push(vad);
    shared.server.set_config(Fields::from_iter([
        ("model", options.model.display().to_string().into()),
        ("vad", options.vad.display().to_string().into()),
        ("multilingual", whisper.is_multilingual().into()),
        ("language", json!(options.language)),
        ("sample_rate", SAMPLE_RATE.into()),
        ("word_timestamps", options.word_timestamps.into()),
    ]));
    Ok(WhisperEngine {
        whisper,
        language: options.language,
        live: shared.live.clone(),
        first_source: options.listen.map(|source| (shared, source)),
    })
}

/// The loaded model on the engine worker.
pub(super) struct WhisperEngine {
    whisper: Whisper,
    language: Option<String>,
    /// Whether live audio runs: it decides the state at rest.
    live: LiveInput,
    /// The source to listen to once loaded (`--listen`).
    first_source: Option<(Shared, Source)>,
}

impl Engine for WhisperEngine {
    type Job = Job;
    type Piece = Infallible;
    type Output = Vec<Segment>;
    const BUSY: StateName = ServerState::Transcribing.name();

    fn run(&mut self, job: Job, work: &Work<Infallible>) -> Result<Vec<Segment>, ToolError> {
        // whisper.cpp polls a flag between steps of its graph: raise it on cancellation.
        let stop = Arc::new(AtomicBool::new(false));
        let _watch = {
            let stop = Arc::clone(&stop);
            work.cancel_token()
                .on_cancel(move |_| stop.store(true, Ordering::Release))
        };
        let started = std::time::Instant::now();
        let result = self.whisper.transcribe_unless(
            &job.samples,
            self.language.as_deref(),
            job.words,
            &stop,
        );
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

    fn rest_state(&self) -> StateName {
        self.live.rest_state().name()
    }

    fn ready(&mut self) {
        if let Some((shared, source)) = self.first_source.take() {
            if let Err(e) = shared.listen(source.clone()) {
                tracing::error!("cannot listen to {source}: {}", e.message);
            }
        }
    }
}
