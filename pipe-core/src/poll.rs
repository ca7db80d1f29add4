//! Waiting on descriptors: `poll(2)` for one-off waits, an epoll set for the listener's many
//! pipes, and the self-pipe [`Waker`] that interrupts either.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::error::{Error, Result};

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
    fn waker_interrupts_poll() {
        let waker = Waker::new().unwrap();
        waker.wake();
        let mut fds = [pollfd(waker.fd(), libc::POLLIN)];
        assert_eq!(poll(&mut fds, Some(Duration::from_secs(5))).unwrap(), 1);
        waker.drain();
        assert_eq!(poll(&mut fds, Some(Duration::ZERO)).unwrap(), 0);
    }
}
