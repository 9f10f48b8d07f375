//! Explore every preset against `arch` and print the state count, the depth, the classes and
//! the time: `cargo run --release --no-default-features --example verify [n_pmcs]`.
use _core::model::{Policy, PRESETS};
use _core::verify::{alphabet, verify, VerifySpec};
use std::time::Instant;

fn main() {
    let n_pmcs = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    for (name, _) in PRESETS {
        let spec = VerifySpec {
            policy: Policy::preset(name).expect("preset"),
            reference: Policy::preset("arch").expect("arch"),
            n_pmcs,
            letters: alphabet::letters(n_pmcs),
            ignore: Vec::new(),
            max_states: None,
        };
        let start = Instant::now();
        let v = verify(&spec, &|_, _| {}).expect("verify");
        let secs = start.elapsed().as_secs_f64();
        let longest = v.classes.iter().map(|c| c.witness.len()).max().unwrap_or(0);
        println!(
            "{name:>7}: {} states, depth {}, {} transitions, {} classes (longest witness {}), {:.3} s = {:.2} M states/s, {:.1} M transitions/s",
            v.states,
            v.depth,
            v.transitions,
            v.classes.len(),
            longest,
            secs,
            v.states as f64 / secs / 1e6,
            v.transitions as f64 / secs / 1e6
        );
    }
}
