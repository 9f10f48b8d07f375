//! The rayon thread pools the replay runs on: the global one (which honours
//! RAYON_NUM_THREADS), or one of a given size; what a process forked from one that started
//! the global pool may use; and the calling thread alone, when no thread can be started
//! (RLIMIT_NPROC, or an address-space limit too tight for their stacks). Every
//! multi-threaded entry point goes through here, and none panics for want of threads: the
//! results are the same for any thread count, so the calling thread alone gives them too.

use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::cancel::{Cancel, Pending};
use crate::error::CoreError;

/// Whether rayon's global pool can run tasks in this process: it started (here, on the first
/// call), and this is the process that started it.
///
/// Its threads do not survive `fork()`: a child forked after its parent started them
/// (Python's `multiprocessing` forks by default on Linux) would wait forever for tasks handed
/// to them. The first call records this process's id, and a forked child sees another.
///
/// And they may not start at all: rayon then panics on any use of the global pool ("The
/// global thread pool has not been initialized"), for good. So the first call starts the
/// pool itself and keeps whether it could. Every entry point that may use the global pool
/// asks this first (`split::simulate_on`, [`Pool::new`]), so that it is this call that
/// starts the pool.
pub fn global_pool_usable() -> bool {
    static POOL_PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    static STARTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let pid = std::process::id();
    *POOL_PID.get_or_init(|| pid) == pid
        && *STARTED.get_or_init(|| match ThreadPoolBuilder::new().build_global() {
            Ok(()) => true,
            // Started already (an I/O error is the failure to start a thread; without one,
            // the error is that the pool exists).
            Err(e) => std::error::Error::source(&e).is_none(),
        })
}

/// The cores this process may run on, asked once: `available_parallelism` reads the cgroup
/// files each time (23 us here, more than replaying 1,000 records).
pub fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |c| c.get()))
}

/// The threads of a default pool: RAYON_NUM_THREADS, else one per core (as rayon's own).
fn default_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or_else(cores)
}

/// Where a call's parallel work runs.
pub enum Pool {
    /// rayon's global pool.
    Global,
    /// A pool of its own.
    Sized(ThreadPool),
    /// The pool the calling thread is a thread of: an enclosing one, or the one-thread pool
    /// the calling thread was made when no thread could be started.
    Current,
}

impl Pool {
    /// A pool of `threads` threads (the global pool when `None`). A process forked after
    /// the global pool started cannot use it ([`global_pool_usable`]): there a call gets a pool
    /// of as many threads of its own. When threads cannot be started, the calling thread
    /// becomes a pool of one and does the work ([`Pool::Current`]); it stays one.
    pub fn new(threads: Option<usize>) -> Result<Pool, CoreError> {
        let in_pool = rayon::current_thread_index().is_some();
        let n = match threads {
            Some(0) => return Err(CoreError::Value("threads must be at least 1".into())),
            Some(n) => n,
            None if in_pool => return Ok(Pool::Current),
            None if global_pool_usable() => return Ok(Pool::Global),
            None => default_threads(),
        };
        match ThreadPoolBuilder::new().num_threads(n).build() {
            Ok(pool) => Ok(Pool::Sized(pool)),
            Err(_) if in_pool => Ok(Pool::Current),
            Err(_) => {
                calling_thread_alone()?;
                Ok(Pool::Current)
            }
        }
    }

    /// Run `f` on this pool. With a `cancel` that polls, the calling thread hands `f` to the
    /// pool and polls while it waits ([`Cancel::wait`]); `f` is expected to check `cancel`
    /// between its chunks.
    pub fn run<T: Send>(&self, cancel: &Cancel<'_>, f: impl FnOnce() -> T + Send) -> T {
        let in_pool = rayon::current_thread_index().is_some();
        match self {
            Pool::Current => f(),
            Pool::Global if in_pool => f(),
            Pool::Sized(pool) if in_pool => pool.install(f),
            Pool::Global => watched(None, cancel, f),
            Pool::Sized(pool) => watched(Some(pool), cancel, f),
        }
    }
}

