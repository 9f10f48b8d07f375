//! Many traces at once: columns concatenated, with offsets (Arrow-style), spread over rayon.

use rayon::prelude::*;

use crate::error::CoreError;
use crate::model::Policy;
use crate::replay::{simulate_into, FinalSlots};
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

/// A task's READ values and READ count per trace, or the first invalid trace it met.
type TaskResult = Result<(Vec<u64>, Vec<u64>), usize>;

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
    check_n_pmcs(n_pmcs)?;
    check_offsets(offsets, t.len())?;
    let n = offsets.len() - 1;
    let mut out = BatchResult {
        n_traces: n,
        counters: vec![0; n * n_pmcs],
        eventsel_hw: vec![0; n * n_pmcs],
        overflows: vec![0; n * n_pmcs],
        pmis: vec![0; n * n_pmcs],
        reads: Vec::new(),
        read_offsets: Vec::with_capacity(n + 1),
    };
    if n == 0 {
        out.read_offsets.push(0);
        return Ok(out);
    }
    // Tasks of TRACES_PER_TASK traces write their final values straight into the outputs and
    // their READ values into one buffer each: no allocation per trace.
    const TRACES_PER_TASK: usize = 256;
    let per = TRACES_PER_TASK * n_pmcs;
    let tasks: Vec<TaskResult> = out
        .counters
        .par_chunks_mut(per)
        .zip(out.eventsel_hw.par_chunks_mut(per))
        .zip(out.overflows.par_chunks_mut(per))
        .zip(out.pmis.par_chunks_mut(per))
        .enumerate()
        .map(|(c, (((counters, eventsel_hw), overflows), pmis))| {
            let mut reads = Vec::new();
            let mut read_counts = Vec::with_capacity(TRACES_PER_TASK);
            let slots = counters
                .chunks_mut(n_pmcs)
                .zip(eventsel_hw.chunks_mut(n_pmcs))
                .zip(overflows.chunks_mut(n_pmcs))
                .zip(pmis.chunks_mut(n_pmcs));
            for (j, (((counters, eventsel_hw), overflows), pmis)) in slots.enumerate() {
                let k = c * TRACES_PER_TASK + j;
                let (s, e) = (offsets[k] as usize, offsets[k + 1] as usize);
                let before = reads.len();
                let slots = FinalSlots {
                    counters,
                    eventsel_hw,
                    overflows,
                    pmis,
                };
                if !simulate_into(&t.slice(s..e), policy, n_pmcs, &mut reads, slots) {
                    return Err(k);
                }
                read_counts.push((reads.len() - before) as u64);
            }
            Ok((reads, read_counts))
        })
        .collect();
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
            Err(k) => {
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
