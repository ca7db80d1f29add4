//! Jobs taken from the queue by an engine that runs several at once (continuous batching):
//! each [`Admitted`] job carries its own way back to its handler, and the [`Line`] lets the
//! engine take the next job while others run and tell the waiting ones their place.

use std::sync::Arc;

use pipe_core::{CancelToken, Interrupted, ToolError};

use super::mailbox::{Mailbox, Work};
use super::{user_facing, Engine, Jobs};

/// A job the engine has taken: the request, and where its pieces and result go. Every
/// admitted job is answered: dropped without [`Admitted::finish`] (the engine panicked), it
/// answers `internal`.
pub struct Admitted<E: Engine> {
    job: Option<E::Job>,
    cancel: CancelToken,
    mailbox: Arc<Mailbox<E::Piece, E::Output>>,
    /// What the engine runs ("model"), for the message of a crash.
    what: &'static str,
    answered: bool,
}

impl<E: Engine> Admitted<E> {
    pub(super) fn new(
        job: E::Job,
        cancel: CancelToken,
        mailbox: Arc<Mailbox<E::Piece, E::Output>>,
        what: &'static str,
    ) -> Self {
        Self {
            job: Some(job),
            cancel,
            mailbox,
            what,
            answered: false,
        }
    }

    /// The request, taken out once.
    pub fn take_job(&mut self) -> Option<E::Job> {
        self.job.take()
    }

    /// Where its pieces go, and whether it should stop.
    pub fn work(&self) -> Work<'_, E::Piece> {
        Work::new(&*self.mailbox, &self.cancel)
    }

    /// Whether its handler lags [`super::mailbox::CAPACITY`] pieces behind: leave it out of a
    /// step rather than make every job wait for it.
    pub fn is_lagging(&self) -> bool {
        self.mailbox.is_full()
    }

    /// Why it was cancelled, if it was.
    pub fn cancelled(&self) -> Option<Interrupted> {
        self.cancel.reason().map(Interrupted)
    }

    /// Tells its handler it waits at `place` in line (1: next).
    pub fn set_place(&self, place: usize) {
        self.mailbox.set_place(place);
    }

    /// Answers the job.
    pub fn finish(mut self, result: Result<E::Output, ToolError>) {
        self.answered = true;
        self.mailbox.finish(result.map_err(user_facing));
    }
}

impl<E: Engine> Drop for Admitted<E> {
    fn drop(&mut self) {
        if !self.answered {
            tracing::error!("the {} crashed on a request", self.what);
            self.mailbox.finish(Err(ToolError::internal(format!(
                "the {} crashed on this request; the server is still running",
                self.what
            ))));
        }
    }
}

/// The queue as an engine running several jobs sees it.
pub struct Line<'a, E: Engine> {
    pub(super) jobs: &'a Jobs<E>,
    pub(super) what: &'static str,
}

impl<E: Engine> Line<'_, E> {
    /// The next job in fair order, if one waits (jobs cancelled while queued are answered
    /// `cancelled` on the way).
    pub fn try_next(&self) -> Option<Admitted<E>> {
        loop {
            let queued = self.jobs.lock().waiting.pop()?;
            let admitted = Admitted::new(queued.job, queued.cancel, queued.mailbox, self.what);
            match admitted.cancelled() {
                Some(reason) => admitted.finish(Err(reason.into())),
                None => return Some(admitted),
            }
        }
    }

    /// How many jobs wait.
    pub fn waiting(&self) -> usize {
        self.jobs.lock().waiting.in_order().len()
    }

    /// Tells every waiting job its place in line, counting from `first` (1 when nothing
    /// else is ahead).
    pub fn announce_places(&self, first: usize) {
        let queue = self.jobs.lock();
        for (i, queued) in queue.waiting.in_order().into_iter().enumerate() {
            queued.mailbox.set_place(first + i);
        }
    }
}
