//! The knobs of a policy (model.md sections 5 and 6), the presets of section 7, and the one
//! table that names every knob and its values. The Python `svmpmu.Policy` reads the knob
//! order, the allowed values and the presets from here (`KNOBS`, `PRESETS`), so that they
//! are written once; the oracle keeps its own transcription of section 7 on purpose.

use crate::error::CoreError;

/// When a flow re-evaluates the PMCs with H/G bits (model.md section 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timing {
    /// At the moment the state changes.
    Sync,
    /// At the next VM-entry (KVM_REQ_PMU).
    Deferred,
    /// Never: the flow is not hooked.
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

/// The model a policy runs: KVM's, or the reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Kvm(KvmPolicy),
    Arch(ArchPolicy),
}

/// Every knob, as a `svmpmu.Policy` holds them: the model, and the knobs of both models
/// (those of the model not chosen are carried along and ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Knobs {
    /// `model = arch`; false is `kvm`.
    pub arch: bool,
    pub kvm: KvmPolicy,
    pub reference: ArchPolicy,
}

/// Every knob and its values, in the order in which a policy crosses into the core (as a
/// tuple of these strings, booleans as "true"/"false"). The Python `Policy` declares its
/// fields in this order and checks it against this table at import.
pub const KNOBS: [(&str, &[&str]); 15] = [
    ("model", &["kvm", "arch"]),
    ("svme0", &["off", "ignore"]),
    ("hg", &["honored", "reserved"]),
    ("emul_mode_aware", BOOL),
    ("filter_on_sync", BOOL),
    ("efer_timing", TIMING),
    ("vmrun_timing", TIMING),
    ("vmexit_timing", TIMING),
    ("forced_leave_timing", TIMING),
    ("set_nested_state_timing", TIMING),
    ("vmrun_order", &["after_entry", "before_entry"]),
    ("enabling_wrmsr", &["old", "new"]),
    ("efer_retire", &["new", "old"]),
    ("vmrun_retire", &["guest", "host"]),
    ("failed_vmrun_retire", &["host", "guest"]),
];
const BOOL: &[&str] = &["true", "false"];
const TIMING: &[&str] = &["sync", "deferred", "none"];

const TIMINGS: [Timing; 3] = [Timing::Sync, Timing::Deferred, Timing::None];

/// A timing's position in [`TIMING`].
fn timing_index(t: Timing) -> u8 {
    match t {
        Timing::Sync => 0,
        Timing::Deferred => 1,
        Timing::None => 2,
    }
}

impl Knobs {
    /// Each knob's value as its position in the knob's list in [`KNOBS`]. With [`decode`],
    /// the one place where a field meets its position.
    ///
    /// [`decode`]: Knobs::decode
    fn encode(&self) -> [u8; 15] {
        let (k, r) = (&self.kvm, &self.reference);
        // A two-valued knob whose first value means `true` is `!b`, whose second means it, `b`.
        let first = |b: bool| u8::from(!b);
        let second = u8::from;
        [
            second(self.arch),
            second(k.svme0_ignore),
            first(k.hg_honored),
            first(k.emul_mode_aware),
            first(k.filter_on_sync),
            timing_index(k.efer),
            timing_index(k.vmrun),
            timing_index(k.vmexit),
            timing_index(k.forced_leave),
            timing_index(k.set_nested_state),
            first(k.vmrun_after_entry),
            second(r.enabling_wrmsr_new),
            first(r.efer_retire_new),
            first(r.vmrun_retire_guest),
            second(r.failed_vmrun_retire_guest),
        ]
    }

    fn decode(ix: [u8; 15]) -> Knobs {
        let first = |i: usize| ix[i] == 0;
        let second = |i: usize| ix[i] == 1;
        let timing = |i: usize| TIMINGS[ix[i] as usize];
        Knobs {
            arch: second(0),
            kvm: KvmPolicy {
                svme0_ignore: second(1),
                hg_honored: first(2),
                emul_mode_aware: first(3),
                filter_on_sync: first(4),
                efer: timing(5),
                vmrun: timing(6),
                vmexit: timing(7),
                forced_leave: timing(8),
                set_nested_state: timing(9),
                vmrun_after_entry: first(10),
            },
            reference: ArchPolicy {
                enabling_wrmsr_new: second(11),
                efer_retire_new: first(12),
                vmrun_retire_guest: first(13),
                failed_vmrun_retire_guest: second(14),
            },
        }
    }

    /// The knob values as strings, in the order of [`KNOBS`].
    pub fn strings(&self) -> [&'static str; 15] {
        let ix = self.encode();
        std::array::from_fn(|k| KNOBS[k].1[ix[k] as usize])
    }

    /// Knobs from their values as strings, in the order of [`KNOBS`]; every knob is checked,
    /// whichever model is chosen, and an unknown value is an error naming the knob.
    pub fn parse(values: &[&str; 15]) -> Result<Knobs, CoreError> {
        let mut ix = [0u8; 15];
        for (k, (&value, (name, allowed))) in values.iter().zip(KNOBS).enumerate() {
            ix[k] = allowed.iter().position(|&a| a == value).ok_or_else(|| {
                let allowed: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
                CoreError::Policy(format!(
                    "knob {name:?} cannot be {value:?}; allowed: {}",
                    allowed.join(", ")
                ))
            })? as u8;
        }
        Ok(Knobs::decode(ix))
    }

