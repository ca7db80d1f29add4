//! The signal a handler sees when its request is cancelled.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::sync::lock;

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
/// Long-running handlers check [`CancelToken::reason`] between steps (e.g. per token); a
/// handler that sleeps until something happens registers [`CancelToken::on_cancel`], so a
/// cancel wakes it at once instead of being noticed at its next poll.
#[derive(Clone, Default)]
pub struct CancelToken(Arc<Inner>);

#[derive(Default)]
struct Inner {
    reason: AtomicU8,
    watchers: Mutex<Watchers>,
}

/// A callback to run on cancellation.
type Watcher = Box<dyn FnOnce(CancelReason) + Send>;

/// Callbacks to run on cancellation, each with the id its [`CancelWatch`] removes it by.
#[derive(Default)]
struct Watchers {
    next_id: u64,
    list: Vec<(u64, Watcher)>,
}

impl fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CancelToken").field(&self.reason()).finish()
    }
}

impl CancelToken {
    /// A token not yet cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels; the first reason given wins, and runs the watchers.
    pub fn cancel(&self, reason: CancelReason) {
        let won = self
            .0
            .reason
            .compare_exchange(0, reason.to_u8(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if won {
            let watchers = std::mem::take(&mut lock(&self.0.watchers).list);
            for (_, watcher) in watchers {
                watcher(reason);
            }
        }
    }

    /// Runs `watcher` once when the token is cancelled (at once if it already is), until the
    /// returned [`CancelWatch`] is dropped. It runs on the cancelling thread, often the
    /// listener: it must only wake someone, never wait.
    pub fn on_cancel(&self, watcher: impl FnOnce(CancelReason) + Send + 'static) -> CancelWatch {
        let mut watchers = lock(&self.0.watchers);
        // Checked under the lock: `cancel` sets the reason before it takes the watchers.
        if let Some(reason) = self.reason() {
            drop(watchers);
            watcher(reason);
            return CancelWatch { token: None, id: 0 };
        }
        let id = watchers.next_id;
        watchers.next_id += 1;
        watchers.list.push((id, Box::new(watcher)));
        CancelWatch {
            token: Some(Arc::downgrade(&self.0)),
            id,
        }
    }

    /// Why the request was cancelled, or `None` while it may go on.
    pub fn reason(&self) -> Option<CancelReason> {
        CancelReason::from_u8(self.0.reason.load(Ordering::Acquire))
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

/// A registered [`CancelToken::on_cancel`] watcher; dropping it unregisters the watcher.
#[must_use = "the watcher is unregistered when this is dropped"]
pub struct CancelWatch {
    token: Option<Weak<Inner>>,
    id: u64,
}

impl Drop for CancelWatch {
    fn drop(&mut self) {
        if let Some(inner) = self.token.as_ref().and_then(Weak::upgrade) {
            lock(&inner.watchers).list.retain(|(id, _)| *id != self.id);
        }
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

    #[test]
    fn watchers_run_once_on_cancel_unless_dropped() {
        use std::sync::atomic::AtomicUsize;
        let t = CancelToken::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let count = |runs: &Arc<AtomicUsize>| {
            let runs = Arc::clone(runs);
            move |_| {
                runs.fetch_add(1, Ordering::SeqCst);
            }
        };
        let kept = t.on_cancel(count(&runs));
        drop(t.on_cancel(count(&runs)));
        t.cancel(CancelReason::Requested);
        t.cancel(CancelReason::ClientGone);
        assert_eq!(runs.load(Ordering::SeqCst), 1, "kept once; dropped never");
        let late = t.on_cancel(count(&runs));
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "registered after: runs at once"
        );
        drop((kept, late));
    }
}
