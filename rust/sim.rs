//! The two models of the specification: the KVM model (model.md section 6) and the
//! architectural reference `arch` (section 5), and the loops that replay traces through them.
//!
//! Per-PMC predicates are kept as bitmasks over the PMCs (bit i = PMC i), so that the rules
//! of the specification become a handful of AND/OR operations per record.

use crate::error::CoreError;
use crate::model::KEY_LIMIT;
use crate::model::{
    filter, op, selector_key, ArchPolicy, KvmPolicy, Policy, Timing, BRANCHES_RETIRED,
    COUNTER_BITS, COUNTER_MASK, EN, GUEST_ONLY, HOST_ONLY, INSTRUCTIONS_RETIRED, INT, MAX_PMCS, OS,
    RESERVED_BITS, USR,
};
use crate::trace::{fields_ok, is_valid, mode_ok, validate, Record, TraceRef};

/// The architectural state shared by both models: selectors, counters, global control, filter
/// and the mode (model.md section 3).
#[derive(Clone, Debug)]
struct Pmu {
    all: u8,
    svme: bool,
    guest: bool,
    global_ctrl: u8,
    filter_action: u8,
    filter_key: u32,
    eventsel: [u64; LANES],
    key: [u32; LANES],
    index: KeyIndex,
    // Bitmasks over PMCs derived from `eventsel` and the filter.
    en: u8,
    host_only: u8,
    guest_only: u8,
    int: u8,
    os: u8,
    usr: u8,
    instr: u8,
    branch: u8,
    filter_ok: u8,
    /// Counters, kept lazily so that adding to them is branch-free and cheap: `raw[i]` is
    /// counter i plus 2^48 times the wraps not yet folded into `overflows[i]` and `pmis[i]`.
    /// The wraps are folded (`settle`) before anything that changes how a wrap is credited
    /// (the INT bit, a counter write) and after at most `SETTLE_EVERY` adds, so `raw` stays far
    /// from 2^64. Lanes 6 and 7 are padding, zero in a valid trace (a counter write to PMC 6
    /// or 7, in a trace then rejected, may leave something there).
    raw: [u64; LANES],
    /// Overflow and PMI counts, modulo 2^64 (all arithmetic on them wraps): a chunk of a split
    /// replay may hold a count shifted by a "negative" difference until its pending wraps
    /// are folded (`crate::split`).
    overflows: [u64; LANES],
    pmis: [u64; LANES],
    adds_since_settle: u32,
    /// How the records of the current steady stretch count (see [`Pmu::set_steady`]): by
    /// class, the PMCs a record counts on if its key matches theirs (`steady`) and whatever
    /// its key (`steady_any`). Kept here rather than in a struct of their own: the stretch
    /// loop then reaches them through the pointer it uses for the key index, and one pointer
    /// fewer is reloaded from the stack each record (57.4 against 59.1 instructions a
    /// record, 1.5% to 5% faster). Two tables rather than one and a constant "any key"
    /// table: one load and one address fewer a record (2% to 4% faster).
    steady: [u8; 16],
    steady_any: [u8; 16],
}

/// Slots of the per-PMC arrays: 8, so that a PMC index masked with 7 is always in bounds
/// (a trace is validated while it is replayed, so an invalid record must not panic).
const LANES: usize = 8;
/// Adds of up to 2^FAST_ADD_BITS each between two settlements: raw < 2^48 + 2^20 * 2^40.
const FAST_ADD_BITS: u32 = 40;
const SETTLE_EVERY: u32 = 1 << 20;

