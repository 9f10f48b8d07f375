//! The architectural state both models share (model.md section 3): the mode, the global
//! control, the filter, the selectors and the counters, with the predicates every rule is
//! made of (`key_match`, `cpl_match`, `counts_in_mode`, `filter_ok`) kept as bitmasks over
//! the PMCs (bit i = PMC i), as KVM keeps its bitmaps, so that a rule is a few AND/OR
//! operations. How keys are looked up and counters added fast is `crate::replay`'s
//! (`keys`, `counters`); the state only holds them.

use crate::model::{
    filter, selector_key, BRANCHES_RETIRED, EN, GUEST_ONLY, HOST_ONLY, INSTRUCTIONS_RETIRED, INT,
    MAX_PMCS, OS, USR,
};
use crate::replay::counters::{Counters, LANES};
use crate::replay::keys::KeyIndex;
use crate::replay::stretch::StretchMasks;

/// The state of section 3 that the reference and the KVM model have alike.
#[derive(Clone, Debug)]
pub struct Pmu {
    /// The PMCs that exist (`n_pmcs` low bits).
    pub(crate) all: u8,
    pub(crate) svme: bool,
    pub(crate) guest: bool,
    pub(crate) global_ctrl: u8,
    pub(crate) filter_action: u8,
    pub(crate) filter_key: u32,
    pub(crate) eventsel: [u64; LANES],
    /// Each selector's event key.
    pub(crate) key: [u32; LANES],
    pub(crate) index: KeyIndex,
    // Bitmasks over PMCs derived from `eventsel` and the filter.
    pub(crate) en: u8,
    pub(crate) host_only: u8,
    pub(crate) guest_only: u8,
    pub(crate) int: u8,
    pub(crate) os: u8,
    pub(crate) usr: u8,
    pub(crate) instr: u8,
    pub(crate) branch: u8,
    pub(crate) filter_ok: u8,
    pub(crate) ctr: Counters,
    /// How the records of the current steady stretch count (`crate::replay::stretch`). Kept
    /// here rather than beside the state: the stretch loop reaches them through the pointer
    /// it uses for the key index, and one pointer fewer is reloaded from the stack each
    /// record (57.4 against 59.1 instructions a record, 1.5% to 5% faster).
    pub(crate) steady: StretchMasks,
    /// The factors of the last counting decision (`retire`, `count_events`), for
    /// `crate::explain`. Nothing reads it while replaying: writing it costs a few stores.
    pub(crate) decision: Decision,
}

/// The factors of one counting decision, each a mask over the PMCs, as they were when the
/// instruction retired or the RUN counted: what was counted is the AND of them (model.md
/// sections 5 and 6). `crate::explain` names the factor that ruled a PMC out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Whether decisions are kept at all (off but while explaining: one predictable branch).
    pub keep: bool,
    /// Whether a decision was made since `made` was last cleared.
    pub made: bool,
    /// The selectors' EN bits.
    pub en: u8,
    /// What the model allowed: `emul_ok` or `eventsel_hw` EN (KVM); EN and the mode rule, and
    /// the filter for a RUN (`arch`).
    pub allowed: u8,
    pub global: u8,
    pub filter: u8,
    /// OS/USR against the CPL.
    pub cpl: u8,
    /// The selectors that count the event (instructions or branches retired, a RUN's key).
    pub event: u8,
    /// The selectors' H and G bits, and the mode (svme, guest) of the shared state.
    pub host_only: u8,
    pub guest_only: u8,
    pub svme: bool,
    pub guest: bool,
}

/// The H/G rule of model.md section 5's table over the PMCs in `all`, given their Host-Only
/// and Guest-Only bits (`svme0_ignore`: section 6's `svme0 = ignore`). [`Pmu::counts_in_mode`]
/// applies it to the current selectors; `crate::explain` to those of a past decision.
#[inline(always)]
pub fn counts_in_mode(
    all: u8,
    host_only: u8,
    guest_only: u8,
    svme: bool,
    guest: bool,
    svme0_ignore: bool,
) -> u8 {
    let hg = host_only | guest_only;
    let plain = all & !hg;
    let svme = (svme as u8).wrapping_neg();
    let guest = (guest as u8).wrapping_neg();
    let ignore = (svme0_ignore as u8).wrapping_neg();
    plain | (!svme & ignore & hg) | (svme & ((guest & guest_only) | (!guest & host_only)))
}