/// `f` as a task of `pool` (the global one if `None`) while the calling thread, which is
/// not a thread of a pool, polls `cancel`.
fn watched<T: Send>(
    pool: Option<&ThreadPool>,
    cancel: &Cancel<'_>,
    f: impl FnOnce() -> T + Send,
) -> T {
    let pending = Pending::new(1);
    let mut out = None;
    {
        let (pending, out) = (&pending, &mut out);
        let task = move || {
            let _done = pending.task();
            *out = Some(f());
        };
        match pool {
            Some(pool) => pool.in_place_scope(|s| {
                s.spawn(move |_| task());
                cancel.wait(pending);
            }),
            None => rayon::in_place_scope(|s| {
                s.spawn(move |_| task());
                cancel.wait(pending);
            }),
        }
    }
    // The scope has run the task, or passed its panic on.
    out.unwrap_or_else(|| unreachable!("a task of a completed scope did not run"))
}

/// Make the calling thread a rayon pool of one thread (rayon's `use_current_thread`: no
/// thread is started), so that the parallel code runs on it alone. rayon keeps the thread a
/// thread of that pool for good, so the pool is kept too.
fn calling_thread_alone() -> Result<(), CoreError> {
    if rayon::current_thread_index().is_some() {
        return Ok(());
    }
    match ThreadPoolBuilder::new()
        .num_threads(1)
        .use_current_thread()
        .build()
    {
        Ok(pool) => {
            std::mem::forget(pool);
            Ok(())
        }
        Err(e) => Err(CoreError::Value(format!(
            "cannot run on this thread alone either: {e}"
        ))),
    }
}

/// Run `f` on a rayon pool of `threads` threads (the global pool when `None`), as
/// [`Pool::new`] chooses it, to its end.
pub fn with_threads<T: Send>(
    threads: Option<usize>,
    f: impl FnOnce() -> T + Send,
) -> Result<T, CoreError> {
    Ok(Pool::new(threads)?.run(&Cancel::never(), f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    #[test]
    fn a_thread_that_cannot_start_threads_works_alone() {
        // A pool whose threads cannot start: rayon's error, not a panic.
        let failing = ThreadPoolBuilder::new()
            .num_threads(2)
            .spawn_handler(|_| Err(std::io::Error::other("no threads here")))
            .build();
        assert!(failing.is_err());
        // On a thread of its own (it stays a pool of one), the fallback runs parallel code.
        std::thread::spawn(|| {
            calling_thread_alone().unwrap();
            assert_eq!(rayon::current_thread_index(), Some(0));
            assert_eq!(rayon::current_num_threads(), 1);
            let pool = Pool::new(None).unwrap();
            assert!(matches!(pool, Pool::Current));
            let sum: u64 = pool.run(&Cancel::never(), || (0..100_000u64).into_par_iter().sum());
            assert_eq!(sum, 4_999_950_000);
            let (a, b) = rayon::join(|| 1, || 2);
            assert_eq!(a + b, 3);
            let mut v = [0u32; 64];
            rayon::in_place_scope(|s| {
                for (i, x) in v.iter_mut().enumerate() {
                    s.spawn(move |_| *x = i as u32);
                }
            });
            assert_eq!(v[63], 63);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_watched_call_returns_its_result() {
        let poll = || false;
        let c = Cancel::new(&poll);
        let pool = Pool::new(Some(2)).unwrap();
        let v: u64 = pool.run(&c, || (0..1000u64).into_par_iter().sum());
        assert_eq!(v, 499_500);
        assert!(global_pool_usable());
        let v: u64 = Pool::new(None)
            .unwrap()
            .run(&c, || (0..1000u64).into_par_iter().sum());
        assert_eq!(v, 499_500);
        assert!(Pool::new(Some(0)).is_err());
    }
}
