//! Which processes hold a file open: a scan of `/proc/*/fd`, for `--pid` and for naming the
//! server that already holds a name.

use std::path::Path;

/// The pids of the processes that have `path` open (a scan of `/proc/*/fd`).
pub fn pids_holding(path: &Path) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = procs
        .flatten()
        .filter_map(|p| {
            let pid: u32 = p.file_name().to_str()?.parse().ok()?;
            let fds = std::fs::read_dir(p.path().join("fd")).ok()?;
            fds.flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == path))
                .then_some(pid)
        })
        .collect();
    pids.sort_unstable();
    pids
}
