//! Replay one generated trace through a preset, for profiling the hot loop without Python:
//! `cargo run --release --no-default-features --example replay -- final 10000000 [seed [steady|workload]]`.
use _core::replay::{simulate, simulate_valid};
use std::time::Instant;

mod common;

fn main() {
    let args = common::parse();
    let (preset, policy, n) = (&args.preset, &args.policy, args.n);
    let start = Instant::now();
    let buf = args.trace();
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
    let checked = simulate(&t, policy, 6, false).expect("valid");
    let c = start.elapsed().as_secs_f64();
    println!(
        "{preset}: validated and replayed at {:.1} M records/s",
        n as f64 / c / 1e6
    );
    let start = Instant::now();
    let r = simulate_valid(&t, policy, 6, false);
    assert_eq!(r, checked);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{preset}: {n} records in {secs:.4} s = {:.1} M records/s; counters {:?}",
        n as f64 / secs / 1e6,
        r.counters
    );
}
