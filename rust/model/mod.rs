//! The rules of the specification and nothing else: the registers and records' vocabulary
//! (`regs`), the knobs and presets (`policy`), the architectural state both models share
//! (`state`), the KVM model (`kvm`, model.md section 6) and the reference (`arch`, section
//! 5). How fast they run is `crate::replay`'s business; each rule here is written once and
//! used by every replay path.

pub mod policy;
pub mod regs;

pub use policy::{ArchPolicy, Knobs, KvmPolicy, Policy, Timing, KNOBS, PRESETS};
pub use regs::*;
