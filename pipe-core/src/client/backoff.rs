//! How a client waits for a reply, as crossbeam's `Backoff` decides between spinning and
//! sleeping: a short spin (yielding the CPU) while replies have been quick, since putting a
//! thread to sleep and waking it costs tens of microseconds on a virtual machine, more than a
//! quick reply takes; plain sleeping once a reply was slow (a token stream, a long job), which
//! is not worth a busy CPU.

use std::time::{Duration, Instant};

/// How long a wait spins before it sleeps.
const SPIN: Duration = Duration::from_micros(50);
/// A reply that took longer than this stops the spinning until replies are quick again.
const SPIN_AGAIN_UNDER: Duration = Duration::from_micros(200);

/// Whether the next wait starts with a spin.
#[derive(Clone, Copy)]
pub(super) struct Backoff {
    spinning: bool,
}

/// How a spin ended.
pub(super) enum Spun<T> {
    /// An attempt succeeded.
    Got(T),
    /// No luck: sleep, counting from `started` (when the first attempt found nothing).
    Sleep {
        /// When the wait began.
        started: Instant,
    },
}

/// What one attempt found.
pub(super) enum Attempt<T> {
    /// Done.
    Got(T),
    /// Nothing yet: try again.
    Again,
    /// Nothing, and spinning will not help (go and sleep).
    Stop,
}

impl Backoff {
    /// A client's first waits spin.
    pub(super) fn new() -> Self {
        Self { spinning: true }
    }

    /// Calls `attempt` until it succeeds or gives up, for up to [`SPIN`], yielding the CPU
    /// between tries; while spinning is off, sleeps at once. The clock is read only after a
    /// first attempt found nothing: a reply already there costs none.
    pub(super) fn spin<T, E>(
        &self,
        mut attempt: impl FnMut() -> Result<Attempt<T>, E>,
    ) -> Result<Spun<T>, E> {
        if !self.spinning {
            return Ok(Spun::Sleep {
                started: Instant::now(),
            });
        }
        let mut started = None;
        loop {
            match attempt()? {
                Attempt::Got(value) => return Ok(Spun::Got(value)),
                Attempt::Stop => break,
                Attempt::Again => {}
            }
            if started.get_or_insert_with(Instant::now).elapsed() >= SPIN {
                break;
            }
            // Lets the server run when it shares this CPU.
            std::thread::yield_now();
        }
        Ok(Spun::Sleep {
            started: started.unwrap_or_else(Instant::now),
        })
    }

    /// A wait that slept from `started` got its reply now: spin next time only if it was
    /// quick.
    pub(super) fn slept(&mut self, started: Instant) {
        self.spinning = started.elapsed() < SPIN_AGAIN_UNDER;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_already_there_needs_no_clock_and_a_slow_one_stops_the_spin() {
        let mut backoff = Backoff::new();
        let got = backoff.spin(|| Ok::<_, ()>(Attempt::Got(7))).unwrap();
        assert!(matches!(got, Spun::Got(7)));

        let mut tries = 0;
        let spun = backoff
            .spin(|| {
                tries += 1;
                Ok::<_, ()>(Attempt::<()>::Again)
            })
            .unwrap();
        assert!(matches!(spun, Spun::Sleep { .. }));
        assert!(tries > 1, "spinning tries again");

        backoff.slept(Instant::now() - Duration::from_millis(5));
        let mut tries = 0;
        let _ = backoff.spin(|| {
            tries += 1;
            Ok::<_, ()>(Attempt::<()>::Again)
        });
        assert_eq!(tries, 0, "after a slow reply, straight to sleep");

        backoff.slept(Instant::now());
        let mut tries = 0;
        let _ = backoff.spin(|| {
            tries += 1;
            Ok::<_, ()>(Attempt::<()>::Stop)
        });
        assert_eq!(tries, 1, "Stop ends the spin at once");
    }
}
