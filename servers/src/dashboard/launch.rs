//! Starting a server from the dashboard: `cpipe --serve KIND FLAGS` in its own process group
//! (it outlives the dashboard, as a server started from a shell would), with its log in a
//! hidden file beside its pipes, which the dashboard shows.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Where a server the dashboard started writes its log: `<dir>/.tool-<name>.log`.
pub fn log_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{}{name}.log", pipe_core::paths::PREFIX))
}

/// Starts a `kind` server with `flags` (typed as in a shell) serving `dir`; returns its name.
pub fn start(dir: &Path, kind: &str, flags: &str) -> Result<String> {
    let flags = shell_words::split(flags).context("the flags have an unclosed quote")?;
    if flags.iter().any(|f| f == "--dir") {
        bail!("leave out --dir: the server serves the dashboard's directory");
    }
    let name = flags
        .windows(2)
        .find(|w| w[0] == "--name")
        .map_or(kind.to_string(), |w| w[1].clone());
    let log = log_file(dir, &name);
    let file = std::fs::File::create(&log)
        .with_context(|| format!("cannot create the log file {}", log.display()))?;
    let program = std::env::current_exe().context("cannot find the cpipe binary")?;
    use std::os::unix::process::CommandExt;
    Command::new(program)
        .args(["--serve", kind])
        .args(&flags)
        .arg("--dir")
        .arg(dir)
        .env_remove("CPIPE_LOG")
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start a {kind} server"))?;
    Ok(name)
}

/// The last `lines` lines of a server's log, if the dashboard started it.
pub fn log_tail(dir: &Path, name: &str, lines: usize) -> Option<Vec<String>> {
    let text = std::fs::read(log_file(dir, name)).ok()?;
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    // The server writes no colour codes to a file: lines are shown as they are.
    Some(
        all[all.len().saturating_sub(lines)..]
            .iter()
            .map(|l| l.to_string())
            .collect(),
    )
}