/// `LANE_MASKS[m][i]` is all ones when bit i of `m` is set: a PMC mask as lane masks.
static LANE_MASKS: [[u64; LANES]; 256] = {
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

/// Slots of a [`KeyIndex`].
const KEY_SLOTS: usize = 64;
/// An empty slot: key `u32::MAX` (no selector has it: selector keys have 20 bits), no PMC.
const EMPTY_SLOT: u64 = u32::MAX as u64;

/// Which PMCs have a given selector key, in one table lookup: a direct-mapped table of the
/// selectors' distinct keys, each slot holding `key | mask << 32` (mask: the PMCs with that
/// key). A key whose slot holds another key (rare: at most six keys in 64 slots) stays out of
/// the table; its PMC is listed in `spill` and matched by comparison.
#[derive(Clone, Debug)]
struct KeyIndex {
    slots: [u64; KEY_SLOTS],
    spill: u8,
}

#[inline(always)]
fn key_slot(k: u32) -> usize {
    // Fibonacci hashing: the top 6 bits of the key times 2^32 / golden ratio.
    (k.wrapping_mul(0x9E37_79B1) >> 26) as usize
}

impl KeyIndex {
    /// Every PMC in `all` with key 0 (a zero selector).
    fn new(all: u8) -> Self {
        let mut slots = [EMPTY_SLOT; KEY_SLOTS];
        slots[key_slot(0)] = (all as u64) << 32;
        KeyIndex { slots, spill: 0 }
    }

    /// The PMCs in the table whose key is `k`.
    #[inline(always)]
    fn lookup(&self, k: u32) -> u8 {
        let e = self.slots[key_slot(k)];
        (((e as u32) == k) as u8).wrapping_neg() & (e >> 32) as u8
    }

    /// The PMC of bit `b` changes its key from `old` to `new` (or keeps it). Branch-free:
    /// on random selector writes the branches would mispredict.
    #[inline(always)]
    fn rekey(&mut self, b: u8, old: u32, new: u32) {
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

impl Pmu {
    fn new(n_pmcs: usize) -> Self {
        let all = ((1u16 << n_pmcs) - 1) as u8;
        Pmu {
            all,
            svme: false,
            guest: false,
            global_ctrl: all,
            filter_action: filter::NONE,
            filter_key: 0,
            eventsel: [0; LANES],
            key: [0; LANES],
            index: KeyIndex::new(all),
            en: 0,
            host_only: 0,
            guest_only: 0,
            int: 0,
            os: 0,
            usr: 0,
            instr: 0,
            branch: 0,
            filter_ok: all,
            raw: [0; LANES],
            overflows: [0; LANES],
            pmis: [0; LANES],
            adds_since_settle: 0,
            steady: [0; 16],
            steady_any: [0; 16],
        }
    }

    /// PMCs whose selector key is `k`.
    #[inline(always)]
    fn key_match(&self, k: u32) -> u8 {
        let m = self.index.lookup(k);
        if self.index.spill == 0 {
            return m;
        }
        m | self.key_compare(k, self.index.spill)
    }

    /// PMCs in `among` whose selector key is `k`, by comparing each. Out of line: inlined
    /// into `key_match` it makes the common path branchy. Not cold: with colliding keys every
    /// RUN and EMULATE record of a stretch comes here.
    #[inline(never)]
    fn key_compare(&self, k: u32, among: u8) -> u8 {
        let mut m = 0u8;
        for i in 0..LANES {
            m |= ((self.key[i] == k) as u8) << i;
        }
        m & among
    }

    /// PMCs whose OS/USR bit matches `cpl`.
    #[inline(always)]
    fn cpl_match(&self, cpl: u8) -> u8 {
        let kernel = ((cpl == 0) as u8).wrapping_neg();
        (self.os & kernel) | (self.usr & !kernel)
    }

    fn update_filter_ok(&mut self) {
        self.filter_ok = match self.filter_action {
            filter::ALLOW => self.key_match(self.filter_key),
            filter::DENY => self.all & !self.key_match(self.filter_key),
            _ => self.all,
        };
    }

    /// Store a (masked) selector value and refresh the masks derived from it. Inlined, so
    /// that the AVX2 build of the replay loops has its own (a call cost 4 more instructions
    /// a record of random replay, one record in eight being a selector write).
    #[inline(always)]
    fn set_eventsel(&mut self, i: usize, v: u64) {
        // Wraps so far are credited under the old INT bit.
        self.settle(i);
        self.eventsel[i] = v;
        let k = selector_key(v);
        let b = 1u8 << i;
        // A PMC beyond n_pmcs (an invalid record, whose trace is rejected) stays out of the
        // index, which holds only real PMCs.
        if b & self.all != 0 {
            self.index.rekey(b, self.key[i], k);
        }
        self.key[i] = k;
        let set = |mask: &mut u8, on: bool| *mask = (*mask & !b) | if on { b } else { 0 };
        set(&mut self.en, v & EN != 0);
        set(&mut self.host_only, v & HOST_ONLY != 0);
        set(&mut self.guest_only, v & GUEST_ONLY != 0);
        set(&mut self.int, v & INT != 0);
        set(&mut self.os, v & OS != 0);
        set(&mut self.usr, v & USR != 0);
        set(&mut self.instr, k == INSTRUCTIONS_RETIRED);
        set(&mut self.branch, k == BRANCHES_RETIRED);
        // The filter's verdict on this PMC alone (the others keep theirs).
        // Allow: a hit; deny: a miss; none: anything. Without a branch on the action.
        let hit = k == self.filter_key;
        let (allow, deny) = (
            self.filter_action == filter::ALLOW,
            self.filter_action == filter::DENY,
        );
        set(&mut self.filter_ok, !(allow | deny) | (hit == allow));
    }

    fn set_filter(&mut self, action: u8, k: u32) {
        self.filter_action = action;
        self.filter_key = k;
        self.update_filter_ok();
    }

    /// The PMCs that count in the current mode under the H/G rule (model.md sections 5, 6).
    #[inline(always)]
    fn counts_in_mode(&self, svme: bool, guest: bool, svme0_ignore: bool) -> u8 {
        let hg = self.host_only | self.guest_only;
        let plain = self.all & !hg;
        let svme = (svme as u8).wrapping_neg();
        let guest = (guest as u8).wrapping_neg();
        let ignore = (svme0_ignore as u8).wrapping_neg();
        plain
            | (!svme & ignore & hg)
            | (svme & ((guest & self.guest_only) | (!guest & self.host_only)))
    }

    /// Fold the pending wraps of counter `i` into its overflow and PMI counts.
    #[inline(always)]
    fn settle(&mut self, i: usize) {
        let wraps = self.raw[i] >> COUNTER_BITS;
        self.overflows[i] = self.overflows[i].wrapping_add(wraps);
        self.pmis[i] = self.pmis[i].wrapping_add(wraps & LANE_MASKS[self.int as usize][i]);
        self.raw[i] &= COUNTER_MASK;
    }

    fn settle_all(&mut self) {
        for i in 0..LANES {
            self.settle(i);
        }
        self.adds_since_settle = 0;
    }

    /// Add `n` to every counter in `mask` (model.md section 5: counters wrap modulo 2^48, each
    /// wrap counts an overflow, and a PMI if INT is set). Branch-free over the lanes; the rare
    /// huge `n` (a RUN of 2^40 events or more) takes the exact path.
    #[inline(always)]
    fn add(&mut self, mask: u8, n: u64) {
        if (n >> FAST_ADD_BITS) != 0 || self.adds_since_settle >= SETTLE_EVERY {
            self.add_exact(mask, n);
            return;
        }
        self.adds_since_settle += 1;
        for (raw, lane) in self.raw.iter_mut().zip(&LANE_MASKS[mask as usize]) {
            *raw += n & lane;
        }
    }

    #[cold]
    #[inline(never)]
    fn add_exact(&mut self, mask: u8, n: u64) {
        self.settle_all();
        let mut m = mask;
        while m != 0 {
            let i = m.trailing_zeros() as usize;
            m &= m - 1;
            let (sum, carry) = self.raw[i].overflowing_add(n);
            // 2^64 is 2^16 wraps of a 48-bit counter.
            let wraps = (sum >> COUNTER_BITS) + ((carry as u64) << (64 - COUNTER_BITS));
            self.raw[i] = sum & COUNTER_MASK;
            self.overflows[i] = self.overflows[i].wrapping_add(wraps);
            self.pmis[i] = self.pmis[i].wrapping_add(wraps & LANE_MASKS[self.int as usize][i]);
        }
    }

    /// The value of counter `i`.
    #[inline(always)]
    fn read(&self, i: usize) -> u64 {
        self.raw[i & (LANES - 1)] & COUNTER_MASK
    }

    fn counters(&self) -> [u64; MAX_PMCS] {
        std::array::from_fn(|i| self.raw[i] & COUNTER_MASK)
    }

    fn overflows(&self) -> [u64; MAX_PMCS] {
        std::array::from_fn(|i| self.overflows[i].wrapping_add(self.raw[i] >> COUNTER_BITS))
    }

    fn pmis(&self) -> [u64; MAX_PMCS] {
        let int = &LANE_MASKS[self.int as usize];
        std::array::from_fn(|i| self.pmis[i].wrapping_add((self.raw[i] >> COUNTER_BITS) & int[i]))
    }

    /// Count one retired instruction (and a retired branch when flagged) on `allowed` PMCs.
    #[inline(always)]
    fn retire(&mut self, allowed: u8, cpl: u8, branch: bool) -> u8 {
        let base = allowed & self.global_ctrl & self.filter_ok & self.cpl_match(cpl);
        // instructions and branches retired are different keys: one add covers both.
        let branch_mask = self.branch & (branch as u8).wrapping_neg();
        let m = base & (self.instr | branch_mask);
        self.add(m, 1);
        m
    }

    fn write_ctr(&mut self, i: usize, v: u64) {
        self.settle(i);
        self.raw[i] = v & COUNTER_MASK;
    }

    /// The architectural state that decides what any later record does: everything but the
    /// overflow and PMI counts and the bookkeeping (see [`Model::same_state`]). The masks
    /// derived from the selectors and the filter are compared too, though they follow from
    /// them. The filter's key matters only while a filter is installed.
    fn same_state(&self, o: &Pmu) -> bool {
        let filter_key = self.filter_action == filter::NONE || self.filter_key == o.filter_key;
        self.all == o.all
            && self.svme == o.svme
            && self.guest == o.guest
            && self.global_ctrl == o.global_ctrl
            && self.filter_action == o.filter_action
            && filter_key
            && self.eventsel == o.eventsel
            && self.key == o.key
            && [self.en, self.host_only, self.guest_only, self.int]
                == [o.en, o.host_only, o.guest_only, o.int]
            && [self.os, self.usr, self.instr, self.branch, self.filter_ok]
                == [o.os, o.usr, o.instr, o.branch, o.filter_ok]
            && self.counters() == o.counters()
            && self.raw[MAX_PMCS..] == o.raw[MAX_PMCS..]
    }

    fn shift_wraps(&mut self, overflows: [u64; MAX_PMCS], pmis: [u64; MAX_PMCS]) {
        for i in 0..MAX_PMCS {
            self.overflows[i] = self.overflows[i].wrapping_add(overflows[i]);
            self.pmis[i] = self.pmis[i].wrapping_add(pmis[i]);
        }
    }

    /// The value an ideal hypervisor programs for `sel` with enable bit `en`
    /// (model.md section 6: `(eventsel & ~H) | G`, 0 while the selector is 0).
    fn programmed(sel: u64, en: bool, hg_honored: bool) -> u64 {
        if sel == 0 {
            return 0;
        }
        let base = if hg_honored {
            (sel & !HOST_ONLY) | GUEST_ONLY
        } else {
            sel
        };
        (base & !EN) | if en { EN } else { 0 }
    }
}

/// A record's class in a stretch: `(op & 3) << 2 | user << 1 | branch`. EMULATE (10), RUN (11)
/// and VMENTRY (12) have distinct low bits.
#[inline(always)]
const fn steady_class(o: u8, cpl: u8, flag: u8) -> usize {
    ((o & 3) as usize) << 2 | ((cpl != 0) as usize) << 1 | (flag & 1) as usize
}

impl Pmu {
    /// Set how the records of a steady stretch count, from the PMCs allowed to count a RUN
    /// and an emulated instruction in the current state. A stretch is made of RUN, EMULATE,
    /// VMENTRY and READ records only; none of them changes a selector, the mode, the filter
    /// or what a VM-entry re-evaluates, so within it a record counts on
    /// `(steady[c] & matching) | steady_any[c]` PMCs, where `c` is its [`steady_class`] and
    /// `matching` the PMCs whose key is the record's: a RUN's classes are in `steady` and an
    /// EMULATE's, whose count does not depend on the key, in `steady_any`. The other entries
    /// stay zero.
    fn set_steady(&mut self, run_allowed: u8, emulate_allowed: u8) {
        let gc = self.global_ctrl;
        for (user, cpl_bits) in [self.os, self.usr].into_iter().enumerate() {
            for branch in 0..2 {
                let run = steady_class(op::RUN, user as u8, branch);
                self.steady[run] = run_allowed & gc & cpl_bits;
                // An emulated instruction counts on instructions retired, and on branches
                // retired when it is a branch, whatever the record's key.
                let emulate = steady_class(op::EMULATE, user as u8, branch);
                let events = self.instr | if branch != 0 { self.branch } else { 0 };
                self.steady_any[emulate] =
                    emulate_allowed & self.filter_ok & gc & cpl_bits & events;
            }
        }
    }
}

/// The ops a steady stretch is made of.
const STEADY_OPS: u16 = 1 << op::RUN | 1 << op::EMULATE | 1 << op::VMENTRY | 1 << op::READ;

#[inline(always)]
fn is_steady(o: u8) -> bool {
    o < 16 && (STEADY_OPS >> o) & 1 != 0
}

/// Records decoded at a time by [`decode_window`].
const WINDOW: usize = 32;
/// Set in a decoded record that the stretch loop does not count (see [`decode_window`]).
const STOP: u8 = 0x80;
/// A decoded READ record (of a PMC in range or not): the stretch loop reads and goes on.
const STOP_READ: u8 = STOP | 0x40;

/// Decode the records `[from, from + w)` of `t` (`w` at most [`WINDOW`], returned) for the
/// stretch loop: each record's [`steady_class`], or [`STOP_READ`] for a READ, or [`STOP`]
/// when the loop must hand the record over: its op is not RUN, EMULATE, VMENTRY or READ, or
/// it is not a READ and has a CPL above 3 or a flag above 1, out of an EMULATE's ranges,
/// whether its op uses the field or not (the per-record path then checks it exactly; the
/// generator zeroes unused fields). One pass over three byte columns with no branch, so that
/// it vectorises (32 records a step with AVX2); the loop then reads one byte a record where
/// it read three and checked them.
#[inline(always)]
fn decode_window(t: &TraceRef<'_>, from: usize, end: usize, out: &mut [u8; WINDOW]) -> usize {
    let w = (end - from).min(WINDOW);
    let (ops, cpls, flags) = (
        &t.op[from..from + w],
        &t.cpl[from..from + w],
        &t.flag[from..from + w],
    );
    for j in 0..w {
        let (o, c, f) = (ops[j], cpls[j], flags[j]);
        let counted = o.wrapping_sub(op::EMULATE) <= op::VMENTRY - op::EMULATE;
        let ok = counted & (c <= 3) & (f <= 1);
        let class = steady_class(o, c, f) as u8;
        let stop = if o == op::READ { STOP_READ } else { STOP };
        out[j] = if ok { class } else { stop };
    }
    w
}

impl Pmu {
    /// Count the RUN, EMULATE and VMENTRY records and read the READ records from `start` on
    /// (up to `end`), with the counters in registers. Returns where they end, the counted
    /// records' keys OR-ed together, and whether a READ's PMC is out of range. `INDEXED`:
    /// every selector's key is in the index.
    #[inline(always)]
    fn count_stretch<const INDEXED: bool>(
        &mut self,
        t: &TraceRef<'_>,
        start: usize,
        end: usize,
        n_pmcs: usize,
        reads: &mut Vec<u64>,
    ) -> (usize, u32, bool) {
        // All eight lanes (two are padding, see `raw`): with six, the portable build kept the
        // counters in general registers and moved them to and from vector ones for every add
        // (210 against 343 M records/s).
        let mut raw: [u64; LANES] = self.raw;
        let mut decoded = [STOP; WINDOW];
        let (mut key_bits, mut bad_pmc) = (0u32, false);
        let mut i = start;
        'stretch: while i < end {
            let w = decode_window(t, i, end, &mut decoded);
            let (keys, values) = (&t.key[i..i + w], &t.value[i..i + w]);
            for j in 0..w {
                let c = decoded[j];
                let (key, v) = (keys[j], values[j]);
                // A huge value ends the stretch: a huge RUN takes the exact path of `add`.
                // (Any counted op's: a value its op ignores is zero but in hand-made traces.
                // A READ is read whatever its value.)
                if c & STOP != 0 || (v >> FAST_ADD_BITS) != 0 {
                    if c != STOP_READ {
                        i += j;
                        break 'stretch;
                    }
                    let pmc = t.pmc[i + j];
                    bad_pmc |= pmc as usize >= n_pmcs;
                    // Stored first, and read as anywhere else (READs are 2% of a
                    // workload-like trace).
                    self.raw = raw;
                    reads.push(self.read(pmc as usize));
                    continue;
                }
                let c = (c & 15) as usize;
                let matching = if INDEXED {
                    self.index.lookup(key)
                } else {
                    self.key_match(key)
                };
                let m = (self.steady[c] & matching) | self.steady_any[c];
                let amount =
                    std::hint::select_unpredictable(c >= steady_class(op::RUN, 0, 0), v, 1);
                for (raw, lane) in raw.iter_mut().zip(&LANE_MASKS[m as usize]) {
                    *raw += amount & lane;
                }
                key_bits |= key;
            }
            i += w;
        }
        self.raw = raw;
        (i, key_bits, bad_pmc)
    }
}

/// Replay records from `start` for as long as they are RUN, EMULATE, VMENTRY or READ, as
/// [`Pmu::set_steady`] set, checking them as the validator would. A real guest's trace is
/// mostly such stretches. Their records are decoded 32 at a time ([`decode_window`]: the
/// class of each, or where the stretch stops), and then a record costs a byte of the decoded
/// window, a lookup of its key, a few masks and lane adds, and no branch on its op: 34
/// instructions, against 56 when each record's op, CPL and flag were loaded, checked and
/// turned into its class in the loop itself (workload-like replay, one thread, 310 -> 354 M
/// records/s). The checks left to the loop are OR-ed together: the counted records' keys
/// (any out of range, even where the op ignores it, has the stretch checked again exactly
/// by `trace::fields_ok`; the generator zeroes unused fields) and the READs' PMCs.
/// Returns where the stretch ended and whether all its records were valid.
///
/// Always inlined, into [`replay_checked`], which is compiled for AVX2 too.
#[inline(always)]
fn steady_stretch(
    pmu: &mut Pmu,
    t: &TraceRef<'_>,
    start: usize,
    n_pmcs: usize,
    reads: &mut Vec<u64>,
) -> (usize, bool) {
    if pmu.adds_since_settle >= SETTLE_EVERY / 2 {
        pmu.settle_all();
    }
    let adds_left = (SETTLE_EVERY - pmu.adds_since_settle) as usize;
    let end = t.len().min(start.saturating_add(adds_left));
    let (i, keys, bad_pmc) = if pmu.index.spill == 0 {
        pmu.count_stretch::<true>(t, start, end, n_pmcs, reads)
    } else {
        pmu.count_stretch::<false>(t, start, end, n_pmcs, reads)
    };
    // READs counted as adds too: a bound, not a count.
    pmu.adds_since_settle += (i - start) as u32;
    // A key out of range where the record's op may not use it: check the stretch exactly.
    (
        i,
        !bad_pmc && (keys < KEY_LIMIT || fields_ok(&t.slice(start..i), n_pmcs)),
    )
}

/// What one step of a model observes: the model's counter state, for comparisons.
pub trait Model {
    /// Replay one (valid) record. READ values are pushed onto `reads`. Returns the PMCs the
    /// record counted on (each by 1 for a retired instruction, by `n` for a RUN): a record
    /// adds to counters in no other way, so two models' counts part exactly where these differ.
    fn step(&mut self, r: Record, reads: &mut Vec<u64>) -> u8;
    /// The guest-visible selectors.
    fn eventsel(&self) -> &[u64; LANES];
    /// The mode as crate::trace encodes it: bit 0 EFER.SVME, bit 1 guest mode.
    fn mode_state(&self) -> u8 {
        let (svme, guest) = self.mode();
        svme as u8 | (guest as u8) << 1
    }
    /// The mask of PMCs whose programmed `eventsel_hw` has EN set.
    fn hw_enabled(&self) -> u8;
    fn mode(&self) -> (bool, bool);
    fn counters(&self) -> [u64; MAX_PMCS];
    fn overflows(&self) -> [u64; MAX_PMCS];
    fn pmis(&self) -> [u64; MAX_PMCS];
    fn eventsel_hw(&self) -> [u64; MAX_PMCS];
    /// Whether a steady stretch that starts with op `first` may start now: nothing awaits the
    /// next VM-entry, so the VM-entries of the stretch change nothing. When `first` is itself
    /// a VM-entry (RUN or VMENTRY, which re-evaluate what is pending before anything else),
    /// that re-evaluation is done here, and the stretch may start.
    fn steady_ready(&mut self, first: u8) -> bool;
    /// Replay the steady stretch (see `Pmu::set_steady`) that starts at `start`, when
    /// `steady_ready(first)`; returns where it ended and whether its records were valid.
    fn replay_steady(
        &mut self,
        t: &TraceRef<'_>,
        start: usize,
        n_pmcs: usize,
        reads: &mut Vec<u64>,
    ) -> (usize, bool);
    /// Whether `other` (the same model, same policy) replays any records from here exactly as
    /// `self` does, overflow and PMI counts aside: the same selectors, mode, global control,
    /// filter, counter values and, for KVM, the same bitmaps and pending set. Internal
    /// bookkeeping that does not change a result (how keys are indexed, when wraps are
    /// folded) is not compared. Used to join chunks replayed in parallel (`crate::split`).
    fn same_state(&self, other: &Self) -> bool;
    /// Add `overflows` and `pmis` (modulo 2^64) to the overflow and PMI counts.
    fn shift_wraps(&mut self, overflows: [u64; MAX_PMCS], pmis: [u64; MAX_PMCS]);
}

/// The `Model` methods that only read (or, `shift_wraps`, add to the counts of) the shared
/// architectural state, for both models.
macro_rules! pmu_accessors {
    () => {
        fn eventsel(&self) -> &[u64; LANES] {
            &self.pmu.eventsel
        }
        fn mode(&self) -> (bool, bool) {
            (self.pmu.svme, self.pmu.guest)
        }
        fn counters(&self) -> [u64; MAX_PMCS] {
            self.pmu.counters()
        }
        fn overflows(&self) -> [u64; MAX_PMCS] {
            self.pmu.overflows()
        }
        fn pmis(&self) -> [u64; MAX_PMCS] {
            self.pmu.pmis()
        }
        fn shift_wraps(&mut self, overflows: [u64; MAX_PMCS], pmis: [u64; MAX_PMCS]) {
            self.pmu.shift_wraps(overflows, pmis)
        }
    };
}

/// The KVM model (model.md section 6).
#[derive(Clone, Debug)]
pub struct Kvm {
    p: KvmPolicy,
    pmu: Pmu,
    n_pmcs: usize,
    reserved: u64,
    /// PMCs whose programmed `eventsel_hw` has EN set.
    hw_en: u8,
    /// The emulation bitmap.
    emul_ok: u8,
    /// PMCs awaiting re-evaluation at the next VM-entry (KVM_REQ_PMU).
    pending: u8,
    /// PMCs whose `eventsel` changed since their last re-evaluation; `hw_base` holds the
    /// selector value `eventsel_hw` was last computed from.
    stale: u8,
    hw_base: [u64; LANES],
    /// Per flow, the (sync, deferred) masks its timing knob selects: all PMCs or none.
    flows: [(u8, u8); 5],
    /// 0xFF when `emul_ok` ignores the mode (`emul_mode_aware = false`), else 0.
    emul_any_mode: u8,
}

/// The flows a transition belongs to (model.md section 6), indexing `Kvm::flows`.
#[derive(Clone, Copy, Debug)]
enum Flow {
    Efer,
    Vmrun,
    Vmexit,
    ForcedLeave,
    SetNestedState,
}

fn flow_masks(t: Timing) -> (u8, u8) {
    match t {
        Timing::Sync => (0xFF, 0),
        Timing::Deferred => (0, 0xFF),
        Timing::None => (0, 0),
    }
}

impl Kvm {
    pub fn new(p: KvmPolicy, n_pmcs: usize) -> Self {
        let reserved = if p.hg_honored {
            RESERVED_BITS & !(HOST_ONLY | GUEST_ONLY)
        } else {
            RESERVED_BITS
        };
        Kvm {
            p,
            pmu: Pmu::new(n_pmcs),
            n_pmcs,
            reserved,
            hw_en: 0,
            emul_ok: 0,
            pending: 0,
            stale: 0,
            hw_base: [0; LANES],
            emul_any_mode: if p.emul_mode_aware { 0 } else { 0xFF },
            flows: [
                p.efer,
                p.vmrun,
                p.vmexit,
                p.forced_leave,
                p.set_nested_state,
            ]
            .map(flow_masks),
        }
    }

    #[inline(always)]
    fn counts_in_mode(&self) -> u8 {
        // With H/G reserved the selectors never hold H/G bits, so the rule counts everything.
        self.pmu
            .counts_in_mode(self.pmu.svme, self.pmu.guest, self.p.svme0_ignore)
    }

    /// Re-evaluate the PMCs in `set` (model.md section 6).
    #[inline(always)]
    fn reevaluate(&mut self, set: u8, with_filter: bool) {
        let cim = self.counts_in_mode();
        let f = self.pmu.filter_ok | !(with_filter as u8).wrapping_neg();
        let en = self.pmu.en;
        self.hw_en = (self.hw_en & !set) | (set & en & cim & f);
        let mode = cim | self.emul_any_mode;
        self.emul_ok = (self.emul_ok & !set) | (set & en & mode);
        self.stale &= !set;
    }

    #[inline(always)]
    fn vm_entry(&mut self) {
        // Re-evaluating an empty set changes nothing: no branch needed.
        self.reevaluate(self.pending, true);
        self.pending = 0;
    }

    /// A change of (svme, guest_mode) in flow `timing`.
    #[inline(always)]
    fn transition(&mut self, flow: Flow, changed: bool) {
        let hg = (self.pmu.host_only | self.pmu.guest_only) & (changed as u8).wrapping_neg();
        let (sync, deferred) = self.flows[flow as usize];
        self.reevaluate(hg & sync, self.p.filter_on_sync);
        self.pending |= hg & deferred;
    }

    #[inline(always)]
    fn retire(&mut self, cpl: u8, branch: bool) -> u8 {
        self.pmu.retire(self.emul_ok, cpl, branch)
    }

    #[inline(always)]
    fn set_guest_mode(&mut self, guest: bool, flow: Flow) {
        let changed = self.pmu.guest != guest;
        self.pmu.guest = guest;
        self.transition(flow, changed);
    }
}

impl Model for Kvm {
    /// One record, by its op (model.md section 6).
    #[inline(always)]
    fn step(&mut self, r: Record, reads: &mut Vec<u64>) -> u8 {
        match r.op {
            op::RUN => {
                self.vm_entry();
                let m = self.hw_en
                    & self.pmu.global_ctrl
                    & self.pmu.key_match(r.key)
                    & self.pmu.cpl_match(r.cpl)
                    & ((r.value != 0) as u8).wrapping_neg();
                self.pmu.add(m, r.value);
                m
            }
            op::EMULATE => self.retire(r.cpl, r.flag != 0),
            op::WRMSR_EVTSEL => {
                let i = r.pmc as usize & (LANES - 1);
                let v = r.value & !self.reserved;
                let old = self.pmu.eventsel[i];
                // KVM acts only on a change; written without branches (a same-value write
                // then recomputes what it already holds).
                let b = (1u8 << i) & ((v != old) as u8).wrapping_neg();
                // While PMC i is not stale its programmed base equals `old`, so saving it is
                // right whether or not the value changes.
                if self.stale & (1 << i) == 0 {
                    self.hw_base[i] = old;
                }
                self.stale |= b;
                self.pmu.set_eventsel(i, v);
                // KVM recalculates the emulation bitmap at once on a selector write.
                let mode = self.counts_in_mode() | self.emul_any_mode;
                self.emul_ok = (self.emul_ok & !b) | (b & self.pmu.en & mode);
                self.pending |= b;
                self.retire(0, false)
            }
            op::WRMSR_CTR => {
                self.pmu.write_ctr(r.pmc as usize & (LANES - 1), r.value);
                self.retire(0, false)
            }
            op::WRMSR_GLOBAL_CTRL => {
                let v = (r.value as u8) & self.pmu.all;
                self.pending |= self.pmu.global_ctrl ^ v;
                self.pmu.global_ctrl = v;
                self.retire(0, false)
            }
            op::WRMSR_EFER => {
                let svme = r.flag != 0;
                let changed = self.pmu.svme != svme;
                self.pmu.svme = svme;
                self.transition(Flow::Efer, changed);
                self.retire(0, false)
            }
            op::VMRUN => {
                if self.p.vmrun_after_entry {
                    self.set_guest_mode(true, Flow::Vmrun);
                    self.retire(0, false)
                } else {
                    let m = self.retire(0, false);
                    self.set_guest_mode(true, Flow::Vmrun);
                    m
                }
            }
            op::VMRUN_FAIL => self.retire(0, false),
            op::VMEXIT => {
                self.set_guest_mode(false, Flow::Vmexit);
                0
            }
            op::FORCED_LEAVE => {
                self.set_guest_mode(false, Flow::ForcedLeave);
                0
            }
            op::SET_NESTED_STATE => {
                self.set_guest_mode(r.flag != 0, Flow::SetNestedState);
                0
            }
            op::SET_FILTER => {
                self.pmu.set_filter(r.flag, r.key);
                self.pending = self.pmu.all;
                0
            }
            op::VMENTRY => {
                self.vm_entry();
                0
            }
            op::READ => {
                reads.push(self.pmu.read(r.pmc as usize));
                0
            }
            _ => {
                *self = Kvm::new(self.p, self.n_pmcs); // RESET
                0
            }
        }
    }

    fn hw_enabled(&self) -> u8 {
        self.hw_en
    }
    pmu_accessors!();
    fn steady_ready(&mut self, first: u8) -> bool {
        if self.pending != 0 && (first == op::RUN || first == op::VMENTRY) {
            self.vm_entry();
        }
        self.pending == 0
    }
    #[inline(always)]
    fn replay_steady(
        &mut self,
        t: &TraceRef<'_>,
        start: usize,
        n_pmcs: usize,
        reads: &mut Vec<u64>,
    ) -> (usize, bool) {
        // Nothing is pending, so the masks hold for the stretch.
        debug_assert_eq!(self.pending, 0);
        self.pmu.set_steady(self.hw_en, self.emul_ok);
        steady_stretch(&mut self.pmu, t, start, n_pmcs, reads)
    }

    fn same_state(&self, o: &Self) -> bool {
        // A programmed base is read only while its PMC is stale.
        let bases =
            (0..LANES).all(|i| self.stale & (1 << i) == 0 || self.hw_base[i] == o.hw_base[i]);
        self.pmu.same_state(&o.pmu)
            && [self.hw_en, self.emul_ok, self.pending, self.stale]
                == [o.hw_en, o.emul_ok, o.pending, o.stale]
            && bases
    }

    fn eventsel_hw(&self) -> [u64; MAX_PMCS] {
        let mut out = [0; MAX_PMCS];
        for (i, o) in out.iter_mut().enumerate().take(self.n_pmcs) {
            let b = 1u8 << i;
            let base = if self.stale & b != 0 {
                self.hw_base[i]
            } else {
                self.pmu.eventsel[i]
            };
            *o = Pmu::programmed(base, self.hw_en & b != 0, self.p.hg_honored);
        }
        out
    }
}

/// The architectural reference (model.md section 5).
#[derive(Clone, Debug)]
pub struct Arch {
    p: ArchPolicy,
    pmu: Pmu,
    n_pmcs: usize,
}

impl Arch {
    pub fn new(p: ArchPolicy, n_pmcs: usize) -> Self {
        Arch {
            p,
            pmu: Pmu::new(n_pmcs),
            n_pmcs,
        }
    }

    /// PMCs allowed to count in mode (svme, guest): EN and the H/G rule of APM Table 13-4.
    #[inline(always)]
    fn allowed(&self, svme: bool, guest: bool) -> u8 {
        self.pmu.en & self.pmu.counts_in_mode(svme, guest, false)
    }

    #[inline(always)]
    fn retire_in(&mut self, svme: bool, guest: bool, cpl: u8, branch: bool) -> u8 {
        let allowed = self.allowed(svme, guest);
        self.pmu.retire(allowed, cpl, branch)
    }

    #[inline(always)]
    fn retire(&mut self, cpl: u8, branch: bool) -> u8 {
        self.retire_in(self.pmu.svme, self.pmu.guest, cpl, branch)
    }
}

impl Model for Arch {
    /// One record, by its op (model.md section 5).
    #[inline(always)]
    fn step(&mut self, r: Record, reads: &mut Vec<u64>) -> u8 {
        match r.op {
            op::RUN => {
                let m = self.allowed(self.pmu.svme, self.pmu.guest)
                    & self.pmu.global_ctrl
                    & self.pmu.filter_ok
                    & self.pmu.key_match(r.key)
                    & self.pmu.cpl_match(r.cpl)
                    & ((r.value != 0) as u8).wrapping_neg();
                self.pmu.add(m, r.value);
                m
            }
            op::EMULATE => self.retire(r.cpl, r.flag != 0),
            op::WRMSR_EVTSEL => {
                let i = r.pmc as usize & (LANES - 1);
                let v = r.value & !(RESERVED_BITS & !(HOST_ONLY | GUEST_ONLY));
                if self.p.enabling_wrmsr_new {
                    self.pmu.set_eventsel(i, v);
                    self.retire(0, false)
                } else {
                    let m = self.retire(0, false);
                    self.pmu.set_eventsel(i, v);
                    m
                }
            }
            op::WRMSR_CTR => {
                self.pmu.write_ctr(r.pmc as usize & (LANES - 1), r.value);
                self.retire(0, false)
            }
            op::WRMSR_GLOBAL_CTRL => {
                self.pmu.global_ctrl = (r.value as u8) & self.pmu.all;
                self.retire(0, false)
            }
            op::WRMSR_EFER => {
                if self.p.efer_retire_new {
                    self.pmu.svme = r.flag != 0;
                    self.retire(0, false)
                } else {
                    let m = self.retire(0, false);
                    self.pmu.svme = r.flag != 0;
                    m
                }
            }
            op::VMRUN => {
                if self.p.vmrun_retire_guest {
                    self.pmu.guest = true;
                    self.retire(0, false)
                } else {
                    let m = self.retire(0, false);
                    self.pmu.guest = true;
                    m
                }
            }
            op::VMRUN_FAIL => {
                let guest = self.p.failed_vmrun_retire_guest;
                self.retire_in(self.pmu.svme, guest, 0, false)
            }
            op::VMEXIT | op::FORCED_LEAVE => {
                self.pmu.guest = false;
                0
            }
            op::SET_NESTED_STATE => {
                self.pmu.guest = r.flag != 0;
                0
            }
            op::SET_FILTER => {
                self.pmu.set_filter(r.flag, r.key);
                0
            }
            op::VMENTRY => 0,
            op::READ => {
                reads.push(self.pmu.read(r.pmc as usize));
                0
            }
            _ => {
                *self = Arch::new(self.p, self.n_pmcs); // RESET
                0
            }
        }
    }

    fn hw_enabled(&self) -> u8 {
        self.allowed(self.pmu.svme, self.pmu.guest) & self.pmu.filter_ok
    }
    pmu_accessors!();
    fn steady_ready(&mut self, _first: u8) -> bool {
        true
    }
    #[inline(always)]
    fn replay_steady(
        &mut self,
        t: &TraceRef<'_>,
        start: usize,
        n_pmcs: usize,
        reads: &mut Vec<u64>,
    ) -> (usize, bool) {
        let allowed = self.allowed(self.pmu.svme, self.pmu.guest);
        // The reference filters a RUN as it counts it (KVM folds the filter into eventsel_hw).
        self.pmu.set_steady(allowed & self.pmu.filter_ok, allowed);
        steady_stretch(&mut self.pmu, t, start, n_pmcs, reads)
    }

    fn same_state(&self, o: &Self) -> bool {
        self.pmu.same_state(&o.pmu)
    }

    fn eventsel_hw(&self) -> [u64; MAX_PMCS] {
        let en = self.hw_enabled();
        let mut out = [0; MAX_PMCS];
        for (i, o) in out.iter_mut().enumerate().take(self.n_pmcs) {
            *o = Pmu::programmed(self.pmu.eventsel[i], en & (1 << i) != 0, true);
        }
        out
    }
}

/// Per-record observations (model.md section 8, "on request").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timeline {
    /// Bit i: `eventsel_hw[i]`.EN after the record.
    pub hw_enabled: Vec<u8>,
    pub svme: Vec<bool>,
    pub guest_mode: Vec<bool>,
}

/// What a model computed for one trace (model.md section 8).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimResult {
    pub counters: Vec<u64>,
    pub eventsel_hw: Vec<u64>,
    pub overflows: Vec<u64>,
    pub pmis: Vec<u64>,
    pub reads: Vec<u64>,
    pub timeline: Option<Timeline>,
}

