//! Replay one generated trace through a preset, for profiling the hot loop without Python:
//! `cargo run --release --no-default-features --example replay -- final 10000000 [seed [steady|workload]]`.
use _core::gen::{Generator, Mix};
use _core::model::Policy;
use _core::sim::{simulate, simulate_valid};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let preset = args.get(1).map(String::as_str).unwrap_or("final");
    let n: usize = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000);
    let seed: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
    let policy = Policy::preset(preset).expect("preset");
    let mut mix = Mix::default();
    match args.get(4).map(String::as_str) {
        Some("steady") => {
            // Only RUN, EMULATE and VMENTRY: one long steady stretch.
            mix.ops = [0; 15];
            mix.ops[_core::model::op::RUN as usize] = 500;
            mix.ops[_core::model::op::EMULATE as usize] = 450;
            mix.ops[_core::model::op::VMENTRY as usize] = 50;
        }
        Some("workload") => mix = Mix::workload(),
        _ => {}
    }
    let start = Instant::now();
    let buf = Generator::new(mix, 6).expect("mix").trace(seed, 0, n);
    let g = start.elapsed().as_secs_f64();
    println!(
        "generate: {:.1} M records/s (one trace, one thread)",
        n as f64 / g / 1e6
    );
    let t = buf.as_ref();
    let start = Instant::now();
    _core::trace::validate(&t, 6).expect("valid");
    let v = start.elapsed().as_secs_f64();
    println!("validate: {:.1} M records/s", n as f64 / v / 1e6);
    let start = Instant::now();
    let checked = simulate(&t, &policy, 6, false).expect("valid");
    let c = start.elapsed().as_secs_f64();
    println!(
        "{preset}: validated and replayed at {:.1} M records/s",
        n as f64 / c / 1e6
    );
    let start = Instant::now();
    let r = simulate_valid(&t, &policy, 6, false);
    assert_eq!(r, checked);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{preset}: {n} records in {secs:.4} s = {:.1} M records/s; counters {:?}",
        n as f64 / secs / 1e6,
        r.counters
    );
}