    /// The model these knobs choose, with its knobs.
    pub fn policy(&self) -> Policy {
        if self.arch {
            Policy::Arch(self.reference)
        } else {
            Policy::Kvm(self.kvm)
        }
    }
}

/// The reference's defaults (model.md section 5).
pub const ARCH_DEFAULT: ArchPolicy = ArchPolicy {
    enabling_wrmsr_new: false,
    efer_retire_new: true,
    vmrun_retire_guest: true,
    failed_vmrun_retire_guest: false,
};

impl Default for ArchPolicy {
    fn default() -> Self {
        ARCH_DEFAULT
    }
}

impl KvmPolicy {
    /// The `final` preset (merged 2026), the default of every KVM knob.
    pub const FINAL: KvmPolicy = KvmPolicy {
        svme0_ignore: false,
        hg_honored: true,
        emul_mode_aware: true,
        filter_on_sync: true,
        efer: Timing::Sync,
        vmrun: Timing::Sync,
        vmexit: Timing::Sync,
        forced_leave: Timing::Deferred,
        set_nested_state: Timing::Sync,
        vmrun_after_entry: true,
    };
    /// What v1 to v4 share: H/G ignored with SVME = 0, `emul_ok` not mode-aware, VMRUN
    /// retired before the entry.
    const PATCHES: KvmPolicy = KvmPolicy {
        svme0_ignore: true,
        emul_mode_aware: false,
        vmrun_after_entry: false,
        ..KvmPolicy::FINAL
    };
}

const fn kvm(p: KvmPolicy) -> Knobs {
    Knobs {
        arch: false,
        kvm: p,
        reference: ARCH_DEFAULT,
    }
}

/// The presets of model.md section 7, by name. Every knob a preset does not set has its
/// default: the `final` preset's, and the reference's of section 5.
pub const PRESETS: [(&str, Knobs); 7] = [
    ("final", kvm(KvmPolicy::FINAL)),
    (
        "hybrid",
        kvm(KvmPolicy {
            svme0_ignore: true,
            ..KvmPolicy::FINAL
        }),
    ),
    (
        "v4",
        kvm(KvmPolicy {
            efer: Timing::Deferred,
            vmrun: Timing::Deferred,
            vmexit: Timing::Deferred,
            forced_leave: Timing::Deferred,
            set_nested_state: Timing::Deferred,
            ..KvmPolicy::PATCHES
        }),
    ),
    (
        "v3",
        kvm(KvmPolicy {
            filter_on_sync: false,
            forced_leave: Timing::Sync,
            set_nested_state: Timing::Sync,
            ..KvmPolicy::PATCHES
        }),
    ),
    (
        "v1",
        kvm(KvmPolicy {
            filter_on_sync: false,
            forced_leave: Timing::None,
            set_nested_state: Timing::None,
            ..KvmPolicy::PATCHES
        }),
    ),
    (
        "legacy",
        kvm(KvmPolicy {
            hg_honored: false,
            emul_mode_aware: false,
            efer: Timing::None,
            vmrun: Timing::None,
            vmexit: Timing::None,
            forced_leave: Timing::None,
            set_nested_state: Timing::None,
            vmrun_after_entry: false,
            ..KvmPolicy::FINAL
        }),
    ),
    (
        "arch",
        Knobs {
            arch: true,
            kvm: KvmPolicy::FINAL,
            reference: ARCH_DEFAULT,
        },
    ),
];

impl Policy {
    /// A policy from its knobs as strings, in the order of [`KNOBS`] (see [`Knobs::parse`]).
    pub fn from_knobs(values: &[&str; 15]) -> Result<Policy, CoreError> {
        Ok(Knobs::parse(values)?.policy())
    }

    /// A preset by name (model.md section 7).
    pub fn preset(name: &str) -> Result<Policy, CoreError> {
        PRESETS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, k)| k.policy())
            .ok_or_else(|| CoreError::Policy(format!("unknown preset {name:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_parse_round_trip_every_value_of_every_knob() {
        for (_, preset) in PRESETS {
            for (k, (_, allowed)) in KNOBS.iter().enumerate() {
                for &value in *allowed {
                    let mut s = preset.strings();
                    s[k] = value;
                    let parsed = Knobs::parse(&s).unwrap();
                    assert_eq!(parsed.strings(), s);
                }
            }
        }
    }

    #[test]
    fn presets_read_back_as_their_models() {
        assert_eq!(
            Policy::preset("final").unwrap(),
            Policy::Kvm(KvmPolicy::FINAL)
        );
        assert_eq!(Policy::preset("arch").unwrap(), Policy::Arch(ARCH_DEFAULT));
        for (name, knobs) in PRESETS {
            let parsed = Policy::from_knobs(&knobs.strings()).unwrap();
            assert_eq!(parsed, Policy::preset(name).unwrap(), "{name}");
        }
    }

    #[test]
    fn an_unknown_value_names_the_knob() {
        let mut s = PRESETS[0].1.strings();
        s[6] = "later";
        let e = Knobs::parse(&s).unwrap_err();
        assert!(e.to_string().contains("vmrun_timing"), "{e}");
        assert!(Policy::preset("v5").is_err());
    }
}
