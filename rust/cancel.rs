//! Stopping a long call between two of its chunks (Ctrl-C in Python).
//!
//! A long call works in chunks: [`RECORDS_PER_CHECK`] records of one trace, or a task of
//! traces, each a few milliseconds. Between two chunks it asks [`Cancel::stopped`], and if so
//! gives up with [`CoreError::Interrupted`]. Any thread reads one flag; the thread that made
//! the `Cancel` (the caller's, which in Python is the one that may run signal handlers) also
//! calls its `poll` function, at most once every [`POLL_EVERY`], and sets the flag when that
//! says stop. While the call's work runs on a pool, the calling thread waits in
//! [`Cancel::wait`], polling as it waits. Nothing of a chunk changes where a call is cut:
//! a call that completes gives the same results with or without checks.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use crate::error::CoreError;

/// Records of one trace replayed or generated between two checks: 2.5 to 10 ms at the
/// replay's speed on one thread here (100 to 400 M records/s), 100 ms at the generator's
/// slowest (10 M records/s, a `TraceBuf` grown record by record).
pub const RECORDS_PER_CHECK: usize = 1 << 20;

/// How often the calling thread polls, at most.
pub const POLL_EVERY: Duration = Duration::from_millis(10);

/// Whether a call should stop (see the module docs).
pub struct Cancel<'a> {
    stop: AtomicBool,
    poll: Option<&'a (dyn Fn() -> bool + Sync)>,
    owner: ThreadId,
    start: Instant,
    /// When the owner polls next, in nanoseconds from `start`.
    next_poll: AtomicU64,
}

impl Cancel<'static> {
    /// A call that runs to its end (unless [`Cancel::stop`] is called).
    pub fn never() -> Self {
        Cancel::with_poll(None)
    }
}

impl<'a> Cancel<'a> {
    /// A call made on this thread that stops when `poll` (called on this thread only) says so.
    pub fn new(poll: &'a (dyn Fn() -> bool + Sync)) -> Self {
        Cancel::with_poll(Some(poll))
    }

    fn with_poll(poll: Option<&'a (dyn Fn() -> bool + Sync)>) -> Self {
        Cancel {
            stop: AtomicBool::new(false),
            poll,
            owner: std::thread::current().id(),
            start: Instant::now(),
            next_poll: AtomicU64::new(0),
        }
    }

    /// Ask the call to stop at its next check.
    pub fn stop(&self) {
        self.stop.store(true, Relaxed);
    }

    /// Whether the call should stop: the flag, and on the calling thread its poll.
    #[inline]
    pub fn stopped(&self) -> bool {
        if self.stop.load(Relaxed) {
            return true;
        }
        match self.poll {
            Some(poll) if std::thread::current().id() == self.owner => self.poll_now(poll),
            _ => false,
        }
    }

    #[cold]
    fn poll_now(&self, poll: &(dyn Fn() -> bool + Sync)) -> bool {
        let now = self.start.elapsed().as_nanos() as u64;
        if now < self.next_poll.load(Relaxed) {
            return false;
        }
        self.next_poll
            .store(now + POLL_EVERY.as_nanos() as u64, Relaxed);
        if poll() {
            self.stop();
        }
        self.stop.load(Relaxed)
    }

    /// [`Cancel::stopped`] as an error.
    #[inline]
    pub fn check(&self) -> Result<(), CoreError> {
        if self.stopped() {
            Err(CoreError::Interrupted)
        } else {
            Ok(())
        }
    }

    /// Wait until every task of `pending` is done, polling meanwhile (the calling thread, while
    /// a pool does the work). A thread of a rayon pool returns at once: it must not block, as
    /// the tasks may be waiting in its own queue; the scope it is in waits by running them.
    pub fn wait(&self, pending: &Pending) {
        if rayon::current_thread_index().is_some() {
            return;
        }
        let mut left = pending.lock();
        while *left > 0 {
            left = match pending.done.wait_timeout(left, POLL_EVERY) {
                Ok((left, _)) => left,
                Err(poisoned) => poisoned.into_inner().0,
            };
            if *left > 0 {
                drop(left);
                self.stopped();
                left = pending.lock();
            }
        }
    }
}

/// A count of tasks still running, for [`Cancel::wait`].
pub struct Pending {
    left: Mutex<usize>,
    done: Condvar,
}

impl Pending {
    pub fn new(tasks: usize) -> Self {
        Pending {
            left: Mutex::new(tasks),
            done: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, usize> {
        self.left.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A task starts: it counts as done when the guard is dropped, even by a panic.
    pub fn task(&self) -> TaskGuard<'_> {
        TaskGuard(self)
    }
}

/// See [`Pending::task`].
pub struct TaskGuard<'a>(&'a Pending);

impl Drop for TaskGuard<'_> {
    fn drop(&mut self) {
        let mut left = self.0.lock();
        *left = left.saturating_sub(1);
        self.0.done.notify_all();
    }
}

/// `0..n` in consecutive ranges of at most `size` (one empty range when `n` is 0).
pub fn pieces(n: usize, size: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let count = n.div_ceil(size).max(1);
    (0..count).map(move |k| k * size..n.min((k + 1) * size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn pieces_cover_the_range() {
        assert_eq!(pieces(0, 4).collect::<Vec<_>>(), vec![0..0]);
        assert_eq!(pieces(4, 4).collect::<Vec<_>>(), vec![0..4]);
        assert_eq!(pieces(9, 4).collect::<Vec<_>>(), vec![0..4, 4..8, 8..9]);
    }

    #[test]
    fn the_owner_polls_and_others_read_the_flag() {
        let polls = AtomicUsize::new(0);
        let poll = || polls.fetch_add(1, Relaxed) >= 1;
        let c = Cancel::new(&poll);
        assert!(!c.stopped());
        // Within POLL_EVERY of the last poll, no new one.
        assert!(!c.stopped());
        assert_eq!(polls.load(Relaxed), 1);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(POLL_EVERY * 2);
                // Another thread never polls.
                assert!(!c.stopped());
            });
        });
        assert_eq!(polls.load(Relaxed), 1);
        assert_eq!(c.check(), Err(CoreError::Interrupted));
        assert_eq!(polls.load(Relaxed), 2);
        std::thread::scope(|s| {
            s.spawn(|| assert!(c.stopped()));
        });
        assert!(!Cancel::never().stopped());
    }

    #[test]
    fn waiting_polls_until_the_tasks_are_done() {
        let polls = AtomicUsize::new(0);
        let poll = || {
            polls.fetch_add(1, Relaxed);
            false
        };
        let c = Cancel::new(&poll);
        let pending = Pending::new(2);
        std::thread::scope(|s| {
            for k in 1..=2u32 {
                let pending = &pending;
                s.spawn(move || {
                    let _done = pending.task();
                    std::thread::sleep(POLL_EVERY * 3 * k);
                });
            }
            c.wait(&pending);
        });
        assert!(polls.load(Relaxed) >= 3);
        assert!(!c.stopped());
    }
}
