//! The listener thread: one epoll wait over the shared request pipe, every private request
//! pipe, and the event pipes with a backlog to flush or a reader to lose. It never blocks on
//! a client; everything slow happens on the workers.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::subscriber::{DropReason, Subscriber};
use super::{CancelReason, Shared};
use crate::error::{Error, Result};
use crate::fifo;
use crate::framing::{Frame, LineBuffer};
use crate::message::{pid_hint, ErrorCode, ToolError};
use crate::poll::{self, Epoll};
use crate::processes::pid_alive;
use crate::sync::lock;

/// How often dead clients and stalled subscribers are looked for.
const SWEEP_EVERY: Duration = Duration::from_millis(500);
/// Most bytes read from one pipe per wake-up, so one busy client cannot starve the rest.
const READ_BUDGET: usize = 1 << 20;
/// How long the event pipe of a dead client is watched for its last reader to go.
const DEAD_CLIENT_CLEANUP: Duration = Duration::from_secs(5);
/// How long a stopping server waits for running handlers and unread events.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// A client's private request pipe.
pub(super) struct RequestPipe {
    file: File,
    path: PathBuf,
    lines: LineBuffer,
}

/// Where a line came from.
#[derive(Debug, Clone, Copy)]
pub(super) enum Source {
    /// The shared pipe: the sender is whoever the line says.
    Shared,
    /// A private pipe: the sender is its owner.
    Private(u32),
}

pub(super) struct Listener {
    pub(super) shared: Arc<Shared>,
    upstream: File,
    upstream_lines: LineBuffer,
    pub(super) request_pipes: HashMap<u32, RequestPipe>,
    buf: Vec<u8>,
    /// Clients that died, whose event pipes are still to be removed.
    dead_clients: Vec<(u32, Instant)>,
    epoll: Epoll,
    /// The event pipes in `epoll`, with what each is watched for. Holding the subscriber
    /// keeps its descriptor open until it is taken out of the set.
    event_pipes: HashMap<u32, (Arc<Subscriber>, u32)>,
}

/// What an epoll event is about: the low 32 bits of its token are a client's pid.
#[derive(Clone, Copy)]
enum Ready {
    Waker,
    Upstream,
    RequestPipe(u32),
    EventPipe(u32),
}

impl Ready {
    fn token(self) -> u64 {
        match self {
            Self::Waker => 0,
            Self::Upstream => 1 << 32,
            Self::RequestPipe(pid) => 2 << 32 | u64::from(pid),
            Self::EventPipe(pid) => 3 << 32 | u64::from(pid),
        }
    }

    fn from_token(token: u64) -> Self {
        let pid = token as u32;
        match token >> 32 {
            0 => Self::Waker,
            1 => Self::Upstream,
            2 => Self::RequestPipe(pid),
            _ => Self::EventPipe(pid),
        }
    }
}

/// Most epoll events taken per wait.
const MAX_READY: usize = 64;

impl Listener {
    pub(super) fn new(shared: Arc<Shared>, upstream: File) -> Result<Self> {
        let max = shared.limits.max_request_bytes;
        let epoll = Epoll::new()?;
        let watch = |fd, ready: Ready| {
            epoll
                .add(fd, libc::EPOLLIN as u32, ready.token())
                .map_err(|e| Error::io("cannot watch the server's pipes", e))
        };
        watch(shared.waker.fd(), Ready::Waker)?;
        watch(upstream.as_raw_fd(), Ready::Upstream)?;
        Ok(Self {
            shared,
            upstream,
            upstream_lines: LineBuffer::new(max),
            request_pipes: HashMap::new(),
            buf: vec![0; 64 << 10],
            dead_clients: Vec::new(),
            epoll,
            event_pipes: HashMap::new(),
        })
    }

    pub(super) fn run(mut self) -> Result<()> {
        let mut last_sweep = Instant::now();
        // One clock reading per wake-up; the next wait's timeout may run long by the time
        // spent handling this one, which only delays a sweep.
        let mut now = last_sweep;
        let mut ready = Vec::with_capacity(MAX_READY);
        while !self.shared.stopping.load(Ordering::Acquire) {
            self.watch_event_pipes();
            let timeout = SWEEP_EVERY.saturating_sub(now - last_sweep);
            self.epoll
                .wait(&mut ready, Some(timeout))
                .map_err(|e| Error::io("waiting on the server's pipes failed", e))?;
            let mut woken = false;
            for event in ready.drain(..) {
                let source = Ready::from_token(event.u64);
                woken |= matches!(source, Ready::Waker);
                self.on_ready(source, event.events);
            }
            // Closing a subscriber always wakes the listener, so only then is there any to reap.
            if woken {
                self.reap_closed();
            }
            now = Instant::now();
            if now - last_sweep >= SWEEP_EVERY {
                self.sweep();
                last_sweep = now;
            }
        }
        self.shutdown();
        Ok(())
    }

