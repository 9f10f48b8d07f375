use super::*;
use crate::fuzz::gen::{Generator, Mix};
use crate::fuzz::{fuzz_range, signatures, FuzzSpec};
use crate::model::PRESETS;
use crate::trace::{is_valid, next_state};
use crate::verify::{alphabet, verify, VerifySpec};

fn arch() -> Policy {
    Policy::preset("arch").unwrap()
}

fn generator(n_pmcs: usize) -> Generator {
    Generator::new(Mix::default(), n_pmcs).unwrap()
}

/// The probability the computed distribution gives each letter (as the generator's records
/// map to them), against how often the generator draws it, in every mode: every letter drawn
/// is known, and the frequencies agree within 5 standard deviations.
#[test]
fn the_letters_have_the_generators_probabilities() {
    let g = generator(3);
    let letters = draw::letters(&g);
    let index: std::collections::HashMap<_, usize> = letters
        .letters
        .iter()
        .enumerate()
        .map(|(i, r)| ((r.op, r.pmc, r.cpl, r.flag, r.key, r.value), i))
        .collect();
    let mut seen = vec![vec![0u64; letters.letters.len()]; 3];
    let mut per_mode = [0u64; 3];
    for t in 0..400 {
        let trace = g.trace(7, t, 1000);
        let mut mode = STATE_RESET;
        for r in trace.as_ref().records() {
            let m = MODES.iter().position(|&x| x == mode).unwrap();
            let l = draw::letter_of(r);
            let i = index[&(l.op, l.pmc, l.cpl, l.flag, l.key, l.value)];
            seen[m][i] += 1;
            per_mode[m] += 1;
            mode = next_state(r, mode);
        }
    }
    for m in 0..3 {
        let n = per_mode[m] as f64;
        assert!(n > 10_000.0, "mode {m}: {n} records");
        let sum: f64 = letters.probability[m].iter().sum();
        assert!((sum - 1.0).abs() < 1e-9, "mode {m} sums to {sum}");
        for (i, &p) in letters.probability[m].iter().enumerate() {
            let expected = p * n;
            let sd = (n * p * (1.0 - p)).sqrt() + 1.0;
            let got = seen[m][i] as f64;
            assert!(
                (got - expected).abs() <= 5.0 * sd,
                "mode {}: {:?}: drawn {got}, expected {expected:.1}",
                MODES[m],
                letters.letters[i]
            );
            if p == 0.0 {
                assert_eq!(got, 0.0);
            }
        }
    }
}

/// An alias table draws each letter with its probability: over all 2^32 x 2^32 words, a
/// slot's share is exact to within one part in 2^32; checked here by sampling.
#[test]
fn alias_tables_draw_letters_with_their_probabilities() {
    let g = generator(2);
    let letters = draw::letters(&g);
    let size = draw::widest(&letters);
    for (m, &mode) in MODES.iter().enumerate() {
        let slots = draw::alias_table(&letters, m, size, size);
        let mut counts = vec![0u64; letters.letters.len()];
        let mut rng = draw::WyRand(crate::fuzz::gen::Rng::for_trace(99, m as u64).next_u64());
        let n = 4_000_000;
        for _ in 0..n {
            let packed = draw::draw(&slots, 0, size, rng.next_u64());
            let l = (packed >> 16) as usize;
            assert_eq!(
                (packed & 0xFFFF) as usize,
                next_state(letters.letters[l], mode) as usize * size,
                "the packed next mode"
            );
            assert!(is_valid(letters.letters[l], mode, 2));
            counts[l] += 1;
        }
        for (l, &p) in letters.probability[m].iter().enumerate() {
            let expected = p * n as f64;
            // Five standard deviations, and a margin for the letters drawn a few times only.
            let sd = (expected * (1.0 - p)).sqrt();
            assert!(
                (counts[l] as f64 - expected).abs() <= 5.0 * sd + 5.0,
                "mode {mode}: {:?}: {} against {expected:.1}",
                letters.letters[l],
                counts[l]
            );
        }
    }
}

/// Every walk, made concrete and replayed through the concrete models, shows exactly the
/// classes the walk showed, and diverges exactly when the walk did; for every preset against
/// `arch`, with 1, 3 and 6 PMCs.
#[test]
fn every_walk_is_confirmed_by_the_concrete_models() {
    for (name, _) in PRESETS {
        for n_pmcs in [1, 3, 6] {
            let p = Policy::preset(name).unwrap();
            let c = compile(&p, &arch(), &generator(n_pmcs)).unwrap();
            let mut diverged = 0;
            for index in 0..300 {
                let w = walk_trace(&c, 5, index, 64).unwrap();
                crate::trace::validate(&w.trace.as_ref(), n_pmcs).unwrap();
                let concrete = signatures(&w.trace.as_ref(), &p, &arch(), n_pmcs);
                assert_eq!(
                    w.classes, concrete,
                    "{name}, {n_pmcs} PMCs, walk {index}: {:?}",
                    w.trace
                );
                diverged += w.diverged as usize;
            }
            if name != "arch" {
                assert!(diverged > 0, "{name}: no walk diverged");
            }
        }
    }
}

/// Long walks: many parting RUNs whose counts must keep the difference from 0.
#[test]
fn long_walks_are_confirmed_too() {
    let p = Policy::preset("legacy").unwrap();
    let c = compile(&p, &arch(), &generator(6)).unwrap();
    for index in 0..20 {
        let w = walk_trace(&c, 9, index, 2000).unwrap();
        crate::trace::validate(&w.trace.as_ref(), 6).unwrap();
        let concrete = signatures(&w.trace.as_ref(), &p, &arch(), 6);
        assert_eq!(w.classes, concrete, "walk {index}");
    }
}

