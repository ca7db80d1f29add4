//! The signal a handler sees when its request is cancelled.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// Why a request was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// Its client sent `cancel`.
    Requested,
    /// Its client went away (exited, unsubscribed, or was dropped for falling behind).
    ClientGone,
    /// The server is stopping.
    ServerStopping,
}

impl CancelReason {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Requested),
            2 => Some(Self::ClientGone),
            3 => Some(Self::ServerStopping),
            _ => None,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Self::Requested => 1,
            Self::ClientGone => 2,
            Self::ServerStopping => 3,
        }
    }

    /// A sentence for logs and error events.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Requested => "cancelled by its client",
            Self::ClientGone => "cancelled because its client went away",
            Self::ServerStopping => "cancelled because the server is stopping",
        }
    }
}

/// A cheap, cloneable cancellation flag shared by a request and everyone who may cancel it.
/// Long-running handlers check [`CancelToken::reason`] between steps (e.g. per token).
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicU8>);

impl CancelToken {
    /// A token not yet cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels; the first reason given wins.
    pub fn cancel(&self, reason: CancelReason) {
        let _ = self
            .0
            .compare_exchange(0, reason.to_u8(), Ordering::AcqRel, Ordering::Acquire);
    }

    /// Why the request was cancelled, or `None` while it may go on.
    pub fn reason(&self) -> Option<CancelReason> {
        CancelReason::from_u8(self.0.load(Ordering::Acquire))
    }

    /// Whether the request was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.reason().is_some()
    }

    /// Whether both tokens are the same flag.
    pub(crate) fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_clones_share() {
        let t = CancelToken::new();
        let seen = t.clone();
        assert!(!seen.is_cancelled());
        t.cancel(CancelReason::ClientGone);
        t.cancel(CancelReason::Requested);
        assert_eq!(seen.reason(), Some(CancelReason::ClientGone));
    }
}
