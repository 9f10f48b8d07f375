//! Register bits, op codes and policies (model.md sections 2, 4, 6 and 7).

use crate::error::CoreError;

pub const USR: u64 = 1 << 16;
pub const OS: u64 = 1 << 17;
pub const INT: u64 = 1 << 20;
pub const EN: u64 = 1 << 22;
pub const GUEST_ONLY: u64 = 1 << 40;
pub const HOST_ONLY: u64 = 1 << 41;
/// Bits a guest write to a selector drops (bits 19, 21, 36..63), H/G included.
pub const RESERVED_BITS: u64 = 0xFFFF_FFF0_0028_0000;
pub const COUNTER_BITS: u32 = 48;
pub const COUNTER_MASK: u64 = (1 << COUNTER_BITS) - 1;
pub const MAX_PMCS: usize = 6;
pub const INSTRUCTIONS_RETIRED: u32 = 0x0C0;
pub const BRANCHES_RETIRED: u32 = 0x0C2;
/// Event keys are 20 bits: a 12-bit event number and an 8-bit unit mask.
pub const KEY_LIMIT: u32 = 1 << 20;

/// Record op codes: the `op` column (docs/semantics.md).
pub mod op {
    pub const WRMSR_EVTSEL: u8 = 0;
    pub const WRMSR_CTR: u8 = 1;
    pub const WRMSR_GLOBAL_CTRL: u8 = 2;
    pub const WRMSR_EFER: u8 = 3;
    pub const VMRUN: u8 = 4;
    pub const VMRUN_FAIL: u8 = 5;
    pub const VMEXIT: u8 = 6;
    pub const FORCED_LEAVE: u8 = 7;
    pub const SET_NESTED_STATE: u8 = 8;
    pub const SET_FILTER: u8 = 9;
    pub const EMULATE: u8 = 10;
    pub const RUN: u8 = 11;
    pub const VMENTRY: u8 = 12;
    pub const READ: u8 = 13;
    pub const RESET: u8 = 14;
    /// Number of op codes.
    pub const COUNT: usize = 15;
    pub const NAMES: [&str; COUNT] = [
        "WRMSR_EVTSEL",
        "WRMSR_CTR",
        "WRMSR_GLOBAL_CTRL",
        "WRMSR_EFER",
        "VMRUN",
        "VMRUN_FAIL",
        "VMEXIT",
        "FORCED_LEAVE",
        "SET_NESTED_STATE",
        "SET_FILTER",
        "EMULATE",
        "RUN",
        "VMENTRY",
        "READ",
        "RESET",
    ];
}

/// SET_FILTER actions (the record's `flag`).
pub mod filter {
    pub const NONE: u8 = 0;
    pub const ALLOW: u8 = 1;
    pub const DENY: u8 = 2;
}

/// The 20-bit event key a selector counts: event bits 7:0 and 35:32, unit mask 15:8.
#[inline(always)]
pub fn selector_key(sel: u64) -> u32 {
    let event = (sel & 0xFF) | ((sel >> 32) & 0xF) << 8;
    (event | ((sel >> 8) & 0xFF) << 12) as u32
}

/// When a flow re-evaluates the PMCs with H/G bits (model.md section 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timing {
    Sync,
    Deferred,
    None,
}

/// The knobs of a KVM policy (model.md section 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvmPolicy {
    /// `svme0 = ignore`: with SVME = 0 the H/G bits are ignored (v1..v4); otherwise off.
    pub svme0_ignore: bool,
    /// `hg = honored`; false is `reserved` (legacy vPMU).
    pub hg_honored: bool,
    pub emul_mode_aware: bool,
    pub filter_on_sync: bool,
    pub efer: Timing,
    pub vmrun: Timing,
    pub vmexit: Timing,
    pub forced_leave: Timing,
    pub set_nested_state: Timing,
    /// `vmrun_order = after_entry`; false is `before_entry`.
    pub vmrun_after_entry: bool,
}

/// The knobs of the architectural reference (model.md section 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArchPolicy {
    /// `enabling_wrmsr = new`; false is `old`.
    pub enabling_wrmsr_new: bool,
    /// `efer_retire = new`; false is `old`.
    pub efer_retire_new: bool,
    /// `vmrun_retire = guest`; false is `host`.
    pub vmrun_retire_guest: bool,
    /// `failed_vmrun_retire = guest`; false is `host`.
    pub failed_vmrun_retire_guest: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Kvm(KvmPolicy),
    Arch(ArchPolicy),
}

impl Default for ArchPolicy {
    fn default() -> Self {
        ArchPolicy {
            enabling_wrmsr_new: false,
            efer_retire_new: true,
            vmrun_retire_guest: true,
            failed_vmrun_retire_guest: false,
        }
    }
}

impl KvmPolicy {
    /// The `final` preset (merged 2026).
    pub const FINAL: KvmPolicy = KvmPolicy {
        svme0_ignore: false,
        hg_honored: true,
        emul_mode_aware: true,
        filter_on_sync: true,
        efer: Timing::Sync,
        vmrun: Timing::Sync,
        vmexit: Timing::Sync,
        forced_leave: Timing::Deferred,
        set_nested_state: Timing::Deferred,
        vmrun_after_entry: true,
    };
}

