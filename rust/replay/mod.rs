//! Replaying traces: the entry points (`simulate`, `compare`, `count_masks`) and the speed
//! machinery behind them. What a record does is `crate::model`'s; this module decides how the
//! records reach it: record by record (with a timeline, or two models in lockstep), through
//! the validating loop with steady stretches (`checked`, `stretch`), on several threads
//! (`split`), or a batch of traces at once (`batch`), with lazily folded counters (`counters`)
//! and a table of selector keys (`keys`). Every path gives the results of the plain
//! record-by-record replay.

pub mod batch;
pub mod checked;
pub mod counters;
pub mod keys;
pub mod pool;
pub mod split;
pub mod stretch;

#[cfg(test)]
mod tests;

use crate::cancel::{pieces, Cancel, RECORDS_PER_CHECK};
use crate::error::CoreError;
use crate::memory;
use crate::model::{op, with_model, Model, Policy};
use crate::trace::{explain_invalid, validate_with, TraceRef};
use checked::replay_checked;
use stretch::Stretch;

/// Per-record observations (model.md section 8, "on request").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timeline {
    /// Bit i: `eventsel_hw[i]`.EN after the record.
    pub hw_enabled: Vec<u8>,
    pub svme: Vec<bool>,
    pub guest_mode: Vec<bool>,
}

/// What a model computed for one trace (model.md section 8).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimResult {
    pub counters: Vec<u64>,
    pub eventsel_hw: Vec<u64>,
    pub overflows: Vec<u64>,
    pub pmis: Vec<u64>,
    pub reads: Vec<u64>,
    pub timeline: Option<Timeline>,
}

impl SimResult {
    pub(crate) fn from_model<M: Model>(
        m: &M,
        n_pmcs: usize,
        reads: Vec<u64>,
        timeline: Option<Timeline>,
    ) -> Self {
        SimResult {
            counters: m.counters()[..n_pmcs].to_vec(),
            eventsel_hw: m.eventsel_hw()[..n_pmcs].to_vec(),
            overflows: m.overflows()[..n_pmcs].to_vec(),
            pmis: m.pmis()[..n_pmcs].to_vec(),
            reads,
            timeline,
        }
    }
}

/// The hot loop: replay every record of a validated trace.
#[inline(never)]
fn replay<M: Model>(m: &mut M, t: &TraceRef<'_>, reads: &mut Vec<u64>) {
    for i in 0..t.len() {
        m.step(t.record(i), reads);
    }
}

/// Room for the timeline of `n` records.
fn timeline_for(n: usize) -> Result<Timeline, CoreError> {
    Ok(Timeline {
        hw_enabled: memory::with_capacity(n, "the timeline (hw_enabled)")?,
        svme: memory::with_capacity(n, "the timeline (svme)")?,
        guest_mode: memory::with_capacity(n, "the timeline (guest_mode)")?,
    })
}

/// Replay every record of a validated trace, keeping the timeline in `tl` (room made for
/// it); `cancel` is checked every [`RECORDS_PER_CHECK`] records.
fn replay_timeline<M: Model>(
    m: &mut M,
    t: &TraceRef<'_>,
    reads: &mut Vec<u64>,
    tl: &mut Timeline,
    cancel: &Cancel<'_>,
) -> Result<(), CoreError> {
    for piece in pieces(t.len(), RECORDS_PER_CHECK) {
        if piece.start > 0 {
            cancel.check()?;
        }
        for i in piece {
            m.step(t.record(i), reads);
            let (svme, guest) = m.mode();
            tl.hw_enabled.push(m.hw_enabled());
            tl.svme.push(svme);
            tl.guest_mode.push(guest);
        }
    }
    Ok(())
}

/// [`replay_timeline`] from a fresh model, as a result.
fn timeline_model<M: Model>(
    mut m: M,
    t: &TraceRef<'_>,
    n_pmcs: usize,
    mut reads: Vec<u64>,
    mut tl: Timeline,
    cancel: &Cancel<'_>,
) -> Result<SimResult, CoreError> {
    replay_timeline(&mut m, t, &mut reads, &mut tl, cancel)?;
    Ok(SimResult::from_model(&m, n_pmcs, reads, Some(tl)))
}

/// How many READ records `t` has: room for their values is reserved before a replay.
/// `bytecount` counts the op column 20x faster than a filtered iterator (0.13 against 2.4 ms
/// for 10 M records here: LLVM vectorises the latter with 64-bit lanes, two bytes a step).
pub(crate) fn count_reads(t: &TraceRef<'_>) -> usize {
    bytecount::count(t.op, op::READ)
}

/// Room for the READ values of `t`.
fn reads_for(t: &TraceRef<'_>) -> Result<Vec<u64>, CoreError> {
    memory::with_capacity(count_reads(t), "the READ values")
}

fn run_model<M: Model>(
    mut m: M,
    t: &TraceRef<'_>,
    n_pmcs: usize,
    timeline: bool,
) -> Result<SimResult, CoreError> {
    let mut reads = reads_for(t)?;
    if timeline {
        return timeline_model(
            m,
            t,
            n_pmcs,
            reads,
            timeline_for(t.len())?,
            &Cancel::never(),
        );
    }
    replay(&mut m, t, &mut reads);
    Ok(SimResult::from_model(&m, n_pmcs, reads, None))
}

