//! One long trace on several threads.
//!
//! Replaying records in random order is bound by one mispredicted jump on the op of most
//! records (docs/performance.md), which no change to a single loop removes; a second core
//! does. The trace is cut into chunks, one per thread, and each chunk is replayed at once,
//! although only the first knows the state its records meet. The others guess it, and the
//! guess is checked before anything of it is used:
//!
//! 1. **Join point.** A scan of chunk k's ops finds its join point `J`: just after the chunk's
//!    first RESET (from there the state is the reset state under the filter in force, which
//!    RESET keeps and the last SET_FILTER before it set, whatever else came before), or else just
//!    after the record by which every PMC's counter has been written (from there the counters no
//!    longer depend on their values at the chunk's start), or else the chunk's end.
//! 2. **Guess.** The chunk's thread replays from a little before the chunk (a warm-up from the
//!    reset state: selectors, mode and filter are written often, so they are likely right by
//!    then) up to `J`, keeps a copy of its model there, and replays and checks `[J, end)`.
//! 3. **Join.** Then, in chunk order, the true state at the chunk's start (the end of chunk
//!    k-1) replays `[start, J)`. If the two models at `J` agree on everything that decides what
//!    later records do ([`Join::same_state`]), the chunk's own results from `J` on are the
//!    true ones, except that the overflow and PMI counts differ by what they differed at `J`
//!    (until a RESET zeroes both). If they disagree, `[J, end)` is replayed again from the true
//!    state: slower, never wrong.
//!
//! So the results are those of one thread, for any number of chunks.

use crate::cancel::{Cancel, Pending};
use crate::error::CoreError;
use crate::memory;
use crate::model::{filter, op, with_model, Arch, Kvm, Model, Pmu, Policy, MAX_PMCS};
use crate::replay::checked::replay_checked;
use crate::replay::pool::cores;
use crate::replay::stretch::Stretch;
use crate::replay::{count_reads, replay_pieces, SimResult};
use crate::trace::TraceRef;

/// The fewest records a chunk gets: below this, starting a task costs more than it saves.
pub const MIN_CHUNK: usize = 4096;
/// Warm-up records before a chunk: a sixteenth of the chunk, within these bounds. A
/// workload-like trace writes each selector about every 700 records and the filter about
/// every 1,000: 16,384 records bring them all up to date but with a chance below 10^-6.
const WARMUP_MIN: usize = 1024;
const WARMUP_MAX: usize = 1 << 14;

/// How a split replay went: how many chunks joined their guess, and how many were replayed
/// from the true state instead (their guess was wrong, or they had no join point).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SplitStats {
    pub joined: usize,
    pub replayed_again: usize,
}

/// One chunk, replayed from a guessed state.
struct Chunk<M> {
    start: usize,
    join: usize,
    end: usize,
    /// The model at `join`, as guessed; `None` when `join == end`.
    at_join: Option<M>,
    /// The model at `end`.
    model: M,
    /// The READ values of `[join, end)`.
    reads: Vec<u64>,
    /// Whether `[join, end)` is valid, given the state at `join`.
    ok: bool,
    /// Whether a RESET in `[join, end)` zeroed the overflow and PMI counts.
    reset_after_join: bool,
}

/// Where a chunk starts, joins and ends (see the module docs).
#[derive(Clone, Copy, Debug)]
struct Cut {
    start: usize,
    join: usize,
    end: usize,
    /// The state at `join` is the reset state, known without a warm-up: the first chunk
    /// (`join == start == 0`), or a chunk that joins just after a RESET.
    fresh_at_join: bool,
}

/// Cut `t` into `chunks` chunks (chunk `k` is `[k * n / chunks, (k + 1) * n / chunks)`) and
/// find each one's join point: a scan of the ops, stopping there.
fn plan(t: &TraceRef<'_>, chunks: usize, n_pmcs: usize) -> Vec<Cut> {
    let n = t.len();
    let chunks = chunks.clamp(1, n.max(1));
    let all = ((1u16 << n_pmcs) - 1) as u8;
    (0..chunks)
        .map(|k| {
            let (start, end) = (k * n / chunks, (k + 1) * n / chunks);
            let (join, fresh_at_join) = if k == 0 {
                (0, true)
            } else {
                join_point(t, start, end, all)
            };
            Cut {
                start,
                join,
                end,
                fresh_at_join,
            }
        })
        .collect()
}

/// The join point of chunk `[start, end)` and whether it is just after a RESET.
fn join_point(t: &TraceRef<'_>, start: usize, end: usize, all: u8) -> (usize, bool) {
    let mut written = 0u8;
    for i in start..end {
        match t.op[i] {
            op::RESET => return (i + 1, true),
            op::WRMSR_CTR => {
                written |= 1u8.wrapping_shl(t.pmc[i] as u32);
                if written & all == all {
                    return (i + 1, false);
                }
            }
            _ => {}
        }
    }
    (end, false)
}

