//! The automaton engine against the concrete one on the same campaign: compile a preset
//! against `arch`, print the table's build time and size, then time both engines:
//! `cargo run --release --no-default-features --example automaton -- [preset] [traces] [length] [n_pmcs]`.
use _core::automaton::{compile, walk_range};
use _core::cancel::Cancel;
use _core::fuzz::gen::{Generator, Mix};
use _core::fuzz::{fuzz_range, FuzzSpec};
use _core::model::Policy;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let name = args.get(1).map(String::as_str).unwrap_or("final");
    let traces: u64 = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let length: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(64);
    let n_pmcs: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(6);
    let policy = Policy::preset(name).expect("preset");
    let reference = Policy::preset("arch").expect("arch");
    let generator = Generator::new(Mix::default(), n_pmcs).expect("mix");
    let c = compile(&policy, &reference, &generator).expect("compile");
    println!("{name} vs arch, {n_pmcs} PMCs: {:?}", c.stats);
    let records = (traces * length as u64) as f64;
    for round in 0..3 {
        let t = Instant::now();
        let a = walk_range(&c, 1, length, 0, traces, &Cancel::never()).expect("walk");
        let walk = t.elapsed().as_secs_f64();
        let spec = FuzzSpec {
            policy,
            reference,
            generator: generator.clone(),
            seed: 1,
            length,
            baseline: None,
        };
        let t = Instant::now();
        let b = fuzz_range(&spec, 0, traces).expect("fuzz");
        let concrete = t.elapsed().as_secs_f64();
        println!(
            "round {round}: automaton {:.3} s ({:.0} M records/s, {} diverging, {} classes); concrete {:.3} s ({:.0} M records/s, {} diverging, {} classes); {:.1}x",
            walk,
            records / walk / 1e6,
            a.diverging,
            a.classes.len(),
            concrete,
            records / concrete / 1e6,
            b.diverging,
            b.classes.len(),
            concrete / walk
        );
    }
}
