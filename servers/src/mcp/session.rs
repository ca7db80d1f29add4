//! One connection per tool server, held for the life of `cpipe mcp`: a pump thread reads
//! every event as it comes (so the server never drops us for not reading) into a bounded
//! text log, one for the whole server and one per request, that agents read with cursors.

use crate::lock;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pipe_core::{Client, ConnectOptions, Event, ProtocolEvent};
use serde_json::Value;

use crate::text::TextWriter;

/// How long any one pipe operation may take: a stuck server must never hang the agent, and a
/// busy machine must not make a live one look dead.
pub const PIPE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the pump waits for an event before letting others use the connection.
const PUMP_WAIT: Duration = Duration::from_millis(20);
/// Text kept per log before the oldest is dropped.
const MAX_LOG_BYTES: usize = 8 << 20;
/// Finished requests whose output is kept for reading.
const KEPT_REQUESTS: usize = 64;

/// Why a request could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// This connection's previous request has not finished.
    #[error(
        "busy: request {id} ('{cmd}') to '{server}' is still running; retry after it finishes \
         (read its output with read_output, or cancel it)"
    )]
    Busy {
        /// The server.
        server: String,
        /// The running request.
        id: u64,
        /// Its command.
        cmd: String,
    },
    /// The pipes failed.
    #[error(transparent)]
    Pipe(#[from] pipe_core::Error),
}

/// Text appended over time, read from absolute byte offsets; the oldest text is dropped
/// past a limit, and reads from before the kept part say how much was lost.
#[derive(Debug, Default)]
pub struct Transcript {
    text: String,
    /// Bytes dropped from the front.
    base: usize,
    writer: TextWriter,
}

/// What one read of a transcript returned.
#[derive(Debug)]
pub struct Chunk {
    /// The text read.
    pub text: String,
    /// Where the next read starts.
    pub next: usize,
    /// Bytes dropped before they were read.
    pub lost: usize,
    /// Bytes left unread after this chunk.
    pub remaining: usize,
}

impl Transcript {
    fn push(&mut self, event: &Event) {
        self.writer.push(event, &mut self.text);
        if self.text.len() > MAX_LOG_BYTES {
            let mut cut = self.text.len() - MAX_LOG_BYTES / 2;
            while !self.text.is_char_boundary(cut) {
                cut += 1;
            }
            self.text.drain(..cut);
            self.base += cut;
        }
    }

    /// The end offset: where a reader that wants only future text starts.
    pub fn end(&self) -> usize {
        self.base + self.text.len()
    }

    /// Up to `max_chars` characters from offset `from`.
    pub fn read(&self, from: usize, max_chars: usize) -> Chunk {
        let lost = self.base.saturating_sub(from);
        let start = from.max(self.base).min(self.end()) - self.base;
        let rest = &self.text[start..];
        let len = rest
            .char_indices()
            .nth(max_chars)
            .map_or(rest.len(), |(i, _)| i);
        Chunk {
            text: rest[..len].to_string(),
            next: self.base + start + len,
            lost,
            remaining: rest.len() - len,
        }
    }
}

/// The output of one request.
#[derive(Debug, Default)]
pub struct RequestLog {
    /// Its command.
    pub cmd: String,
    /// Its output as text.
    pub transcript: Transcript,
    /// Whether it has ended.
    pub finished: bool,
    /// Whether it ended with an error event.
    pub failed: bool,
}

/// Everything a connection has received.
#[derive(Debug, Default)]
pub struct Log {
    /// Every event, broadcasts included, in order of arrival.
    pub all: Transcript,
    /// Requests sent by agents, by id.
    pub requests: HashMap<u64, RequestLog>,
    order: VecDeque<u64>,
    /// Read positions: `None` for the whole server, `Some(id)` for one request.
    pub cursors: HashMap<Option<u64>, usize>,
    /// The last state the server announced.
    pub state: Option<String>,
    /// Why the connection ended, once it has.
    pub closed: Option<String>,
}

impl Log {
    fn record(&mut self, event: &Event, legacy: bool) {
        if event.is(ProtocolEvent::StateChanged) {
            self.state = event.str("state").map(String::from);
        }
        self.all.push(event);
        let id = match event.id().and_then(Value::as_u64) {
            Some(id) => Some(id),
            // named-pipes sends no ids: a reply belongs to the request still waiting.
            None if legacy && event.answers_legacy_request() => self
                .order
                .iter()
                .rev()
                .copied()
                .find(|id| self.requests.get(id).is_some_and(|r| !r.finished)),
            None => None,
        };
        let Some(request) = id.and_then(|id| self.requests.get_mut(&id)) else {
            return;
        };
        if event.is(ProtocolEvent::End) {
            request.finished = true;
            request
                .transcript
                .writer
                .end_line(&mut request.transcript.text);
            return;
        }
        request.failed |= event.as_error().is_some();
        request.transcript.push(event);
        if legacy && event.get("done").and_then(Value::as_bool) != Some(false) {
            request.finished = true;
        }
    }

