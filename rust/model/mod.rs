//! The rules of the specification and nothing else: the vocabulary of registers and records
//! (`regs`), the knobs and presets (`policy`), the architectural state both models share
//! (`state`), the KVM model (`kvm`, model.md section 6) and the reference (`arch`, section
//! 5). How fast they run is `crate::replay`'s business: each rule here is written once, and
//! every replay path (the checked loop, steady stretches, the parallel split, fuzzing) calls
//! it.

pub mod arch;
pub mod kvm;
pub mod policy;
pub mod regs;
pub mod state;

pub use arch::Arch;
pub use kvm::Kvm;
pub use policy::{ArchPolicy, Knobs, KvmPolicy, Policy, Timing, KNOBS, PRESETS};
pub use regs::*;
pub use state::Pmu;

use crate::replay::counters::LANES;
use crate::trace::Record;

/// A model of section 5 or 6: what one record does, and what can be observed of its state
/// (section 8).
pub trait Model {
    /// Replay one (valid) record. READ values are pushed onto `reads`. Returns the PMCs the
    /// record counted on (each by 1 for a retired instruction, by `n` for a RUN): a record
    /// adds to counters in no other way, so two models' counts part exactly where these differ.
    fn step(&mut self, r: Record, reads: &mut Vec<u64>) -> u8;
    /// The architectural state.
    fn pmu(&self) -> &Pmu;
    /// The mask of PMCs whose programmed `eventsel_hw` has EN set.
    fn hw_enabled(&self) -> u8;
    /// The programmed `eventsel_hw` of every PMC.
    fn eventsel_hw(&self) -> [u64; MAX_PMCS];

    /// (svme, guest_mode).
    fn mode(&self) -> (bool, bool) {
        (self.pmu().svme, self.pmu().guest)
    }
    /// The mode as `crate::trace` encodes it: bit 0 EFER.SVME, bit 1 guest mode.
    fn mode_state(&self) -> u8 {
        let (svme, guest) = self.mode();
        svme as u8 | (guest as u8) << 1
    }
    /// The guest-visible selectors.
    fn eventsel(&self) -> &[u64; LANES] {
        &self.pmu().eventsel
    }
    fn counters(&self) -> [u64; MAX_PMCS] {
        self.pmu().counters()
    }
    fn overflows(&self) -> [u64; MAX_PMCS] {
        self.pmu().overflows()
    }
    fn pmis(&self) -> [u64; MAX_PMCS] {
        self.pmu().pmis()
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

/// `with_model!(policy, n_pmcs, |m| body)`: `body` with `m` bound to the fresh model that
/// `policy` chooses, compiled once for each model type. The one place where a policy becomes
/// a model type; `with_model!(p, q, n_pmcs, |a, b| body)` does it for a pair.
macro_rules! with_model {
    ($policy:expr, $n_pmcs:expr, |$m:ident| $body:expr) => {
        match $crate::model::AnyModel::new($policy, $n_pmcs) {
            $crate::model::AnyModel::Kvm($m) => $body,
            $crate::model::AnyModel::Arch($m) => $body,
        }
    };
    ($p:expr, $q:expr, $n_pmcs:expr, |$a:ident, $b:ident| $body:expr) => {
        $crate::model::with_model!($p, $n_pmcs, |$a| $crate::model::with_model!(
            $q,
            $n_pmcs,
            |$b| $body
        ))
    };
}
pub(crate) use with_model;
