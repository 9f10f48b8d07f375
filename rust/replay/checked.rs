//! The validating replay loop: every record is checked against the rules of model.md section
//! 4 in the same pass that replays it, and the steady stretches of `super::stretch` are taken
//! where they pay. The rules themselves are `crate::trace`'s (validity) and `crate::model`'s
//! (what a record does); this file only decides which path a record takes.

use crate::model::Model;
use crate::replay::stretch::{is_steady, Stretch};
use crate::trace::{fields_ok, is_valid, mode_ok, Record, TraceRef};

/// Replay a trace and check every record rule in the same pass (without a second read of
/// the columns); `false` if some record is invalid, and then the model's state is garbage.
///
/// Steady stretches (see [`Pmu::set_steady`]) pay off when they are long; on records in
/// random order they last two records or so and cost more than they save. `gain` sums how far
/// the recent stretches were from paying off; when it runs low, the next `STEADY_PAUSE`
/// records are replayed one by one by [`replay_paused`], whose loop (with no call in it)
/// compiles tighter, and then stretches are tried again. Either path gives the same results.
///
/// Compiled twice, with the stretch loop ([`steady_stretch`]) and the models' steps inlined:
/// for any x86-64 (SSE2) and for CPUs with AVX2 and BMI2 (x86-64-v3), picked at run time by
/// what the CPU has (`multiversion` detects it once and keeps the choice). The AVX2 build adds
/// to the counters in two 256-bit lanes instead of four 128-bit ones and needs fewer moves:
/// the stretch loop alone ran 4.5% faster. Building the whole crate for x86-64-v3 would tie
/// the wheel to such CPUs. With `RUSTFLAGS='--cfg svmpmu_portable'` only the portable build
/// is made, so that CI tests it on a CPU that has AVX2. (The stretch loop was compiled twice
/// on its own before; inlined here, a stretch no longer pays a call and the set-up of its
/// columns, and the records between stretches get the AVX2 build too: workload-like replay
/// 355-360 -> 373-376 M records/s on one thread, 4 fewer instructions a record.)
#[cfg_attr(
    not(svmpmu_portable),
    multiversion::multiversion(targets("x86_64+avx2+bmi1+bmi2+fma+lzcnt+popcnt"))
)]
#[cfg_attr(svmpmu_portable, inline(never))]
pub(crate) fn replay_checked<M: Model + Stretch>(
    m: &mut M,
    t: &TraceRef<'_>,
    n_pmcs: usize,
    reads: &mut Vec<u64>,
) -> bool {
    let mut ok = true;
    let n = t.len();
    let mut i = 0;
    let mut gain = 0i32;
    let (ops, pmcs, cpls) = (&t.op[..n], &t.pmc[..n], &t.cpl[..n]);
    let (flags, keys, values) = (&t.flag[..n], &t.key[..n], &t.value[..n]);
    // Start paused unless the trace opens with mostly steady ops (at least 4 in 5, when
    // stretches average 4 records or more): a short trace of records in random order then
    // never pays for a stretch.
    let probe = &ops[..n.min(STEADY_PROBE)];
    if probe.iter().filter(|&&o| is_steady(o)).count() * 5 < probe.len() * 4 {
        (i, ok) = replay_paused(m, t, 0, n_pmcs, reads);
    }
    while i < n {
        let r = Record {
            op: ops[i],
            pmc: pmcs[i],
            cpl: cpls[i],
            flag: flags[i],
            key: keys[i],
            value: values[i],
        };
        // Up to the first invalid record the model's mode is the validator's.
        ok &= is_valid(r, m.mode_state(), n_pmcs);
        m.step(r, reads);
        i += 1;
        // Replay the steady stretch that follows, if the next record starts one and nothing
        // is pending (as after a VM-entry) or the next record is a VM-entry.
        if i < n && is_steady(ops[i]) && m.steady_ready(ops[i]) {
            let (next, good) = m.replay_steady(t, i, n_pmcs, reads);
            ok &= good;
            gain = (gain + (next - i) as i32 - STEADY_BREAK_EVEN).min(STEADY_GAIN_CAP);
            i = next;
            if gain < -STEADY_GAIN_CAP {
                gain = 0;
                let good;
                (i, good) = replay_paused(m, t, i, n_pmcs, reads);
                ok &= good;
            }
        }
    }
    ok
}

/// The stretch length (records) at which a steady stretch pays for setting it up.
const STEADY_BREAK_EVEN: i32 = 4;
/// How far `gain` may go either way before the steady path pauses.
const STEADY_GAIN_CAP: i32 = 16;
/// Records replayed one by one before steady stretches are tried again.
const STEADY_PAUSE: usize = 2048;
/// Records whose ops decide whether a trace starts with steady stretches.
const STEADY_PROBE: usize = 256;

/// Replay and check the `STEADY_PAUSE` records from `start` (fewer at the end of the trace)
/// one by one; where they end, and `false` if one is invalid. Built for AVX2 too, like
/// [`replay_checked`]: 3.7% faster on records in random order.
#[cfg_attr(
    not(svmpmu_portable),
    multiversion::multiversion(targets("x86_64+avx2+bmi1+bmi2+fma+lzcnt+popcnt"))
)]
#[cfg_attr(svmpmu_portable, inline(never))]
fn replay_paused<M: Model>(
    m: &mut M,
    t: &TraceRef<'_>,
    start: usize,
    n_pmcs: usize,
    reads: &mut Vec<u64>,
) -> (usize, bool) {
    let end = t.len().min(start + STEADY_PAUSE);
    // The rules on each record's own fields in one vectorised pass, the mode rules as it goes.
    let span = t.slice(start..end);
    let mut illegal = 0u8;
    for r in span.records() {
        illegal |= !mode_ok(r, m.mode_state()) as u8;
        m.step(r, reads);
    }
    (end, illegal == 0 && fields_ok(&span, n_pmcs))
}
