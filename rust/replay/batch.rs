//! Many traces at once: columns concatenated, with offsets (Arrow-style), spread over rayon.

use rayon::prelude::*;

use crate::cancel::{Cancel, RECORDS_PER_CHECK};
use crate::error::CoreError;
use crate::memory;
use crate::model::Policy;
use crate::replay::{count_reads, simulate_into_with, FinalSlots};
use crate::trace::{check_n_pmcs, explain_invalid, TraceRef};

/// Per-trace results, flattened: `counters[t * n_pmcs + i]` is PMC i of trace t, and the READ
/// values of trace t are `reads[read_offsets[t]..read_offsets[t + 1]]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchResult {
    pub n_traces: usize,
    pub counters: Vec<u64>,
    pub eventsel_hw: Vec<u64>,
    pub overflows: Vec<u64>,
    pub pmis: Vec<u64>,
    pub reads: Vec<u64>,
    pub read_offsets: Vec<u64>,
}

/// Why a task of traces stopped: the first invalid trace it met, or an error (memory, or
/// the call was interrupted).
enum TaskError {
    Invalid(usize),
    Core(CoreError),
}

/// A task's READ values and READ count per trace.
type TaskResult = Result<(Vec<u64>, Vec<u64>), TaskError>;

/// Check that `offsets` cut `len` records into traces.
pub fn check_offsets(offsets: &[u64], len: usize) -> Result<(), CoreError> {
    let bad = |m: String| Err(CoreError::Value(m));
    match (offsets.first(), offsets.last()) {
        (Some(&0), Some(&last)) if last == len as u64 => {}
        _ => return bad(format!("offsets must start at 0 and end at {len}")),
    }
    if offsets.windows(2).any(|w| w[1] < w[0]) {
        return bad("offsets must not decrease".into());
    }
    Ok(())
}

/// Validate and replay every trace of a batch; the same as [`crate::replay::simulate`] on each
/// trace, for any thread count. An invalid trace fails the whole batch, naming the lowest such
/// trace.
pub fn simulate_batch(
    t: &TraceRef<'_>,
    offsets: &[u64],
    policy: &Policy,
    n_pmcs: usize,
) -> Result<BatchResult, CoreError> {
    simulate_batch_with(t, offsets, policy, n_pmcs, &Cancel::never())
}

/// Traces a task replays: their final values go straight into the outputs and their READ
/// values into one buffer a task, so nothing is allocated a trace.
const TRACES_PER_TASK: usize = 256;

/// [`simulate_batch`], allocating its outputs fallibly ([`CoreError::Memory`]) before any
/// replay, and checking `cancel` at the start of each task, every `RECORDS_PER_CHECK`
/// records of a task's traces, and every `RECORDS_PER_CHECK` records of a longer trace.
pub fn simulate_batch_with(
    t: &TraceRef<'_>,
    offsets: &[u64],
    policy: &Policy,
    n_pmcs: usize,
    cancel: &Cancel<'_>,
) -> Result<BatchResult, CoreError> {
    check_n_pmcs(n_pmcs)?;
    check_offsets(offsets, t.len())?;
    let n = offsets.len() - 1;
    let cells = memory::product::<u64>(n, n_pmcs, "the per-PMC results")?;
    let mut out = BatchResult {
        n_traces: n,
        counters: memory::zeros(cells, "the final counters", cancel)?,
        eventsel_hw: memory::zeros(cells, "the final eventsel_hw", cancel)?,
        overflows: memory::zeros(cells, "the overflow counts", cancel)?,
        pmis: memory::zeros(cells, "the PMI counts", cancel)?,
        reads: Vec::new(),
        read_offsets: memory::with_capacity(offsets.len(), "the READ offsets")?,
    };
    if n == 0 {
        out.read_offsets.push(0);
        return Ok(out);
    }
    let per = TRACES_PER_TASK * n_pmcs;
    let mut tasks: Vec<TaskResult> =
        memory::with_capacity(n.div_ceil(TRACES_PER_TASK), "the tasks of the batch")?;
    let each = out
        .counters
        .par_chunks_mut(per)
        .zip(out.eventsel_hw.par_chunks_mut(per))
        .zip(out.overflows.par_chunks_mut(per))
        .zip(out.pmis.par_chunks_mut(per))
        .enumerate()
        .map(|(c, (((counters, eventsel_hw), overflows), pmis))| {
            if cancel.stopped() {
                return Err(TaskError::Core(CoreError::Interrupted));
            }
            let first = c * TRACES_PER_TASK;
            let last = first + counters.len() / n_pmcs;
            let records = t.slice(offsets[first] as usize..offsets[last] as usize);
            let mut reads = memory::with_capacity(count_reads(&records), "the READ values")
                .map_err(TaskError::Core)?;
            let mut read_counts = Vec::with_capacity(TRACES_PER_TASK);
            let mut unchecked = 0;
            let slots = counters
                .chunks_mut(n_pmcs)
                .zip(eventsel_hw.chunks_mut(n_pmcs))
                .zip(overflows.chunks_mut(n_pmcs))
                .zip(pmis.chunks_mut(n_pmcs));
            for (k, (((counters, eventsel_hw), overflows), pmis)) in (first..).zip(slots) {
                let (s, e) = (offsets[k] as usize, offsets[k + 1] as usize);
                unchecked += e - s;
                if unchecked >= RECORDS_PER_CHECK {
                    unchecked = 0;
                    cancel.check().map_err(TaskError::Core)?;
                }
                let before = reads.len();
                let slots = FinalSlots {
                    counters,
                    eventsel_hw,
                    overflows,
                    pmis,
                };
                let trace = t.slice(s..e);
                match simulate_into_with(&trace, policy, n_pmcs, &mut reads, slots, cancel) {
                    Ok(true) => {}
                    Ok(false) => return Err(TaskError::Invalid(k)),
                    Err(e) => return Err(TaskError::Core(e)),
                }
                read_counts.push((reads.len() - before) as u64);
            }
            Ok((reads, read_counts))
        });
    // Into the room reserved (rayon collects an indexed iterator in place).
    tasks.par_extend(each);
    let total = tasks
        .iter()
        .map(|task| task.as_ref().map_or(0, |(reads, _)| reads.len()))
        .sum();
    memory::reserve(&mut out.reads, total, "the READ values")?;
    out.read_offsets.push(0);
    for task in tasks {
        match task {
            Ok((reads, counts)) => {
                out.reads.extend_from_slice(&reads);
                for c in counts {
                    let last = *out.read_offsets.last().unwrap_or(&0);
                    out.read_offsets.push(last + c);
                }
            }
            Err(TaskError::Core(e)) => return Err(e),
            Err(TaskError::Invalid(k)) => {
                // The lowest invalid trace: name its first invalid record.
                let (s, e) = (offsets[k] as usize, offsets[k + 1] as usize);
                return Err(match explain_invalid(&t.slice(s..e), n_pmcs) {
                    CoreError::Trace { index, reason } => CoreError::Trace {
                        index: s + index,
                        reason: format!("trace {k}, record {index}: {reason}"),
                    },
                    other => other,
                });
            }
        }
    }
    Ok(out)
}
