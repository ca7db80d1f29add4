//! Reading events: waiting on the event pipe until a deadline, reading what is there, and
//! holding events until a request or [`Client::next_event`] claims them.

use std::collections::{HashSet, VecDeque};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::backoff::{Attempt, Spun};
use super::Client;
use crate::error::{Error, Result};
use crate::fields::Fields;
use crate::framing::Frame;
use crate::message::Event;
use crate::poll::{self, pollfd};
use crate::vocabulary::ProtocolEvent;

impl Client {
    /// Reads the next event from the pipe (not from `unclaimed`).
    pub(super) fn read_event(&mut self, deadline: &mut Deadline, what: &str) -> Result<Event> {
        loop {
            if let Some(event) = self.inbox.events.pop_front() {
                return Ok(event);
            }
            self.wait_and_read(deadline.resolve(), what)?;
        }
    }

    /// The next event that has already arrived, without waiting: what [`Client::next_event`]
    /// would return first, or `None`. For callers that wait on several sources at once
    /// (poll the client's [`AsRawFd`] for input, then drain this until `None`).
    pub fn poll_event(&mut self) -> Result<Option<Event>> {
        if let Some(event) = self.unclaimed.pop_front() {
            return Ok(Some(event));
        }
        loop {
            if let Some(event) = self.inbox.events.pop_front() {
                return Ok(Some(event));
            }
            match self.read_available()? {
                Got::Data => {}
                Got::Nothing => return Ok(None),
                Got::EndOfFile => return Err(self.closed()),
            }
        }
    }

    /// The error of an event pipe the server has closed.
    fn closed(&self) -> Error {
        Error::Disconnected {
            path: self.paths.upstream(),
            reason: "the server closed this client's event pipe (it stopped, or dropped this \
                     client for not reading)"
                .into(),
        }
    }

    /// Waits until the event pipe has data and reads it into the inbox, spinning first while
    /// replies have been quick ([`Backoff`](super::backoff::Backoff)).
    fn wait_and_read(&mut self, deadline: Option<Instant>, what: &str) -> Result<()> {
        let backoff = self.backoff;
        let spun = backoff.spin(|| {
            Ok(match self.read_available()? {
                Got::Data => Attempt::Got(()),
                // No writer yet (the server has not opened the pipe) reads as end of file
                // too; only `poll` tells the two apart.
                Got::EndOfFile => Attempt::Stop,
                Got::Nothing => Attempt::Again,
            })
        })?;
        let started = match spun {
            Spun::Got(()) => return Ok(()),
            Spun::Sleep { started } => started,
        };
        loop {
            let remaining = remaining(deadline, what, self.timeout)?;
            let mut fds = [pollfd(self.events.as_raw_fd(), libc::POLLIN)];
            poll::poll(&mut fds, remaining).map_err(|e| Error::io("waiting for events", e))?;
            if fds[0].revents == 0 {
                continue; // timed out: `remaining` reports it on the next turn
            }
            match self.read_available()? {
                Got::Data => {
                    self.backoff.slept(started);
                    return Ok(());
                }
                Got::EndOfFile => return Err(self.closed()),
                Got::Nothing => {}
            }
        }
    }

    /// One non-blocking read of the event pipe, parsed into the inbox.
    fn read_available(&mut self) -> Result<Got> {
        match (&self.events).read(&mut self.buf) {
            Ok(0) => Ok(Got::EndOfFile),
            Ok(n) => {
                let inbox = &mut self.inbox;
                self.lines.push(&self.buf[..n], |frame| match frame {
                    Frame::Line(line) => match serde_json::from_slice::<Fields>(line) {
                        Ok(fields) => {
                            if let Some(event) = Event::from_fields(fields) {
                                inbox.stash(event);
                            }
                        }
                        Err(e) => tracing::warn!("ignoring a malformed event line: {e}"),
                    },
                    Frame::TooLarge { len, .. } => {
                        tracing::warn!("ignoring an event line of {len} bytes")
                    }
                });
                Ok(Got::Data)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(Got::Nothing)
            }
            Err(e) => Err(Error::io("reading events", e)),
        }
    }
}

/// Events read from the pipe and not yet looked at, less those of discarded requests.
#[derive(Default)]
pub(super) struct Inbox {
    pub(super) events: VecDeque<Event>,
    /// Requests whose events are thrown away on arrival (e.g. our own `cancel`s).
    pub(super) discard: HashSet<u64>,
}

impl Inbox {
    /// Queues a newly parsed event, unless it answers a request whose events are discarded.
    pub(super) fn stash(&mut self, event: Event) {
        // Most clients discard nothing; then no event needs its id looked up here.
        let discarded_id = if self.discard.is_empty() {
            None
        } else {
            event
                .id()
                .and_then(Value::as_u64)
                .filter(|id| self.discard.contains(id))
        };
        match discarded_id {
            Some(id) if event.is(ProtocolEvent::End) => {
                self.discard.remove(&id);
            }
            Some(_) => {}
            None => self.events.push_back(event),
        }
    }
}

/// When a wait for events gives up. The client's own timeout starts at the first wait, so an
/// event that is already read costs no clock reading.
#[derive(Clone, Copy)]
pub(super) enum Deadline {
    /// The client's timeout, counted from the first wait.
    FromFirstWait(Option<Duration>),
    /// A fixed instant (`None`: never).
    At(Option<Instant>),
}

impl Deadline {
    /// The instant, fixed from now on.
    pub(super) fn resolve(&mut self) -> Option<Instant> {
        let at = match *self {
            Self::FromFirstWait(timeout) => timeout.map(|t| Instant::now() + t),
            Self::At(at) => at,
        };
        *self = Self::At(at);
        at
    }
}

/// What one non-blocking read of the event pipe found.
pub(super) enum Got {
    Data,
    Nothing,
    /// No writer: the server closed the pipe, or has not opened it yet.
    EndOfFile,
}

/// Time left until `deadline`, or a timeout error naming `what` and the client's timeout.
pub(super) fn remaining(
    deadline: Option<Instant>,
    what: &str,
    timeout: Option<Duration>,
) -> Result<Option<Duration>> {
    let Some(deadline) = deadline else {
        return Ok(None);
    };
    let now = Instant::now();
    if now >= deadline {
        return Err(Error::Timeout {
            what: what.into(),
            after: timeout.unwrap_or_default(),
        });
    }
    Ok(Some(deadline - now))
}