/// Replay a chunk from a guessed state (steps 1 and 2 of the module docs), checking
/// `cancel` every `RECORDS_PER_CHECK` records. An error if the room for its READ values
/// cannot be had or `cancel` says stop.
fn guess_chunk<M: Model + Stretch + Join + Clone>(
    fresh: &M,
    t: &TraceRef<'_>,
    cut: Cut,
    warmup: usize,
    n_pmcs: usize,
    cancel: &Cancel<'_>,
) -> Result<Chunk<M>, CoreError> {
    let Cut {
        start,
        join,
        end,
        fresh_at_join,
    } = cut;
    let mut m = fresh.clone();
    let mut at_join = None;
    let mut reads = Vec::new();
    let mut ok = true;
    if join < end {
        // After a RESET there is nothing to warm up but the filter, which the RESET kept: the
        // last SET_FILTER before it set it. (The warm-up's verdict on its records is not this
        // chunk's: they are checked where they belong.)
        if fresh_at_join {
            if let Some(f) = t.op[..join].iter().rposition(|&o| o == op::SET_FILTER) {
                m.reset_under_filter(t.flag[f], t.key[f]);
            }
        } else {
            let mut scratch = Vec::new();
            let from = start.saturating_sub(warmup);
            replay_checked(&mut m, &t.slice(from..join), n_pmcs, &mut scratch);
        }
        at_join = Some(m.clone());
        // The first chunk's READ values become the result's, which the others' are appended
        // to: room for all of them (pages are only taken as they are written).
        let from = if start == 0 { join..t.len() } else { join..end };
        memory::reserve(&mut reads, count_reads(&t.slice(from)), "the READ values")?;
        ok = replay_pieces(&mut m, &t.slice(join..end), n_pmcs, &mut reads, cancel)?;
    }
    Ok(Chunk {
        start,
        join,
        end,
        at_join,
        model: m,
        reads,
        ok,
        reset_after_join: t.op[join..end].contains(&op::RESET),
    })
}

/// Replay and check `t` cut as `cuts` says, each chunk a task of the current rayon pool
/// (`warmup`: records replayed before each chunk but the first, to guess its state; `None`
/// for the default). `None` if some record is invalid; else the final model, the READ values
/// and how the chunks joined. Every replay checks `cancel` every `RECORDS_PER_CHECK`
/// records, and while the calling thread waits for the other chunks it polls `cancel`.
fn replay_split<M: Model + Stretch + Join + Clone + Send + Sync>(
    fresh: M,
    t: &TraceRef<'_>,
    n_pmcs: usize,
    cuts: &[Cut],
    warmup: Option<usize>,
    cancel: &Cancel<'_>,
) -> Result<Option<(M, Vec<u64>, SplitStats)>, CoreError> {
    let warmup =
        warmup.unwrap_or_else(|| (t.len() / cuts.len() / 16).clamp(WARMUP_MIN, WARMUP_MAX));
    // Each chunk but the first is a task of the current rayon pool, whose threads are already
    // running: starting a thread for each chunk and joining it took 0.1 to 0.2 ms a call here.
    // The calling thread replays the first chunk itself instead of waiting for the pool: one
    // hand-over fewer, which a 20,000-record trace felt (183 against 167 M records/s).
    //
    // Once it is done, the calling thread waits for the others polling `cancel`, unless it is
    // a thread of the pool (then the scope waits by running tasks; and then the chunks and
    // their checks of `cancel` are on it or on other threads of its pool).
    let guess = |&cut: &Cut| guess_chunk(&fresh, t, cut, warmup, n_pmcs, cancel);
    let guess = &guess;
    let mut slots: Vec<Option<Result<Chunk<M>, CoreError>>> = cuts.iter().map(|_| None).collect();
    let pending = Pending::new(cuts.len().saturating_sub(1));
    rayon::in_place_scope(|s| {
        let pending = &pending;
        let mut each = slots.iter_mut().zip(cuts);
        let first = each.next();
        for (slot, cut) in each {
            s.spawn(move |_| {
                let _done = pending.task();
                *slot = Some(guess(cut));
            });
        }
        if let Some((slot, cut)) = first {
            *slot = Some(guess(cut));
        }
        cancel.wait(pending);
    });
    let guessed = slots.into_iter().flatten();
    let mut m = fresh;
    let mut reads = Vec::new();
    let mut stats = SplitStats::default();
    for c in guessed {
        let c = c?;
        // The true state at the chunk's start is `m`; bring it to the join point.
        if !replay_pieces(
            &mut m,
            &t.slice(c.start..c.join),
            n_pmcs,
            &mut reads,
            cancel,
        )? {
            return Ok(None);
        }
        match c.at_join {
            Some(guess) if m.same_state(&guess) => {
                let zero = [0u64; MAX_PMCS];
                let (overflows, pmis) = if c.reset_after_join {
                    (zero, zero)
                } else {
                    (
                        differences(m.overflows(), guess.overflows()),
                        differences(m.pmis(), guess.pmis()),
                    )
                };
                m = c.model;
                m.shift_wraps(overflows, pmis);
                if c.start == 0 {
                    reads = c.reads;
                } else {
                    reads.extend_from_slice(&c.reads);
                }
                if !c.ok {
                    return Ok(None);
                }
                stats.joined += 1;
            }
            Some(_) => {
                let rest = t.slice(c.join..c.end);
                if !replay_pieces(&mut m, &rest, n_pmcs, &mut reads, cancel)? {
                    return Ok(None);
                }
                stats.replayed_again += 1;
            }
            // No join point: the whole chunk was replayed from the true state above.
            None => stats.replayed_again += (c.end > c.start) as usize,
        }
    }
    Ok(Some((m, reads, stats)))
}

