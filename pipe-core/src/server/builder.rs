//! Configuring a server and taking its name: the lock, stale pipes cleared, the request pipe.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};

use super::{pool, Limits, Shared, ToolServer};
use crate::error::{Error, Result};
use crate::fields::Fields;
use crate::fifo;
use crate::name_lock::NameLock;
use crate::paths::{self, ToolPaths};
use crate::poll::Waker;
use crate::vocabulary::{EventName, StateName};

/// Configures a server before it binds its name.
pub struct Builder {
    pub(super) name: String,
    pub(super) dir: PathBuf,
    pub(super) description: String,
    pub(super) help: Option<String>,
    pub(super) state: StateName,
    pub(super) limits: Limits,
    pub(super) interface: Option<String>,
    pub(super) broadcasts: Vec<EventName>,
}

impl Builder {
    /// The directory for the pipes (default: `CPIPE_DIR` or `/tmp`).
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = dir.into();
        self
    }

    /// The one-line description answered to `get_description`.
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = text.into();
        self
    }

    /// The text answered to `get_help` (default: the description).
    pub fn help(mut self, text: impl Into<String>) -> Self {
        self.help = Some(text.into());
        self
    }

    /// The state before anything calls [`ServerHandle::set_state`] (default `running`).
    pub fn initial_state(mut self, state: impl Into<StateName>) -> Self {
        self.state = state.into();
        self
    }

    /// The name of the interface the server's own commands form, as named-pipes 0.7's
    /// `list_interfaces` lists it (default: the server's name); cpipe's kinds use their kind.
    pub fn interface(mut self, name: impl Into<String>) -> Self {
        self.interface = Some(name.into());
        self
    }

    /// Declares the events the server broadcasts to every subscriber (besides
    /// `state_changed`), so that interface descriptions list them.
    pub fn broadcasts<E: Into<EventName> + Copy>(mut self, events: &[E]) -> Self {
        self.broadcasts = events.iter().map(|&e| e.into()).collect();
        self
    }

    /// Overrides the default [`Limits`].
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Takes the name: locks it, clears this tool's stale pipes and opens the request pipe.
    pub fn bind(self) -> Result<ToolServer> {
        if !paths::valid_name(&self.name) {
            return Err(Error::InvalidName(self.name));
        }
        let interface = self.interface.unwrap_or_else(|| self.name.clone());
        let paths = ToolPaths::new(self.dir, self.name);
        create_dir(paths.dir())?;
        let lock = NameLock::acquire(&paths)?;
        clear_stale_pipes(&paths);
        let upstream_path = paths.upstream();
        if upstream_path.exists() && fifo::has_reader(&upstream_path)? {
            return Err(Error::AlreadyRunning {
                name: paths.name().into(),
                pid: crate::processes::pids_holding(&upstream_path)
                    .first()
                    .copied(),
            });
        }
        fifo::ensure_fifo(&upstream_path)?;
        let upstream = fifo::open_fifo(&upstream_path, fifo::Access::ReadWrite)?;
        use std::os::unix::fs::PermissionsExt;
        upstream
            .set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(format!("cannot chmod {}", upstream_path.display()), e))?;
        let help = self.help.unwrap_or_else(|| self.description.clone());
        let shared = Arc::new(Shared {
            paths,
            description: self.description,
            help,
            interface,
            broadcasts: self.broadcasts,
            requests: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            config: RwLock::new(Fields::new()),
            status: RwLock::new(Fields::new()),
            commands: RwLock::new(HashMap::new()),
            limits: self.limits,
            subscribers: Mutex::default(),
            state: Mutex::new(self.state),
            inflight: Mutex::default(),
            lanes: Mutex::default(),
            pool: pool::Pool::default(),
            waker: Arc::new(Waker::new()?),
            stopping: AtomicBool::new(false),
        });
        tracing::info!(pipe = %upstream_path.display(), "listening");
        Ok(ToolServer {
            shared,
            upstream,
            lock,
        })
    }
}

fn create_dir(dir: &std::path::Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            Error::io(
                format!("cannot create the pipe directory {}", dir.display()),
                e,
            )
        })
}

/// Removes this tool's client pipes that nobody reads any more (left by crashed clients or a
/// crashed predecessor). Other tools' pipes are theirs to clean.
fn clear_stale_pipes(paths: &ToolPaths) {
    let Ok(entries) = std::fs::read_dir(paths.dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some((name, _)) = file_name.to_str().and_then(paths::parse_client_pipe) else {
            continue;
        };
        let path = entry.path();
        if name == paths.name() && matches!(fifo::has_reader(&path), Ok(false)) {
            tracing::debug!(pipe = %path.display(), "removing stale pipe");
            fifo::remove_fifo(&path);
        }
    }
}
