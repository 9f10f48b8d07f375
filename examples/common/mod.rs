//! The command line the profiling examples share: `PRESET N [seed [steady|workload]]`.
use _core::fuzz::gen::{Generator, Mix};
use _core::model::{op, Policy};
use _core::trace::TraceBuf;

/// What to replay: a preset, a trace length, a seed and a mix.
pub struct Args {
    pub preset: String,
    pub policy: Policy,
    pub n: usize,
    pub seed: u64,
    pub mix: Mix,
}

impl Args {
    /// The trace to replay: `n` records of the mix from the seed, for 6 PMCs.
    pub fn trace(&self) -> TraceBuf {
        Generator::new(self.mix.clone(), 6)
            .expect("mix")
            .trace(self.seed, 0, self.n)
    }
}

/// Parse the arguments (defaults: `final 10000000 1`, the default mix).
pub fn parse() -> Args {
    let args: Vec<String> = std::env::args().collect();
    let preset = args.get(1).cloned().unwrap_or_else(|| "final".into());
    let n = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000);
    let seed = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
    let mut mix = Mix::default();
    match args.get(4).map(String::as_str) {
        Some("steady") => {
            // Only RUN, EMULATE and VMENTRY: one long steady stretch.
            mix.ops = [0; op::COUNT];
            mix.ops[op::RUN as usize] = 500;
            mix.ops[op::EMULATE as usize] = 450;
            mix.ops[op::VMENTRY as usize] = 50;
        }
        Some("workload") => mix = Mix::workload(),
        _ => {}
    }
    Args {
        policy: Policy::preset(&preset).expect("preset"),
        preset,
        n,
        seed,
        mix,
    }
}
