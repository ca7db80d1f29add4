//! One server per name: an exclusive `flock` on `<dir>/.tool-<name>.lock`, which also records
//! the server's pid for discovery. The kernel releases it when the process dies, so a crashed
//! server never blocks its successor.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::paths::ToolPaths;

/// Held for the server's lifetime; dropping it removes the lock file.
#[derive(Debug)]
pub(crate) struct NameLock {
    file: File,
    path: PathBuf,
}

impl NameLock {
    pub(crate) fn acquire(paths: &ToolPaths) -> Result<Self> {
        let path = paths.lock_file();
        // A racing server may unlink the file between our open and flock; retry then.
        for _ in 0..5 {
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
                .map_err(|e| match e.raw_os_error() {
                    Some(libc::ELOOP) => Error::UnsafePath {
                        path: path.clone(),
                        reason: "it is a symbolic link".into(),
                    },
                    _ => Error::io(format!("cannot open the lock file {}", path.display()), e),
                })?;
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(Error::AlreadyRunning {
                    name: paths.name().into(),
                    pid: text.trim().parse().ok(),
                });
            }
            let same_file = match (file.metadata(), std::fs::symlink_metadata(&path)) {
                (Ok(held), Ok(on_disk)) => {
                    held.ino() == on_disk.ino() && held.dev() == on_disk.dev()
                }
                _ => false,
            };
            if !same_file {
                continue;
            }
            let record = file
                .set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| writeln!(file, "{}", std::process::id()));
            record.map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
            return Ok(Self { file, path });
        }
        Err(Error::AlreadyRunning {
            name: paths.name().into(),
            pid: None,
        })
    }
}

impl Drop for NameLock {
    fn drop(&mut self) {
        // Unlink while still holding the lock, so no successor locks a file we then delete.
        let _ = std::fs::remove_file(&self.path);
        let _ = &self.file;
    }
}

/// The pid recorded in a lock file that is still held, or `None` if nobody holds it.
pub(crate) fn holder(paths: &ToolPaths) -> Option<u32> {
    let mut file = File::open(paths.lock_file()).ok()?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
        return None;
    }
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_first_pid() {
        let dir = std::env::temp_dir().join(format!("cpipe-lock-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let paths = ToolPaths::new(&dir, "x");
        let first = NameLock::acquire(&paths).unwrap();
        assert_eq!(holder(&paths), Some(std::process::id()));
        match NameLock::acquire(&paths) {
            Err(Error::AlreadyRunning { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("{other:?}"),
        }
        drop(first);
        assert_eq!(holder(&paths), None);
        let again = NameLock::acquire(&paths).unwrap();
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