    /// Brings the event pipes in the epoll set in line with the subscribers: new ones in,
    /// gone ones out, and `EPOLLOUT` exactly while a backlog waits (level-triggered, it would
    /// otherwise report a pipe with room over and over).
    fn watch_event_pipes(&mut self) {
        let subscribers = lock(&self.shared.subscribers);
        let epoll = &self.epoll;
        self.event_pipes.retain(|pid, (sub, _)| {
            let current = subscribers.get(pid).is_some_and(|s| Arc::ptr_eq(s, sub));
            if !current {
                let _ = epoll.remove(sub.fd());
            }
            current
        });
        for (&pid, sub) in subscribers.iter() {
            // Errors (the reader is gone) are reported without asking.
            let wanted = if sub.has_backlog() {
                libc::EPOLLOUT as u32
            } else {
                0
            };
            let token = Ready::EventPipe(pid).token();
            match self.event_pipes.get_mut(&pid) {
                Some((_, watched)) if *watched == wanted => {}
                Some((_, watched)) => {
                    if let Err(e) = epoll.modify(sub.fd(), wanted, token) {
                        tracing::error!(pid, "cannot watch a client's event pipe: {e}");
                    }
                    *watched = wanted;
                }
                None => {
                    if let Err(e) = epoll.add(sub.fd(), wanted, token) {
                        tracing::error!(pid, "cannot watch a client's event pipe: {e}");
                    }
                    self.event_pipes.insert(pid, (Arc::clone(sub), wanted));
                }
            }
        }
    }

    fn on_ready(&mut self, source: Ready, events: u32) {
        match source {
            Ready::Waker => self.shared.waker.drain(),
            Ready::Upstream => self.read_upstream(),
            Ready::RequestPipe(pid) => self.read_request_pipe(pid),
            Ready::EventPipe(pid) => {
                let Some((sub, _)) = self.event_pipes.get(&pid) else {
                    return;
                };
                if events & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0 {
                    sub.close(DropReason::Gone);
                } else if sub.flush().is_err() {
                    // flush closed it; reaped below.
                }
            }
        }
    }