fn differences(a: [u64; MAX_PMCS], b: [u64; MAX_PMCS]) -> [u64; MAX_PMCS] {
    std::array::from_fn(|i| a[i].wrapping_sub(b[i]))
}

/// How many chunks a trace of `n` records is cut into for `threads` threads: at most one per
/// thread, one per core and one per thread of the rayon pool they run on (more would only
/// take turns), each of at least `MIN_CHUNK` records.
pub fn chunks_for(n: usize, threads: usize) -> usize {
    threads
        .min(cores())
        .min(rayon::current_num_threads())
        .min(n / MIN_CHUNK)
        .max(1)
}

/// [`super::simulate`] on up to `threads` threads: a long trace without a timeline is
/// cut into chunks (at most one per thread), anything else is replayed on this thread. The
/// same results for any `threads`.
pub fn simulate_on(
    t: &TraceRef<'_>,
    policy: &Policy,
    n_pmcs: usize,
    timeline: bool,
    threads: usize,
) -> Result<SimResult, CoreError> {
    simulate_on_with(t, policy, n_pmcs, timeline, threads, &Cancel::never())
}

/// [`simulate_on`], checking `cancel` every `RECORDS_PER_CHECK` records of each thread,
/// and polling it while the calling thread waits for the others. The global pool is used
/// only if it could start ([`crate::replay::pool::global_pool_usable`]): else the trace is
/// replayed on this thread.
pub fn simulate_on_with(
    t: &TraceRef<'_>,
    policy: &Policy,
    n_pmcs: usize,
    timeline: bool,
    threads: usize,
    cancel: &Cancel<'_>,
) -> Result<SimResult, CoreError> {
    crate::trace::check_n_pmcs(n_pmcs)?;
    // On a thread of some pool, the chunks run on that pool; else on the global one, which a
    // forked child cannot use, nor a process that cannot start threads: they replay on this
    // thread. (A trace too short to cut does not start the global pool.)
    let cut = !timeline && threads > 1 && t.len() / MIN_CHUNK > 1;
    let pool = cut
        && (rayon::current_thread_index().is_some() || crate::replay::pool::global_pool_usable());
    let chunks = if pool {
        chunks_for(t.len(), threads)
    } else {
        1
    };
    if timeline || chunks == 1 {
        return super::simulate_with(t, policy, n_pmcs, timeline, cancel);
    }
    let cuts = plan(t, chunks, n_pmcs);
    if !joins_early(&cuts) {
        return super::simulate_with(t, policy, n_pmcs, false, cancel);
    }
    simulate_cuts(t, policy, n_pmcs, &cuts, None, cancel).map(|(r, _)| r)
}

/// Whether every chunk's join point comes within the first quarter of the chunk. The records
/// before it are replayed twice, the second time after the chunks before it: a chunk that
/// joins late saves little (a workload-like trace, with no RESET and rare counter writes,
/// joins after about 7,000 records).
fn joins_early(cuts: &[Cut]) -> bool {
    cuts.iter()
        .all(|c| (c.join - c.start) * 4 <= c.end - c.start)
}

