//! Many traces at once: columns concatenated, with offsets (Arrow-style), spread over rayon.

use rayon::prelude::*;

use crate::error::CoreError;
use crate::model::Policy;
use crate::sim::{simulate, SimResult};
use crate::trace::{check_n_pmcs, TraceRef};

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

/// Validate and replay every trace of a batch; the same as [`simulate`] on each trace, for
/// any thread count. An invalid trace fails the whole batch, naming the lowest such trace.
pub fn simulate_batch(
    t: &TraceRef<'_>,
    offsets: &[u64],
    policy: &Policy,
    n_pmcs: usize,
) -> Result<BatchResult, CoreError> {
    check_n_pmcs(n_pmcs)?;
    check_offsets(offsets, t.len())?;
    let n = offsets.len() - 1;
    let results: Vec<Result<SimResult, CoreError>> = (0..n)
        .into_par_iter()
        .with_min_len(64)
        .map(|k| {
            let (s, e) = (offsets[k] as usize, offsets[k + 1] as usize);
            simulate(&t.slice(s..e), policy, n_pmcs, false).map_err(|err| match err {
                CoreError::Trace { index, reason } => CoreError::Trace {
                    index: s + index,
                    reason: format!("trace {k}, record {index}: {reason}"),
                },
                other => other,
            })
        })
        .collect();
    let mut out = BatchResult {
        n_traces: n,
        counters: Vec::with_capacity(n * n_pmcs),
        eventsel_hw: Vec::with_capacity(n * n_pmcs),
        overflows: Vec::with_capacity(n * n_pmcs),
        pmis: Vec::with_capacity(n * n_pmcs),
        reads: Vec::new(),
        read_offsets: Vec::with_capacity(n + 1),
    };
    out.read_offsets.push(0);
    for r in results {
        let r = r?;
        out.counters.extend_from_slice(&r.counters);
        out.eventsel_hw.extend_from_slice(&r.eventsel_hw);
        out.overflows.extend_from_slice(&r.overflows);
        out.pmis.extend_from_slice(&r.pmis);
        out.reads.extend_from_slice(&r.reads);
        out.read_offsets.push(out.reads.len() as u64);
    }
    Ok(out)
}
