//! The server side: bind a tool name, register command handlers, run.
//!
//! ```no_run
//! use pipe_core::{vocabulary, CommandSpec, Event, ToolServer};
//!
//! vocabulary! {
//!     /// What the greeter says.
//!     enum GreeterEvent: EventName {
//!         /// A greeting.
//!         Hello = "hello",
//!     }
//! }
//!
//! let mut server = ToolServer::builder("greeter").description("Says hello.").bind()?;
//! let spec = CommandSpec::new("hello", "Greets.").emits(&[GreeterEvent::Hello]);
//! server.handle(spec, |req, out| {
//!     let to = req.opt_str("name")?.unwrap_or("world");
//!     out.emit(Event::new(GreeterEvent::Hello).with("to", to))?;
//!     Ok(())
//! });
//! server.run()?;
//! # Ok::<(), pipe_core::Error>(())
//! ```
//!
//! One listener thread reads every request pipe and answers the built-in commands itself.
//! Registered handlers run on a pool of worker threads, one request at a time per client (so a
//! client's requests keep their order) and in parallel across clients.

mod builtins;
mod cancel;
mod listener;
mod pool;
mod subscriber;

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;

pub use cancel::{CancelReason, CancelToken, CancelWatch};

use crate::error::{Error, Result};
use crate::fields::Fields;
use crate::fifo;
use crate::interface::CommandSpec;
use crate::message::{ErrorCode, Event, Request, ToolError};
use crate::name_lock::NameLock;
use crate::paths::{self, ToolPaths};
use crate::poll::Waker;
use crate::sync::{lock, write};
use crate::vocabulary::{ProtocolEvent, ProtocolState, StateName};
use subscriber::{Subscriber, Wait};

/// A command handler: reads the request, emits events through the [`Responder`].
/// Returning an error sends it to the client as an error event.
pub type Handler = dyn Fn(&Request, &Responder) -> Result<(), ToolError> + Send + Sync;

/// Limits that keep one client from hurting the others.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest accepted request line; longer ones get a `too_large` error.
    pub max_request_bytes: usize,
    /// Unread events kept per subscriber before it counts as falling behind.
    pub max_backlog_bytes: usize,
    /// How long a subscriber may read nothing while events wait before it is dropped.
    pub stall_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_bytes: 16 << 20,
            max_backlog_bytes: 8 << 20,
            stall_timeout: Duration::from_secs(10),
        }
    }
}

/// Configures a server before it binds its name.
pub struct Builder {
    name: String,
    dir: PathBuf,
    description: String,
    help: Option<String>,
    state: StateName,
    limits: Limits,
}

impl Builder {
    /// The directory for the pipes (default: `CPIPE_DIR` or `/tmp`).
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = dir.into();
        self
    }

    /// The one-line description answered to `get_description`.
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = text.into();
        self
    }

    /// The text answered to `get_help` (default: the description).
    pub fn help(mut self, text: impl Into<String>) -> Self {
        self.help = Some(text.into());
        self
    }

    /// The state before anything calls [`ServerHandle::set_state`] (default `running`).
    pub fn initial_state(mut self, state: impl Into<StateName>) -> Self {
        self.state = state.into();
        self
    }

    /// Overrides the default [`Limits`].
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Takes the name: locks it, clears this tool's stale pipes and opens the request pipe.
    pub fn bind(self) -> Result<ToolServer> {
        if !paths::valid_name(&self.name) {
            return Err(Error::InvalidName(self.name));
        }
        let paths = ToolPaths::new(self.dir, self.name);
        create_dir(paths.dir())?;
        let lock = NameLock::acquire(&paths)?;
        clear_stale_pipes(&paths);
        let upstream_path = paths.upstream();
        if upstream_path.exists() && fifo::has_reader(&upstream_path)? {
            return Err(Error::AlreadyRunning {
                name: paths.name().into(),
                pid: crate::processes::pids_holding(&upstream_path)
                    .first()
                    .copied(),
            });
        }
        fifo::ensure_fifo(&upstream_path)?;
        let upstream = fifo::open_fifo(&upstream_path, fifo::Access::ReadWrite)?;
        use std::os::unix::fs::PermissionsExt;
        upstream
            .set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(format!("cannot chmod {}", upstream_path.display()), e))?;
        let help = self.help.unwrap_or_else(|| self.description.clone());
        let shared = Arc::new(Shared {
            paths,
            description: self.description,
            help,
            config: RwLock::new(Fields::new()),
            commands: RwLock::new(HashMap::new()),
            limits: self.limits,
            subscribers: Mutex::default(),
            state: Mutex::new(self.state),
            inflight: Mutex::default(),
            lanes: Mutex::default(),
            pool: pool::Pool::default(),
            waker: Arc::new(Waker::new()?),
            stopping: AtomicBool::new(false),
        });
        tracing::info!(pipe = %upstream_path.display(), "listening");
        Ok(ToolServer {
            shared,
            upstream,
            lock,
        })
    }
}