impl SimResult {
    pub(crate) fn from_model<M: Model>(
        m: &M,
        n_pmcs: usize,
        reads: Vec<u64>,
        timeline: Option<Timeline>,
    ) -> Self {
        SimResult {
            counters: m.counters()[..n_pmcs].to_vec(),
            eventsel_hw: m.eventsel_hw()[..n_pmcs].to_vec(),
            overflows: m.overflows()[..n_pmcs].to_vec(),
            pmis: m.pmis()[..n_pmcs].to_vec(),
            reads,
            timeline,
        }
    }
}

/// Either model, chosen by the policy.
#[derive(Clone, Debug)]
pub enum AnyModel {
    Kvm(Kvm),
    Arch(Arch),
}

impl AnyModel {
    pub fn new(policy: &Policy, n_pmcs: usize) -> Self {
        match policy {
            Policy::Kvm(p) => AnyModel::Kvm(Kvm::new(*p, n_pmcs)),
            Policy::Arch(p) => AnyModel::Arch(Arch::new(*p, n_pmcs)),
        }
    }
}

/// The hot loop: replay every record of a validated trace.
#[inline(never)]
fn replay<M: Model>(m: &mut M, t: &TraceRef<'_>, reads: &mut Vec<u64>) {
    for i in 0..t.len() {
        m.step(t.record(i), reads);
    }
}