/// Where one trace's final per-PMC values go (each slice `n_pmcs` long).
pub struct FinalSlots<'a> {
    pub counters: &'a mut [u64],
    pub eventsel_hw: &'a mut [u64],
    pub overflows: &'a mut [u64],
    pub pmis: &'a mut [u64],
}

/// [`replay_checked`] of `t`, [`RECORDS_PER_CHECK`] records at a time with a check of
/// `cancel` in between (a trace no longer than that is replayed in one call, unchecked).
/// The cut changes nothing: the split replay joins slices the same way. `Ok(false)` if some
/// record is invalid (the model's state is then garbage).
pub(crate) fn replay_pieces<M: Model + Stretch>(
    m: &mut M,
    t: &TraceRef<'_>,
    n_pmcs: usize,
    reads: &mut Vec<u64>,
    cancel: &Cancel<'_>,
) -> Result<bool, CoreError> {
    for piece in pieces(t.len(), RECORDS_PER_CHECK) {
        if piece.start > 0 {
            cancel.check()?;
        }
        if !replay_checked(m, &t.slice(piece), n_pmcs, reads) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn checked_into<M: Model + Stretch>(
    mut m: M,
    t: &TraceRef<'_>,
    n_pmcs: usize,
    reads: &mut Vec<u64>,
    out: FinalSlots<'_>,
    cancel: &Cancel<'_>,
) -> Result<bool, CoreError> {
    if !replay_pieces(&mut m, t, n_pmcs, reads, cancel)? {
        return Ok(false);
    }
    out.counters.copy_from_slice(&m.counters()[..n_pmcs]);
    out.eventsel_hw.copy_from_slice(&m.eventsel_hw()[..n_pmcs]);
    out.overflows.copy_from_slice(&m.overflows()[..n_pmcs]);
    out.pmis.copy_from_slice(&m.pmis()[..n_pmcs]);
    Ok(true)
}

/// [`simulate`] without allocating: the final values go to `out`, the READ values are
/// appended to `reads`. False (and garbage in `out` and `reads`) if the trace is invalid.
pub fn simulate_into(
    t: &TraceRef<'_>,
    policy: &Policy,
    n_pmcs: usize,
    reads: &mut Vec<u64>,
    out: FinalSlots<'_>,
) -> bool {
    simulate_into_with(t, policy, n_pmcs, reads, out, &Cancel::never()).unwrap_or(false)
}

/// [`simulate_into`], checking `cancel` every [`RECORDS_PER_CHECK`] records:
/// `Err(CoreError::Interrupted)` if it says stop.
pub fn simulate_into_with(
    t: &TraceRef<'_>,
    policy: &Policy,
    n_pmcs: usize,
    reads: &mut Vec<u64>,
    out: FinalSlots<'_>,
    cancel: &Cancel<'_>,
) -> Result<bool, CoreError> {
    with_model!(policy, n_pmcs, |m| checked_into(
        m, t, n_pmcs, reads, out, cancel
    ))
}

/// Validate and replay one trace under a policy (model.md sections 4 to 8). Nothing of an
/// invalid trace is returned: the error names its first invalid record.
pub fn simulate(
    t: &TraceRef<'_>,
    policy: &Policy,
    n_pmcs: usize,
    timeline: bool,
) -> Result<SimResult, CoreError> {
    simulate_with(t, policy, n_pmcs, timeline, &Cancel::never())
}

/// [`simulate`], checking `cancel` every [`RECORDS_PER_CHECK`] records. The READ values and
/// the timeline are allocated before the replay, fallibly ([`CoreError::Memory`]).
pub fn simulate_with(
    t: &TraceRef<'_>,
    policy: &Policy,
    n_pmcs: usize,
    timeline: bool,
    cancel: &Cancel<'_>,
) -> Result<SimResult, CoreError> {
    crate::trace::check_n_pmcs(n_pmcs)?;
    if timeline {
        validate_with(t, n_pmcs, cancel)?;
        let (reads, tl) = (reads_for(t)?, timeline_for(t.len())?);
        return with_model!(policy, n_pmcs, |m| timeline_model(
            m, t, n_pmcs, reads, tl, cancel
        ));
    }
    let mut r = SimResult {
        counters: vec![0; n_pmcs],
        eventsel_hw: vec![0; n_pmcs],
        overflows: vec![0; n_pmcs],
        pmis: vec![0; n_pmcs],
        reads: reads_for(t)?,
        timeline: None,
    };
    let slots = FinalSlots {
        counters: &mut r.counters,
        eventsel_hw: &mut r.eventsel_hw,
        overflows: &mut r.overflows,
        pmis: &mut r.pmis,
    };
    if simulate_into_with(t, policy, n_pmcs, &mut r.reads, slots, cancel)? {
        Ok(r)
    } else {
        Err(explain_invalid(t, n_pmcs))
    }
}

/// Replay a trace already validated for `n_pmcs`, record by record (for the tests and the
/// examples, in Rust). Panics if the memory for the READ values or the timeline cannot be
/// had: the Python glue uses [`simulate_with`].
pub fn simulate_valid(
    t: &TraceRef<'_>,
    policy: &Policy,
    n_pmcs: usize,
    timeline: bool,
) -> SimResult {
    with_model!(policy, n_pmcs, |m| run_model(m, t, n_pmcs, timeline))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// For each record of a (valid) trace, the PMCs it counted on under `policy` (what
/// `Model::step` returns): which records a count comes from, for explaining a divergence.
pub fn count_masks(t: &TraceRef<'_>, policy: &Policy, n_pmcs: usize) -> Vec<u8> {
    try_count_masks(t, policy, n_pmcs).unwrap_or_else(|e| panic!("{e}"))
}

/// [`count_masks`], its memory allocated fallibly.
pub fn try_count_masks(
    t: &TraceRef<'_>,
    policy: &Policy,
    n_pmcs: usize,
) -> Result<Vec<u8>, CoreError> {
    fn run<M: Model>(mut m: M, t: &TraceRef<'_>, masks: &mut Vec<u8>, mut reads: Vec<u64>) {
        masks.extend(t.records().map(|r| m.step(r, &mut reads)));
    }
    let mut masks = memory::with_capacity(t.len(), "the count masks")?;
    let reads = reads_for(t)?;
    with_model!(policy, n_pmcs, |m| run(m, t, &mut masks, reads));
    Ok(masks)
}

/// A policy and a reference replayed side by side (model.md section 8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comparison {
    pub diverges: bool,
    /// The first record after which the counters, overflow or PMI counts differ.
    pub first_divergence: Option<usize>,
    pub policy: SimResult,
    pub reference: SimResult,
}

/// Replay a validated trace through two models in lockstep; the first record whose counts
/// differ (model.md section 8: the first record after which the counters differ), and the
/// READ values of each.
#[inline(never)]
fn lockstep<A: Model, B: Model>(
    a: &mut A,
    b: &mut B,
    t: &TraceRef<'_>,
    reads_a: &mut Vec<u64>,
    reads_b: &mut Vec<u64>,
) -> Option<usize> {
    let mut first = None;
    for i in 0..t.len() {
        let r = t.record(i);
        let differ = a.step(r, reads_a) != b.step(r, reads_b);
        if differ && first.is_none() {
            first = Some(i);
        }
    }
    first
}

fn compare_models<A: Model, B: Model>(
    mut a: A,
    mut b: B,
    t: &TraceRef<'_>,
    n_pmcs: usize,
    cancel: &Cancel<'_>,
) -> Result<Comparison, CoreError> {
    let (mut ra, mut rb) = (reads_for(t)?, reads_for(t)?);
    let mut first = None;
    for piece in pieces(t.len(), RECORDS_PER_CHECK) {
        if piece.start > 0 {
            cancel.check()?;
        }
        let start = piece.start;
        if let Some(i) = lockstep(&mut a, &mut b, &t.slice(piece), &mut ra, &mut rb) {
            first.get_or_insert(start + i);
        }
    }
    let policy = SimResult::from_model(&a, n_pmcs, ra, None);
    let reference = SimResult::from_model(&b, n_pmcs, rb, None);
    let diverges = policy.reads != reference.reads
        || policy.counters != reference.counters
        || policy.overflows != reference.overflows
        || policy.pmis != reference.pmis;
    Ok(Comparison {
        diverges,
        first_divergence: if diverges { first } else { None },
        policy,
        reference,
    })
}

/// Validate a trace and compare `policy` with `reference` on it.
pub fn compare(
    t: &TraceRef<'_>,
    policy: &Policy,
    reference: &Policy,
    n_pmcs: usize,
) -> Result<Comparison, CoreError> {
    compare_with(t, policy, reference, n_pmcs, &Cancel::never())
}

/// [`compare`], checking `cancel` every [`RECORDS_PER_CHECK`] records; the READ values are
/// allocated fallibly.
pub fn compare_with(
    t: &TraceRef<'_>,
    policy: &Policy,
    reference: &Policy,
    n_pmcs: usize,
    cancel: &Cancel<'_>,
) -> Result<Comparison, CoreError> {
    validate_with(t, n_pmcs, cancel)?;
    with_model!(policy, reference, n_pmcs, |a, b| compare_models(
        a, b, t, n_pmcs, cancel
    ))
}

/// [`compare`] for a trace already validated for `n_pmcs` (for the tests, in Rust: panics if
/// the memory for the READ values cannot be had).
pub fn compare_valid(
    t: &TraceRef<'_>,
    policy: &Policy,
    reference: &Policy,
    n_pmcs: usize,
) -> Comparison {
    with_model!(policy, reference, n_pmcs, |a, b| compare_models(
        a,
        b,
        t,
        n_pmcs,
        &Cancel::never()
    ))
    .unwrap_or_else(|e| panic!("{e}"))
}