/// A walk's tally is the walks' classes: walk_range agrees with walk_trace walk by walk.
#[test]
fn the_tally_counts_each_walks_classes() {
    let p = Policy::preset("v4").unwrap();
    let c = compile(&p, &arch(), &generator(4)).unwrap();
    let tally = walk_range(&c, 3, 40, 0, 500, &Cancel::never()).unwrap();
    let mut expected: std::collections::BTreeMap<Signature, ClassTally> = Default::default();
    let mut diverging = 0;
    for index in 0..500 {
        let w = walk_trace(&c, 3, index, 40).unwrap();
        diverging += w.diverged as u64;
        for sig in w.classes {
            let e = expected.entry(sig).or_insert(ClassTally {
                count: 0,
                first_trace: index,
            });
            e.count += 1;
        }
    }
    assert_eq!(tally.classes, expected);
    assert_eq!(tally.diverging, diverging);
    assert_eq!((tally.traces, tally.records), (500, 500 * 40));
}

/// The same tally on one thread and on three, and split in two ranges.
#[test]
fn walks_do_not_depend_on_threads_or_splits() {
    let p = Policy::preset("final").unwrap();
    let c = compile(&p, &arch(), &generator(6)).unwrap();
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| walk_range(&c, 11, 64, 0, 10_000, &Cancel::never()).unwrap())
    };
    let one = run(1);
    assert_eq!(one, run(3));
    let halves = walk_range(&c, 11, 64, 0, 4_321, &Cancel::never())
        .unwrap()
        .merge(walk_range(&c, 11, 64, 4_321, 10_000, &Cancel::never()).unwrap());
    assert_eq!(one, halves);
}

/// The automaton engine finds no class the exhaustive exploration says is unreachable, and
/// every class the concrete engine finds in at least 10 traces (the same number of walks).
#[test]
fn walks_find_the_concrete_engines_classes_and_no_unreachable_one() {
    for name in ["final", "v4", "legacy"] {
        let p = Policy::preset(name).unwrap();
        let reachable: Vec<Signature> = verify(
            &VerifySpec {
                policy: p,
                reference: arch(),
                n_pmcs: 1,
                letters: alphabet::letters(1),
                ignore: Vec::new(),
                max_states: None,
            },
            &|_, _| {},
        )
        .unwrap()
        .classes
        .iter()
        .map(|c| c.signature)
        .collect();
        let g = generator(6);
        let c = compile(&p, &arch(), &g).unwrap();
        let walks = walk_range(&c, 1, 64, 0, 20_000, &Cancel::never()).unwrap();
        let concrete = fuzz_range(
            &FuzzSpec {
                policy: p,
                reference: arch(),
                generator: g,
                seed: 1,
                length: 64,
                baseline: None,
            },
            0,
            20_000,
        )
        .unwrap();
        for sig in walks.classes.keys() {
            assert!(reachable.contains(sig), "{name}: {sig:?} is unreachable");
        }
        for (sig, t) in &concrete.classes {
            if t.count >= 10 {
                assert!(
                    walks.classes.contains_key(sig),
                    "{name}: {sig:?} ({} traces)",
                    t.count
                );
            }
        }
    }
}

/// A table of `arch` against itself shows nothing, and the cache hands back the same table.
#[test]
fn arch_against_itself_has_no_class_and_tables_are_cached() {
    let g = generator(2);
    let (a, _) = compiled(&arch(), &arch(), &g).unwrap();
    assert_eq!(a.stats.classes, 0);
    let (b, cached) = compiled(&arch(), &arch(), &g).unwrap();
    assert!(Arc::ptr_eq(&a, &b) && cached);
    let t = walk_range(&a, 1, 64, 0, 1000, &Cancel::never()).unwrap();
    assert_eq!((t.diverging, t.classes.len()), (0, 0));
}

/// Long walks of a mix that rarely resets a counter: many parting RUNs on a PMC between two
/// resets, which the concrete counts must keep apart; every walk is confirmed.
#[test]
fn long_walks_of_a_running_guest_are_confirmed() {
    for name in ["legacy", "v1", "final"] {
        let p = Policy::preset(name).unwrap();
        let g = Generator::new(Mix::workload(), 6).unwrap();
        let c = compile(&p, &arch(), &g).unwrap();
        for index in 0..12 {
            let w = walk_trace(&c, 21, index, 5_000).unwrap();
            crate::trace::validate(&w.trace.as_ref(), 6).unwrap();
            let concrete = signatures(&w.trace.as_ref(), &p, &arch(), 6);
            assert_eq!(w.classes, concrete, "{name}, walk {index}");
        }
    }
}

/// Another reference than `arch`: its selectors give the classes their H/G bits.
#[test]
fn walks_against_legacy_are_confirmed() {
    let (p, q) = (arch(), Policy::preset("legacy").unwrap());
    let c = compile(&p, &q, &generator(4)).unwrap();
    let mut diverged = 0;
    for index in 0..300 {
        let w = walk_trace(&c, 2, index, 64).unwrap();
        assert_eq!(
            w.classes,
            signatures(&w.trace.as_ref(), &p, &q, 4),
            "walk {index}"
        );
        diverged += w.diverged as usize;
    }
    assert!(diverged > 0);
}
