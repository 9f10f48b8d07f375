//! The abstract record alphabet of the exhaustive exploration: every record that can make a
//! difference to what a PMC counts, with its values drawn from the few that the rules can
//! tell apart (docs/verification.md argues each choice). Each letter is a concrete record, so
//! a path of letters is a trace that `simulate` replays as it is.

use crate::model::{
    filter, op, BRANCHES_RETIRED, EN, GUEST_ONLY, HOST_ONLY, INSTRUCTIONS_RETIRED, INT, OS, USR,
};
use crate::trace::Record;

/// A third event, which KVM never emulates (it is what the generator also draws).
pub const OTHER_EVENT: u32 = crate::fuzz::gen::OTHER_EVENT;
/// A fourth event key, which no selector of the alphabet counts: instructions retired with
/// unit mask 1. Filters and RUNs on it tell "another event" apart from the three a selector
/// may count (keys match by equality only).
pub const FOURTH_KEY: u32 = INSTRUCTIONS_RETIRED | 1 << 12;

/// The events a selector of the alphabet counts.
pub const SELECTOR_EVENTS: [u32; 3] = [INSTRUCTIONS_RETIRED, BRANCHES_RETIRED, OTHER_EVENT];
/// The event keys of RUN and SET_FILTER letters.
pub const KEYS: [u32; 4] = [
    INSTRUCTIONS_RETIRED,
    BRANCHES_RETIRED,
    OTHER_EVENT,
    FOURTH_KEY,
];
/// The selector bits the alphabet varies: every rule reads these and no other (EDGE, INV,
/// CNT_MASK and the unit mask beyond the key are read by none).
pub const SELECTOR_FLAGS: [u64; 6] = [EN, OS, USR, INT, HOST_ONLY, GUEST_ONLY];
/// Selectors of the alphabet: 0, and each event with each subset of [`SELECTOR_FLAGS`].
pub const SELECTORS: usize = 1 + SELECTOR_EVENTS.len() * 64;

/// Selector number `i` of the alphabet (0 is the zero selector).
pub fn selector(i: usize) -> u64 {
    if i == 0 {
        return 0;
    }
    let (event, flags) = ((i - 1) / 64, (i - 1) % 64);
    let key = SELECTOR_EVENTS[event] as u64;
    let mut sel = (key & 0xFF) | (key >> 8 & 0xF) << 32;
    for (b, bit) in SELECTOR_FLAGS.iter().enumerate() {
        if flags & (1 << b) != 0 {
            sel |= bit;
        }
    }
    sel
}

/// The number of a selector of the alphabet, or `None` for a value outside it.
pub fn selector_index(sel: u64) -> Option<usize> {
    if sel == 0 {
        return Some(0);
    }
    let key = crate::model::selector_key(sel);
    let event = SELECTOR_EVENTS.iter().position(|&e| e == key)?;
    let mut flags = 0;
    let mut rest = sel;
    for (b, bit) in SELECTOR_FLAGS.iter().enumerate() {
        if sel & bit != 0 {
            flags |= 1 << b;
            rest &= !bit;
        }
    }
    // Nothing but the event and the flags.
    (selector(1 + event * 64) == rest).then_some(1 + event * 64 + flags)
}

fn rec(op: u8) -> Record {
    Record {
        op,
        ..Record::default()
    }
}

/// The alphabet for `n_pmcs` PMCs, in a fixed order.
pub fn letters(n_pmcs: usize) -> Vec<Record> {
    let mut out = Vec::new();
    for pmc in 0..n_pmcs as u8 {
        for i in 0..SELECTORS {
            out.push(Record {
                op: op::WRMSR_EVTSEL,
                pmc,
                value: selector(i),
                ..Record::default()
            });
        }
        // The value written does not change what any record counts (counters are left out).
        out.push(Record {
            op: op::WRMSR_CTR,
            pmc,
            ..Record::default()
        });
        out.push(Record {
            op: op::READ,
            pmc,
            ..Record::default()
        });
    }
    for v in 0..1u64 << n_pmcs {
        out.push(Record {
            op: op::WRMSR_GLOBAL_CTRL,
            value: v,
            ..Record::default()
        });
    }
    for flag in 0..2 {
        out.push(Record {
            op: op::WRMSR_EFER,
            flag,
            ..rec(op::WRMSR_EFER)
        });
        out.push(Record {
            op: op::SET_NESTED_STATE,
            flag,
            ..rec(op::SET_NESTED_STATE)
        });
    }
    for cpl in [0, 3] {
        out.push(Record {
            cpl,
            ..rec(op::VMRUN)
        });
    }
    for o in [
        op::VMRUN_FAIL,
        op::VMEXIT,
        op::FORCED_LEAVE,
        op::VMENTRY,
        op::RESET,
    ] {
        out.push(rec(o));
    }
    out.push(rec(op::SET_FILTER));
    for action in [filter::ALLOW, filter::DENY] {
        for key in KEYS {
            out.push(Record {
                op: op::SET_FILTER,
                flag: action,
                key,
                ..Record::default()
            });
        }
    }
    for cpl in [0, 3] {
        for flag in 0..2 {
            out.push(Record {
                op: op::EMULATE,
                cpl,
                flag,
                ..Record::default()
            });
        }
        for key in KEYS {
            out.push(Record {
                op: op::RUN,
                cpl,
                key,
                value: 1,
                ..Record::default()
            });
        }
    }
    out
}

/// The letters that `keep` keeps, for explorations of a sub-space (tests, and the two-PMC
/// check on fewer selectors).
pub fn restricted(n_pmcs: usize, keep: impl Fn(&Record) -> bool) -> Vec<Record> {
    letters(n_pmcs).into_iter().filter(|r| keep(r)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_number_themselves() {
        for i in 0..SELECTORS {
            assert_eq!(selector_index(selector(i)), Some(i), "{i}");
        }
        assert_eq!(selector_index(selector(5) | 1 << 18), None);
    }

    #[test]
    fn every_letter_has_fields_in_range() {
        for n in 1..=2 {
            let t = crate::trace::TraceBuf::from_records(&letters(n));
            assert!(crate::trace::fields_ok(&t.as_ref(), n));
        }
    }
}