fn replay_timeline<M: Model>(m: &mut M, t: &TraceRef<'_>, reads: &mut Vec<u64>) -> Timeline {
    let n = t.len();
    let mut tl = Timeline {
        hw_enabled: Vec::with_capacity(n),
        svme: Vec::with_capacity(n),
        guest_mode: Vec::with_capacity(n),
    };
    for i in 0..n {
        m.step(t.record(i), reads);
        let (svme, guest) = m.mode();
        tl.hw_enabled.push(m.hw_enabled());
        tl.svme.push(svme);
        tl.guest_mode.push(guest);
    }
    tl
}

/// How many READ records `t` has: room for their values is reserved before a replay.
/// `bytecount` counts the op column 20x faster than a filtered iterator (0.13 against 2.4 ms
/// for 10 M records here: LLVM vectorises the latter with 64-bit lanes, two bytes a step).
pub(crate) fn count_reads(t: &TraceRef<'_>) -> usize {
    bytecount::count(t.op, op::READ)
}

fn run_model<M: Model>(mut m: M, t: &TraceRef<'_>, n_pmcs: usize, timeline: bool) -> SimResult {
    let mut reads = Vec::with_capacity(count_reads(t));
    let tl = if timeline {
        Some(replay_timeline(&mut m, t, &mut reads))
    } else {
        replay(&mut m, t, &mut reads);
        None
    };
    SimResult::from_model(&m, n_pmcs, reads, tl)
}

