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

mod builder;
mod builtins;
mod cancel;
mod lanes;
mod listener;
mod pool;
mod responder;
mod subscriber;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;

pub use builder::Builder;
pub use cancel::{CancelReason, CancelToken, CancelWatch};
use lanes::Lane;
pub use responder::{Interrupted, Responder};

use crate::error::Result;
use crate::fields::Fields;
use crate::fifo;
use crate::interface::CommandSpec;
use crate::message::{Event, Request, ToolError};
use crate::name_lock::NameLock;
use crate::paths::{self, ToolPaths};
use crate::poll::Waker;
use crate::sync::{lock, write};
use crate::vocabulary::{EventName, ProtocolEvent, ProtocolState, StateName};
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
            interface: None,
            broadcasts: Vec::new(),
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

/// State shared by the listener, the workers and every [`ServerHandle`].
struct Shared {
    paths: ToolPaths,
    description: String,
    help: String,
    /// The name of the interface the server's own commands form (named-pipes 0.7).
    interface: String,
    /// The events the server broadcasts, for interface descriptions.
    broadcasts: Vec<EventName>,
    /// Requests dispatched to handlers since start, for `get_state`.
    requests: AtomicU64,
    /// Streamed `token` events with text sent since start, for `get_state`.
    tokens: AtomicU64,
    config: RwLock<Fields>,
    /// A kind's live figures, added to `get_state` (a chat server's slots and queue).
    status: RwLock<Fields>,
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
        self.update_state(|_| Some(state));
    }

    fn update_state(&self, next: impl FnOnce(StateName) -> Option<StateName>) {
        let state = {
            let mut current = lock(&self.state);
            match next(*current) {
                Some(state) if state != *current => *current = state,
                _ => return,
            }
            *current
        };
        self.broadcast(&Event::new(ProtocolEvent::StateChanged).with("state", state.as_str()));
    }

    fn request_stop(&self) {
        if !self.stopping.swap(true, Ordering::AcqRel) {
            self.set_state(ProtocolState::Stopping.into());
        }
        self.waker.wake();
    }

    fn cancel_client(&self, pid: u32, reason: CancelReason) {
        if let Some(list) = lock(&self.inflight).get(&pid) {
            for f in list {
                f.token.cancel(reason);
            }
        }
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

    /// Changes the state to what `next` makes of the current one (`None` leaves it), with no
    /// other change in between: for a state decided by the current one, or by something that
    /// can change while another thread sets it. Broadcasts as [`ServerHandle::set_state`] does.
    pub fn update_state(&self, next: impl FnOnce(StateName) -> Option<StateName>) {
        self.0.update_state(next);
    }

    /// Replaces the fields answered to `get_config` (e.g. once a model has loaded).
    pub fn set_config(&self, config: Fields) {
        *write(&self.0.config) = config;
    }

    /// Replaces the kind's own live figures answered with `get_state`, beside the fields every
    /// server answers (which they cannot replace).
    pub fn set_status(&self, status: Fields) {
        *write(&self.0.status) = status;
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
