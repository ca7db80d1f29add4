//! Safe handling of FIFOs on disk: created 0600, never followed through a symlink, never
//! someone else's, opened non-blocking; plus the few system calls the rest of the crate
//! polls and wakes with.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

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

/// Whether process `pid` exists (it may belong to another user).
pub(crate) fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks for existence and permission.
    unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() == libc::EPERM }
}

/// `poll(2)` over `fds`; `None` waits forever. Retries on `EINTR`.
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let ms = timeout_ms(timeout);
    loop {
        // SAFETY: `fds` is a valid slice of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// A wait in milliseconds for `poll` and `epoll_wait`: -1 is forever, and a wait under a
/// millisecond rounds up, not down to a busy zero.
fn timeout_ms(timeout: Option<Duration>) -> libc::c_int {
    timeout.map_or(-1, |t| {
        i32::try_from(t.as_millis().max(u128::from(!t.is_zero()))).unwrap_or(i32::MAX)
    })
}

/// A `pollfd` asking for `events` on `fd`.
pub(crate) fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// An epoll set: the listener waits on many pipes at once, and registering them once costs
/// the kernel less per wake-up than handing it the whole list again (`poll`) every time.
#[derive(Debug)]
pub(crate) struct Epoll(OwnedFd);

impl Epoll {
    pub(crate) fn new() -> Result<Self> {
        // SAFETY: plain system call; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(Error::last_os("cannot create an epoll set"));
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: `event` is valid for the call; the kernel copies it.
        if unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut event) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Watches `fd` for `events` (errors and hang-ups are always reported), tagged `token`.
    pub(crate) fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    /// Changes what `fd` is watched for.
    pub(crate) fn modify(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, token)
    }

    /// Stops watching `fd`. Closing a descriptor does this by itself, unless a copy of it
    /// is still open somewhere.
    pub(crate) fn remove(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Waits for events, filling `ready` (its capacity is the most returned at once); `None`
    /// waits forever. Retries on `EINTR`.
    pub(crate) fn wait(
        &self,
        ready: &mut Vec<libc::epoll_event>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        let ms = timeout_ms(timeout);
        ready.clear();
        let max = ready.capacity().clamp(1, i32::MAX as usize) as libc::c_int;
        loop {
            // SAFETY: the kernel writes at most `max` events into `ready`'s spare capacity.
            let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), ready.as_mut_ptr(), max, ms) };
            if n >= 0 {
                // SAFETY: the kernel initialised the first `n` entries.
                unsafe { ready.set_len(n as usize) };
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

/// Wakes a thread blocked in [`poll`] or [`Epoll::wait`]: a non-blocking self-pipe.
#[derive(Debug)]
pub(crate) struct Waker {
    read: File,
    write: File,
}

impl Waker {
    pub(crate) fn new() -> Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(Error::last_os("cannot create a wake-up pipe"));
        }
        // SAFETY: both descriptors were just created and are owned here.
        let (read, write) = unsafe {
            (
                File::from(OwnedFd::from_raw_fd(fds[0])),
                File::from(OwnedFd::from_raw_fd(fds[1])),
            )
        };
        Ok(Self { read, write })
    }

    /// Makes the poller's next (or current) `poll` return.
    pub(crate) fn wake(&self) {
        use io::Write;
        // A full pipe already guarantees a wake-up, so WouldBlock is fine to ignore.
        let _ = (&self.write).write(&[1]);
    }

    /// Empties the pipe after a wake-up.
    pub(crate) fn drain(&self) {
        use io::Read;
        let mut buf = [0u8; 256];
        while matches!((&self.read).read(&mut buf), Ok(n) if n > 0) {}
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
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

    #[test]
    fn waker_interrupts_poll() {
        let waker = Waker::new().unwrap();
        waker.wake();
        let mut fds = [pollfd(waker.fd(), libc::POLLIN)];
        assert_eq!(poll(&mut fds, Some(Duration::from_secs(5))).unwrap(), 1);
        waker.drain();
        assert_eq!(poll(&mut fds, Some(Duration::ZERO)).unwrap(), 0);
    }

    #[test]
    fn knows_live_processes() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(u32::MAX - 1));
    }
}