/// Replay a trace and check every record rule in the same pass (without a second read of
/// the columns); `false` if some record is invalid, and then the model's state is garbage.
///
/// Steady stretches (see [`Pmu::set_steady`]) pay off when they are long; on records in
/// random order they last two records or so and cost more than they save. `gain` sums how far
/// the recent stretches were from paying off; when it runs low, the next `STEADY_PAUSE`
/// records are replayed one by one by [`replay_paused`], whose loop (with no call in it)
/// compiles tighter, and then stretches are tried again. Either path gives the same results.
///
/// Compiled twice, with the stretch loop ([`steady_stretch`]) and the models' steps inlined:
/// for any x86-64 (SSE2) and for CPUs with AVX2 and BMI2 (x86-64-v3), picked at run time by
/// what the CPU has (`multiversion` detects it once and keeps the choice). The AVX2 build adds
/// to the counters in two 256-bit lanes instead of four 128-bit ones and needs fewer moves:
/// the stretch loop alone ran 4.5% faster. Building the whole crate for x86-64-v3 would tie
/// the wheel to such CPUs. With `RUSTFLAGS='--cfg svmpmu_portable'` only the portable build
/// is made, so that CI tests it on a CPU that has AVX2. (The stretch loop was compiled twice
/// on its own before; inlined here, a stretch no longer pays a call and the set-up of its
/// columns, and the records between stretches get the AVX2 build too: workload-like replay
/// 355-360 -> 373-376 M records/s on one thread, 4 fewer instructions a record.)
#[cfg_attr(
    not(svmpmu_portable),
    multiversion::multiversion(targets("x86_64+avx2+bmi1+bmi2+fma+lzcnt+popcnt"))
)]
#[cfg_attr(svmpmu_portable, inline(never))]
pub(crate) fn replay_checked<M: Model>(
    m: &mut M,
    t: &TraceRef<'_>,
    n_pmcs: usize,
    reads: &mut Vec<u64>,
) -> bool {
    let mut ok = true;
    let n = t.len();
    let mut i = 0;
    let mut gain = 0i32;
    let (ops, pmcs, cpls) = (&t.op[..n], &t.pmc[..n], &t.cpl[..n]);
    let (flags, keys, values) = (&t.flag[..n], &t.key[..n], &t.value[..n]);
    // Start paused unless the trace opens with mostly steady ops (at least 4 in 5, when
    // stretches average 4 records or more): a short trace of records in random order then
    // never pays for a stretch.
    let probe = &ops[..n.min(STEADY_PROBE)];
    if probe.iter().filter(|&&o| is_steady(o)).count() * 5 < probe.len() * 4 {
        (i, ok) = replay_paused(m, t, 0, n_pmcs, reads);
    }
    while i < n {
        let r = Record {
            op: ops[i],
            pmc: pmcs[i],
            cpl: cpls[i],
            flag: flags[i],
            key: keys[i],
            value: values[i],
        };
        // Up to the first invalid record the model's mode is the validator's.
        ok &= is_valid(r, m.mode_state(), n_pmcs);
        m.step(r, reads);
        i += 1;
        // Replay the steady stretch that follows, if the next record starts one and nothing
        // is pending (as after a VM-entry) or the next record is a VM-entry.
        if i < n && is_steady(ops[i]) && m.steady_ready(ops[i]) {
            let (next, good) = m.replay_steady(t, i, n_pmcs, reads);
            ok &= good;
            gain = (gain + (next - i) as i32 - STEADY_BREAK_EVEN).min(STEADY_GAIN_CAP);
            i = next;
            if gain < -STEADY_GAIN_CAP {
                gain = 0;
                let good;
                (i, good) = replay_paused(m, t, i, n_pmcs, reads);
                ok &= good;
            }
        }
    }
    ok
}

