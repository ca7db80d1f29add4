//! What a handler answers through: its client's events, tagged with the request id, and the
//! request's cancellation.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::subscriber::{Subscriber, Wait};
use super::{CancelReason, CancelToken, ServerHandle, Shared};
use crate::message::{ErrorCode, Event, ToolError};
use crate::sync::lock;
use crate::vocabulary::ProtocolEvent;

/// What a handler uses to answer: emit events to its client, watch for cancellation, and
/// reach the server for broadcasts and state changes.
pub struct Responder {
    pub(super) shared: Arc<Shared>,
    pub(super) subscriber: Option<Arc<Subscriber>>,
    pub(super) id: Option<Value>,
    pub(super) cancel: CancelToken,
    /// Running on the listener: events are gathered here and written in one go when the
    /// handler returns, never waiting for the client.
    pub(super) batch: Option<Mutex<Vec<u8>>>,
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
        if event.is(ProtocolEvent::Token) && event.str("text").is_some_and(|t| !t.is_empty()) {
            self.shared.tokens.fetch_add(1, Ordering::Relaxed);
        }
        self.send(event, Wait::UpTo(self.shared.limits.stall_timeout))
    }

    pub(super) fn send(&self, mut event: Event, wait: Wait) -> Result<(), Interrupted> {
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
    pub(super) fn finish(&self) {
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
