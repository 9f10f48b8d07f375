//! Tests of the replay paths against the spec's worked example and against each other.

use super::*;
use crate::fuzz::gen::{Generator, Mix};
use crate::model::state::Pmu;
use crate::model::*;
use crate::replay::counters::*;
use crate::replay::keys::key_slot;
use crate::trace::TraceBuf;
use crate::trace::*;

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
    let mut rng = crate::fuzz::gen::Rng::for_trace(99, 0);
    for k in 0..3000u64 {
        let recs = crate::fuzz::gen::arbitrary_records(&mut rng, (k % 40) as usize);
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
    let mut rng = crate::fuzz::gen::Rng::for_trace(7, 0);
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
    let mut rng = crate::fuzz::gen::Rng::for_trace(23, 0);
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
                op::VMENTRY => (r.cpl, r.flag, r.key, r.value) = (x as u8 | 4, 0xFF, u32::MAX, x),
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
    let mut rng = crate::fuzz::gen::Rng::for_trace(3, 0);
    for n_pmcs in [1, 4, 6] {
        let mut pmu = Pmu::new(n_pmcs);
        for _ in 0..5000 {
            let x = rng.next_u64();
            let k = keys[(x % 6) as usize];
            let sel = (k & 0xFF) as u64 | ((k >> 8) as u64 & 0xF) << 32 | ((k >> 12) as u64) << 8;
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
    let mut rng = crate::fuzz::gen::Rng::for_trace(13, 0);
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
    let adds = m.pmu.ctr.adds_since_settle;
    assert!((SETTLE_EVERY / 2..=SETTLE_EVERY).contains(&adds), "{adds}");
    assert_eq!(m.counters()[0], 1 + 3 * SETTLE_EVERY as u64);
}

#[test]
fn huge_runs_in_a_stretch_take_the_exact_path() {
    // A RUN of 2^40 events or more ends the stretch loop, whose lazy counters would
    // overflow 64 bits on two RUNs near 2^63: the per-record path adds it exactly.
    let g = Generator::new(Mix::workload(), 6).unwrap();
    let mut rng = crate::fuzz::gen::Rng::for_trace(31, 0);
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

/// A trace longer than a few `RECORDS_PER_CHECK`: `prefix` records that count nothing
/// (RUNs before any selector is written), then a generated trace of `mix`.
fn long_trace(prefix: usize, mix: Mix, length: usize) -> TraceBuf {
    let idle = Record {
        cpl: 3,
        key: INSTRUCTIONS_RETIRED,
        value: 7,
        ..rec(op::RUN)
    };
    let mut recs = vec![idle; prefix];
    let g = Generator::new(mix, 6).unwrap();
    recs.extend(g.trace(23, 0, length).as_ref().records());
    TraceBuf::from_records(&recs)
}

#[test]
fn calls_cut_into_pieces_give_the_results_of_one_pass() {
    // simulate, compare and validate work in pieces of RECORDS_PER_CHECK records, with a
    // check of their Cancel in between: the cut changes nothing.
    use crate::cancel::{Cancel, RECORDS_PER_CHECK};
    let polls = || false;
    let cancel = Cancel::new(&polls);
    for mix in [Mix::default(), Mix::workload()] {
        let t = long_trace(RECORDS_PER_CHECK + 3, mix, RECORDS_PER_CHECK + 5_000);
        let t = t.as_ref();
        for name in ["final", "v4", "arch"] {
            let p = Policy::preset(name).unwrap();
            let one = simulate_valid(&t, &p, 6, false);
            assert_eq!(
                simulate_with(&t, &p, 6, false, &cancel).unwrap(),
                one,
                "{name}"
            );
            // On two threads, the calling thread polling while it waits for the second.
            let split = crate::replay::split::simulate_on_with(&t, &p, 6, false, 2, &cancel);
            assert_eq!(split.unwrap(), one, "{name}");
            let tl = simulate_with(&t, &p, 6, true, &cancel).unwrap();
            assert_eq!(tl.timeline.as_ref().map(|tl| tl.svme.len()), Some(t.len()));
            assert_eq!((tl.counters, tl.reads), (one.counters, one.reads), "{name}");
        }
        // The first divergence lies beyond the first piece, where count_masks (one pass)
        // puts it.
        let (p, q) = (
            Policy::preset("v4").unwrap(),
            Policy::preset("arch").unwrap(),
        );
        let c = compare_with(&t, &p, &q, 6, &cancel).unwrap();
        let (mp, mq) = (count_masks(&t, &p, 6), count_masks(&t, &q, 6));
        let first = mp.iter().zip(&mq).position(|(a, b)| a != b);
        assert!(first.is_some_and(|f| f > RECORDS_PER_CHECK));
        assert_eq!(c.first_divergence, first);
        assert_eq!(c.policy, simulate_valid(&t, &p, 6, false));
    }
    // An invalid record in the second piece: the same error from every path.
    let mut recs = long_trace(RECORDS_PER_CHECK + 3, Mix::default(), 10_000)
        .as_ref()
        .records()
        .collect::<Vec<_>>();
    recs[RECORDS_PER_CHECK + 700] = Record {
        pmc: 6,
        ..rec(op::READ)
    };
    let bad = TraceBuf::from_records(&recs);
    let bad = bad.as_ref();
    let e = validate(&bad, 6).unwrap_err();
    let p = Policy::preset("final").unwrap();
    assert!(matches!(e, CoreError::Trace { index, .. } if index == RECORDS_PER_CHECK + 700));
    assert_eq!(validate_with(&bad, 6, &cancel).unwrap_err(), e);
    assert_eq!(simulate_with(&bad, &p, 6, false, &cancel).unwrap_err(), e);
    assert_eq!(simulate_with(&bad, &p, 6, true, &cancel).unwrap_err(), e);
    let split = crate::replay::split::simulate_on_with(&bad, &p, 6, false, 2, &cancel);
    assert_eq!(split.unwrap_err(), e);
}

#[test]
fn a_stopped_call_stops_at_its_next_check() {
    use crate::cancel::{Cancel, RECORDS_PER_CHECK};
    use crate::fuzz::{fuzz_range_with, FuzzSpec};
    let stopped = Cancel::never();
    stopped.stop();
    let t = long_trace(0, Mix::default(), 3 * RECORDS_PER_CHECK);
    let t = t.as_ref();
    let p = Policy::preset("final").unwrap();
    let q = Policy::preset("arch").unwrap();
    let interrupted = |r: Result<SimResult, CoreError>| r == Err(CoreError::Interrupted);
    assert!(interrupted(simulate_with(&t, &p, 6, false, &stopped)));
    assert!(interrupted(simulate_with(&t, &p, 6, true, &stopped)));
    // Cut in two chunks of more than RECORDS_PER_CHECK records each past their join
    // points, on two threads (or replayed on one, where there is one core).
    let split = crate::replay::split::simulate_on_with(&t, &p, 6, false, 2, &stopped);
    assert!(interrupted(split));
    assert_eq!(validate_with(&t, 6, &stopped), Err(CoreError::Interrupted));
    assert!(matches!(
        compare_with(&t, &p, &q, 6, &stopped),
        Err(CoreError::Interrupted)
    ));
    let offsets = [0, 10, t.len() as u64];
    let batch = batch::simulate_batch_with(&t, &offsets, &p, 6, &stopped);
    assert!(matches!(batch, Err(CoreError::Interrupted)));
    let g = Generator::new(Mix::default(), 6).unwrap();
    let b = g.batch_with(1, 10, 100, &stopped);
    assert!(matches!(b, Err(CoreError::Interrupted)));
    let one = g.try_trace_with(1, 0, RECORDS_PER_CHECK + 1, &stopped);
    assert!(matches!(one, Err(CoreError::Interrupted)));
    let spec = FuzzSpec {
        policy: p,
        reference: q,
        generator: g,
        seed: 1,
        length: 64,
        baseline: None,
    };
    assert!(matches!(
        fuzz_range_with(&spec, 0, 10_000, &stopped),
        Err(CoreError::Interrupted)
    ));
    // A trace no longer than one piece has no check to stop at.
    let short = long_trace(0, Mix::default(), 1000);
    assert!(simulate_with(&short.as_ref(), &p, 6, false, &stopped).is_ok());
}

#[test]
fn batches_give_the_same_results_with_a_polling_cancel() {
    use crate::cancel::Cancel;
    let polls = || false;
    let cancel = Cancel::new(&polls);
    let g = Generator::new(Mix::default(), 6).unwrap();
    let b = g.batch_with(4, 3000, 50, &cancel).unwrap();
    assert_eq!(b, g.batch(4, 3000, 50).unwrap());
    let offsets = crate::fuzz::gen::batch_offsets(3000, 50).unwrap();
    let p = Policy::preset("final").unwrap();
    let with = batch::simulate_batch_with(&b.as_ref(), &offsets, &p, 6, &cancel).unwrap();
    let without = batch::simulate_batch(&b.as_ref(), &offsets, &p, 6).unwrap();
    assert_eq!(with, without);
    for k in [0, 1234, 2999] {
        let t = b.as_ref().slice(k * 50..(k + 1) * 50);
        let one = simulate(&t, &p, 6, false).unwrap();
        let (s, e) = (
            with.read_offsets[k] as usize,
            with.read_offsets[k + 1] as usize,
        );
        assert_eq!(with.counters[k * 6..(k + 1) * 6], one.counters[..]);
        assert_eq!(with.reads[s..e], one.reads[..]);
    }
    // The offsets of an impossible batch are a memory error, not a panic.
    assert!(matches!(
        crate::fuzz::gen::batch_offsets(1 << 61, 0),
        Err(CoreError::Memory(_))
    ));
    assert!(matches!(
        g.batch(1, 1 << 40, 1 << 30),
        Err(CoreError::Memory(_))
    ));
}
