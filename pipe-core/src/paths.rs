//! Where a tool's pipes live and what they are called.
//!
//! The names are those of named-pipes 0.4: the server reads `<dir>/tool-<name>`, each client
//! reads its own `<dir>/tool-<name>-<pid>`. cpipe adds a private request pipe per client,
//! `<dir>/.tool-<name>-<pid>.req`, and a lock file `<dir>/.tool-<name>.lock`: both hidden by
//! their leading dot, so no tool discovery (named-pipes' keeps every `tool-*` FIFO whose name
//! does not end in `-<digits>`) takes them for servers.

use std::path::{Path, PathBuf};

/// Environment variable that overrides the default pipe directory.
pub const DIR_ENV: &str = "CPIPE_DIR";

/// The pipe directory named-pipes 0.4 hard-codes.
pub const DEFAULT_DIR: &str = "/tmp";

/// Prefix of every tool pipe's file name.
pub const PREFIX: &str = "tool-";

/// Suffix of a client's private request pipe.
pub const REQUEST_PIPE_SUFFIX: &str = ".req";

/// Prefix of the files cpipe adds beside the tool pipes: hidden from discovery.
const HIDDEN: &str = ".";

/// The pipe directory: `CPIPE_DIR` if set and not empty, else `/tmp`.
pub fn default_dir() -> PathBuf {
    match std::env::var_os(DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(DEFAULT_DIR),
    }
}

/// The pipes of one tool server, named by the directory and the tool's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolPaths {
    dir: PathBuf,
    name: String,
}

impl ToolPaths {
    /// Paths of tool `name` in `dir`.
    pub fn new(dir: impl Into<PathBuf>, name: impl Into<String>) -> Self {
        Self {
            dir: dir.into(),
            name: name.into(),
        }
    }

    /// Resolves what a user typed: a bare name means `<dir>/tool-NAME`; a path whose file
    /// name starts with `tool-` names the tool and its directory.
    pub fn resolve(dir: &Path, target: &str) -> Option<Self> {
        if !target.contains('/') {
            let name = target.strip_prefix(PREFIX).unwrap_or(target);
            return valid_name(name).then(|| Self::new(dir, name));
        }
        let path = Path::new(target);
        let file = path.file_name()?.to_str()?;
        let name = file.strip_prefix(PREFIX)?;
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty())?;
        valid_name(name).then(|| Self::new(parent, name))
    }

    /// The tool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The directory holding the pipes.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's shared request pipe, `<dir>/tool-<name>`.
    pub fn upstream(&self) -> PathBuf {
        self.dir.join(format!("{PREFIX}{}", self.name))
    }

    /// A client's event pipe, `<dir>/tool-<name>-<pid>`.
    pub fn downstream(&self, pid: u32) -> PathBuf {
        self.dir.join(format!("{PREFIX}{}-{pid}", self.name))
    }

    /// A client's private request pipe, `<dir>/.tool-<name>-<pid>.req`.
    pub fn request_pipe(&self, pid: u32) -> PathBuf {
        self.dir.join(format!(
            "{HIDDEN}{PREFIX}{}-{pid}{REQUEST_PIPE_SUFFIX}",
            self.name
        ))
    }

    /// The lock file that keeps one server per name, `<dir>/.tool-<name>.lock`.
    pub fn lock_file(&self) -> PathBuf {
        self.dir.join(format!("{HIDDEN}{PREFIX}{}.lock", self.name))
    }
}

/// Whether `name` can name a tool: not empty, no `/`, no NUL, not `.` or `..`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

/// If `file_name` is a client pipe of some tool (`tool-<name>-<pid>`, or the request pipe
/// `.tool-<name>-<pid>.req`), returns that tool's name and the client's pid.
pub fn parse_client_pipe(file_name: &str) -> Option<(&str, u32)> {
    let rest = match file_name.strip_prefix(HIDDEN) {
        Some(hidden) => hidden
            .strip_prefix(PREFIX)?
            .strip_suffix(REQUEST_PIPE_SUFFIX)?,
        None => file_name.strip_prefix(PREFIX)?,
    };
    let (name, pid) = rest.rsplit_once('-')?;
    if name.is_empty() || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((name, pid.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_named_pipes() {
        let p = ToolPaths::new("/tmp", "chat");
        assert_eq!(p.upstream(), Path::new("/tmp/tool-chat"));
        assert_eq!(p.downstream(42), Path::new("/tmp/tool-chat-42"));
        assert_eq!(p.request_pipe(42), Path::new("/tmp/.tool-chat-42.req"));
        assert_eq!(p.lock_file(), Path::new("/tmp/.tool-chat.lock"));
    }

    #[test]
    fn resolves_bare_names_and_paths() {
        let dir = Path::new("/run/x");
        assert_eq!(
            ToolPaths::resolve(dir, "chat"),
            Some(ToolPaths::new("/run/x", "chat"))
        );
        assert_eq!(
            ToolPaths::resolve(dir, "tool-chat"),
            Some(ToolPaths::new("/run/x", "chat"))
        );
        assert_eq!(
            ToolPaths::resolve(dir, "/var/tmp/tool-tts"),
            Some(ToolPaths::new("/var/tmp", "tts"))
        );
        assert_eq!(ToolPaths::resolve(dir, "/var/tmp/other"), None);
        assert_eq!(ToolPaths::resolve(dir, ""), None);
    }

    #[test]
    fn recognises_client_pipes() {
        assert_eq!(parse_client_pipe("tool-chat-123"), Some(("chat", 123)));
        assert_eq!(
            parse_client_pipe(".tool-my-tool-7.req"),
            Some(("my-tool", 7))
        );
        assert_eq!(parse_client_pipe("tool-chat-7.req"), None);
        assert_eq!(parse_client_pipe(".tool-chat-7"), None);
        assert_eq!(parse_client_pipe("tool-chat"), None);
        assert_eq!(parse_client_pipe("tool-chat-x1"), None);
        assert_eq!(parse_client_pipe("tool--5"), None);
    }
}
