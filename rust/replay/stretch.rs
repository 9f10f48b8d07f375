//! Steady stretches: runs of RUN, EMULATE, VMENTRY and READ records, which change nothing
//! that decides how later records count, replayed with the counting masks computed once for
//! the stretch. The speed machinery behind the RUN and EMULATE rules of `crate::model::kvm`
//! and `crate::model::arch` (model.md sections 5 and 6): [`Stretch::replay_steady`] sets the
//! masks from each model's own state (`eventsel_hw` and `emul_ok` for KVM, the mode rule and
//! the filter for the reference), and the loop here only adds.

use crate::model::{op, Arch, Kvm, Pmu, KEY_LIMIT};
use crate::replay::counters::{FAST_ADD_BITS, LANES, LANE_MASKS, SETTLE_EVERY};
use crate::trace::{fields_ok, flag_max, TraceRef, CPL_MAX};

/// The flag range the decoder lets through: EMULATE's (its "is a branch" bit). RUN and
/// VMENTRY take no flag, so a flag out of this range in a stretch only sends the record to the
/// exact check.
const EMULATE_FLAG_MAX: u8 = flag_max(op::EMULATE);

/// How the records of the current steady stretch count, by [`steady_class`]: the PMCs a
/// record counts on if its key matches theirs (`by_key`) and whatever its key (`any_key`).
/// Two tables rather than one and a constant "any key" table: one load and one address fewer
/// a record (2% to 4% faster).
#[derive(Clone, Copy, Debug, Default)]
pub struct StretchMasks {
    pub(crate) by_key: [u8; 16],
    pub(crate) any_key: [u8; 16],
}

/// A record's class in a stretch: `(op & 3) << 2 | user << 1 | branch`. EMULATE (10), RUN (11)
/// and VMENTRY (12) have distinct low bits.
#[inline(always)]
pub(crate) const fn steady_class(o: u8, cpl: u8, flag: u8) -> usize {
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
                self.steady.by_key[run] = run_allowed & gc & cpl_bits;
                // An emulated instruction counts on instructions retired, and on branches
                // retired when it is a branch, whatever the record's key.
                let emulate = steady_class(op::EMULATE, user as u8, branch);
                let events = self.instr | if branch != 0 { self.branch } else { 0 };
                self.steady.any_key[emulate] =
                    emulate_allowed & self.filter_ok & gc & cpl_bits & events;
            }
        }
    }
}

/// The ops a steady stretch is made of.
const STEADY_OPS: u16 = 1 << op::RUN | 1 << op::EMULATE | 1 << op::VMENTRY | 1 << op::READ;

#[inline(always)]
pub(crate) fn is_steady(o: u8) -> bool {
    o < 16 && (STEADY_OPS >> o) & 1 != 0
}

/// Records decoded at a time by [`decode_window`].
pub(crate) const WINDOW: usize = 32;
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
pub(crate) fn decode_window(
    t: &TraceRef<'_>,
    from: usize,
    end: usize,
    out: &mut [u8; WINDOW],
) -> usize {
    let w = (end - from).min(WINDOW);
    let (ops, cpls, flags) = (
        &t.op[from..from + w],
        &t.cpl[from..from + w],
        &t.flag[from..from + w],
    );
    for j in 0..w {
        let (o, c, f) = (ops[j], cpls[j], flags[j]);
        let counted = o.wrapping_sub(op::EMULATE) <= op::VMENTRY - op::EMULATE;
        let ok = counted & (c <= CPL_MAX) & (f <= EMULATE_FLAG_MAX);
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
        let mut raw: [u64; LANES] = self.ctr.raw;
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
                    self.ctr.raw = raw;
                    reads.push(self.ctr.read(pmc as usize));
                    continue;
                }
                let c = (c & 15) as usize;
                let matching = if INDEXED {
                    self.index.lookup(key)
                } else {
                    self.key_match(key)
                };
                let m = (self.steady.by_key[c] & matching) | self.steady.any_key[c];
                let amount =
                    std::hint::select_unpredictable(c >= steady_class(op::RUN, 0, 0), v, 1);
                for (raw, lane) in raw.iter_mut().zip(&LANE_MASKS[m as usize]) {
                    *raw += amount & lane;
                }
                key_bits |= key;
            }
            i += w;
        }
        self.ctr.raw = raw;
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
pub(crate) fn steady_stretch(
    pmu: &mut Pmu,
    t: &TraceRef<'_>,
    start: usize,
    n_pmcs: usize,
    reads: &mut Vec<u64>,
) -> (usize, bool) {
    if pmu.ctr.adds_since_settle >= SETTLE_EVERY / 2 {
        pmu.ctr.settle_all(pmu.int);
    }
    let adds_left = (SETTLE_EVERY - pmu.ctr.adds_since_settle) as usize;
    let end = t.len().min(start.saturating_add(adds_left));
    let (i, keys, bad_pmc) = if pmu.index.spill == 0 {
        pmu.count_stretch::<true>(t, start, end, n_pmcs, reads)
    } else {
        pmu.count_stretch::<false>(t, start, end, n_pmcs, reads)
    };
    // READs counted as adds too: a bound, not a count.
    pmu.ctr.adds_since_settle += (i - start) as u32;
    // A key out of range where the record's op may not use it: check the stretch exactly.
    (
        i,
        !bad_pmc && (keys < KEY_LIMIT || fields_ok(&t.slice(start..i), n_pmcs)),
    )
}

/// A model's side of the stretch replay.
pub trait Stretch {
    /// Whether a steady stretch that starts with op `first` may start now: nothing awaits the
    /// next VM-entry, so the VM-entries of the stretch change nothing. When `first` is itself
    /// a VM-entry (RUN or VMENTRY, which re-evaluate what is pending before anything else),
    /// that re-evaluation is done here, and the stretch may start.
    fn steady_ready(&mut self, first: u8) -> bool;
    /// Replay the steady stretch that starts at `start`, when `steady_ready(first)`; returns
    /// where it ended and whether its records were valid.
    fn replay_steady(
        &mut self,
        t: &TraceRef<'_>,
        start: usize,
        n_pmcs: usize,
        reads: &mut Vec<u64>,
    ) -> (usize, bool);
}

impl Stretch for Kvm {
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
}

impl Stretch for Arch {
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
}
