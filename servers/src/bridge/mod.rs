//! What the bridges (`--serve http`, `--serve wyoming`) share: they are pipe clients of the
//! live servers, one connection per server for all their remote clients ([`upstream`]), and
//! find the server for a job by what it does ([`services`]).

pub mod services;
pub mod upstream;

use std::future::Future;
use std::path::PathBuf;

use anyhow::Context;
use pipe_core::ToolServer;

/// Where a bridge's own pipe is: its directory, where the servers it bridges are, and its
/// name, left out when looking for them.
pub fn home(server: &ToolServer, kind: &str) -> (PathBuf, String) {
    let pipe = server.pipe_path();
    let dir = pipe.parent().map(|d| d.to_path_buf()).unwrap_or_default();
    let own = pipe
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("tool-"))
        .unwrap_or(kind)
        .to_string();
    (dir, own)
}

/// Runs a bridge's listener on a tokio runtime of two workers, on a thread of its own named
/// after the bridge; if it fails, the bridge's pipe server stops too (a bridge that cannot
/// listen must not look alive in `cpipe --list`).
pub fn run_listener(
    server: &ToolServer,
    name: &str,
    listener: impl Future<Output = anyhow::Result<()>> + Send + 'static,
) -> anyhow::Result<()> {
    let handle = server.handle_ref();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let what = name.to_string();
    std::thread::Builder::new()
        .name(format!("{name}-accept"))
        .spawn(move || {
            if let Err(e) = runtime.block_on(listener) {
                tracing::error!("the {what} listener failed: {e:#}");
                handle.stop();
            }
        })?;
    Ok(())
}

/// Why a bridge could not get a job done by a pipe server. Each bridge turns it into its
/// protocol's own error form.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// No server of that name has its pipe in the directory.
    #[error("no server named '{name}' is running in {}: start it with `cpipe --serve KIND --name {name}`", dir.display())]
    NotRunning {
        /// The server's name.
        name: String,
        /// The pipe directory.
        dir: PathBuf,
    },
    /// No live server does the job.
    #[error("no {what} server is running in {}: start one with `cpipe --serve {kind}`", dir.display())]
    NoService {
        /// The job, for people ("chat", "speech-to-text", ...).
        what: &'static str,
        /// The server kind that does it.
        kind: &'static str,
        /// The pipe directory.
        dir: PathBuf,
    },
    /// A model was asked for by a name no live server answers to.
    #[error("no live {what} server is named or runs '{model}': use one of {available}")]
    UnknownModel {
        /// The name asked for.
        model: String,
        /// The job.
        what: &'static str,
        /// The names that would work.
        available: String,
    },
    /// The connection to the server broke.
    #[error("lost the connection to the server '{name}': {reason}")]
    Lost {
        /// The server.
        name: String,
        /// What happened.
        reason: String,
    },
    /// The server answered with an error event.
    #[error("{message}")]
    Remote {
        /// Its `code` (PROTOCOL.md §3.2).
        code: String,
        /// Its message.
        message: String,
    },
    /// A fault in the bridge itself.
    #[error("{0}")]
    Internal(String),
}
