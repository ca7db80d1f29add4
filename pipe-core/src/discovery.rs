//! Finding servers in a pipe directory: which are alive, which pipes are orphaned, and who
//! holds them.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::client::{Client, ConnectOptions};
use crate::error::{Error, Result};
use crate::fifo;
use crate::message::Event;
use crate::paths::{self, ToolPaths};
pub use crate::processes::pids_holding;
use crate::vocabulary::ProtocolEvent;

/// Whether a server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    /// It answered `get_state`.
    Alive,
    /// Its pipe has a reader, but no answer came in time (stuck, or a dead named-pipes
    /// server whose pipe a client still holds open).
    Unresponsive,
    /// Nobody reads its pipe: the server is gone.
    Orphaned,
}

/// One server found in the pipe directory.
#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo {
    /// The tool name.
    pub name: String,
    /// Its request pipe.
    pub path: PathBuf,
    /// Whether it answers.
    pub status: Liveness,
    /// Its state, when it answered.
    pub state: Option<String>,
    /// The server process, when known.
    pub pid: Option<u32>,
    /// How many clients are subscribed, when the server says (cpipe servers do).
    pub subscribers: Option<u64>,
}

impl ServerInfo {
    /// Records what a `get_state` answer says, if it holds a `state` event (see
    /// [`ServerInfo::apply_state`]).
    pub fn apply_state_reply(&mut self, reply: &[Event]) {
        if let Some(event) = reply.iter().find(|e| e.is(ProtocolEvent::State)) {
            self.apply_state(event);
        }
    }

    /// Records what the server's `state` event (its `get_state` answer) says: it is alive,
    /// in that state, with that many subscribers and that pid.
    pub fn apply_state(&mut self, event: &Event) {
        self.status = Liveness::Alive;
        self.state = event.str("state").map(String::from);
        self.subscribers = event.get("subscribers").and_then(Value::as_u64);
        if let Some(pid) = event.get("pid").and_then(Value::as_u64) {
            self.pid = u32::try_from(pid).ok();
        }
    }
}

/// Tool pipes in `dir`: `(file name, path)` of every FIFO whose name starts with `tool-`, and
/// of the hidden request pipes (`.tool-<name>-<pid>.req`).
fn tool_fifos(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        Error::io(
            format!("cannot read the pipe directory {}", dir.display()),
            e,
        )
    })?;
    let mut found: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_fifo()))
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let tool = name.starts_with(paths::PREFIX) || paths::parse_client_pipe(&name).is_some();
            tool.then(|| (name, e.path()))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// The server pipes in `dir` (not the clients' pipes): `(tool name, path)`, sorted by name.
pub fn server_pipes(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let fifos = tool_fifos(dir)?;
    let names: Vec<&str> = fifos.iter().map(|(n, _)| n.as_str()).collect();
    Ok(fifos
        .iter()
        .filter(|(file_name, _)| {
            file_name.starts_with(paths::PREFIX)
                && !paths::parse_client_pipe(file_name).is_some_and(|(server, _)| {
                    names.contains(&format!("{}{server}", paths::PREFIX).as_str())
                })
        })
        .map(|(file_name, path)| (file_name[paths::PREFIX.len()..].to_string(), path.clone()))
        .collect())
}

/// Lists the servers in `dir`, asking each live one for its state within `timeout`.
pub fn list_servers(dir: &Path, timeout: Duration) -> Result<Vec<ServerInfo>> {
    Ok(server_pipes(dir)?
        .iter()
        .map(|(name, path)| probe(dir, name, path, timeout))
        .collect())
}

fn probe(dir: &Path, name: &str, path: &Path, timeout: Duration) -> ServerInfo {
    let tool = ToolPaths::new(dir, name);
    let mut info = ServerInfo {
        name: name.into(),
        path: path.into(),
        status: Liveness::Orphaned,
        state: None,
        pid: crate::name_lock::holder(&tool),
        subscribers: None,
    };
    if !matches!(fifo::has_reader(path), Ok(true)) {
        return info;
    }
    info.status = Liveness::Unresponsive;
    let options = ConnectOptions {
        dir: dir.into(),
        timeout: Some(timeout),
    };
    let state =
        Client::connect_with(name, &options).and_then(|mut c| c.call("get_state", Value::Null));
    if let Ok(events) = state {
        info.apply_state_reply(&events);
    }
    if info.pid.is_none() {
        info.pid = pids_holding(path).first().copied();
    }
    info
}

/// Removes the orphaned tool pipes in `dir` (those nobody reads) and stale lock files.
/// Returns what was removed. Live pipes are never touched.
pub fn clear_orphans(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for (_, path) in tool_fifos(dir)? {
        if matches!(fifo::has_reader(&path), Ok(false)) && fifo::check_fifo(&path).is_ok() {
            std::fs::remove_file(&path)
                .map_err(|e| Error::io(format!("cannot remove {}", path.display()), e))?;
            removed.push(path);
        }
    }
    let entries = std::fs::read_dir(dir).map_err(|e| {
        Error::io(
            format!("cannot read the pipe directory {}", dir.display()),
            e,
        )
    })?;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str().and_then(|n| {
            n.strip_prefix('.')?
                .strip_prefix(paths::PREFIX)?
                .strip_suffix(".lock")
        }) else {
            continue;
        };
        let tool = ToolPaths::new(dir, name);
        if entry.file_type().is_ok_and(|t| t.is_file())
            && crate::name_lock::holder(&tool).is_none()
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed.push(entry.path());
        }
    }
    Ok(removed)
}
