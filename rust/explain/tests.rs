use super::*;
use crate::model::{KvmPolicy, Timing, EN, GUEST_ONLY, INSTRUCTIONS_RETIRED, OS, USR};
use crate::trace::{Record, TraceBuf};

fn preset(name: &str) -> Policy {
    Policy::preset(name).unwrap()
}

/// `final` with some knobs changed.
fn final_with(change: impl FnOnce(&mut KvmPolicy)) -> Policy {
    let Policy::Kvm(mut p) = preset("final") else {
        unreachable!("final is a KVM policy")
    };
    change(&mut p);
    Policy::Kvm(p)
}

fn trace(records: &[Record]) -> TraceBuf {
    let mut t = TraceBuf::default();
    for r in records {
        t.push(*r);
    }
    t
}

fn rec(op: u8, pmc: u8, cpl: u8, flag: u8, key: u32, value: u64) -> Record {
    Record {
        op,
        pmc,
        cpl,
        flag,
        key,
        value,
    }
}

/// The worked example of model.md section 9.
fn worked_example() -> TraceBuf {
    let g = EN | OS | USR | GUEST_ONLY | INSTRUCTIONS_RETIRED as u64;
    trace(&[
        rec(op::WRMSR_EVTSEL, 0, 0, 0, 0, g),
        rec(op::WRMSR_EFER, 0, 0, 1, 0, 0),
        rec(op::VMENTRY, 0, 0, 0, 0, 0),
        rec(op::VMRUN, 0, 0, 0, 0, 0),
        rec(op::RUN, 0, 3, 0, INSTRUCTIONS_RETIRED, 1000),
        rec(op::VMEXIT, 0, 0, 0, 0, 0),
        rec(op::READ, 0, 0, 0, 0, 0),
    ])
}

#[test]
fn v4_counts_the_enabling_wrmsr_and_the_efer_write_blind_to_the_mode() {
    let t = worked_example();
    let e = explain(&t.as_ref(), &preset("v4"), &preset("arch"), 1);
    // WRMSR_EVTSEL: v4 counts it (emul_ok ignores the mode); arch attributes it to the old,
    // disabled selector.
    // (With SVME = 0, v4 ignores H/G bits: its mode rule allows the write.)
    assert_eq!(e.counted[0], [1, 0]);
    assert_eq!(e.reasons[0][0][0], reason::COUNTED);
    assert_eq!(e.reasons[0][1][0], reason::NOT_ENABLED);
    // WRMSR_EFER: v4 again; arch: the G counter does not count in host mode.
    assert_eq!(e.counted[1], [1, 0]);
    assert_eq!(e.reasons[1][0][0], reason::COUNTED_MODE_BLIND);
    assert_eq!(e.reasons[1][1][0], reason::MODE_RULE);
    assert_eq!((e.mode_before[1], e.mode_after[1]), (0, 1));
    // VMRUN: both count it; RUN: both count 1000; VMEXIT decides nothing.
    assert_eq!(e.counted[3], [1, 1]);
    assert_eq!(e.counted[4], [1, 1]);
    assert_eq!(e.reasons[5][0][0], reason::NONE);
    assert_eq!(e.reads, [vec![1003], vec![1001]]);
}

#[test]
fn final_before_entry_retires_vmrun_in_the_host() {
    let before = final_with(|p| p.vmrun_after_entry = false);
    let e = explain(&worked_example().as_ref(), &before, &preset("arch"), 1);
    assert_eq!(e.counted[3], [0, 1]);
    assert_eq!(e.reasons[3][0][0], reason::MODE_RULE);
    assert_eq!(e.reasons[0][0][0], reason::MODE_RULE); // final: emul_ok is mode-aware
}