    fn start(&mut self, id: u64, cmd: &str) {
        self.requests.insert(
            id,
            RequestLog {
                cmd: cmd.into(),
                ..RequestLog::default()
            },
        );
        self.order.push_back(id);
        while self.order.len() > KEPT_REQUESTS {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.requests.remove(&old);
            self.cursors.remove(&Some(old));
        }
    }

    /// The request of an agent that is still running, if any.
    fn running(&self) -> Option<(u64, &RequestLog)> {
        self.order
            .iter()
            .filter_map(|id| Some((*id, self.requests.get(id)?)))
            .find(|(_, r)| !r.finished)
    }
}

/// A live connection to one server.
pub struct Session {
    /// The server's name.
    pub name: String,
    client: Mutex<Client>,
    /// Set while someone waits for `client`, so the pump steps aside.
    wanted: AtomicBool,
    log: Mutex<Log>,
    changed: Condvar,
    open: AtomicBool,
    legacy: bool,
}

impl Session {
    /// Connects to `name` in `dir` and starts reading its events.
    pub fn connect(dir: &Path, name: &str) -> pipe_core::Result<Arc<Self>> {
        let options = ConnectOptions {
            dir: dir.into(),
            timeout: Some(PIPE_TIMEOUT),
        };
        let client = Client::connect_with(name, &options)?;
        let session = Arc::new(Self {
            name: name.into(),
            legacy: client.is_legacy(),
            client: Mutex::new(client),
            wanted: AtomicBool::new(false),
            log: Mutex::new(Log::default()),
            changed: Condvar::new(),
            open: AtomicBool::new(true),
        });
        let pump = Arc::clone(&session);
        std::thread::Builder::new()
            .name(format!("mcp-pump-{name}"))
            .spawn(move || pump.pump())
            .map_err(|source| pipe_core::Error::Io {
                context: "starting a reader thread".into(),
                source,
            })?;
        Ok(session)
    }

    fn pump(&self) {
        while self.is_open() {
            if self.wanted.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let next = lock(&self.client).try_next_event(PUMP_WAIT);
            match next {
                Ok(Some(event)) => {
                    lock(&self.log).record(&event, self.legacy);
                    self.changed.notify_all();
                }
                Ok(None) => {}
                Err(e) => self.close(e.to_string()),
            }
        }
    }

    /// Whether the connection still works.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Marks the connection ended, waking every waiter.
    pub fn close(&self, reason: String) {
        self.open.store(false, Ordering::Release);
        let mut log = lock(&self.log);
        log.closed.get_or_insert(reason);
        for request in log.requests.values_mut() {
            request.finished = true;
        }
        drop(log);
        self.changed.notify_all();
    }

    /// Runs `f` on the client, ahead of the pump.
    fn with_client<T>(&self, f: impl FnOnce(&mut Client) -> T) -> T {
        self.wanted.store(true, Ordering::Release);
        let mut client = lock(&self.client);
        self.wanted.store(false, Ordering::Release);
        f(&mut client)
    }

    /// Sends a command and collects its events (for short control commands like
    /// `get_state`).
    pub fn control(&self, cmd: &str) -> pipe_core::Result<Vec<Event>> {
        self.with(|c| c.call(cmd, Value::Null))
    }

