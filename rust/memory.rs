//! Allocations whose size comes from the caller (a trace's length, a number of traces): all
//! of them are fallible, so that a size the machine cannot hold is a [`CoreError::Memory`]
//! (a `MemoryError` in Python) and never an abort of the process. The Python layer checks
//! the sizes it can know against the memory available before it calls the core; these
//! catch the rest (a READ count, an address-space limit).

use crate::cancel::Cancel;
use crate::error::CoreError;

/// The error for `bytes` bytes asked for `what`, saying what the machine has.
#[cold]
pub fn error(bytes: u128, what: &str) -> CoreError {
    let mut msg = format!("cannot allocate {bytes} bytes for {what}");
    if let Some(a) = available() {
        msg += &format!(": the machine has {a} bytes available");
    }
    if let Some(limit) = address_space_limit() {
        msg += &format!(
            "{} the address space of this process is limited to {limit} bytes (RLIMIT_AS)",
            if available().is_some() { ", and" } else { ":" }
        );
    }
    CoreError::Memory(msg)
}

/// `MemAvailable` of /proc/meminfo in bytes: the memory that can be had without swapping.
pub fn available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The soft RLIMIT_AS of this process in bytes, if there is one (from /proc/self/limits).
pub fn address_space_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))?;
    line["Max address space".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The bytes of `n` values of `T`, exactly (no overflow).
pub fn bytes_of<T>(n: usize) -> u128 {
    n as u128 * std::mem::size_of::<T>() as u128
}

/// Room for `additional` more values in `v`, or a [`CoreError::Memory`].
pub fn reserve<T>(v: &mut Vec<T>, additional: usize, what: &str) -> Result<(), CoreError> {
    v.try_reserve_exact(additional)
        .map_err(|_| error(bytes_of::<T>(additional), what))
}

/// An empty vector with room for `n` values, or a [`CoreError::Memory`].
pub fn with_capacity<T>(n: usize, what: &str) -> Result<Vec<T>, CoreError> {
    let mut v = Vec::new();
    reserve(&mut v, n, what)?;
    Ok(v)
}

/// `n` zeros, or a [`CoreError::Memory`]: the room is reserved fallibly, then zeroed by
/// [`fill_zeros`] (an error too if `cancel` says stop meanwhile).
pub fn zeros<T: Copy + Default + Send + Sync>(
    n: usize,
    what: &str,
    cancel: &Cancel<'_>,
) -> Result<Vec<T>, CoreError> {
    let mut v = with_capacity(n, what)?;
    fill_zeros(&mut v, n, cancel)?;
    Ok(v)
}

/// Values zeroed between two checks of a `Cancel`: 32 MB of `u64`, 20 to 50 ms here.
const ZEROS_PER_CHECK: usize = 1 << 22;

/// Extend `v` with zeros to `n` values, within the room already reserved, in parallel on the
/// current rayon pool, checking `cancel` every [`ZEROS_PER_CHECK`] values. Fresh memory
/// costs a page fault a page when first written (11 us a page here, far more than writing
/// it): a `resize` would take them all on one thread, before the work (+0.25 s on the
/// outputs of a batch of a million traces), where `vec!`'s `calloc` would leave them to the
/// threads that write the results. There is no fallible `calloc` in stable Rust, so the
/// zeros are written, by every thread of the pool.
pub fn fill_zeros<T: Copy + Default + Send + Sync>(
    v: &mut Vec<T>,
    n: usize,
    cancel: &Cancel<'_>,
) -> Result<(), CoreError> {
    use rayon::prelude::*;
    debug_assert!(v.capacity() >= n, "room reserved by the caller");
    while v.len() < n {
        if !v.is_empty() {
            cancel.check()?;
        }
        let more = (n - v.len()).min(ZEROS_PER_CHECK);
        v.par_extend(rayon::iter::repeat_n(T::default(), more));
    }
    Ok(())
}

/// `a * b` for a count of values of `T`, or a [`CoreError::Memory`] naming the bytes when
/// the product does not fit in a `usize`.
pub fn product<T>(a: usize, b: usize, what: &str) -> Result<usize, CoreError> {
    a.checked_mul(b).ok_or_else(|| {
        error(
            a as u128 * b as u128 * std::mem::size_of::<T>() as u128,
            what,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_sizes_are_errors() {
        let e = with_capacity::<u64>(usize::MAX / 2, "a test").unwrap_err();
        let CoreError::Memory(msg) = e else {
            panic!("{e:?}")
        };
        assert!(msg.starts_with("cannot allocate 73786976294838206456 bytes for a test"));
        let never = Cancel::never();
        assert!(zeros::<u8>(1 << 62, "a test", &never).is_err());
        assert!(product::<u64>(1 << 40, 1 << 40, "a test").is_err());
        assert_eq!(zeros::<u32>(3, "a test", &never).unwrap(), vec![0, 0, 0]);
        let big = zeros::<u64>(ZEROS_PER_CHECK * 2 + 5, "a test", &never).unwrap();
        assert!(big.len() == ZEROS_PER_CHECK * 2 + 5 && big.iter().all(|&x| x == 0));
        let stopped = Cancel::never();
        stopped.stop();
        let e = zeros::<u8>(ZEROS_PER_CHECK * 2, "a test", &stopped);
        assert_eq!(e, Err(CoreError::Interrupted));
        assert!(available().is_some_and(|a| a > 0));
    }
}