fn create_dir(dir: &std::path::Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            Error::io(
                format!("cannot create the pipe directory {}", dir.display()),
                e,
            )
        })
}

/// Removes this tool's client pipes that nobody reads any more (left by crashed clients or a
/// crashed predecessor). Other tools' pipes are theirs to clean.
fn clear_stale_pipes(paths: &ToolPaths) {
    let Ok(entries) = std::fs::read_dir(paths.dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some((name, _)) = file_name.to_str().and_then(paths::parse_client_pipe) else {
            continue;
        };
        let path = entry.path();
        if name == paths.name() && matches!(fifo::has_reader(&path), Ok(false)) {
            tracing::debug!(pipe = %path.display(), "removing stale pipe");
            fifo::remove_fifo(&path);
        }
    }
}

/// A bound server: register handlers, then [`run`](ToolServer::run) it.
pub struct ToolServer {
    shared: Arc<Shared>,
    upstream: std::fs::File,
    lock: NameLock,
}

impl ToolServer {
    /// Starts configuring a server named `name`.
    pub fn builder(name: impl Into<String>) -> Builder {
        Builder {
            name: name.into(),
            dir: paths::default_dir(),
            description: String::new(),
            help: None,
            state: ProtocolState::Running.into(),
            limits: Limits::default(),
        }
    }

    /// Registers `handler` for the command `spec.name`, replacing any earlier one. It runs on
    /// a worker thread, so it may take as long as it needs and stream as much as it likes.
    pub fn handle(
        &mut self,
        spec: CommandSpec,
        handler: impl Fn(&Request, &Responder) -> Result<(), ToolError> + Send + Sync + 'static,
    ) -> &mut Self {
        self.register(spec, Arc::new(handler), false)
    }

    /// Registers a handler that answers at once and never blocks (a lookup, a small reply).
    /// It runs on the listener thread, saving a thread hand-off per request; its events never
    /// wait for a slow client, which is dropped instead.
    pub fn handle_inline(
        &mut self,
        spec: CommandSpec,
        handler: impl Fn(&Request, &Responder) -> Result<(), ToolError> + Send + Sync + 'static,
    ) -> &mut Self {
        self.register(spec, Arc::new(handler), true)
    }

    fn register(&mut self, spec: CommandSpec, handler: Arc<Handler>, inline: bool) -> &mut Self {
        let name = spec.name.clone();
        let command = Command {
            spec,
            handler,
            inline,
        };
        write(&self.shared.commands).insert(name, command);
        self
    }

    /// Sets the fields answered to `get_config`.
    pub fn set_config(&mut self, config: Fields) -> &mut Self {
        *write(&self.shared.config) = config;
        self
    }

    /// A handle for other threads: change state, broadcast, stop.
    pub fn handle_ref(&self) -> ServerHandle {
        ServerHandle(Arc::clone(&self.shared))
    }

    /// The pipe clients write to.
    pub fn pipe_path(&self) -> PathBuf {
        self.shared.paths.upstream()
    }

    /// Serves until `stop` arrives or [`ServerHandle::stop`] is called, then removes the
    /// server's pipes and lock.
    pub fn run(self) -> Result<()> {
        let Self {
            shared,
            upstream,
            lock,
        } = self;
        let result = listener::Listener::new(Arc::clone(&shared), upstream).and_then(|l| l.run());
        fifo::remove_fifo(&shared.paths.upstream());
        drop(lock);
        tracing::info!(name = shared.paths.name(), "stopped");
        result
    }
}

struct Command {
    spec: CommandSpec,
    handler: Arc<Handler>,
    /// Runs on the listener (see [`ToolServer::handle_inline`]).
    inline: bool,
}

/// A request queued or running, so it can be cancelled.
struct InFlight {
    id: Option<Value>,
    token: CancelToken,
}

/// One client's requests, run one at a time in arrival order.
#[derive(Default)]
struct Lane {
    queue: VecDeque<Job>,
    running: bool,
}

