//! The engine worker every model-backed kind runs on: one thread loads the model (off the
//! listener, in state `loading`) and owns it; handlers queue jobs, which run one at a time in
//! fair order ([`queue`]); each job's pieces and result go back to its waiting handler
//! through a [`mailbox`], which also wakes the handler when its request is cancelled.
//!
//! The states go `loading → idle → busy → idle`, or `error` when the model cannot load: the
//! reason is then in `get_config` and every request is answered `unavailable`. A panicking
//! engine fails the one request it was running; the server goes on.

pub mod admission;
pub mod mailbox;
pub mod queue;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use pipe_core::{CancelToken, ErrorCode, Fields, ServerHandle, StateName, ToolError};

use crate::vocab::ServerState;
pub use admission::{Admitted, Line};
pub use mailbox::{Pending, Work};
pub use queue::Place;

/// A loaded model that runs one job at a time on the worker thread.
pub trait Engine: Send + 'static {
    /// What a request asks of it.
    type Job: Send + 'static;
    /// What it streams back while it works.
    type Piece: Send + 'static;
    /// What it answers at the end.
    type Output: Send + 'static;

    /// The state while a job runs (a variant's `.name()` from a vocabulary).
    const BUSY: StateName;

    /// Runs one job, sending pieces through `work` as they come; returns early once
    /// `work.stopped()`.
    fn run(&mut self, job: Self::Job, work: &Work<Self::Piece>) -> Result<Self::Output, ToolError>;

    /// The state while no job runs.
    fn rest_state(&self) -> StateName {
        ServerState::Idle.name()
    }

    /// Runs once on the worker thread when the engine has loaded, before the first job (stt
    /// starts listening here).
    fn ready(&mut self) {}

    /// Runs `first` and, in an engine that advances several jobs together, the jobs it takes
    /// from `line` while others run, until none is left. By default, `first` alone through
    /// [`Engine::run`].
    fn run_admitted(&mut self, mut first: Admitted<Self>, line: &Line<'_, Self>)
    where
        Self: Sized,
    {
        let _ = line;
        let Some(job) = first.take_job() else {
            return;
        };
        let result = self.run(job, &first.work());
        first.finish(result);
    }
}

/// A queued job and where its answer goes.
struct Queued<E: Engine> {
    job: E::Job,
    cancel: CancelToken,
    mailbox: Arc<mailbox::Mailbox<E::Piece, E::Output>>,
}

/// The jobs waiting for the worker thread.
struct Jobs<E: Engine> {
    queue: Mutex<JobQueue<E>>,
    arrived: Condvar,
}

struct JobQueue<E: Engine> {
    waiting: queue::FairQueue<Queued<E>>,
    /// Every [`Worker`] handle is gone: the thread ends once the queue is empty.
    closed: bool,
}

impl<E: Engine> Jobs<E> {
    fn lock(&self) -> MutexGuard<'_, JobQueue<E>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next job, waiting for one; `None` once closed and empty.
    fn next(&self) -> Option<Queued<E>> {
        let mut queue = self.lock();
        loop {
            if let Some(job) = queue.waiting.pop() {
                return Some(job);
            }
            if queue.closed {
                return None;
            }
            queue = self.arrived.wait(queue).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn is_empty(&self) -> bool {
        self.lock().waiting.is_empty()
    }
}

/// Closes the queue when the last [`Worker`] handle goes.
struct Closer<E: Engine>(Arc<Jobs<E>>);

impl<E: Engine> Drop for Closer<E> {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.arrived.notify_all();
    }
}

/// A handle for queueing jobs on an engine's worker thread. Clone it into each handler.
pub struct Worker<E: Engine> {
    jobs: Arc<Jobs<E>>,
    _closer: Arc<Closer<E>>,
}

impl<E: Engine> Default for Worker<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: Engine> Clone for Worker<E> {
    fn clone(&self) -> Self {
        Self {
            jobs: Arc::clone(&self.jobs),
            _closer: Arc::clone(&self._closer),
        }
    }
}

impl<E: Engine> Worker<E> {
    /// A worker whose thread is not started yet: jobs queue until it is (handlers that are
    /// part of what the engine loads can hold it already).
    pub fn new() -> Self {
        let jobs = Arc::new(Jobs {
            queue: Mutex::new(JobQueue {
                waiting: queue::FairQueue::default(),
                closed: false,
            }),
            arrived: Condvar::new(),
        });
        Self {
            _closer: Arc::new(Closer(Arc::clone(&jobs))),
            jobs,
        }
    }