/// The knob names of a policy, in the order [`Policy::from_knobs`] reads them: the order of
/// `svmpmu.KNOB_VALUES`, in which `Policy._core_knobs` hands them over (the Python tests
/// that change each knob and compare with the oracle catch a mismatch).
pub const KNOBS: [&str; 15] = [
    "model",
    "svme0",
    "hg",
    "emul_mode_aware",
    "filter_on_sync",
    "efer_timing",
    "vmrun_timing",
    "vmexit_timing",
    "forced_leave_timing",
    "set_nested_state_timing",
    "vmrun_order",
    "enabling_wrmsr",
    "efer_retire",
    "vmrun_retire",
    "failed_vmrun_retire",
];

fn choose(knob: &str, value: &str, yes: &str, no: &str) -> Result<bool, CoreError> {
    if value == yes {
        Ok(true)
    } else if value == no {
        Ok(false)
    } else {
        Err(CoreError::Policy(format!(
            "knob {knob:?} cannot be {value:?}; allowed: {yes:?}, {no:?}"
        )))
    }
}

fn timing(knob: &str, value: &str) -> Result<Timing, CoreError> {
    match value {
        "sync" => Ok(Timing::Sync),
        "deferred" => Ok(Timing::Deferred),
        "none" => Ok(Timing::None),
        _ => Err(CoreError::Policy(format!(
            "knob {knob:?} cannot be {value:?}; allowed: \"sync\", \"deferred\", \"none\""
        ))),
    }
}

impl Policy {
    /// A policy from its knobs, given as strings in the order of [`KNOBS`] (booleans as
    /// "true"/"false"). Every knob is checked, whichever model is chosen.
    pub fn from_knobs(values: &[&str; 15]) -> Result<Policy, CoreError> {
        let arch = choose(KNOBS[0], values[0], "arch", "kvm")?;
        let kvm = KvmPolicy {
            svme0_ignore: choose(KNOBS[1], values[1], "ignore", "off")?,
            hg_honored: choose(KNOBS[2], values[2], "honored", "reserved")?,
            emul_mode_aware: choose(KNOBS[3], values[3], "true", "false")?,
            filter_on_sync: choose(KNOBS[4], values[4], "true", "false")?,
            efer: timing(KNOBS[5], values[5])?,
            vmrun: timing(KNOBS[6], values[6])?,
            vmexit: timing(KNOBS[7], values[7])?,
            forced_leave: timing(KNOBS[8], values[8])?,
            set_nested_state: timing(KNOBS[9], values[9])?,
            vmrun_after_entry: choose(KNOBS[10], values[10], "after_entry", "before_entry")?,
        };
        let reference = ArchPolicy {
            enabling_wrmsr_new: choose(KNOBS[11], values[11], "new", "old")?,
            efer_retire_new: choose(KNOBS[12], values[12], "new", "old")?,
            vmrun_retire_guest: choose(KNOBS[13], values[13], "guest", "host")?,
            failed_vmrun_retire_guest: choose(KNOBS[14], values[14], "guest", "host")?,
        };
        Ok(if arch {
            Policy::Arch(reference)
        } else {
            Policy::Kvm(kvm)
        })
    }

    /// A preset by name (model.md section 7).
    pub fn preset(name: &str) -> Result<Policy, CoreError> {
        let f = KvmPolicy::FINAL;
        let old = KvmPolicy {
            svme0_ignore: true,
            emul_mode_aware: false,
            vmrun_after_entry: false,
            ..f
        };
        Ok(match name {
            "arch" => Policy::Arch(ArchPolicy::default()),
            "final" => Policy::Kvm(f),
            "hybrid" => Policy::Kvm(KvmPolicy {
                svme0_ignore: true,
                ..f
            }),
            "v4" => Policy::Kvm(KvmPolicy {
                efer: Timing::Deferred,
                vmrun: Timing::Deferred,
                vmexit: Timing::Deferred,
                ..old
            }),
            "v3" => Policy::Kvm(KvmPolicy {
                filter_on_sync: false,
                forced_leave: Timing::Sync,
                set_nested_state: Timing::Sync,
                ..old
            }),
            "v1" => Policy::Kvm(KvmPolicy {
                filter_on_sync: false,
                forced_leave: Timing::None,
                set_nested_state: Timing::None,
                ..old
            }),
            "legacy" => Policy::Kvm(KvmPolicy {
                hg_honored: false,
                emul_mode_aware: false,
                efer: Timing::None,
                vmrun: Timing::None,
                vmexit: Timing::None,
                forced_leave: Timing::None,
                set_nested_state: Timing::None,
                vmrun_after_entry: false,
                ..f
            }),
            _ => return Err(CoreError::Policy(format!("unknown preset {name:?}"))),
        })
    }
}
