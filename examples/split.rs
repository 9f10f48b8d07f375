//! Replay one generated trace cut into 1 and 2 chunks (one thread each), against one thread,
//! with how the chunks joined:
//! `cargo run --release --no-default-features --example split -- final 10000000 [seed [steady|workload]]`.
use _core::replay::simulate_valid;
use _core::replay::split::simulate_split;
use std::time::Instant;

mod common;

fn main() {
    let args = common::parse();
    let (preset, policy, n) = (&args.preset, &args.policy, args.n);
    let buf = args.trace();
    let t = buf.as_ref();
    let one = simulate_valid(&t, policy, 6, false);
    for chunks in [1, 2, 1, 2, 1, 2] {
        let start = Instant::now();
        let (r, stats) = simulate_split(&t, policy, 6, chunks, None).expect("valid");
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(r, one);
        println!(
            "{preset}, {chunks} chunk(s): {:.1} M records/s ({stats:?})",
            n as f64 / secs / 1e6
        );
    }
}
