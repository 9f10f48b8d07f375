//! Which PMCs have a given selector key, in one table lookup: the speed machinery behind the
//! key match of model.md section 2 ("a counter matches an event when its selector's key equals
//! the event's key"), which `crate::model::state::Pmu::key_match` states.

/// Slots of a [`KeyIndex`].
const KEY_SLOTS: usize = 64;
/// An empty slot: key `u32::MAX` (no selector has it: selector keys have 20 bits), no PMC.
const EMPTY_SLOT: u64 = u32::MAX as u64;

/// Which PMCs have a given selector key, in one table lookup: a direct-mapped table of the
/// selectors' distinct keys, each slot holding `key | mask << 32` (mask: the PMCs with that
/// key). A key whose slot holds another key (rare: at most six keys in 64 slots) stays out of
/// the table; its PMC is listed in `spill` and matched by comparison.
#[derive(Clone, Debug)]
pub struct KeyIndex {
    pub(crate) slots: [u64; KEY_SLOTS],
    pub(crate) spill: u8,
}

#[inline(always)]
pub(crate) fn key_slot(k: u32) -> usize {
    // Fibonacci hashing: the top 6 bits of the key times 2^32 / golden ratio.
    (k.wrapping_mul(0x9E37_79B1) >> 26) as usize
}

impl KeyIndex {
    /// Every PMC in `all` with key 0 (a zero selector).
    pub fn new(all: u8) -> Self {
        let mut slots = [EMPTY_SLOT; KEY_SLOTS];
        slots[key_slot(0)] = (all as u64) << 32;
        KeyIndex { slots, spill: 0 }
    }

    /// The PMCs in the table whose key is `k`.
    #[inline(always)]
    pub fn lookup(&self, k: u32) -> u8 {
        let e = self.slots[key_slot(k)];
        (((e as u32) == k) as u8).wrapping_neg() & (e >> 32) as u8
    }

    /// The PMC of bit `b` changes its key from `old` to `new` (or keeps it). Branch-free:
    /// on random selector writes the branches would mispredict.
    #[inline(always)]
    pub fn rekey(&mut self, b: u8, old: u32, new: u32) {
        use std::hint::select_unpredictable as select;
        // Out of the table, or out of the spilled set.
        let spilled = self.spill & b != 0;
        self.spill &= !b;
        let s = key_slot(old);
        let e = self.slots[s];
        let held = (e as u32 == old) & !spilled;
        let mask = (e >> 32) as u8 & !(b & (held as u8).wrapping_neg());
        self.slots[s] = select(
            mask == 0,
            EMPTY_SLOT,
            (e & 0xFFFF_FFFF) | (mask as u64) << 32,
        );
        // Into the table if the slot is free or holds the key, else into the spilled set.
        let s = key_slot(new);
        let e = self.slots[s];
        let same = e as u32 == new;
        let free = e == EMPTY_SLOT;
        let placed = select(same, e, new as u64) | (b as u64) << 32;
        self.slots[s] = select(same | free, placed, e);
        self.spill |= b & (!(same | free) as u8).wrapping_neg();
    }
}
