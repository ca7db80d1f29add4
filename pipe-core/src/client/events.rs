//! One request's events, in order, up to its `end` (or, from a named-pipes 0.4 server, its
//! reply).

use std::time::{Duration, Instant};

use serde_json::Value;

use super::waiting::Deadline;
use super::{Client, MAX_UNCLAIMED};
use crate::error::{Error, Result};
use crate::message::Event;
use crate::vocabulary::ProtocolEvent;

/// The events of one request, in order, ending before its `end`.
pub struct RequestEvents<'a> {
    pub(super) client: &'a mut Client,
    pub(super) id: u64,
    pub(super) finished: bool,
}

impl RequestEvents<'_> {
    /// The request's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    fn belongs(&self, event: &Event) -> bool {
        if !self.client.legacy {
            return event.id().and_then(Value::as_u64) == Some(self.id);
        }
        // named-pipes 0.4 has no ids: a reply is whatever comes that is not a broadcast.
        event.answers_legacy_request()
    }

    /// Waits at most `wait` for the request's next event: returns [`Step::Pending`] if none
    /// came, so a caller can check for Ctrl-C or its own deadline and call again.
    pub fn next_within(&mut self, wait: Duration) -> Result<Step> {
        match self.next_until(Deadline::At(Some(Instant::now() + wait))) {
            Ok(Some(event)) => Ok(Step::Event(event)),
            Ok(None) => Ok(Step::End),
            Err(Error::Timeout { .. }) => Ok(Step::Pending),
            Err(e) => {
                self.finished = true;
                Err(e)
            }
        }
    }

    fn next_until(&mut self, mut deadline: Deadline) -> Result<Option<Event>> {
        if self.finished {
            return Ok(None);
        }
        let claimed = self
            .client
            .unclaimed
            .iter()
            .position(|e| self.belongs(e))
            .and_then(|i| self.client.unclaimed.remove(i));
        let event = match claimed {
            Some(e) => e,
            None => loop {
                let e = self.client.read_event(&mut deadline, "the reply")?;
                if self.belongs(&e) {
                    break e;
                }
                if self.client.unclaimed.len() >= MAX_UNCLAIMED {
                    self.client.unclaimed.pop_front();
                }
                self.client.unclaimed.push_back(e);
            },
        };
        if !self.client.legacy {
            if event.is(ProtocolEvent::End) {
                self.finished = true;
                return Ok(None);
            }
            return Ok(Some(event));
        }
        // Without ids, a reply ends the request unless it is a `done:false` stream chunk.
        self.finished = event.get("done").and_then(Value::as_bool) != Some(false);
        Ok(Some(event))
    }
}

/// One step of [`RequestEvents::next_within`].
#[derive(Debug)]
pub enum Step {
    /// The request's next event.
    Event(Event),
    /// Nothing yet.
    Pending,
    /// The request has ended.
    End,
}

impl Iterator for RequestEvents<'_> {
    type Item = Result<Event>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_until(Deadline::FromFirstWait(self.client.timeout)) {
            Ok(Some(e)) => Some(Ok(e)),
            Ok(None) => None,
            Err(e) => {
                self.finished = true;
                Some(Err(e))
            }
        }
    }
}
