//! One job's results on their way from the engine thread to the handler that waits for them.
//!
//! The handler sleeps until something happens and wakes at once on each of: a piece, the
//! result, its request's cancellation, or its client going away (pipe-core cancels the
//! request then). Nothing polls. The engine waits while the handler has [`CAPACITY`] pieces
//! unread, so a client that reads slowly slows its own job, not the server's memory.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use pipe_core::{CancelToken, CancelWatch, Interrupted, ToolError};

/// Pieces the engine may run ahead of the handler.
pub(crate) const CAPACITY: usize = 256;

/// What one waiting step yields.
enum Step<P, O> {
    /// A piece of streamed output.
    Piece(P),
    /// The job finished with this output.
    Done(O),
    /// The job still waits, at this place in line (1: next).
    Waiting(usize),
}

struct Inbox<P, O> {
    pieces: VecDeque<P>,
    result: Option<Result<O, ToolError>>,
    /// The handler stopped waiting: the engine can stop too.
    reader_gone: bool,
    /// The job's place in line while it waits, and whether the handler has yet to see it.
    place: Option<usize>,
    place_unseen: bool,
}

/// The shared slot between one job's engine side ([`Work`]) and handler side ([`Pending`]).
pub struct Mailbox<P, O> {
    inbox: Mutex<Inbox<P, O>>,
    changed: Condvar,
}

impl<P, O> Mailbox<P, O> {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            inbox: Mutex::new(Inbox {
                pieces: VecDeque::new(),
                result: None,
                reader_gone: false,
                place: None,
                place_unseen: false,
            }),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inbox<P, O>> {
        self.inbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes both sides to look again.
    fn nudge(&self) {
        let _inbox = self.lock();
        self.changed.notify_all();
    }

    /// Tells the handler its job waits at `place` in line (1: next), if that changed.
    pub fn set_place(&self, place: usize) {
        let mut inbox = self.lock();
        if inbox.place != Some(place) {
            inbox.place = Some(place);
            inbox.place_unseen = true;
            self.changed.notify_all();
        }
    }

    /// Whether the handler has as many pieces unread as the engine may run ahead: an engine
    /// running several jobs leaves this one out of its next step instead of waiting.
    pub fn is_full(&self) -> bool {
        self.lock().pieces.len() >= CAPACITY
    }

    /// Hands over the job's result (the engine's last word).
    pub fn finish(&self, result: Result<O, ToolError>) {
        let mut inbox = self.lock();
        inbox.result = Some(result);
        self.changed.notify_all();
    }
}

/// A new job's two sides: the mailbox for the engine, and the handler's [`Pending`], which
/// wakes on `cancel` too.
pub fn open<P: Send + 'static, O: Send + 'static>(
    cancel: &CancelToken,
) -> (Arc<Mailbox<P, O>>, Pending<P, O>) {
    let mailbox = Mailbox::new();
    let wake = Arc::clone(&mailbox);
    let watch = cancel.on_cancel(move |_| wake.nudge());
    let pending = Pending {
        mailbox: Arc::clone(&mailbox),
        cancel: cancel.clone(),
        _watch: watch,
    };
    (mailbox, pending)
}

/// The engine's side of a running job: send pieces, and learn when to stop.
pub struct Work<'a, P> {
    sink: &'a dyn Sink<P>,
    cancel: &'a CancelToken,
}

/// Where a job's pieces go (a [`Mailbox`] of any output type).
trait Sink<P>: Sync {
    fn put(&self, piece: P, cancel: &CancelToken) -> bool;
    fn reader_gone(&self) -> bool;
}

impl<P: Send, O: Send> Sink<P> for Mailbox<P, O> {
    fn put(&self, piece: P, cancel: &CancelToken) -> bool {
        let mut inbox = self.lock();
        while inbox.pieces.len() >= CAPACITY && !inbox.reader_gone && !cancel.is_cancelled() {
            inbox = self.changed.wait(inbox).unwrap_or_else(|p| p.into_inner());
        }
        if inbox.reader_gone || cancel.is_cancelled() {
            return false;
        }
        inbox.pieces.push_back(piece);
        self.changed.notify_all();
        true
    }

    fn reader_gone(&self) -> bool {
        self.lock().reader_gone
    }
}

impl<'a, P> Work<'a, P> {
    /// The engine side of `mailbox`, for a job cancelled through `cancel`.
    pub fn new<O: Send>(mailbox: &'a Mailbox<P, O>, cancel: &'a CancelToken) -> Self
    where
        P: Send,
    {
        Self {
            sink: mailbox,
            cancel,
        }
    }

    /// Hands a piece to the handler, waiting while it has [`CAPACITY`] unread. False once
    /// nobody wants more (cancelled, or the handler gone): stop the job.
    pub fn send(&self, piece: P) -> bool {
        self.sink.put(piece, self.cancel)
    }

