//! The client side: subscribe, send requests, read the events of one request, unsubscribe.
//!
//! ```no_run
//! use pipe_core::Client;
//! use serde_json::json;
//!
//! let mut client = Client::connect("echo")?;
//! for event in client.request("stream", json!({"n": 3, "text": "hi"}))? {
//!     println!("{}", event?);
//! }
//! # Ok::<(), pipe_core::Error>(())
//! ```
//!
//! Against a cpipe server, requests go over the client's private request pipe (so any size
//! is safe) and carry an `id`; a request's events end at `{"event":"end"}`. Against a plain
//! named-pipes 0.4 server there are no ids: requests go over the shared pipe, and a request's
//! events are the next reply, or a `done:false` stream up to its `done:true` chunk.

mod backoff;
mod describe;
mod events;
mod waiting;

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::fifo::{self, Access};
use crate::framing::LineBuffer;
use crate::message::{write_value, Event};
use crate::paths::{self, ToolPaths};
use crate::poll::{self, pollfd};
use crate::vocabulary::ProtocolEvent;

use backoff::Backoff;
pub use events::{RequestEvents, Step};
use waiting::{remaining, Deadline, Inbox};

/// Default time to wait for any one reply.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest event line a client accepts.
const MAX_EVENT_BYTES: usize = 256 << 20;
/// Unclaimed broadcasts kept for [`Client::next_event`] before the oldest are dropped.
const MAX_UNCLAIMED: usize = 100_000;
/// Pipes this process is connected to: the protocol names a client by its pid, so one
/// process can hold only one connection per server.
static CONNECTED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A connection to one tool server.
pub struct Client {
    paths: ToolPaths,
    pid: u32,
    upstream: File,
    request_pipe: Option<File>,
    events: File,
    lines: LineBuffer,
    /// Events parsed from the pipe and not yet looked at.
    inbox: Inbox,
    /// Events looked at but not yet claimed by a request or by `next_event`.
    unclaimed: VecDeque<Event>,
    next_id: u64,
    timeout: Option<Duration>,
    /// The server speaks plain named-pipes 0.4: no ids, no `end`.
    legacy: bool,
    /// The longest request line the server takes, as it announced.
    max_request_bytes: Option<usize>,
    /// `unsubscribe` was sent already.
    unsubscribed: bool,
    /// Whether a wait spins before it sleeps.
    backoff: Backoff,
    buf: Vec<u8>,
}

/// Options for [`Client::connect_with`].
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The pipe directory (default: `CPIPE_DIR` or `/tmp`).
    pub dir: PathBuf,
    /// How long to wait for each reply; `None` waits forever.
    pub timeout: Option<Duration>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            dir: paths::default_dir(),
            timeout: Some(DEFAULT_TIMEOUT),
        }
    }
}

impl Client {
    /// Connects to server `target` (a name, or a path to its `tool-NAME` pipe) with default
    /// options, and subscribes.
    pub fn connect(target: &str) -> Result<Self> {
        Self::connect_with(target, &ConnectOptions::default())
    }

    /// Connects and subscribes with `options`.
    pub fn connect_with(target: &str, options: &ConnectOptions) -> Result<Self> {
        let paths = ToolPaths::resolve(&options.dir, target)
            .ok_or_else(|| Error::InvalidName(target.into()))?;
        let upstream_path = paths.upstream();
        {
            let mut connected = CONNECTED.lock().unwrap_or_else(|p| p.into_inner());
            if connected.contains(&upstream_path) {
                return Err(Error::Protocol(format!(
                    "this process is already connected to {}; the protocol allows one \
                     connection per process and server, so share that client",
                    upstream_path.display()
                )));
            }
            connected.push(upstream_path.clone());
        }
        Self::open(paths, options).inspect_err(|_| forget(&upstream_path))
    }

