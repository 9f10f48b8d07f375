//! Replay one generated trace cut into chunks on the rayon pool, against one thread:
//! `cargo run --release --no-default-features --example split -- final 10000000 [seed [workload]]`.
use _core::gen::{Generator, Mix};
use _core::model::Policy;
use _core::sim::simulate_valid;
use _core::split::simulate_split;
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
    let mix = if args.get(4).map(String::as_str) == Some("workload") {
        Mix::workload()
    } else {
        Mix::default()
    };
    let buf = Generator::new(mix, 6).expect("mix").trace(seed, 0, n);
    let t = buf.as_ref();
    let one = simulate_valid(&t, &policy, 6, false);
    for chunks in [1, 2, 1, 2, 1, 2] {
        let start = Instant::now();
        let (r, stats) = simulate_split(&t, &policy, 6, chunks, None).expect("valid");
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(r, one);
        println!(
            "{chunks} chunk(s): {:.1} M records/s ({stats:?})",
            n as f64 / secs / 1e6
        );
    }
}
