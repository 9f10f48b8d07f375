//! The 48-bit counters, kept lazily so that adding to them is branch-free: the speed
//! machinery behind the counter arithmetic of model.md section 5 (`counter = (counter + n)
//! mod 2^48`, each wrap an overflow, and a PMI if INT is set), which `crate::model::state`
//! states through [`Counters::add`], [`Counters::write`] and [`Counters::read`].

use crate::model::{COUNTER_BITS, COUNTER_MASK, MAX_PMCS};

/// Slots of the per-PMC arrays: 8, so that a PMC index masked with 7 is always in bounds
/// (a trace is validated while it is replayed, so an invalid record must not panic).
pub const LANES: usize = 8;
/// Adds of up to 2^FAST_ADD_BITS each between two settlements: raw < 2^48 + 2^20 * 2^40.
pub(crate) const FAST_ADD_BITS: u32 = 40;
pub(crate) const SETTLE_EVERY: u32 = 1 << 20;

/// `LANE_MASKS[m][i]` is all ones when bit i of `m` is set: a PMC mask as lane masks.
pub(crate) static LANE_MASKS: [[u64; LANES]; 256] = {
    let mut t = [[0u64; LANES]; 256];
    let mut m = 0;
    while m < 256 {
        let mut i = 0;
        while i < LANES {
            t[m][i] = if m & (1 << i) != 0 { u64::MAX } else { 0 };
            i += 1;
        }
        m += 1;
    }
    t
};

/// The counters of every PMC, with their overflow and PMI counts.
#[derive(Clone, Debug)]
pub struct Counters {
    /// `raw[i]` is counter i plus 2^48 times the wraps not yet folded into `overflows[i]` and
    /// `pmis[i]`. The wraps are folded (`settle`) before anything that changes how a wrap is
    /// credited (the INT bit, a counter write) and after at most `SETTLE_EVERY` adds, so `raw`
    /// stays far from 2^64. Lanes 6 and 7 are padding, zero in a valid trace (a counter write
    /// to PMC 6 or 7, in a trace then rejected, may leave something there).
    pub(crate) raw: [u64; LANES],
    /// Overflow and PMI counts, modulo 2^64 (all arithmetic on them wraps): a chunk of a split
    /// replay may hold a count shifted by a "negative" difference until its pending wraps
    /// are folded (`crate::replay::split`).
    pub(crate) overflows: [u64; LANES],
    pub(crate) pmis: [u64; LANES],
    pub(crate) adds_since_settle: u32,
}

impl Counters {
    pub fn new() -> Self {
        Counters {
            raw: [0; LANES],
            overflows: [0; LANES],
            pmis: [0; LANES],
            adds_since_settle: 0,
        }
    }

    /// Fold the pending wraps of counter `i` into its overflow and PMI counts; `int`: the
    /// PMCs whose selector has INT set.
    #[inline(always)]
    pub fn settle(&mut self, i: usize, int: u8) {
        let wraps = self.raw[i] >> COUNTER_BITS;
        self.overflows[i] = self.overflows[i].wrapping_add(wraps);
        self.pmis[i] = self.pmis[i].wrapping_add(wraps & LANE_MASKS[int as usize][i]);
        self.raw[i] &= COUNTER_MASK;
    }

    pub fn settle_all(&mut self, int: u8) {
        for i in 0..LANES {
            self.settle(i, int);
        }
        self.adds_since_settle = 0;
    }

    /// Add `n` to every counter in `mask`. Branch-free over the lanes; the rare huge `n` (a
    /// RUN of 2^40 events or more) takes the exact path.
    #[inline(always)]
    pub fn add(&mut self, mask: u8, n: u64, int: u8) {
        if (n >> FAST_ADD_BITS) != 0 || self.adds_since_settle >= SETTLE_EVERY {
            self.add_exact(mask, n, int);
            return;
        }
        self.adds_since_settle += 1;
        for (raw, lane) in self.raw.iter_mut().zip(&LANE_MASKS[mask as usize]) {
            *raw += n & lane;
        }
    }

    #[cold]
    #[inline(never)]
    fn add_exact(&mut self, mask: u8, n: u64, int: u8) {
        self.settle_all(int);
        let mut m = mask;
        while m != 0 {
            let i = m.trailing_zeros() as usize;
            m &= m - 1;
            let (sum, carry) = self.raw[i].overflowing_add(n);
            // 2^64 is 2^16 wraps of a 48-bit counter.
            let wraps = (sum >> COUNTER_BITS) + ((carry as u64) << (64 - COUNTER_BITS));
            self.raw[i] = sum & COUNTER_MASK;
            self.overflows[i] = self.overflows[i].wrapping_add(wraps);
            self.pmis[i] = self.pmis[i].wrapping_add(wraps & LANE_MASKS[int as usize][i]);
        }
    }

    /// Set counter `i` to `v` (masked to 48 bits; no overflow). Its wraps so far are credited
    /// first.
    pub fn write(&mut self, i: usize, v: u64, int: u8) {
        self.settle(i, int);
        self.raw[i] = v & COUNTER_MASK;
    }

    /// The value of counter `i`.
    #[inline(always)]
    pub fn read(&self, i: usize) -> u64 {
        self.raw[i & (LANES - 1)] & COUNTER_MASK
    }

    pub fn values(&self) -> [u64; MAX_PMCS] {
        std::array::from_fn(|i| self.raw[i] & COUNTER_MASK)
    }

    pub fn overflows(&self) -> [u64; MAX_PMCS] {
        std::array::from_fn(|i| self.overflows[i].wrapping_add(self.raw[i] >> COUNTER_BITS))
    }

    pub fn pmis(&self, int: u8) -> [u64; MAX_PMCS] {
        let int = &LANE_MASKS[int as usize];
        std::array::from_fn(|i| self.pmis[i].wrapping_add((self.raw[i] >> COUNTER_BITS) & int[i]))
    }

    /// Add `overflows` and `pmis` (modulo 2^64) to the overflow and PMI counts.
    pub fn shift_wraps(&mut self, overflows: [u64; MAX_PMCS], pmis: [u64; MAX_PMCS]) {
        for i in 0..MAX_PMCS {
            self.overflows[i] = self.overflows[i].wrapping_add(overflows[i]);
            self.pmis[i] = self.pmis[i].wrapping_add(pmis[i]);
        }
    }

    /// Whether the counter values (not the overflow and PMI counts) are the same, padding
    /// lanes included.
    pub fn same_values(&self, o: &Counters) -> bool {
        self.values() == o.values() && self.raw[MAX_PMCS..] == o.raw[MAX_PMCS..]
    }
}

impl Default for Counters {
    fn default() -> Self {
        Counters::new()
    }
}