#[test]
fn a_deferred_vmexit_leaves_a_pending_pmc_that_names_its_record() {
    let deferred = final_with(|p| p.vmexit = Timing::Deferred);
    let h = EN | OS | USR | crate::model::HOST_ONLY | INSTRUCTIONS_RETIRED as u64;
    let t = trace(&[
        rec(op::WRMSR_EVTSEL, 0, 0, 0, 0, h),
        rec(op::WRMSR_EFER, 0, 0, 1, 0, 0),
        rec(op::VMRUN, 0, 0, 0, 0, 0),
        rec(op::VMEXIT, 0, 0, 0, 0, 0),
        rec(op::EMULATE, 0, 0, 0, 0, 0),
        rec(op::VMENTRY, 0, 0, 0, 0, 0),
        rec(op::EMULATE, 0, 0, 0, 0, 0),
    ]);
    let e = explain(&t.as_ref(), &deferred, &preset("arch"), 1);
    // After the VMEXIT (record 3), the H counter's emul_ok waits for the next VM-entry.
    assert_eq!(e.counted[4], [0, 1]);
    assert_eq!(e.reasons[4][0][0], reason::PENDING);
    assert_eq!(e.since[4][0][0], 3);
    assert_eq!(e.reasons[4][1][0], reason::COUNTED);
    // After the VM-entry, both count.
    assert_eq!(e.counted[6], [1, 1]);
    assert_eq!(e.since[6][0][0], NEVER);
}

#[test]
fn every_factor_has_its_reason() {
    let g = EN | OS | GUEST_ONLY | INSTRUCTIONS_RETIRED as u64;
    let t = trace(&[
        rec(op::WRMSR_EVTSEL, 0, 0, 0, 0, g),
        rec(op::WRMSR_EFER, 0, 0, 1, 0, 0),
        rec(op::VMRUN, 0, 0, 0, 0, 0),
        rec(op::RUN, 0, 3, 0, INSTRUCTIONS_RETIRED, 10), // OS only: CPL 3 does not count
        rec(op::RUN, 0, 0, 0, 0xC2, 10),                 // another event
        rec(op::RUN, 0, 0, 0, INSTRUCTIONS_RETIRED, 0),  // no events
        rec(op::WRMSR_GLOBAL_CTRL, 0, 0, 0, 0, 0),
        rec(op::RUN, 0, 0, 0, INSTRUCTIONS_RETIRED, 10), // global control off
        rec(op::WRMSR_GLOBAL_CTRL, 0, 0, 0, 0, 1),
        rec(
            op::SET_FILTER,
            0,
            0,
            crate::model::filter::DENY,
            INSTRUCTIONS_RETIRED,
            0,
        ),
        rec(op::RUN, 0, 0, 0, INSTRUCTIONS_RETIRED, 10), // filter
    ]);
    for policy in ["final", "arch"] {
        let e = explain(&t.as_ref(), &preset(policy), &preset("arch"), 1);
        let why: Vec<u8> = [3, 4, 5, 7, 10]
            .iter()
            .map(|&i| e.reasons[i][0][0])
            .collect();
        assert_eq!(
            why,
            [
                reason::CPL,
                reason::OTHER_EVENT,
                reason::NO_EVENTS,
                reason::GLOBAL_CTRL,
                reason::FILTER
            ],
            "{policy}"
        );
    }
}

#[test]
fn the_counts_are_the_models_own() {
    use crate::fuzz::gen::{Generator, Mix};
    let g = Generator::new(Mix::default(), 6).unwrap();
    for index in 0..50 {
        let t = g.trace(3, index, 300);
        for (p, q) in [("v4", "arch"), ("final", "arch"), ("legacy", "hybrid")] {
            let e = explain(&t.as_ref(), &preset(p), &preset(q), 6);
            let r = crate::replay::compare(&t.as_ref(), &preset(p), &preset(q), 6).unwrap();
            assert_eq!(e.reads[0], r.policy.reads);
            assert_eq!(e.reads[1], r.reference.reads);
            // Counted exactly where the reason says so.
            for (k, (c, why)) in e.counted.iter().zip(&e.reasons).enumerate() {
                for m in 0..2 {
                    for (i, &code) in why[m].iter().enumerate() {
                        let counted = c[m] >> i & 1 != 0;
                        let says = matches!(
                            code,
                            reason::COUNTED
                                | reason::COUNTED_MODE_BLIND
                                | reason::COUNTED_STALE
                                | reason::COUNTED_FILTER_BYPASSED
                        );
                        assert_eq!(
                            counted,
                            says,
                            "trace {index} record {k} ({:?}) {p}/{q} model {m} pmc {i}: {}",
                            t.as_ref().record(k),
                            code
                        );
                    }
                }
            }
        }
    }
}