    /// Runs `f` on the client; a server found gone closes the session.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut Client) -> pipe_core::Result<T>,
    ) -> pipe_core::Result<T> {
        let result = self.with_client(f);
        if let Err(e @ pipe_core::Error::Disconnected { .. }) = &result {
            self.close(e.to_string());
        }
        result
    }

    /// Starts an agent's request; refused while the previous one runs.
    pub fn send(&self, cmd: &str, args: Value) -> Result<u64, SendError> {
        if let Some((id, running)) = lock(&self.log).running() {
            return Err(SendError::Busy {
                server: self.name.clone(),
                id,
                cmd: running.cmd.clone(),
            });
        }
        self.with_client(|client| {
            let id = client.send(cmd, args)?;
            // The pump is held off until this returns, so no event of `id` is missed.
            lock(&self.log).start(id, cmd);
            Ok(id)
        })
        .inspect_err(|e| {
            if let SendError::Pipe(e @ pipe_core::Error::Disconnected { .. }) = e {
                self.close(e.to_string());
            }
        })
    }

    /// Cancels request `id`.
    pub fn cancel(&self, id: u64) -> pipe_core::Result<()> {
        self.with_client(|c| c.cancel(id))
    }

    /// Waits until request `id` finishes, `deadline` passes or `stop` is set; returns
    /// whether it finished.
    pub fn wait_finished(&self, id: u64, deadline: Instant, stop: &AtomicBool) -> bool {
        self.wait_until(deadline, stop, |log| {
            log.requests.get(&id).is_none_or(|r| r.finished)
        })
    }

    /// Waits until the log has text past `offset` for `request` (or the whole server),
    /// the request finishes, or `deadline` passes.
    pub fn wait_output(&self, request: Option<u64>, offset: usize, deadline: Instant) {
        self.wait_until(deadline, &AtomicBool::new(false), |log| match request {
            Some(id) => log
                .requests
                .get(&id)
                .is_none_or(|r| r.finished || r.transcript.end() > offset),
            None => log.all.end() > offset || log.closed.is_some(),
        });
    }

    fn wait_until(
        &self,
        deadline: Instant,
        stop: &AtomicBool,
        done: impl Fn(&Log) -> bool,
    ) -> bool {
        let mut log = lock(&self.log);
        loop {
            if done(&log) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || stop.load(Ordering::Relaxed) {
                return false;
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            log = self
                .changed
                .wait_timeout(log, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The log, locked.
    pub fn log(&self) -> MutexGuard<'_, Log> {
        lock(&self.log)
    }
}

/// The connections of one `cpipe mcp`, by server name.
pub struct Sessions {
    dir: PathBuf,
    open: Mutex<HashMap<String, Arc<Session>>>,
}

impl Sessions {
    /// No connections yet, to servers in `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// The pipe directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The connection to `name`, made now if there is none or the last one ended.
    pub fn connect(&self, name: &str) -> pipe_core::Result<Arc<Session>> {
        let mut open = lock(&self.open);
        if let Some(session) = open.get(name).filter(|s| s.is_open()) {
            return Ok(Arc::clone(session));
        }
        // Release the old connection (and its claim on the pipe) before making a new one.
        if let Some(old) = open.remove(name) {
            old.close("reconnecting".into());
            drop(old);
            wait_released(&self.dir, name);
        }
        let session = Session::connect(&self.dir, name)?;
        open.insert(name.into(), Arc::clone(&session));
        Ok(session)
    }

    /// The connection to `name` if one was made, open or not (its log is still readable).
    pub fn existing(&self, name: &str) -> Option<Arc<Session>> {
        lock(&self.open).get(name).cloned()
    }

    /// Forgets the connection to `name`.
    pub fn forget(&self, name: &str) {
        if let Some(old) = lock(&self.open).remove(name) {
            old.close("forgotten".into());
        }
    }
}

/// Waits (briefly) until the pump of a closed session has dropped its client, because a
/// process may hold only one client per server.
fn wait_released(dir: &Path, name: &str) {
    let deadline = Instant::now() + PUMP_WAIT * 10;
    let downstream = pipe_core::paths::ToolPaths::new(dir, name).downstream(std::process::id());
    while downstream.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcript_reads_resume_and_report_what_remains() {
        let mut t = Transcript::default();
        t.text.push_str("héllo world");
        let first = t.read(0, 5);
        assert_eq!(first.text, "héllo");
        assert_eq!(first.remaining, " world".len());
        let second = t.read(first.next, 100);
        assert_eq!(second.text, " world");
        assert_eq!((second.remaining, second.lost), (0, 0));
        assert_eq!(t.read(second.next, 10).text, "");
    }

    #[test]
    fn transcript_drops_the_oldest_text_and_says_so() {
        let mut t = Transcript::default();
        let line = serde_json::json!({"event": "note", "text": "x".repeat(1 << 20)});
        let event = Event::from_fields(line.as_object().unwrap().clone().into()).unwrap();
        for _ in 0..12 {
            t.push(&event);
        }
        assert!(t.text.len() <= MAX_LOG_BYTES);
        let chunk = t.read(0, 10);
        assert!(chunk.lost > 0);
        assert_eq!(chunk.next, t.base + 10);
    }
}
