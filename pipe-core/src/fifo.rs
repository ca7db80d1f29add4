//! Safe handling of FIFOs on disk: created 0600, never followed through a symlink, never
//! someone else's, opened non-blocking. Waiting on them is [`crate::poll`]'s.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::error::{Error, Result};

/// How a FIFO end is opened.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Access {
    Read,
    Write,
    /// Holds both ends, so the FIFO never reports end-of-file (the server's upstream).
    ReadWrite,
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::UnsafePath {
        path: path.into(),
        reason: "the path contains a NUL byte".into(),
    })
}

/// Checks that an existing path is a FIFO of ours and not a symlink.
pub(crate) fn check_fifo(path: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| Error::io(format!("cannot inspect {}", path.display()), e))?;
    check_meta(path, &meta)
}

fn check_meta(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    let reason = if meta.file_type().is_symlink() {
        "it is a symbolic link".to_string()
    } else if !meta.file_type().is_fifo() {
        "it exists and is not a named pipe".to_string()
    } else if meta.uid() != effective_uid() {
        format!("it is owned by uid {}, not by you", meta.uid())
    } else {
        return Ok(());
    };
    Err(Error::UnsafePath {
        path: path.into(),
        reason,
    })
}

/// The effective user id of this process.
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Creates a FIFO with mode 0600, or accepts an existing one that passes [`check_fifo`].
pub(crate) fn ensure_fifo(path: &Path) -> Result<()> {
    let c = c_path(path)?;
    // SAFETY: `c` is a valid NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EEXIST) {
        return check_fifo(path);
    }
    Err(Error::io(
        format!("cannot create the pipe {}", path.display()),
        err,
    ))
}

/// Opens a FIFO non-blocking, refusing symlinks, and re-checks what was opened.
///
/// Opening for writing fails with `ENXIO` (mapped to [`Error::Orphaned`]) when nobody reads.
pub(crate) fn open_fifo(path: &Path, access: Access) -> Result<File> {
    let c = c_path(path)?;
    let mode = match access {
        Access::Read => libc::O_RDONLY,
        Access::Write => libc::O_WRONLY,
        Access::ReadWrite => libc::O_RDWR,
    };
    let flags = mode | libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `c` is a valid NUL-terminated path; the result is checked.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        let err = io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            Some(libc::ENOENT) => Error::NotRunning(path.into()),
            Some(libc::ENXIO) => Error::Orphaned(path.into()),
            Some(libc::ELOOP) => Error::UnsafePath {
                path: path.into(),
                reason: "it is a symbolic link".into(),
            },
            _ => Error::io(format!("cannot open {}", path.display()), err),
        });
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let meta = file
        .metadata()
        .map_err(|e| Error::io(format!("cannot inspect {}", path.display()), e))?;
    check_meta(path, &meta)?;
    Ok(file)
}

/// Whether some process holds the read end of the FIFO at `path` (named-pipes' test).
pub fn has_reader(path: &Path) -> Result<bool> {
    match open_fifo(path, Access::Write) {
        Ok(_) => Ok(true),
        Err(Error::Orphaned(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes a FIFO if it is still one of ours; a missing file is fine.
pub(crate) fn remove_fifo(path: &Path) {
    match check_fifo(path) {
        Ok(()) => {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!("cannot remove {}: {e}", path.display());
            }
        }
        Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("leaving {} alone: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_private_fifos_and_refuses_impostors() {
        let dir = std::env::temp_dir().join(format!("cpipe-fifo-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("tool-x");
        ensure_fifo(&fifo).unwrap();
        let meta = std::fs::symlink_metadata(&fifo).unwrap();
        assert!(meta.file_type().is_fifo());
        assert_eq!(meta.mode() & 0o777, 0o600);
        ensure_fifo(&fifo).unwrap();
        assert!(!has_reader(&fifo).unwrap());

        let reader = open_fifo(&fifo, Access::Read).unwrap();
        assert!(has_reader(&fifo).unwrap());
        drop(reader);

        let link = dir.join("tool-link");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        assert!(matches!(ensure_fifo(&link), Err(Error::UnsafePath { .. })));
        assert!(matches!(
            open_fifo(&link, Access::Read),
            Err(Error::UnsafePath { .. })
        ));

        let plain = dir.join("tool-file");
        std::fs::write(&plain, b"x").unwrap();
        assert!(matches!(ensure_fifo(&plain), Err(Error::UnsafePath { .. })));
        assert!(matches!(
            open_fifo(&dir.join("absent"), Access::Write),
            Err(Error::NotRunning(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