    /// Starts the thread `thread`, which loads the engine with `load` and then runs jobs
    /// until every handle is dropped. `what` names the model in messages ("model", "voice").
    /// `load` reports what it loaded through `set_config`; if it fails, the server goes to
    /// state `error` and answers every job `unavailable`.
    pub fn start(
        &self,
        thread: &str,
        what: &'static str,
        server: ServerHandle,
        load: impl FnOnce() -> Result<E, String> + Send + 'static,
    ) -> std::io::Result<()> {
        let queue = Arc::clone(&self.jobs);
        std::thread::Builder::new()
            .name(thread.into())
            .spawn(move || match catch_unwind(AssertUnwindSafe(load)) {
                Ok(Ok(engine)) => serve(engine, &server, &queue, what),
                Ok(Err(message)) => refuse(&server, &queue, what, &message),
                Err(_) => refuse(&server, &queue, what, "the loader crashed"),
            })?;
        Ok(())
    }

    /// Queues `job` at `place`; the returned [`Pending`] yields its pieces and result, and
    /// ends with `cancelled` as soon as `cancel` is set, queued or running.
    pub fn submit(
        &self,
        job: E::Job,
        place: Place,
        cancel: &CancelToken,
    ) -> Pending<E::Piece, E::Output> {
        let (mailbox, pending) = mailbox::open(cancel);
        let queued = Queued {
            job,
            cancel: cancel.clone(),
            mailbox,
        };
        self.jobs.lock().waiting.push(place, queued);
        self.jobs.arrived.notify_one();
        pending
    }
}

/// Runs jobs on a loaded engine until the queue closes.
fn serve<E: Engine>(mut engine: E, server: &ServerHandle, jobs: &Jobs<E>, what: &'static str) {
    server.update_state(|_| Some(engine.rest_state()));
    engine.ready();
    let line = Line { jobs, what };
    while let Some(Queued {
        job,
        cancel,
        mailbox,
    }) = jobs.next()
    {
        let first = Admitted::new(job, cancel, mailbox, what);
        if let Some(reason) = first.cancelled() {
            first.finish(Err(reason.into()));
        } else {
            server.set_state(E::BUSY);
            line.announce_places(1);
            // A panic answers the jobs it interrupted (`Admitted` does on drop).
            let _ = catch_unwind(AssertUnwindSafe(|| engine.run_admitted(first, &line)));
        }
        // Also after a job cancelled while queued: it may be the last one behind a job that
        // ran, which left the state busy because this one was waiting.
        if jobs.is_empty() {
            server.update_state(|_| Some(engine.rest_state()));
            give_back_freed_memory();
        }
    }
}

/// Makes every thread allocate from glibc's main arena, the one arena whose top
/// [`give_back_freed_memory`] can shrink. A thread's own arena keeps its top free block however
/// often it is trimmed, and glibc lets that block grow to 64 MB once big tensors have raised its
/// trim threshold: a long prompt left 28 to 62 MB resident for good. Engines allocate per
/// tensor, not per element, so sharing one arena's lock costs nothing measurable. Call it
/// before the server starts its threads.
pub fn allocate_from_one_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tuning parameter of the allocator; it takes no pointer, and
    // M_ARENA_MAX affects only the arenas created after it.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Returns the heap a job freed to the system when the engine goes idle. glibc keeps freed
/// blocks in its arenas, so a long request's tensors would otherwise keep the resident size at
/// its peak long after (a chat server grew from 0.8 to 2.2 GB and stayed there).
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas; it takes
    // no pointer and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The one place an engine's failure becomes what its client reads: an internal error is
/// logged whole, and the client gets its first line, never a backtrace or a source path that
/// a library appended.
fn user_facing(error: ToolError) -> ToolError {
    if error.code != ErrorCode::Internal {
        return error;
    }
    tracing::error!("engine error: {}", error.message);
    let first = error.message.lines().next().unwrap_or_default().trim();
    ToolError::internal(if first.is_empty() {
        "the engine failed on this request; the server is still running"
    } else {
        first
    })
}

/// What a server does when its model cannot load: it stays up in state `error`, says why in
/// `get_config`, and answers every job with that reason instead of hanging or dying.
fn refuse<E: Engine>(server: &ServerHandle, jobs: &Jobs<E>, what: &str, message: &str) {
    tracing::error!("cannot load the {what}: {message}");
    server.set_config(Fields::from_iter([("error", message.into())]));
    server.set_state(ServerState::Error);
    while let Some(queued) = jobs.next() {
        queued.mailbox.finish(Err(ToolError::new(
            ErrorCode::Unavailable,
            format!("the {what} failed to load: {message}"),
        )));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipe_core::CancelReason;

    /// Streams `n` pieces, or blocks until released.
    struct Counter;

    impl Engine for Counter {
        type Job = u32;
        type Piece = u32;
        type Output = &'static str;
        const BUSY: StateName = ServerState::Inferring.name();

        fn run(&mut self, n: u32, work: &Work<u32>) -> Result<&'static str, ToolError> {
            if n == 666 {
                panic!("boom");
            }
            for i in 0..n {
                if !work.send(i) {
                    return Err(ToolError::new(ErrorCode::Cancelled, "stopped"));
                }
            }
            Ok("counted")
        }
    }

    fn server(name: &str) -> (tempdir::Dir, pipe_core::ToolServer) {
        let dir = tempdir::Dir::new();
        let server = pipe_core::ToolServer::builder(name)
            .dir(&dir.0)
            .initial_state(ServerState::Loading)
            .bind()
            .unwrap();
        (dir, server)
    }

    #[test]
    fn jobs_run_a_panic_is_contained_and_a_queued_cancel_is_answered() {
        let (_dir, server) = server("engine-test");
        let worker = Worker::new();
        worker
            .start("counter", "counter", server.handle_ref(), || Ok(Counter))
            .unwrap();
        let run = |n| {
            let mut seen = 0;
            let result = worker
                .submit(n, Place::client(Some(1)), &CancelToken::new())
                .finish_with(|_| {
                    seen += 1;
                    Ok(())
                });
            (seen, result)
        };
        assert_eq!(run(3), (3, Ok("counted")));
        let (_, crashed) = run(666);
        assert!(crashed.unwrap_err().message.contains("crashed"));
        assert_eq!(run(2), (2, Ok("counted")), "the worker survives a panic");
        let cancelled = CancelToken::new();
        cancelled.cancel(CancelReason::Requested);
        let answer = worker
            .submit(5, Place::client(Some(2)), &cancelled)
            .finish_with(|_| Ok(()));
        assert_eq!(answer.unwrap_err().code, ErrorCode::Cancelled);
    }

    #[test]
    fn the_state_rests_when_the_last_queued_job_was_cancelled() {
        let (_dir, server) = server("engine-rest");
        let handle = server.handle_ref();
        let worker = Worker::new();
        worker
            .start("counter", "counter", handle.clone(), || Ok(Counter))
            .unwrap();
        // A job of more pieces than its mailbox holds keeps the worker busy until read.
        let running = worker.submit(
            mailbox::CAPACITY as u32 * 4,
            Place::client(Some(1)),
            &CancelToken::new(),
        );
        let cancelled = CancelToken::new();
        let queued = worker.submit(1, Place::client(Some(2)), &cancelled);
        cancelled.cancel(CancelReason::Requested);
        assert_eq!(running.finish_with(|_| Ok(())), Ok("counted"));
        assert!(queued.finish_with(|_| Ok(())).is_err());
        let rested = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            handle.state() == ServerState::Idle.into()
        });
        assert!(rested, "the state stayed {}", handle.state());
    }

    #[test]
    fn a_model_that_fails_to_load_answers_unavailable() {
        let (_dir, server) = server("engine-fail");
        let handle = server.handle_ref();
        let worker: Worker<Counter> = Worker::new();
        worker
            .start("counter", "counter", handle.clone(), || {
                Err("no such file".into())
            })
            .unwrap();
        let answer = worker
            .submit(1, Place::client(None), &CancelToken::new())
            .finish_with(|_| Ok(()));
        let error = answer.unwrap_err();
        assert_eq!(error.code, ErrorCode::Unavailable);
        assert!(error.message.contains("no such file"));
        assert_eq!(handle.state(), ServerState::Error.into());
    }

    /// A private pipe directory, removed on drop.
    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);

        impl Dir {
            pub fn new() -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static NEXT: AtomicU32 = AtomicU32::new(0);
                let n = NEXT.fetch_add(1, Ordering::Relaxed);
                let path =
                    std::env::temp_dir().join(format!("cpipe-engine-{}-{n}", std::process::id()));
                Self(path)
            }
        }

        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}