struct Job {
    handler: Arc<Handler>,
    request: Request,
    responder: Responder,
}

/// State shared by the listener, the workers and every [`ServerHandle`].
struct Shared {
    paths: ToolPaths,
    description: String,
    help: String,
    config: RwLock<Fields>,
    commands: RwLock<HashMap<String, Command>>,
    limits: Limits,
    subscribers: Mutex<HashMap<u32, Arc<Subscriber>>>,
    state: Mutex<StateName>,
    inflight: Mutex<HashMap<u32, Vec<InFlight>>>,
    lanes: Mutex<HashMap<Option<u32>, Lane>>,
    pool: pool::Pool,
    waker: Arc<Waker>,
    stopping: AtomicBool,
}

impl Shared {
    fn subscriber(&self, pid: Option<u32>) -> Option<Arc<Subscriber>> {
        lock(&self.subscribers).get(&pid?).cloned()
    }

    /// Sends to every subscriber without waiting; those that cannot take it are dropped.
    fn broadcast(&self, event: &Event) {
        let line = event.to_line();
        let subscribers: Vec<_> = lock(&self.subscribers).values().cloned().collect();
        for sub in subscribers {
            if let Err(gone) = sub.send(&line, Wait::Never) {
                tracing::debug!(pid = sub.pid, "broadcast skipped: {}", gone.0.describe());
            }
        }
    }

    fn set_state(&self, state: StateName) {
        {
            let mut current = lock(&self.state);
            if *current == state {
                return;
            }
            *current = state;
        }
        self.broadcast(&Event::new(ProtocolEvent::StateChanged).with("state", state.as_str()));
    }

    fn request_stop(&self) {
        if !self.stopping.swap(true, Ordering::AcqRel) {
            self.set_state(ProtocolState::Stopping.into());
        }
        self.waker.wake();
    }

    /// Queues a job on its client's lane, starting the lane on a worker if it is idle.
    fn submit(self: &Arc<Self>, job: Job) {
        let key = job.request.pid;
        let mut lanes = lock(&self.lanes);
        let lane = lanes.entry(key).or_default();
        lane.queue.push_back(job);
        if lane.running {
            return;
        }
        lane.running = true;
        drop(lanes);
        let shared = Arc::clone(self);
        self.pool.execute(move || shared.run_lane(key));
    }

    fn run_lane(&self, key: Option<u32>) {
        loop {
            let job = {
                let mut lanes = lock(&self.lanes);
                let Some(lane) = lanes.get_mut(&key) else {
                    return;
                };
                match lane.queue.pop_front() {
                    Some(job) => job,
                    None => {
                        lanes.remove(&key);
                        return;
                    }
                }
            };
            self.run_job(job);
        }
    }

    /// Runs a job to completion: handler, error event, `end`, bookkeeping.
    fn run_job(&self, job: Job) {
        let Job {
            handler,
            request,
            responder,
        } = job;
        let outcome = match responder.check() {
            Err(interrupted) => Err(interrupted.into()),
            Ok(()) => catch_unwind(AssertUnwindSafe(|| handler(&request, &responder)))
                .unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(cmd = %request.cmd, "handler panicked: {what}");
                    Err(ToolError::internal(format!(
                        "{}: the handler crashed ({what}); the server is still running",
                        request.cmd
                    )))
                }),
        };
        if let Err(error) = outcome {
            tracing::debug!(cmd = %request.cmd, pid = ?request.pid, "request failed: {error}");
            let _ = responder.send(error.to_event(), Wait::Never);
        }
        responder.finish();
        if let Some(pid) = request.pid {
            let mut inflight = lock(&self.inflight);
            if let Some(list) = inflight.get_mut(&pid) {
                list.retain(|f| !f.token.same(&responder.cancel));
                if list.is_empty() {
                    inflight.remove(&pid);
                }
            }
        }
    }

    /// Whether client `pid` has requests queued or running on its lane.
    fn lane_busy(&self, pid: Option<u32>) -> bool {
        lock(&self.lanes).contains_key(&pid)
    }

    fn cancel_client(&self, pid: u32, reason: CancelReason) {
        if let Some(list) = lock(&self.inflight).get(&pid) {
            for f in list {
                f.token.cancel(reason);
            }
        }
    }
}