    /// Whether the job should stop: its request was cancelled or its handler stopped waiting.
    pub fn stopped(&self) -> bool {
        self.cancel.is_cancelled() || self.sink.reader_gone()
    }

    /// The job's cancellation flag, for engines that watch one of their own.
    pub fn cancel_token(&self) -> &CancelToken {
        self.cancel
    }
}

/// The handler's side of a queued or running job.
pub struct Pending<P, O> {
    mailbox: Arc<Mailbox<P, O>>,
    cancel: CancelToken,
    _watch: CancelWatch,
}

impl<P, O> Pending<P, O> {
    /// Waits for the next piece or the result. A cancelled request (or a client gone) ends
    /// the wait at once with `cancelled`, whether the job runs or still waits in line.
    fn step(&mut self) -> Result<Step<P, O>, ToolError> {
        let mut inbox = self.mailbox.lock();
        loop {
            if let Some(piece) = inbox.pieces.pop_front() {
                // A place in line seen only now is stale: the job runs.
                inbox.place_unseen = false;
                self.mailbox.changed.notify_all();
                return Ok(Step::Piece(piece));
            }
            if let Some(result) = inbox.result.take() {
                return result.map(Step::Done);
            }
            if let (true, Some(place)) = (inbox.place_unseen, inbox.place) {
                inbox.place_unseen = false;
                return Ok(Step::Waiting(place));
            }
            if let Some(reason) = self.cancel.reason() {
                return Err(Interrupted(reason).into());
            }
            inbox = self
                .mailbox
                .changed
                .wait(inbox)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Waits for the engine's own answer, even after a cancel: for work whose result is still
    /// worth having if it finished before the engine saw the cancel (a live partial
    /// transcript). Every job is answered, so this ends; pieces are dropped.
    pub fn outcome(self) -> Result<O, ToolError> {
        let mut inbox = self.mailbox.lock();
        loop {
            inbox.pieces.clear();
            if let Some(result) = inbox.result.take() {
                return result;
            }
            inbox = self
                .mailbox
                .changed
                .wait(inbox)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Waits for the result, passing each piece to `on_piece`.
    pub fn finish_with(
        self,
        on_piece: impl FnMut(P) -> Result<(), ToolError>,
    ) -> Result<O, ToolError> {
        self.finish_in_line(|_| Ok(()), on_piece)
    }

    /// [`Pending::finish_with`], also passing `on_place` the job's place in line (1: next)
    /// each time it changes while the job waits.
    pub fn finish_in_line(
        mut self,
        mut on_place: impl FnMut(usize) -> Result<(), ToolError>,
        mut on_piece: impl FnMut(P) -> Result<(), ToolError>,
    ) -> Result<O, ToolError> {
        loop {
            match self.step()? {
                Step::Piece(piece) => on_piece(piece)?,
                Step::Done(output) => return Ok(output),
                Step::Waiting(place) => on_place(place)?,
            }
        }
    }
}

impl<P, O> Drop for Pending<P, O> {
    fn drop(&mut self) {
        self.mailbox.lock().reader_gone = true;
        self.mailbox.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipe_core::{CancelReason, ErrorCode};
    use std::time::{Duration, Instant};

    #[test]
    fn pieces_then_the_result_arrive_in_order() {
        let cancel = CancelToken::new();
        let (mailbox, pending) = open::<u32, &str>(&cancel);
        let engine = std::thread::spawn(move || {
            let work = Work::new(&*mailbox, &cancel);
            for i in 0..1000 {
                assert!(work.send(i));
            }
            mailbox.finish(Ok("done"));
        });
        let mut seen = Vec::new();
        let output = pending
            .finish_with(|piece| {
                seen.push(piece);
                Ok(())
            })
            .unwrap();
        engine.join().unwrap();
        assert_eq!(output, "done");
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn a_cancel_wakes_the_waiting_handler_at_once() {
        let cancel = CancelToken::new();
        let (_mailbox, mut pending) = open::<(), ()>(&cancel);
        let canceller = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            canceller.cancel(CancelReason::ClientGone);
        });
        let started = Instant::now();
        let error = pending.step().err().expect("cancelled");
        assert_eq!(error.code, ErrorCode::Cancelled);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn an_outcome_is_the_engines_answer_even_after_a_cancel() {
        let cancel = CancelToken::new();
        let (mailbox, pending) = open::<(), &str>(&cancel);
        cancel.cancel(CancelReason::Requested);
        let engine = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            mailbox.finish(Ok("finished in time"));
        });
        assert_eq!(pending.outcome(), Ok("finished in time"));
        engine.join().unwrap();
    }

    #[test]
    fn the_engine_stops_when_the_handler_leaves() {
        let cancel = CancelToken::new();
        let (mailbox, pending) = open::<u32, ()>(&cancel);
        let work = Work::new(&*mailbox, &cancel);
        assert!(!work.stopped());
        drop(pending);
        assert!(work.stopped());
        assert!(!work.send(1), "nobody reads: the piece is refused");
    }
}
