//! A product state with the counter values left out, packed into one `u128`: the state of
//! section 3 that both models share (mode, global control, filter, selectors) and each KVM
//! model's own bookkeeping (`eventsel_hw` EN, `emul_ok`, `pending`). A state is brought back
//! to a pair of models by replaying a few records through the models' own steps, so that the
//! exploration holds no third copy of the rules.

use super::alphabet::{selector, selector_index, KEYS};
use crate::model::{filter, op, Arch, Kvm, Model};
use crate::trace::Record;

/// A model whose decision state the exploration can take apart and put back together.
pub trait Abstract: Model + Clone + Send + Sync {
    /// The model in its reset state, with the same policy.
    fn fresh(&self) -> Self;
    /// Whether a selector write keeps its H/G bits (else `eventsel` holds them dropped).
    fn keeps_hg(&self) -> bool;
    /// The model's own bookkeeping, beyond the shared state: 24 bits.
    fn own_bits(&self) -> u32;
    /// Set what [`Abstract::own_bits`] returned.
    fn set_own_bits(&mut self, bits: u32);
}

impl Abstract for Kvm {
    fn fresh(&self) -> Self {
        Kvm::new(self.p, self.n_pmcs)
    }
    fn keeps_hg(&self) -> bool {
        self.p.hg_honored
    }
    fn own_bits(&self) -> u32 {
        self.hw_en as u32 | (self.emul_ok as u32) << 8 | (self.pending as u32) << 16
    }
    fn set_own_bits(&mut self, bits: u32) {
        self.hw_en = bits as u8;
        self.emul_ok = (bits >> 8) as u8;
        self.pending = (bits >> 16) as u8;
    }
}

impl Abstract for Arch {
    fn fresh(&self) -> Self {
        Arch::new(self.p, self.n_pmcs)
    }
    fn keeps_hg(&self) -> bool {
        true
    }
    fn own_bits(&self) -> u32 {
        0
    }
    fn set_own_bits(&mut self, _bits: u32) {}
}

/// Bits of the shared part: svme (1), guest (1), global control (6), filter action (2), filter
/// key (2), then 8 bits a selector's number.
const SEL_SHIFT: u32 = 12;

/// The packed product state of `a` (the policy) and `b` (the reference), for `n_pmcs` PMCs.
pub fn encode<A: Abstract, B: Abstract>(a: &A, b: &B, n_pmcs: usize) -> u128 {
    let pmu = b.pmu();
    let (action, key) = pmu.filter();
    let key = if action == filter::NONE {
        0
    } else {
        KEYS.iter().position(|&k| k == key).unwrap_or(0) as u64
    };
    let mut shared = pmu.svme as u64
        | (pmu.guest as u64) << 1
        | (pmu.global_ctrl as u64) << 2
        | (action as u64) << 8
        | key << 10;
    // The selectors as written: a model that drops H/G does not remember them.
    let sels = if a.keeps_hg() {
        a.eventsel()
    } else {
        b.eventsel()
    };
    for (i, &sel) in sels.iter().enumerate().take(n_pmcs) {
        let n = selector_index(sel).unwrap_or(0) as u64;
        shared |= n << (SEL_SHIFT + 8 * i as u32);
    }
    shared as u128 | (a.own_bits() as u128) << 64 | (b.own_bits() as u128) << 96
}

/// The mode state (as `crate::trace` encodes it) of a packed state.
pub fn mode_of(key: u128) -> u8 {
    (key & 3) as u8
}

/// Set a fresh model to the shared part of a packed state through its own steps: the filter,
/// the selectors, the global control and the mode, in that order. What the steps leave in the
/// model's own bookkeeping is overwritten afterwards.
fn replay_shared<M: Abstract>(m: &mut M, shared: u64, n_pmcs: usize) {
    let mut reads = Vec::new();
    let mut step = |r: Record| {
        m.step(r, &mut reads);
    };
    let action = (shared >> 8 & 3) as u8;
    step(Record {
        op: op::SET_FILTER,
        flag: action,
        key: KEYS[(shared >> 10 & 3) as usize],
        ..Record::default()
    });
    for i in 0..n_pmcs {
        let n = (shared >> (SEL_SHIFT + 8 * i as u32) & 0xFF) as usize;
        step(Record {
            op: op::WRMSR_EVTSEL,
            pmc: i as u8,
            value: selector(n),
            ..Record::default()
        });
    }
    step(Record {
        op: op::WRMSR_GLOBAL_CTRL,
        value: shared >> 2 & 0x3F,
        ..Record::default()
    });
    if shared & 1 != 0 {
        step(Record {
            op: op::WRMSR_EFER,
            flag: 1,
            ..Record::default()
        });
    }
    if shared & 2 != 0 {
        step(Record {
            op: op::SET_NESTED_STATE,
            flag: 1,
            ..Record::default()
        });
    }
}

/// The pair of models in packed state `key`, from fresh models `a0` and `b0`.
pub fn decode<A: Abstract, B: Abstract>(a0: &A, b0: &B, key: u128, n_pmcs: usize) -> (A, B) {
    let shared = key as u64;
    let (mut a, mut b) = (a0.fresh(), b0.fresh());
    replay_shared(&mut a, shared, n_pmcs);
    replay_shared(&mut b, shared, n_pmcs);
    a.set_own_bits((key >> 64) as u32);
    b.set_own_bits((key >> 96) as u32);
    (a, b)
}

/// A packed state of two-PMC models with PMC 1's part cleared (its global-control bit, its
/// selector number and its bit of each byte of both models' own bookkeeping), so that it
/// holds PMC 0's decision state only: the state of one PMC's component in the automaton
/// engine (`crate::automaton`), where PMC 1 stands for every other PMC. Decoded, PMC 1 is a
/// zero selector with clear bookkeeping; no decision of PMC 0 reads it (docs/verification.md
/// section 4).
pub fn only_pmc0(key: u128) -> u128 {
    let shared = 1u128 << 3 | 0xFF << (SEL_SHIFT + 8);
    let own = 0x0002_0202u128;
    key & !(shared | own << 64 | own << 96)
}
