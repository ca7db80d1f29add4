//! One subscribed client's event pipe, with its bounded backlog.
//!
//! Writers never block on the pipe itself: a write that does not fit goes into the backlog,
//! which the listener flushes when the pipe drains. A full backlog makes a handler wait
//! (back-pressure on its own stream, up to the stall timeout) but makes a broadcast drop the
//! subscriber, so one slow or dead client never delays anyone else.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::poll::Waker;

/// Why a subscriber was let go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    Unsubscribed,
    /// Its process closed the event pipe (it exited or crashed).
    Gone,
    /// Its backlog was full when a broadcast or a built-in reply had to go out.
    FellBehind,
    /// It read nothing for the whole stall timeout while events waited.
    Stalled,
    /// It subscribed again, replacing this connection.
    Replaced,
    ServerStopping,
}

impl DropReason {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Self::Unsubscribed => "unsubscribed",
            Self::Gone => "its process closed its event pipe",
            Self::FellBehind => "its backlog of unread events is full",
            Self::Stalled => "it read nothing for the whole stall timeout",
            Self::Replaced => "it subscribed again",
            Self::ServerStopping => "the server is stopping",
        }
    }
}

/// Returned when an event cannot reach the subscriber any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gone(pub DropReason);

/// How long a sender may wait for room in the backlog.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wait {
    /// Broadcasts and the listener's own replies: never wait.
    Never,
    /// A handler streaming to its own client: wait this long for room, counted from when
    /// waiting starts (most sends find room and never read the clock).
    UpTo(Duration),
}

#[derive(Debug, Default)]
struct Outbox {
    backlog: Vec<u8>,
    /// Bytes at the front of `backlog` already written.
    sent: usize,
    closed: Option<DropReason>,
    /// When the backlog last shrank (or became non-empty).
    progress: Option<Instant>,
}

impl Outbox {
    fn pending(&self) -> usize {
        self.backlog.len() - self.sent
    }
}

/// A subscribed client.
#[derive(Debug)]
pub(crate) struct Subscriber {
    pub(crate) pid: u32,
    pipe: File,
    outbox: Mutex<Outbox>,
    drained: Condvar,
    max_backlog: usize,
    waker: Arc<Waker>,
}

impl Subscriber {
    pub(crate) fn new(pid: u32, pipe: File, max_backlog: usize, waker: Arc<Waker>) -> Self {
        Self {
            pid,
            pipe,
            outbox: Mutex::default(),
            drained: Condvar::new(),
            max_backlog,
            waker,
        }
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.pipe.as_raw_fd()
    }

    fn lock(&self) -> MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends one encoded line, whole or not at all.
    pub(crate) fn send(&self, line: &[u8], wait: Wait) -> Result<(), Gone> {
        let mut out = self.lock();
        let mut deadline = None;
        loop {
            if let Some(reason) = out.closed {
                return Err(Gone(reason));
            }
            if out.pending() == 0 {
                return match (&self.pipe).write(line) {
                    Ok(n) if n == line.len() => Ok(()),
                    Ok(n) => {
                        self.queue(&mut out, &line[n..]);
                        Ok(())
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.queue(&mut out, line);
                        Ok(())
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => Err(self.close_locked(&mut out, DropReason::Gone)),
                };
            }
            if out.pending() + line.len() <= self.max_backlog {
                out.backlog.extend_from_slice(line);
                return Ok(());
            }
            match wait {
                Wait::Never => return Err(self.close_locked(&mut out, DropReason::FellBehind)),
                Wait::UpTo(patience) => {
                    let now = Instant::now();
                    let deadline = *deadline.get_or_insert(now + patience);
                    if now >= deadline {
                        return Err(self.close_locked(&mut out, DropReason::Stalled));
                    }
                    out = self
                        .drained
                        .wait_timeout(out, deadline - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }

    fn queue(&self, out: &mut Outbox, rest: &[u8]) {
        out.backlog.extend_from_slice(rest);
        out.progress = Some(Instant::now());
        self.waker.wake();
    }

    /// Whether events wait in the backlog (the listener then polls for `POLLOUT`).
    pub(crate) fn has_backlog(&self) -> bool {
        self.lock().pending() > 0
    }

    /// Writes as much backlog as the pipe takes. Called by the listener on `POLLOUT`.
    pub(crate) fn flush(&self) -> Result<(), Gone> {
        let mut out = self.lock();
        if let Some(reason) = out.closed {
            return Err(Gone(reason));
        }
        while out.pending() > 0 {
            let start = out.sent;
            match (&self.pipe).write(&out.backlog[start..]) {
                Ok(n) => {
                    out.sent += n;
                    out.progress = Some(Instant::now());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(self.close_locked(&mut out, DropReason::Gone)),
            }
        }
        if out.pending() == 0 {
            out.backlog.clear();
            out.sent = 0;
            out.progress = None;
        } else if out.sent > out.backlog.len() / 2 {
            let sent = out.sent;
            out.backlog.drain(..sent);
            out.sent = 0;
        }
        self.drained.notify_all();
        Ok(())
    }

    /// Since when events have waited without any being read, if they have.
    pub(crate) fn stalled_since(&self) -> Option<Instant> {
        self.lock().progress
    }

    /// Marks the subscriber closed; senders get `Gone` from now on.
    pub(crate) fn close(&self, reason: DropReason) {
        let mut out = self.lock();
        if out.closed.is_none() {
            self.close_locked(&mut out, reason);
        }
    }

    fn close_locked(&self, out: &mut Outbox, reason: DropReason) -> Gone {
        let reason = *out.closed.get_or_insert(reason);
        out.backlog = Vec::new();
        out.sent = 0;
        self.drained.notify_all();
        // The listener reaps closed subscribers when it wakes.
        self.waker.wake();
        Gone(reason)
    }

    pub(crate) fn closed(&self) -> Option<DropReason> {
        self.lock().closed
    }
}