    fn read_upstream(&mut self) {
        let mut lines = std::mem::replace(&mut self.upstream_lines, LineBuffer::new(0));
        let mut budget = READ_BUDGET;
        while budget > 0 {
            match (&self.upstream).read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    let data = std::mem::take(&mut self.buf);
                    lines.push(&data[..n], |frame| self.on_frame(frame, Source::Shared));
                    self.buf = data;
                    if n < self.buf.len() {
                        break; // drained; poll says when more arrives
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        tracing::error!("reading the request pipe failed: {e}");
                    }
                    break;
                }
            }
        }
        self.upstream_lines = lines;
    }

    /// Whether client `pid`'s request pipe has no writer left (the client closed it).
    pub(super) fn request_writer_gone(&self, pid: u32) -> bool {
        let Some(pipe) = self.request_pipes.get(&pid) else {
            return false;
        };
        let mut fds = [poll::pollfd(pipe.file.as_raw_fd(), libc::POLLIN)];
        poll::poll(&mut fds, Some(Duration::ZERO)).is_ok() && fds[0].revents & libc::POLLHUP != 0
    }

    fn read_request_pipe(&mut self, pid: u32) {
        let Some(mut pipe) = self.request_pipes.remove(&pid) else {
            return;
        };
        let mut budget = READ_BUDGET;
        let mut closed = false;
        while budget > 0 {
            match (&pipe.file).read(&mut self.buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    let data = std::mem::take(&mut self.buf);
                    pipe.lines.push(&data[..n], |frame| {
                        self.on_frame(frame, Source::Private(pid))
                    });
                    self.buf = data;
                    if n < self.buf.len() {
                        break; // drained; poll reports more data, or the writer closing
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        // A handler of a line just read may have unsubscribed this client or replaced its
        // pipe; keep ours only if it is still the client's.
        let still_subscribed = lock(&self.shared.subscribers).contains_key(&pid);
        if closed {
            fifo::remove_fifo(&pipe.path);
            if still_subscribed {
                self.drop_subscriber(pid, DropReason::Gone);
            }
        } else if still_subscribed && !self.request_pipes.contains_key(&pid) {
            self.request_pipes.insert(pid, pipe);
        } else if !self.request_pipes.contains_key(&pid) {
            fifo::remove_fifo(&pipe.path);
        }
    }

    fn on_frame(&mut self, frame: Frame<'_>, source: Source) {
        let sender = |hint: Option<u32>| match source {
            Source::Private(pid) => Some(pid),
            Source::Shared => hint,
        };
        match frame {
            Frame::Line(line) => self.on_line(line, source),
            Frame::TooLarge { len, head } => {
                let pid = sender(pid_hint(head));
                tracing::warn!(?pid, len, "request too large");
                let error = ToolError::new(
                    ErrorCode::TooLarge,
                    format!(
                        "the request is {len} bytes, over this server's limit of {} bytes; \
                         send large payloads in several requests",
                        self.shared.limits.max_request_bytes
                    ),
                );
                self.reply_error(pid, None, error);
            }
        }
    }

    /// Removes event pipes of dead clients once nobody reads them; gives up after a while
    /// (the pid may have been reused by a live reader).
    fn remove_dead_client_pipes(&mut self) {
        let paths = &self.shared.paths;
        self.dead_clients.retain(|&(pid, since)| {
            let path = paths.downstream(pid);
            match fifo::has_reader(&path) {
                Ok(false) => {
                    fifo::remove_fifo(&path);
                    false
                }
                Ok(true) => since.elapsed() < DEAD_CLIENT_CLEANUP,
                Err(_) => false,
            }
        });
    }

    fn sweep(&mut self) {
        self.remove_dead_client_pipes();
        let stall = self.shared.limits.stall_timeout;
        let subscribers: Vec<_> = lock(&self.shared.subscribers).values().cloned().collect();
        for sub in subscribers {
            if !pid_alive(sub.pid) {
                sub.close(DropReason::Gone);
            } else if sub.stalled_since().is_some_and(|t| t.elapsed() >= stall) {
                sub.close(DropReason::Stalled);
            }
        }
        self.reap_closed();
    }

    /// Removes subscribers that a writer found closed.
    fn reap_closed(&mut self) {
        let closed: Vec<(u32, DropReason)> = lock(&self.shared.subscribers)
            .values()
            .filter_map(|s| s.closed().map(|r| (s.pid, r)))
            .collect();
        for (pid, reason) in closed {
            self.drop_subscriber(pid, reason);
        }
    }

    /// Lets a subscriber go: closes its pipes and cancels its requests.
    pub(super) fn drop_subscriber(&mut self, pid: u32, reason: DropReason) {
        let Some(sub) = lock(&self.shared.subscribers).remove(&pid) else {
            return;
        };
        sub.close(reason);
        if let Some(pipe) = self.request_pipes.remove(&pid) {
            fifo::remove_fifo(&pipe.path);
        }
        self.shared.cancel_client(pid, CancelReason::ClientGone);
        if reason == DropReason::Gone {
            // A dead client cannot remove its own event pipe (named-pipes never did). Its
            // process may still be closing its descriptors, so the sweep retries for a while.
            self.dead_clients.push((pid, Instant::now()));
            self.remove_dead_client_pipes();
        }
        match reason {
            DropReason::Unsubscribed | DropReason::Replaced | DropReason::ServerStopping => {
                tracing::debug!(pid, "client {}", reason.describe())
            }
            _ => tracing::info!(pid, "dropped a client: {}", reason.describe()),
        }
    }

    pub(super) fn open_request_pipe(&mut self, pid: u32) -> Result<PathBuf> {
        let path = self.shared.paths.request_pipe(pid);
        if let Some(old) = self.request_pipes.remove(&pid) {
            drop(old.file);
        }
        fifo::ensure_fifo(&path)?;
        let file = fifo::open_fifo(&path, fifo::Access::Read)?;
        // Closing the file (the only descriptor of it) takes it out of the set again.
        let token = Ready::RequestPipe(pid).token();
        self.epoll
            .add(file.as_raw_fd(), libc::EPOLLIN as u32, token)
            .map_err(|e| Error::io(format!("cannot watch {}", path.display()), e))?;
        let lines = LineBuffer::new(self.shared.limits.max_request_bytes);
        self.request_pipes.insert(
            pid,
            RequestPipe {
                file,
                path: path.clone(),
                lines,
            },
        );
        Ok(path)
    }

    fn shutdown(&mut self) {
        let shared = Arc::clone(&self.shared);
        for list in lock(&shared.inflight).values() {
            for f in list {
                f.token.cancel(CancelReason::ServerStopping);
            }
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        let subscribers: Vec<_> = lock(&shared.subscribers).values().cloned().collect();
        while Instant::now() < deadline {
            let busy = !lock(&shared.lanes).is_empty();
            let mut backlog = false;
            for sub in &subscribers {
                if sub.has_backlog() {
                    backlog |= sub.flush().is_ok() && sub.has_backlog();
                }
            }
            if !busy && !backlog {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let pids: Vec<u32> = lock(&shared.subscribers).keys().copied().collect();
        for pid in pids {
            self.drop_subscriber(pid, DropReason::ServerStopping);
        }
        for (_, pipe) in self.request_pipes.drain() {
            fifo::remove_fifo(&pipe.path);
        }
    }
}
