//! The errors pipe-core returns, each saying what went wrong and what to do about it.

use std::path::PathBuf;
use std::time::Duration;

use crate::message::ErrorCode;

/// Everything that can go wrong in pipe-core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A pipe path is unsafe to use: a symlink, not a FIFO, or owned by another user.
    #[error("refusing to use {path}: {reason}; remove it if it is stale, or choose another --dir")]
    UnsafePath {
        /// The offending path.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },

    /// Another server already holds this tool's name.
    #[error("a server named '{name}' is already running{}; stop it first (cpipe {name} stop) or pick another name", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    AlreadyRunning {
        /// The tool name.
        name: String,
        /// The running server's pid, when its lock file says.
        pid: Option<u32>,
    },

    /// The tool name cannot be used as a file name.
    #[error("invalid tool name '{0}': use a non-empty name without '/'")]
    InvalidName(String),

    /// No pipe exists at the server's path.
    #[error("no server at {0}: start one with `cpipe --serve <kind>`, or list running servers with `cpipe --list`")]
    NotRunning(PathBuf),

    /// The pipe exists but no process reads it: its server died.
    #[error("the server at {0} is gone (its pipe has no reader); remove stale pipes with `cpipe --clear` and restart the server")]
    Orphaned(PathBuf),

    /// The server closed this client's event pipe or stopped reading its requests.
    #[error("lost the connection to {path}: {reason}")]
    Disconnected {
        /// The server's pipe.
        path: PathBuf,
        /// What was observed.
        reason: String,
    },

    /// An operation did not finish in time.
    #[error("timed out after {after:?} waiting for {what}; the server may be busy or stuck (raise --timeout, or check it with `cpipe --list`)")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        after: Duration,
    },

    /// The server answered a request with an error event.
    #[error("server error ({code}): {message}")]
    Remote {
        /// The machine-readable code.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },

    /// A request is longer than the server takes (it announced its limit in `subscribed`):
    /// refused before it is sent, since the server could not say which request it discarded.
    #[error("the request is {bytes} bytes, more than the {limit} this server takes (its max_request_bytes); send less per request")]
    RequestTooLarge {
        /// The request line's length.
        bytes: usize,
        /// The server's limit.
        limit: usize,
    },

    /// The peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Result alias for pipe-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps the last OS error with what was being done.
    pub(crate) fn last_os(context: impl Into<String>) -> Self {
        Self::io(context, std::io::Error::last_os_error())
    }

    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
