//! The rayon thread pools the replay runs on: the global one (which honours
//! RAYON_NUM_THREADS), or one of a given size; and what a process forked from one that
//! started the global pool may use. Every multi-threaded entry point goes through here.

use crate::error::CoreError;

/// Whether rayon's global pool can run tasks in this process. Its threads do not survive
/// `fork()`: a child forked after its parent started them (Python's `multiprocessing` forks
/// by default on Linux) would wait forever for tasks handed to them. The first call records
/// this process's id, and a forked child sees another. Every entry point that may use the
/// global pool asks this first (`split::simulate_on`, [`with_threads`]), so
/// that the parent records its id before it starts the pool.
pub fn global_pool_usable() -> bool {
    static POOL_PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let pid = std::process::id();
    *POOL_PID.get_or_init(|| pid) == pid
}

/// The cores this process may run on, asked once: `available_parallelism` reads the cgroup
/// files each time (23 us here, more than replaying 1,000 records).
pub fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |c| c.get()))
}

/// Run `f` on a rayon pool of `threads` threads (the global pool when `None`). A process
/// forked after the global pool started cannot use it ([`global_pool_usable`]): there `f`
/// gets a pool of as many threads of its own. A pool that cannot start its threads is an
/// error, not a panic.
pub fn with_threads<T: Send>(
    threads: Option<usize>,
    f: impl FnOnce() -> T + Send,
) -> Result<T, CoreError> {
    let n = match threads {
        Some(0) => return Err(CoreError::Value("threads must be at least 1".into())),
        Some(n) => n,
        None if global_pool_usable() => return Ok(f()),
        None => rayon::current_num_threads(),
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .map(|pool| pool.install(f))
        .map_err(|e| CoreError::Value(format!("cannot start {n} threads: {e}")))
}