/// What a handler uses to answer: emit events to its client, watch for cancellation, and
/// reach the server for broadcasts and state changes.
pub struct Responder {
    shared: Arc<Shared>,
    subscriber: Option<Arc<Subscriber>>,
    id: Option<Value>,
    cancel: CancelToken,
    /// Running on the listener: events are gathered here and written in one go when the
    /// handler returns, never waiting for the client.
    batch: Option<Mutex<Vec<u8>>>,
}

/// A handler's request was cancelled or its client is gone; stop and return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.describe())]
pub struct Interrupted(pub CancelReason);

impl From<Interrupted> for ToolError {
    fn from(i: Interrupted) -> Self {
        ToolError::new(
            ErrorCode::Cancelled,
            format!("the request was {}", i.0.describe()),
        )
    }
}

impl Responder {
    /// Sends `event` to the requesting client (tagged with the request's `id`), waiting while
    /// the client catches up, for at most the stall timeout.
    pub fn emit(&self, event: Event) -> Result<(), Interrupted> {
        self.check()?;
        self.send(event, Wait::UpTo(self.shared.limits.stall_timeout))
    }

    fn send(&self, mut event: Event, wait: Wait) -> Result<(), Interrupted> {
        let Some(sub) = &self.subscriber else {
            // named-pipes drops replies to clients that never subscribed; so do we.
            return Ok(());
        };
        if let Some(id) = &self.id {
            event.set("id", id.clone());
        }
        if let Some(batch) = &self.batch {
            event.write_line(&mut lock(batch));
            return Ok(());
        }
        sub.send(&event.to_line(), wait).map_err(|_| {
            self.cancel.cancel(CancelReason::ClientGone);
            Interrupted(CancelReason::ClientGone)
        })
    }

    /// Ends a request that carried an `id` with `{"event":"end","id":...}`, and writes the
    /// events an inline handler gathered.
    fn finish(&self) {
        if self.id.is_some() {
            let _ = self.send(Event::new(ProtocolEvent::End), Wait::Never);
        }
        if let (Some(batch), Some(sub)) = (&self.batch, &self.subscriber) {
            let lines = std::mem::take(&mut *lock(batch));
            if !lines.is_empty() {
                let _ = sub.send(&lines, Wait::Never);
            }
        }
    }

    /// `Err` once the request is cancelled: call between steps of long work.
    pub fn check(&self) -> Result<(), Interrupted> {
        match self.cancel.reason() {
            Some(reason) => Err(Interrupted(reason)),
            None => Ok(()),
        }
    }

    /// The request's cancellation flag, for work handed to other threads.
    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    /// The request's id, if it carried one.
    pub fn id(&self) -> Option<&Value> {
        self.id.as_ref()
    }

    /// The server, for broadcasts and state changes.
    pub fn server(&self) -> ServerHandle {
        ServerHandle(Arc::clone(&self.shared))
    }
}

/// A cloneable handle on a running (or about to run) server.
#[derive(Clone)]
pub struct ServerHandle(Arc<Shared>);

impl ServerHandle {
    /// Changes the state and broadcasts `{"event":"state_changed","state":...}` if it changed.
    pub fn set_state(&self, state: impl Into<StateName>) {
        self.0.set_state(state.into());
    }

    /// Replaces the fields answered to `get_config` (e.g. once a model has loaded).
    pub fn set_config(&self, config: Fields) {
        *write(&self.0.config) = config;
    }

    /// The current state.
    pub fn state(&self) -> StateName {
        *lock(&self.0.state)
    }

    /// Sends `event` to every subscriber. Subscribers too far behind to take it are dropped.
    pub fn broadcast(&self, event: &Event) {
        self.0.broadcast(event);
    }

    /// Sends `event` to subscriber `pid` alone, without waiting (for events a client asked to
    /// receive outside its own requests). Returns false if it is not subscribed, or could not
    /// take the event and was dropped.
    pub fn send_to(&self, pid: u32, event: &Event) -> bool {
        match self.0.subscriber(Some(pid)) {
            Some(sub) => sub.send(&event.to_line(), Wait::Never).is_ok(),
            None => false,
        }
    }

    /// How many clients are subscribed.
    pub fn subscriber_count(&self) -> usize {
        lock(&self.0.subscribers).len()
    }

    /// Asks the server to stop, as the `stop` command does.
    pub fn stop(&self) {
        self.0.request_stop();
    }

    /// Whether a stop was requested.
    pub fn is_stopping(&self) -> bool {
        self.0.stopping.load(Ordering::Acquire)
    }
}
