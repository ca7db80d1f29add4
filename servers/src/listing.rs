//! `cpipe --list`, `--pid` and `--clear`: what is in the pipe directory.

use std::path::Path;
use std::time::Duration;

use pipe_core::discovery::{self, Liveness, ServerInfo};

use crate::cli::{Cli, Failure};
use crate::query::timeout;

/// How long `--list` waits for each server's state when --timeout is not lower.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Prints each server with its state, pid, subscribers and liveness.
pub fn list(cli: &Cli) -> Result<(), Failure> {
    let probe = timeout(cli)?.map_or(PROBE_TIMEOUT, |t| t.min(PROBE_TIMEOUT));
    let servers = discovery::list_servers(&cli.dir, probe)?;
    if cli.json {
        let text = serde_json::to_string_pretty(&servers).map_err(anyhow::Error::from)?;
        println!("{text}");
        return Ok(());
    }
    print!("{}", table(&servers, &cli.dir));
    Ok(())
}

/// The servers as a table, with a hint when some are orphaned.
pub fn table(servers: &[ServerInfo], dir: &Path) -> String {
    if servers.is_empty() {
        return format!("No servers in {}.\n", dir.display());
    }
    let mut out = format!(
        "{:<16} {:<12} {:>8} {:>11}  {:<12} PIPE\n",
        "NAME", "STATE", "PID", "SUBSCRIBERS", "STATUS"
    );
    for s in servers {
        out += &format!(
            "{:<16} {:<12} {:>8} {:>11}  {:<12} {}\n",
            s.name,
            s.state.as_deref().unwrap_or("-"),
            s.pid.map_or("-".into(), |p| p.to_string()),
            s.subscribers.map_or("-".into(), |n| n.to_string()),
            status_name(s.status),
            s.path.display()
        );
    }
    if servers.iter().any(|s| s.status == Liveness::Orphaned) {
        out +=
            "\nOrphaned pipes belong to servers that are gone: remove them with cpipe --clear.\n";
    }
    out
}

/// How `--list` names a liveness.
pub fn status_name(status: Liveness) -> &'static str {
    match status {
        Liveness::Alive => "alive",
        Liveness::Unresponsive => "unresponsive",
        Liveness::Orphaned => "orphaned",
    }
}

/// Prints every tool pipe with the processes that hold it open.
pub fn pids(cli: &Cli) -> Result<(), Failure> {
    let servers = discovery::list_servers(&cli.dir, PROBE_TIMEOUT)?;
    if servers.is_empty() {
        println!("No servers in {}.", cli.dir.display());
    }
    for s in servers {
        let holders = discovery::pids_holding(&s.path);
        let shown: Vec<String> = holders.iter().map(u32::to_string).collect();
        let server = s.pid.map_or("-".into(), |p| p.to_string());
        println!(
            "{}  server pid: {server}  held open by: {}",
            s.path.display(),
            if shown.is_empty() {
                "nobody".into()
            } else {
                shown.join(", ")
            }
        );
    }
    Ok(())
}

/// Removes orphaned pipes only.
pub fn clear(cli: &Cli) -> Result<(), Failure> {
    let removed = discovery::clear_orphans(&cli.dir)?;
    if removed.is_empty() {
        println!("No orphaned pipes in {}.", cli.dir.display());
    } else {
        println!("Removed {} orphaned file(s):", removed.len());
        for path in removed {
            println!("  {}", path.display());
        }
    }
    Ok(())
}