/// The stretch length (records) at which a steady stretch pays for setting it up.
const STEADY_BREAK_EVEN: i32 = 4;
/// How far `gain` may go either way before the steady path pauses.
const STEADY_GAIN_CAP: i32 = 16;
/// Records replayed one by one before steady stretches are tried again.
const STEADY_PAUSE: usize = 2048;
/// Records whose ops decide whether a trace starts with steady stretches.
const STEADY_PROBE: usize = 256;

/// Replay and check the `STEADY_PAUSE` records from `start` (fewer at the end of the trace)
/// one by one; where they end, and `false` if one is invalid. Built for AVX2 too, like
/// [`replay_checked`]: 3.7% faster on records in random order.
#[cfg_attr(
    not(svmpmu_portable),
    multiversion::multiversion(targets("x86_64+avx2+bmi1+bmi2+fma+lzcnt+popcnt"))
)]
#[cfg_attr(svmpmu_portable, inline(never))]
fn replay_paused<M: Model>(
    m: &mut M,
    t: &TraceRef<'_>,
    start: usize,
    n_pmcs: usize,
    reads: &mut Vec<u64>,
) -> (usize, bool) {
    let end = t.len().min(start + STEADY_PAUSE);
    // The rules on each record's own fields in one vectorised pass, the mode rules as it goes.
    let span = t.slice(start..end);
    let mut illegal = 0u8;
    for r in span.records() {
        illegal |= !mode_ok(r, m.mode_state()) as u8;
        m.step(r, reads);
    }
    (end, illegal == 0 && fields_ok(&span, n_pmcs))
}

/// Where one trace's final per-PMC values go (each slice `n_pmcs` long).
pub struct FinalSlots<'a> {
    pub counters: &'a mut [u64],
    pub eventsel_hw: &'a mut [u64],
    pub overflows: &'a mut [u64],
    pub pmis: &'a mut [u64],
}

fn checked_into<M: Model>(
    mut m: M,
    t: &TraceRef<'_>,
    n_pmcs: usize,
    reads: &mut Vec<u64>,
    out: FinalSlots<'_>,
) -> bool {
    if !replay_checked(&mut m, t, n_pmcs, reads) {
        return false;
    }
    out.counters.copy_from_slice(&m.counters()[..n_pmcs]);
    out.eventsel_hw.copy_from_slice(&m.eventsel_hw()[..n_pmcs]);
    out.overflows.copy_from_slice(&m.overflows()[..n_pmcs]);
    out.pmis.copy_from_slice(&m.pmis()[..n_pmcs]);
    true
}

/// [`simulate`] without allocating: the final values go to `out`, the READ values are
/// appended to `reads`. False (and garbage in `out` and `reads`) if the trace is invalid.
pub fn simulate_into(
    t: &TraceRef<'_>,
    policy: &Policy,
    n_pmcs: usize,
    reads: &mut Vec<u64>,
    out: FinalSlots<'_>,
) -> bool {
    match AnyModel::new(policy, n_pmcs) {
        AnyModel::Kvm(m) => checked_into(m, t, n_pmcs, reads, out),
        AnyModel::Arch(m) => checked_into(m, t, n_pmcs, reads, out),
    }
}

/// Validate and replay one trace under a policy (model.md sections 4 to 8). Nothing of an
/// invalid trace is returned: the error names its first invalid record.
pub fn simulate(
    t: &TraceRef<'_>,
    policy: &Policy,
    n_pmcs: usize,
    timeline: bool,
) -> Result<SimResult, CoreError> {
    crate::trace::check_n_pmcs(n_pmcs)?;
    if timeline {
        validate(t, n_pmcs)?;
        return Ok(simulate_valid(t, policy, n_pmcs, true));
    }
    let mut r = SimResult {
        counters: vec![0; n_pmcs],
        eventsel_hw: vec![0; n_pmcs],
        overflows: vec![0; n_pmcs],
        pmis: vec![0; n_pmcs],
        reads: Vec::with_capacity(count_reads(t)),
        timeline: None,
    };
    let slots = FinalSlots {
        counters: &mut r.counters,
        eventsel_hw: &mut r.eventsel_hw,
        overflows: &mut r.overflows,
        pmis: &mut r.pmis,
    };
    if simulate_into(t, policy, n_pmcs, &mut r.reads, slots) {
        Ok(r)
    } else {
        // Locate and explain the first invalid record.
        validate(t, n_pmcs).and(Err(CoreError::Value("invalid trace".into())))
    }
}

/// Replay a trace already validated for `n_pmcs`.
pub fn simulate_valid(
    t: &TraceRef<'_>,
    policy: &Policy,
    n_pmcs: usize,
    timeline: bool,
) -> SimResult {
    match AnyModel::new(policy, n_pmcs) {
        AnyModel::Kvm(m) => run_model(m, t, n_pmcs, timeline),
        AnyModel::Arch(m) => run_model(m, t, n_pmcs, timeline),
    }
}

/// For each record of a (valid) trace, the PMCs it counted on under `policy` (what
/// `Model::step` returns): which records a count comes from, for explaining a divergence.
pub fn count_masks(t: &TraceRef<'_>, policy: &Policy, n_pmcs: usize) -> Vec<u8> {
    fn run<M: Model>(mut m: M, t: &TraceRef<'_>) -> Vec<u8> {
        let mut reads = Vec::new();
        t.records().map(|r| m.step(r, &mut reads)).collect()
    }
    match AnyModel::new(policy, n_pmcs) {
        AnyModel::Kvm(m) => run(m, t),
        AnyModel::Arch(m) => run(m, t),
    }
}

/// A policy and a reference replayed side by side (model.md section 8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comparison {
    pub diverges: bool,
    /// The first record after which the counters, overflow or PMI counts differ.
    pub first_divergence: Option<usize>,
    pub policy: SimResult,
    pub reference: SimResult,
}

/// Replay a validated trace through two models in lockstep; the first record whose counts
/// differ (model.md section 8: the first record after which the counters differ), and the
/// READ values of each.
#[inline(never)]
fn lockstep<A: Model, B: Model>(
    a: &mut A,
    b: &mut B,
    t: &TraceRef<'_>,
    reads_a: &mut Vec<u64>,
    reads_b: &mut Vec<u64>,
) -> Option<usize> {
    let mut first = None;
    for i in 0..t.len() {
        let r = t.record(i);
        let differ = a.step(r, reads_a) != b.step(r, reads_b);
        if differ && first.is_none() {
            first = Some(i);
        }
    }
    first
}

fn compare_models<A: Model, B: Model>(
    mut a: A,
    mut b: B,
    t: &TraceRef<'_>,
    n_pmcs: usize,
) -> Comparison {
    let cap = count_reads(t);
    let (mut ra, mut rb) = (Vec::with_capacity(cap), Vec::with_capacity(cap));
    let first = lockstep(&mut a, &mut b, t, &mut ra, &mut rb);
    let policy = SimResult::from_model(&a, n_pmcs, ra, None);
    let reference = SimResult::from_model(&b, n_pmcs, rb, None);
    let diverges = policy.reads != reference.reads
        || policy.counters != reference.counters
        || policy.overflows != reference.overflows
        || policy.pmis != reference.pmis;
    Comparison {
        diverges,
        first_divergence: if diverges { first } else { None },
        policy,
        reference,
    }
}

/// Validate a trace and compare `policy` with `reference` on it.
pub fn compare(
    t: &TraceRef<'_>,
    policy: &Policy,
    reference: &Policy,
    n_pmcs: usize,
) -> Result<Comparison, CoreError> {
    validate(t, n_pmcs)?;
    Ok(compare_valid(t, policy, reference, n_pmcs))
}