/// [`super::simulate`] without a timeline, in `chunks` chunks replayed in parallel as
/// tasks of the current rayon pool; the same results for any `chunks`. `warmup`: records
/// replayed before each chunk but the first, to guess its state (`None` for the default).
pub fn simulate_split(
    t: &TraceRef<'_>,
    policy: &Policy,
    n_pmcs: usize,
    chunks: usize,
    warmup: Option<usize>,
) -> Result<(SimResult, SplitStats), CoreError> {
    crate::trace::check_n_pmcs(n_pmcs)?;
    let cuts = plan(t, chunks, n_pmcs);
    simulate_cuts(t, policy, n_pmcs, &cuts, warmup, &Cancel::never())
}

/// [`simulate_split`] for a trace already cut (`n_pmcs` already checked).
fn simulate_cuts(
    t: &TraceRef<'_>,
    policy: &Policy,
    n_pmcs: usize,
    cuts: &[Cut],
    warmup: Option<usize>,
    cancel: &Cancel<'_>,
) -> Result<(SimResult, SplitStats), CoreError> {
    fn run<M: Model + Stretch + Join + Clone + Send + Sync>(
        m: M,
        t: &TraceRef<'_>,
        n_pmcs: usize,
        cuts: &[Cut],
        warmup: Option<usize>,
        cancel: &Cancel<'_>,
    ) -> Result<Option<(SimResult, SplitStats)>, CoreError> {
        let Some((m, reads, stats)) = replay_split(m, t, n_pmcs, cuts, warmup, cancel)? else {
            return Ok(None);
        };
        Ok(Some((
            SimResult::from_model(&m, n_pmcs, reads, None),
            stats,
        )))
    }
    let done = with_model!(policy, n_pmcs, |m| run(m, t, n_pmcs, cuts, warmup, cancel))?;
    match done {
        Some(r) => Ok(r),
        None => Err(crate::trace::explain_invalid(t, n_pmcs)),
    }
}

/// A model's side of the join: whether two states replay every later record alike, and the
/// shift of the overflow and PMI counts by what they differed at the join.
pub trait Join {
    /// Whether `other` (the same model, same policy) replays any records from here exactly as
    /// `self` does, overflow and PMI counts aside: the same selectors, mode, global control,
    /// filter, counter values and, for KVM, the same bitmaps and pending set. Internal
    /// bookkeeping that does not change a result (how keys are indexed, when wraps are
    /// folded) is not compared.
    fn same_state(&self, other: &Self) -> bool;
    /// Add `overflows` and `pmis` (modulo 2^64) to the overflow and PMI counts.
    fn shift_wraps(&mut self, overflows: [u64; MAX_PMCS], pmis: [u64; MAX_PMCS]);
    /// From the reset state, the state after a RESET under filter (`action`, `key`): the
    /// filter is the VM's, and RESET keeps it (model.md section 3).
    fn reset_under_filter(&mut self, action: u8, key: u32);
}

impl Pmu {
    /// The architectural state that decides what any later record does: everything but the
    /// overflow and PMI counts and the bookkeeping. The masks derived from the selectors and
    /// the filter are compared too, though they follow from them. The filter's key matters
    /// only while a filter is installed.
    fn same_state(&self, o: &Pmu) -> bool {
        let filter_key = self.filter_action == filter::NONE || self.filter_key == o.filter_key;
        self.all == o.all
            && self.svme == o.svme
            && self.guest == o.guest
            && self.global_ctrl == o.global_ctrl
            && self.filter_action == o.filter_action
            && filter_key
            && self.eventsel == o.eventsel
            && self.key == o.key
            && [self.en, self.host_only, self.guest_only, self.int]
                == [o.en, o.host_only, o.guest_only, o.int]
            && [self.os, self.usr, self.instr, self.branch, self.filter_ok]
                == [o.os, o.usr, o.instr, o.branch, o.filter_ok]
            && self.ctr.same_values(&o.ctr)
    }
}

impl Join for Kvm {
    fn same_state(&self, o: &Self) -> bool {
        self.pmu.same_state(&o.pmu)
            && [self.hw_en, self.emul_ok, self.pending] == [o.hw_en, o.emul_ok, o.pending]
    }
    fn shift_wraps(&mut self, overflows: [u64; MAX_PMCS], pmis: [u64; MAX_PMCS]) {
        self.pmu.ctr.shift_wraps(overflows, pmis)
    }
    fn reset_under_filter(&mut self, action: u8, key: u32) {
        self.pmu.set_filter(action, key)
    }
}

impl Join for Arch {
    fn same_state(&self, o: &Self) -> bool {
        self.pmu.same_state(&o.pmu)
    }
    fn shift_wraps(&mut self, overflows: [u64; MAX_PMCS], pmis: [u64; MAX_PMCS]) {
        self.pmu.ctr.shift_wraps(overflows, pmis)
    }
    fn reset_under_filter(&mut self, action: u8, key: u32) {
        self.pmu.set_filter(action, key)
    }
}

#[cfg(test)]
mod tests;