impl Pmu {
    /// The reset state for `n_pmcs` PMCs, with no filter.
    pub fn new(n_pmcs: usize) -> Self {
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
            ctr: Counters::new(),
            steady: StretchMasks::default(),
            decision: Decision::default(),
        }
    }

    /// Keep the factors of a counting decision (see [`Decision`]) when asked to.
    #[inline(always)]
    fn decide(&mut self, allowed: u8, cpl: u8, event: u8) {
        if self.decision.keep {
            self.keep_decision(allowed, cpl, event);
        }
    }

    #[cold]
    #[inline(never)]
    fn keep_decision(&mut self, allowed: u8, cpl: u8, event: u8) {
        self.decision = Decision {
            keep: true,
            made: true,
            en: self.en,
            allowed,
            global: self.global_ctrl,
            filter: self.filter_ok,
            cpl,
            event,
            host_only: self.host_only,
            guest_only: self.guest_only,
            svme: self.svme,
            guest: self.guest,
        };
    }

    /// The filter in force, as SET_FILTER's (action, key): the VM's, which RESET keeps
    /// (model.md section 3).
    pub fn filter(&self) -> (u8, u32) {
        (self.filter_action, self.filter_key)
    }

    /// PMCs whose selector key is `k` (model.md section 2, event key).
    #[inline(always)]
    pub fn key_match(&self, k: u32) -> u8 {
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
    pub(crate) fn key_compare(&self, k: u32, among: u8) -> u8 {
        let mut m = 0u8;
        for i in 0..LANES {
            m |= ((self.key[i] == k) as u8) << i;
        }
        m & among
    }

    /// PMCs whose OS/USR bit matches `cpl` (model.md section 2, CPL match).
    #[inline(always)]
    pub fn cpl_match(&self, cpl: u8) -> u8 {
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
    pub fn set_eventsel(&mut self, i: usize, v: u64) {
        // Wraps so far are credited under the old INT bit.
        self.ctr.settle(i, self.int);
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

    /// Replace the event filter (SET_FILTER).
    pub fn set_filter(&mut self, action: u8, k: u32) {
        self.filter_action = action;
        self.filter_key = k;
        self.update_filter_ok();
    }

    /// The PMCs that count in mode (svme, guest) under the H/G rule (model.md section 5's
    /// table; `svme0_ignore`: section 6's `svme0 = ignore`).
    #[inline(always)]
    pub fn counts_in_mode(&self, svme: bool, guest: bool, svme0_ignore: bool) -> u8 {
        counts_in_mode(
            self.all,
            self.host_only,
            self.guest_only,
            svme,
            guest,
            svme0_ignore,
        )
    }

    /// The PMCs with an H or G bit: those a transition re-evaluates.
    #[inline(always)]
    pub fn has_hg(&self) -> u8 {
        self.host_only | self.guest_only
    }

    /// Add `n` to the counters in `mask` (model.md section 5, counter arithmetic).
    #[inline(always)]
    pub fn add(&mut self, mask: u8, n: u64) {
        self.ctr.add(mask, n, self.int);
    }

    /// Count one retired instruction (and a retired branch when flagged) at `cpl` on the
    /// `allowed` PMCs that are globally enabled, allowed by the filter and count that event
    /// at that CPL (model.md sections 4 to 6). Returns the PMCs it counted on.
    #[inline(always)]
    pub fn retire(&mut self, allowed: u8, cpl: u8, branch: bool) -> u8 {
        let cpl_ok = self.cpl_match(cpl);
        let base = allowed & self.global_ctrl & self.filter_ok & cpl_ok;
        // instructions and branches retired are different keys: one add covers both.
        let branch_mask = self.branch & (branch as u8).wrapping_neg();
        let event = self.instr | branch_mask;
        let m = base & event;
        self.decide(allowed, cpl_ok, event);
        self.add(m, 1);
        m
    }

    /// `n` events of `key` at `cpl` count on the `allowed` PMCs that are globally enabled and
    /// count that event at that CPL (a RUN, model.md sections 5 and 6). Returns the PMCs it
    /// counted on (none for `n = 0`).
    #[inline(always)]
    pub fn count_events(&mut self, allowed: u8, key: u32, cpl: u8, n: u64) -> u8 {
        let (event, cpl_ok) = (self.key_match(key), self.cpl_match(cpl));
        let m = allowed & self.global_ctrl & event & cpl_ok & ((n != 0) as u8).wrapping_neg();
        self.decide(allowed, cpl_ok, event);
        self.add(m, n);
        m
    }

    /// WRMSR to a counter: its value, masked to 48 bits (no overflow).
    pub fn write_ctr(&mut self, i: usize, v: u64) {
        self.ctr.write(i, v, self.int);
    }

    /// Replace the global control (masked to the PMCs that exist); the PMCs whose bit changed.
    #[inline(always)]
    pub fn write_global_ctrl(&mut self, v: u64) -> u8 {
        let v = (v as u8) & self.all;
        let changed = self.global_ctrl ^ v;
        self.global_ctrl = v;
        changed
    }

    /// The value of counter `i` (READ).
    #[inline(always)]
    pub fn read(&self, i: usize) -> u64 {
        self.ctr.read(i)
    }

    /// READ: the value of counter `pmc` goes to the output; it counts nothing.
    #[inline(always)]
    pub fn read_into(&self, pmc: u8, reads: &mut Vec<u64>) -> u8 {
        reads.push(self.read(pmc as usize));
        0
    }

    pub fn counters(&self) -> [u64; MAX_PMCS] {
        self.ctr.values()
    }

    pub fn overflows(&self) -> [u64; MAX_PMCS] {
        self.ctr.overflows()
    }

    pub fn pmis(&self) -> [u64; MAX_PMCS] {
        self.ctr.pmis(self.int)
    }

    /// The value a hypervisor programs for `sel` with enable bit `en` (model.md section 6:
    /// `(eventsel & ~H) | G` when H/G are honoured, `eventsel` when they are reserved; 0
    /// while the selector is 0).
    pub fn programmed(sel: u64, en: bool, hg_honored: bool) -> u64 {
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