/// [`compare`] for a trace already validated for `n_pmcs`.
pub fn compare_valid(
    t: &TraceRef<'_>,
    policy: &Policy,
    reference: &Policy,
    n_pmcs: usize,
) -> Comparison {
    use AnyModel as M;
    match (M::new(policy, n_pmcs), M::new(reference, n_pmcs)) {
        (M::Kvm(a), M::Kvm(b)) => compare_models(a, b, t, n_pmcs),
        (M::Kvm(a), M::Arch(b)) => compare_models(a, b, t, n_pmcs),
        (M::Arch(a), M::Kvm(b)) => compare_models(a, b, t, n_pmcs),
        (M::Arch(a), M::Arch(b)) => compare_models(a, b, t, n_pmcs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::{Generator, Mix};
    use crate::trace::TraceBuf;

    fn rec(op: u8) -> Record {
        Record {
            op,
            ..Record::default()
        }
    }

    /// The worked example of model.md section 9.
    fn seed_example() -> TraceBuf {
        let sel = (INSTRUCTIONS_RETIRED as u64) | OS | USR | EN | GUEST_ONLY;
        TraceBuf::from_records(&[
            Record {
                op: op::WRMSR_EVTSEL,
                value: sel,
                ..Record::default()
            },
            Record {
                op: op::WRMSR_EFER,
                flag: 1,
                ..Record::default()
            },
            rec(op::VMENTRY),
            rec(op::VMRUN),
            Record {
                op: op::RUN,
                cpl: 3,
                key: INSTRUCTIONS_RETIRED,
                value: 1000,
                ..Record::default()
            },
            rec(op::VMEXIT),
            rec(op::READ),
        ])
    }

    fn reads(preset: Policy) -> Vec<u64> {
        simulate(&seed_example().as_ref(), &preset, 6, false)
            .unwrap()
            .reads
    }

    #[test]
    fn worked_example() {
        assert_eq!(reads(Policy::preset("arch").unwrap()), [1001]);
        assert_eq!(reads(Policy::preset("final").unwrap()), [1001]);
        assert_eq!(reads(Policy::preset("v4").unwrap()), [1003]);
        let before = Policy::Kvm(KvmPolicy {
            vmrun_after_entry: false,
            ..KvmPolicy::FINAL
        });
        assert_eq!(reads(before), [1000]);
    }

    #[test]
    fn compare_locates_the_vmrun() {
        let t = seed_example();
        let c = compare(
            &t.as_ref(),
            &Policy::preset("final").unwrap(),
            &Policy::preset("v4").unwrap(),
            6,
        )
        .unwrap();
        assert!(c.diverges);
        assert_eq!(c.first_divergence, Some(0));
    }

    #[test]
    fn wrap_counts_overflows_and_pmis() {
        let sel = (INSTRUCTIONS_RETIRED as u64) | OS | USR | EN | INT;
        let t = TraceBuf::from_records(&[
            Record {
                op: op::WRMSR_EVTSEL,
                value: sel,
                ..Record::default()
            },
            Record {
                op: op::WRMSR_CTR,
                value: COUNTER_MASK - 1,
                ..Record::default()
            },
            Record {
                op: op::RUN,
                cpl: 3,
                key: INSTRUCTIONS_RETIRED,
                value: u64::MAX,
                ..Record::default()
            },
        ]);
        for p in ["arch", "final", "legacy"] {
            let r = simulate(&t.as_ref(), &Policy::preset(p).unwrap(), 1, false).unwrap();
            // counter = 2^48 - 1 (the WRMSR_CTR counts itself: 2^48 - 2 + 1); adding 2^64 - 1
            // gives 2^64 + 2^48 - 2 = 2^16 * 2^48 + (2^48 - 2): 2^16 wraps.
            assert_eq!(r.counters, [COUNTER_MASK - 1], "{p}");
            assert_eq!(r.overflows, [1 << 16], "{p}");
            assert_eq!(r.pmis, [1 << 16], "{p}");
        }
    }

    #[test]
    fn invalid_records_are_reported_with_their_index() {
        let t = TraceBuf::from_records(&[rec(op::VMENTRY), rec(op::VMEXIT)]);
        let e = simulate(&t.as_ref(), &Policy::preset("final").unwrap(), 6, false).unwrap_err();
        assert_eq!(
            e,
            CoreError::Trace {
                index: 1,
                reason: "VMEXIT in host mode".into()
            }
        );
    }

    #[test]
    fn generated_traces_are_valid_and_deterministic() {
        let g = Generator::new(Mix::default(), 6).unwrap();
        for i in 0..200 {
            let t = g.trace(7, i, 300);
            crate::trace::validate(&t.as_ref(), 6).unwrap();
            assert_eq!(t, g.trace(7, i, 300));
        }
        assert_ne!(g.trace(7, 0, 300), g.trace(8, 0, 300));
    }

    #[test]
    fn arch_against_itself_never_diverges() {
        let g = Generator::new(Mix::default(), 6).unwrap();
        let arch = Policy::preset("arch").unwrap();
        for i in 0..200 {
            let t = g.trace(3, i, 200);
            assert!(!compare(&t.as_ref(), &arch, &arch, 6).unwrap().diverges);
        }
    }

    #[test]
    fn checked_replay_reports_what_validation_reports_on_garbage() {
        // Random records with every field drawn from its whole range: the replay that checks
        // validity as it goes must neither panic nor disagree with the validator.
        let mut rng = crate::gen::Rng::for_trace(99, 0);
        for k in 0..3000u64 {
            let recs = crate::gen::arbitrary_records(&mut rng, (k % 40) as usize);
            let t = TraceBuf::from_records(&recs);
            for name in ["final", "arch", "v4"] {
                let p = Policy::preset(name).unwrap();
                let checked = simulate(&t.as_ref(), &p, 6, false);
                match validate(&t.as_ref(), 6) {
                    Ok(()) => {
                        assert_eq!(checked.unwrap(), simulate_valid(&t.as_ref(), &p, 6, false))
                    }
                    Err(e) => assert_eq!(checked.unwrap_err(), e),
                }
            }
        }
    }

    #[test]
    fn checked_replay_finds_a_late_invalid_record() {
        // Long traces of records in random order make the checked replay pause its steady
        // path and check spans record by record: an invalid record anywhere is still found.
        let g = Generator::new(Mix::default(), 6).unwrap();
        let mut rng = crate::gen::Rng::for_trace(7, 0);
        for k in 0..40 {
            let t = g.trace(5, k, 20_000);
            let mut recs = t.as_ref().records().collect::<Vec<_>>();
            let p = Policy::preset(["final", "arch"][k as usize % 2]).unwrap();
            assert_eq!(
                simulate(&t.as_ref(), &p, 6, false).unwrap(),
                simulate_valid(&t.as_ref(), &p, 6, false)
            );
            let at = (rng.next_u64() % 20_000) as usize;
            match k % 4 {
                0 => recs[at].op = 15,
                1 => {
                    recs[at] = Record {
                        pmc: 6,
                        ..rec(op::READ)
                    }
                }
                2 => {
                    recs[at] = Record {
                        key: 1 << 20,
                        ..rec(op::RUN)
                    }
                }
                _ => {
                    recs[at] = Record {
                        cpl: 4,
                        ..rec(op::EMULATE)
                    }
                }
            }
            let bad = TraceBuf::from_records(&recs);
            let e = validate(&bad.as_ref(), 6).unwrap_err();
            assert!(matches!(e, CoreError::Trace { index, .. } if index <= at));
            assert_eq!(simulate(&bad.as_ref(), &p, 6, false).unwrap_err(), e);
        }
    }

    #[test]
    fn unused_fields_of_steady_records_are_ignored() {
        // A stretch hands over records whose CPL or flag is out of a RUN's or an EMULATE's
        // range (the per-record path checks them exactly), and checks its records' keys OR-ed
        // together, whether their ops use them or not, looking closer only when that check
        // fails: junk in the fields an op does not use (a VMENTRY's CPL, a RUN's flag, an
        // EMULATE's key and value) must leave the trace valid and its results unchanged, and
        // junk in a field an op uses must still be found, in a clean trace and in a trace
        // with junk.
        let g = Generator::new(Mix::workload(), 6).unwrap();
        let mut rng = crate::gen::Rng::for_trace(23, 0);
        for k in 0..40u64 {
            let t = g.trace(9, k, 20_000);
            let clean = t.as_ref().records().collect::<Vec<_>>();
            let mut recs = clean.clone();
            for r in recs.iter_mut() {
                let x = rng.next_u64();
                if !x.is_multiple_of(3) {
                    continue;
                }
                // Values, mostly huge: an op that ignores its value must not count it, and
                // a stretch must not mistake it for a huge RUN's.
                // Half of the junk keys come with clean other fields, so that the stretch
                // counts the record and its OR-ed key check fails (then the closer look).
                let clean = x & 2 == 0;
                match r.op {
                    op::VMENTRY if clean => r.key = u32::MAX,
                    op::VMENTRY => {
                        (r.cpl, r.flag, r.key, r.value) = (x as u8 | 4, 0xFF, u32::MAX, x)
                    }
                    op::RUN => r.flag = (x >> 8) as u8 | 2,
                    op::EMULATE if clean => r.key = (x >> 32) as u32 | KEY_LIMIT,
                    op::EMULATE => (r.key, r.value) = ((x >> 32) as u32 | KEY_LIMIT, x),
                    op::READ => (r.cpl, r.flag, r.key, r.value) = (7, 7, u32::MAX, !x),
                    _ => {}
                }
            }
            let p = Policy::preset(["final", "arch", "v4", "legacy"][k as usize % 4]).unwrap();
            let junk = TraceBuf::from_records(&recs);
            assert_eq!(
                simulate(&junk.as_ref(), &p, 6, false).unwrap(),
                simulate_valid(&t.as_ref(), &p, 6, false),
                "trace {k}"
            );
            let at = (rng.next_u64() % 20_000) as usize;
            let wrong = match k % 5 {
                0 => Record {
                    cpl: 4,
                    ..rec(op::RUN)
                },
                1 => Record {
                    cpl: 4,
                    ..rec(op::EMULATE)
                },
                2 => Record {
                    flag: 2,
                    ..rec(op::EMULATE)
                },
                3 => Record {
                    key: KEY_LIMIT,
                    ..rec(op::RUN)
                },
                _ => Record {
                    pmc: 6,
                    ..rec(op::READ)
                },
            };
            for mut records in [clean, recs] {
                records[at] = wrong;
                let bad = TraceBuf::from_records(&records);
                let e = validate(&bad.as_ref(), 6).unwrap_err();
                assert!(matches!(e, CoreError::Trace { index, .. } if index == at));
                assert_eq!(simulate(&bad.as_ref(), &p, 6, false).unwrap_err(), e);
            }
        }
    }

    #[test]
    fn key_index_matches_comparison() {
        // Keys that share a slot of the index (found by search) must spill and still match.
        let base = INSTRUCTIONS_RETIRED;
        let twins: Vec<u32> = (1..1u32 << 20)
            .filter(|&k| key_slot(k) == key_slot(base))
            .take(3)
            .collect();
        let keys = [base, twins[0], twins[1], twins[2], BRANCHES_RETIRED, 0];
        let mut rng = crate::gen::Rng::for_trace(3, 0);
        for n_pmcs in [1, 4, 6] {
            let mut pmu = Pmu::new(n_pmcs);
            for _ in 0..5000 {
                let x = rng.next_u64();
                let k = keys[(x % 6) as usize];
                let sel =
                    (k & 0xFF) as u64 | ((k >> 8) as u64 & 0xF) << 32 | ((k >> 12) as u64) << 8;
                assert_eq!(selector_key(sel), k);
                pmu.set_eventsel(((x >> 8) % n_pmcs as u64) as usize, sel);
                for &probe in &keys {
                    assert_eq!(pmu.key_match(probe), pmu.key_compare(probe, pmu.all));
                }
            }
        }
    }

    #[test]
    fn colliding_keys_count_as_record_by_record() {
        // Selector and RUN keys from a pool where keys share slots of the key index, so the
        // steady path runs with spilled PMCs: the same results as the per-record replay.
        let twins = |base: u32| (1..KEY_LIMIT).filter(move |&k| key_slot(k) == key_slot(base));
        let pool: Vec<u32> = [INSTRUCTIONS_RETIRED, BRANCHES_RETIRED]
            .into_iter()
            .flat_map(|b| std::iter::once(b).chain(twins(b).take(2)))
            .collect();
        let with_key = |sel: u64, k: u32| {
            let cleared = sel & !(0xFFFF | 0xF << 32);
            cleared | (k & 0xFF) as u64 | (((k >> 8) & 0xF) as u64) << 32 | ((k >> 12) as u64) << 8
        };
        let mut mix = Mix::default();
        mix.ops[op::RUN as usize] = 400;
        mix.ops[op::EMULATE as usize] = 300;
        let g = Generator::new(mix, 6).unwrap();
        let mut rng = crate::gen::Rng::for_trace(13, 0);
        let mut spilled = 0;
        for i in 0..400 {
            let mut recs = g.trace(17, i, 300).records();
            for r in recs.iter_mut() {
                let k = pool[(rng.next_u64() % pool.len() as u64) as usize];
                match r.op {
                    op::WRMSR_EVTSEL => r.value = with_key(r.value, k),
                    op::RUN => r.key = k,
                    _ => {}
                }
            }
            let t = TraceBuf::from_records(&recs);
            let Policy::Kvm(f) = Policy::preset("final").unwrap() else {
                unreachable!()
            };
            let mut kvm = Kvm::new(f, 6);
            let mut reads = Vec::new();
            for r in t.as_ref().records() {
                kvm.step(r, &mut reads);
                spilled += (kvm.pmu.index.spill != 0) as usize;
            }
            for name in ["final", "v4", "legacy", "arch"] {
                let p = Policy::preset(name).unwrap();
                assert_eq!(
                    simulate(&t.as_ref(), &p, 6, false).unwrap(),
                    simulate_valid(&t.as_ref(), &p, 6, false),
                    "{name}, trace {i}"
                );
            }
        }
        // Most records ran with some PMC spilled.
        assert!(spilled > 400 * 300 / 2, "{spilled}");
    }

    #[test]
    fn steady_stretches_count_as_record_by_record() {
        // simulate() replays steady stretches on their own path; simulate_valid() goes record
        // by record. Mixes with long stretches, wraps and READs inside them.
        let mut mix = Mix {
            ops: [0; 15],
            run_huge: 50,
            ..Mix::default()
        };
        for (o, w) in [
            (op::RUN, 480),
            (op::EMULATE, 420),
            (op::VMENTRY, 20),
            (op::READ, 30),
            (op::WRMSR_EVTSEL, 20),
            (op::WRMSR_CTR, 5),
            (op::WRMSR_EFER, 5),
            (op::VMRUN, 10),
            (op::VMEXIT, 10),
            (op::SET_FILTER, 5),
        ] {
            mix.ops[o as usize] = w;
        }
        for m in [mix, Mix::default()] {
            let g = Generator::new(m, 6).unwrap();
            for i in 0..300 {
                let t = g.trace(11, i, 400);
                for name in ["final", "v4", "legacy", "arch"] {
                    let p = Policy::preset(name).unwrap();
                    assert_eq!(
                        simulate(&t.as_ref(), &p, 6, false).unwrap(),
                        simulate_valid(&t.as_ref(), &p, 6, false),
                        "{name}, trace {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn stretch_checks_hold_at_their_limits() {
        // The checks a stretch leaves to the end (keys OR-ed, READs' PMCs) at their exact
        // limits, for every PMC count: what `validate` says, with the same index.
        for n_pmcs in 1..=MAX_PMCS {
            let key = |key, value| Record {
                key,
                value,
                ..rec(op::RUN)
            };
            let traces = [
                // A RUN's key of exactly 2^20: invalid.
                vec![rec(op::EMULATE), key(KEY_LIMIT, 1)],
                vec![rec(op::EMULATE), key(KEY_LIMIT - 1, 1)],
                // An EMULATE's key is not used: valid whatever it is.
                vec![
                    rec(op::EMULATE),
                    Record {
                        key: u32::MAX - 1,
                        ..rec(op::EMULATE)
                    },
                ],
                // A READ of the first PMC beyond n_pmcs: invalid; of the last one: valid.
                vec![
                    key(1, 3),
                    Record {
                        pmc: n_pmcs as u8,
                        ..rec(op::READ)
                    },
                ],
                vec![
                    key(1, 3),
                    Record {
                        pmc: n_pmcs as u8 - 1,
                        ..rec(op::READ)
                    },
                ],
            ];
            for (k, recs) in traces.iter().enumerate() {
                let t = TraceBuf::from_records(recs);
                for name in ["final", "arch"] {
                    let p = Policy::preset(name).unwrap();
                    let expected = validate(&t.as_ref(), n_pmcs)
                        .map(|()| simulate_valid(&t.as_ref(), &p, n_pmcs, false));
                    assert_eq!(
                        simulate(&t.as_ref(), &p, n_pmcs, false),
                        expected,
                        "{name}, n_pmcs {n_pmcs}, trace {k}"
                    );
                }
            }
        }
    }

    #[test]
    fn long_stretches_still_settle() {
        // The lazy counters stay far from 2^64 because a stretch stops after the adds left
        // before the next settlement and counts its adds. 3 x 2^20 RUNs in a row: the count
        // of adds since the last settlement must stay within the bound, and count the last
        // stretch's records (nearly 2^20 of them).
        let sel = EN | OS | USR | INSTRUCTIONS_RETIRED as u64;
        let mut recs = vec![Record {
            value: sel,
            ..rec(op::WRMSR_EVTSEL)
        }];
        recs.resize(
            1 + 3 * SETTLE_EVERY as usize,
            Record {
                key: INSTRUCTIONS_RETIRED,
                value: 1,
                ..rec(op::RUN)
            },
        );
        let t = TraceBuf::from_records(&recs);
        let Policy::Kvm(p) = Policy::preset("final").unwrap() else {
            unreachable!()
        };
        let mut m = Kvm::new(p, 6);
        let mut reads = Vec::new();
        assert!(replay_checked(&mut m, &t.as_ref(), 6, &mut reads));
        let adds = m.pmu.adds_since_settle;
        assert!((SETTLE_EVERY / 2..=SETTLE_EVERY).contains(&adds), "{adds}");
        assert_eq!(m.counters()[0], 1 + 3 * SETTLE_EVERY as u64);
    }

    #[test]
    fn huge_runs_in_a_stretch_take_the_exact_path() {
        // A RUN of 2^40 events or more ends the stretch loop, whose lazy counters would
        // overflow 64 bits on two RUNs near 2^63: the per-record path adds it exactly.
        let g = Generator::new(Mix::workload(), 6).unwrap();
        let mut rng = crate::gen::Rng::for_trace(31, 0);
        for k in 0..20u64 {
            let mut recs = g.trace(13, k, 5_000).as_ref().records().collect::<Vec<_>>();
            for r in recs.iter_mut().filter(|r| r.op == op::RUN) {
                let x = rng.next_u64();
                if x.is_multiple_of(8) {
                    r.value = x | 1 << 63;
                }
            }
            let t = TraceBuf::from_records(&recs);
            for name in ["final", "arch"] {
                let p = Policy::preset(name).unwrap();
                assert_eq!(
                    simulate(&t.as_ref(), &p, 6, false).unwrap(),
                    simulate_valid(&t.as_ref(), &p, 6, false),
                    "{name}, trace {k}"
                );
            }
        }
    }
}