    fn open(paths: ToolPaths, options: &ConnectOptions) -> Result<Self> {
        let upstream_path = paths.upstream();
        fifo::check_fifo(&upstream_path).map_err(|e| match e {
            Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                Error::NotRunning(upstream_path.clone())
            }
            other => other,
        })?;
        let pid = std::process::id();
        let downstream = paths.downstream(pid);
        fifo::ensure_fifo(&downstream)?;
        let events = match fifo::open_fifo(&downstream, Access::Read) {
            Ok(f) => f,
            Err(e) => {
                fifo::remove_fifo(&downstream);
                return Err(e);
            }
        };
        let upstream = match fifo::open_fifo(&upstream_path, Access::Write) {
            Ok(f) => f,
            Err(e) => {
                fifo::remove_fifo(&downstream);
                return Err(e);
            }
        };
        let mut client = Self {
            paths,
            pid,
            upstream,
            request_pipe: None,
            events,
            lines: LineBuffer::new(MAX_EVENT_BYTES),
            inbox: Inbox::default(),
            unclaimed: VecDeque::new(),
            next_id: 1,
            timeout: options.timeout,
            legacy: true,
            unsubscribed: false,
            max_request_bytes: None,
            backoff: Backoff::new(),
            buf: vec![0; 64 << 10],
        };
        client.subscribe()?;
        Ok(client)
    }

    fn subscribe(&mut self) -> Result<()> {
        let line = json!({"pid": self.pid, "cmd": "subscribe", "request_pipe": true});
        self.write_line(&json_line(&line), true)?;
        let mut deadline = Deadline::FromFirstWait(self.timeout);
        loop {
            let event = self.read_event(&mut deadline, "the server to confirm subscribe")?;
            if !event.is(ProtocolEvent::Subscribed) {
                continue; // nothing else is meant for us before this
            }
            self.legacy = event.get("protocol").is_none();
            self.max_request_bytes = event
                .get("max_request_bytes")
                .and_then(Value::as_u64)
                .map(|n| n as usize);
            if let Some(path) = event.str("request_pipe") {
                let pipe = fifo::open_fifo(Path::new(path), Access::Write)?;
                self.request_pipe = Some(pipe);
            }
            return Ok(());
        }
    }

    /// The server's request pipe.
    pub fn server_path(&self) -> PathBuf {
        self.paths.upstream()
    }

    /// Whether the server speaks only plain named-pipes 0.4 (no ids, no `end`).
    pub fn is_legacy(&self) -> bool {
        self.legacy
    }

    /// Sets how long to wait for each reply; `None` waits forever.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// Sends a request without waiting; returns its id. `args` must be a JSON object (or null).
    pub fn send(&mut self, cmd: &str, args: Value) -> Result<u64> {
        let args = match args {
            Value::Object(fields) => fields,
            Value::Null => Map::new(),
            other => {
                return Err(Error::Protocol(format!(
                    "request arguments must be a JSON object, got {other}"
                )))
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        // Written straight out rather than through a map: this is every request's hot path.
        let mut line = Vec::with_capacity(64);
        line.extend_from_slice(b"{\"pid\":");
        write_value(&mut line, &self.pid);
        line.extend_from_slice(b",\"cmd\":");
        write_value(&mut line, cmd);
        line.extend_from_slice(b",\"id\":");
        write_value(&mut line, &id);
        for (key, value) in args
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "pid" | "cmd" | "id"))
        {
            line.push(b',');
            write_value(&mut line, key);
            line.push(b':');
            write_value(&mut line, value);
        }
        line.extend_from_slice(b"}\n");
        let bytes = line.len() - 1;
        if let Some(limit) = self.max_request_bytes.filter(|&limit| bytes > limit) {
            return Err(Error::RequestTooLarge { bytes, limit });
        }
        self.write_line(&line, false)?;
        Ok(id)
    }

    /// Sends a request and returns an iterator over its events (the closing `end` is not
    /// yielded). Error events are yielded like any other; see [`Event::as_error`].
    pub fn request(&mut self, cmd: &str, args: Value) -> Result<RequestEvents<'_>> {
        let id = self.send(cmd, args)?;
        Ok(self.events_of(id))
    }

    /// Iterates the events of request `id`, sent earlier with [`Client::send`].
    pub fn events_of(&mut self, id: u64) -> RequestEvents<'_> {
        RequestEvents {
            client: self,
            id,
            finished: false,
        }
    }

    /// Sends a request and collects its events; an error event becomes [`Error::Remote`].
    pub fn call(&mut self, cmd: &str, args: Value) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        for event in self.request(cmd, args)? {
            let event = event?;
            if let Some(e) = event.as_error() {
                return Err(Error::Remote {
                    code: e.code,
                    message: e.message,
                });
            }
            events.push(event);
        }
        Ok(events)
    }

    /// Unsubscribes and, against a cpipe server, waits (up to the timeout) for the server to
    /// confirm; then releases the connection. Dropping a client unsubscribes without waiting.
    pub fn unsubscribe(mut self) -> Result<()> {
        if self.legacy {
            // named-pipes answers nothing to unsubscribe.
            let line = json!({"pid": self.pid, "cmd": "unsubscribe"});
            self.write_line(&json_line(&line), false)?;
        } else {
            for event in self.request("unsubscribe", Value::Null)? {
                event?;
            }
        }
        self.unsubscribed = true;
        Ok(())
    }

    /// Asks the server to cancel request `id`. Its events end with a `cancelled` error.
    pub fn cancel(&mut self, id: u64) -> Result<()> {
        let cancel_id = self.send("cancel", json!({"target": id}))?;
        self.inbox.discard.insert(cancel_id);
        Ok(())
    }

    /// The next event not claimed by a request iterator: broadcasts such as
    /// `state_changed`, and events of requests nobody iterates.
    pub fn next_event(&mut self) -> Result<Event> {
        if let Some(event) = self.unclaimed.pop_front() {
            return Ok(event);
        }
        self.read_event(&mut Deadline::FromFirstWait(self.timeout), "an event")
    }

    /// Like [`Client::next_event`] but waits at most `wait`; `Ok(None)` if nothing came.
    pub fn try_next_event(&mut self, wait: Duration) -> Result<Option<Event>> {
        if let Some(event) = self.unclaimed.pop_front() {
            return Ok(Some(event));
        }
        let saved = self.timeout.replace(wait);
        let result = self.read_event(&mut Deadline::At(Some(Instant::now() + wait)), "an event");
        self.timeout = saved;
        match result {
            Ok(e) => Ok(Some(e)),
            Err(Error::Timeout { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes one request line whole, waiting for room up to the timeout.
    fn write_line(&mut self, line: &[u8], shared_pipe: bool) -> Result<()> {
        let pipe = match (&self.request_pipe, shared_pipe) {
            (Some(private), false) => private,
            _ => &self.upstream,
        };
        let mut deadline = Deadline::FromFirstWait(self.timeout);
        let mut written = 0;
        while written < line.len() {
            match (&*pipe).write(&line[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let remaining = remaining(
                        deadline.resolve(),
                        "the server to read a request",
                        self.timeout,
                    )?;
                    let mut fds = [pollfd(pipe.as_raw_fd(), libc::POLLOUT)];
                    poll::poll(&mut fds, remaining)
                        .map_err(|e| Error::io("waiting to write a request", e))?;
                }
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {
                    return Err(Error::Disconnected {
                        path: self.paths.upstream(),
                        reason: "the server stopped reading requests (it exited)".into(),
                    })
                }
                Err(e) => return Err(Error::io("writing a request", e)),
            }
        }
        Ok(())
    }
}

/// A request's wire form: compact JSON and a newline.
fn json_line(value: &Value) -> Vec<u8> {
    let mut line = serde_json::to_vec(value).expect("JSON values serialize");
    line.push(b'\n');
    line
}

fn forget(upstream: &Path) {
    CONNECTED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|p| p != upstream);
}

/// The event pipe: readable when events have arrived (see [`Client::poll_event`]).
impl AsRawFd for Client {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.events.as_raw_fd()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if !self.unsubscribed {
            // Best effort and non-blocking: a dead server must not hang us here.
            let line = format!("{{\"pid\":{},\"cmd\":\"unsubscribe\"}}\n", self.pid);
            let pipe = self.request_pipe.as_ref().unwrap_or(&self.upstream);
            let _ = (&*pipe).write(line.as_bytes());
        }
        fifo::remove_fifo(&self.paths.downstream(self.pid));
        forget(&self.paths.upstream());
    }
}
