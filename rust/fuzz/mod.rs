//! Differential fuzzing: generate traces, replay each through a policy and a reference in
//! lockstep, group the divergences into classes and shrink one member of each class.

use std::collections::BTreeMap;

use rayon::prelude::*;

pub mod gen;
mod shrink;

pub use shrink::{shrink, shrink_against};

use crate::cancel::{Cancel, RECORDS_PER_CHECK};
use crate::error::CoreError;
use crate::memory;
use crate::model::{with_model, Model, Policy, GUEST_ONLY, HOST_ONLY};
use crate::trace::{Record, TraceRef};
use gen::{Generator, RecordSink};

/// What explains one attribution divergence: a record at which exactly one of the two models
/// counted on some PMC. Records that count differently are the only way counts can part
/// (model.md section 8), so every divergence is made of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Signature {
    /// The op of the record.
    pub op: u8,
    /// The H/G bits of the PMC's selector (after the record): 0 none, 1 G, 2 H, 3 both.
    pub hg: u8,
    /// The mode state before and after the record: 0 svme=0, 1 svme=1 host mode, 3 guest mode.
    pub before: u8,
    pub after: u8,
    /// True when the policy counted and the reference did not; false for the reverse.
    pub policy_counts: bool,
}

impl Signature {
    pub fn pack(&self) -> u32 {
        (self.op as u32) << 16
            | (self.hg as u32) << 8
            | (self.before as u32) << 4
            | (self.after as u32) << 1
            | self.policy_counts as u32
    }
}

/// The H/G bits of a selector as a signature holds them: bit 0 G, bit 1 H.
pub(crate) fn hg_bits(sel: u64) -> u8 {
    ((sel & GUEST_ONLY != 0) as u8) | ((sel & HOST_ONLY != 0) as u8) << 1
}

impl Signature {
    /// The signature of a PMC at a record of op `op` at which exactly one model counted on it:
    /// `hg` holds the H/G bits ([`hg_bits`]) of the reference's selector after the record,
    /// the modes are those before and after it. The one definition `fuzz` and
    /// `crate::verify` share.
    pub(crate) fn of_parting(
        op: u8,
        hg: u8,
        before: u8,
        after: u8,
        policy_counts: bool,
    ) -> Signature {
        Signature {
            op,
            hg,
            before,
            after,
            policy_counts,
        }
    }
}

/// Reusable buffers for one worker.
#[derive(Default)]
pub(crate) struct Scratch {
    reads_a: Vec<u64>,
    reads_b: Vec<u64>,
    sigs: Vec<Signature>,
}

/// Two models replayed side by side, record by record, collecting the signatures of their
/// attribution divergences in `s.sigs`. A [`RecordSink`], so that fuzzing can step the
/// models as the generator draws each record, with no trace buffer in between.
struct Lockstep<'s, A, B> {
    a: A,
    b: B,
    s: &'s mut Scratch,
}

impl<'s, A: Model, B: Model> Lockstep<'s, A, B> {
    fn new(a: A, b: B, s: &'s mut Scratch) -> Self {
        s.reads_a.clear();
        s.reads_b.clear();
        s.sigs.clear();
        Lockstep { a, b, s }
    }

    /// Whether the two diverged (model.md section 8); if so, their signatures are left in
    /// `s.sigs`, sorted and without repeats.
    fn finish(self) -> bool {
        let Lockstep { a, b, s } = self;
        let diverges = s.reads_a != s.reads_b
            || a.counters() != b.counters()
            || a.overflows() != b.overflows()
            || a.pmis() != b.pmis();
        if diverges {
            s.sigs.sort_unstable();
            s.sigs.dedup();
        } else {
            s.sigs.clear();
        }
        diverges
    }
}

impl<A: Model, B: Model> RecordSink for Lockstep<'_, A, B> {
    #[inline(always)]
    fn push(&mut self, r: Record) {
        let before = self.b.mode_state();
        let ma = self.a.step(r, &mut self.s.reads_a);
        let mb = self.b.step(r, &mut self.s.reads_b);
        if ma != mb {
            let after = self.b.mode_state();
            let mut d = ma ^ mb;
            while d != 0 {
                let p = d.trailing_zeros() as usize;
                d &= d - 1;
                let sig = Signature::of_parting(
                    r.op,
                    hg_bits(self.b.eventsel()[p]),
                    before,
                    after,
                    ma & (1 << p) != 0,
                );
                self.s.sigs.push(sig);
            }
        }
    }
}

/// Records to replay: a trace, or a generated trace drawn as it is replayed.
pub(crate) trait Feed {
    fn feed(&self, sink: &mut impl RecordSink);
}

impl Feed for TraceRef<'_> {
    fn feed(&self, sink: &mut impl RecordSink) {
        for r in self.records() {
            sink.push(r);
        }
    }
}

/// Trace `index` of the run seeded by `seed`. Drawing stops early when `cancel` says stop
/// (checked every `gen::RECORDS_PER_CHECK` records of a trace). Its flag then stays set, so
/// that the tally the trace went into is dropped: `fuzz_chunk` checks it last.
struct Generated<'g> {
    generator: &'g Generator,
    seed: u64,
    index: u64,
    length: usize,
    cancel: &'g Cancel<'g>,
}

impl Feed for Generated<'_> {
    fn feed(&self, sink: &mut impl RecordSink) {
        // An interrupted trace is cut short; the caller sees the interruption.
        let _ =
            self.generator
                .trace_into_with(sink, self.seed, self.index, self.length, self.cancel);
    }
}

/// Replay `records` through both policies in lockstep; whether they diverge (the signatures
/// are then in `s.sigs`).
pub(crate) fn diverge(
    records: &impl Feed,
    p: &Policy,
    q: &Policy,
    n_pmcs: usize,
    s: &mut Scratch,
) -> bool {
    fn run<A: Model, B: Model>(a: A, b: B, s: &mut Scratch, records: &impl Feed) -> bool {
        let mut l = Lockstep::new(a, b, s);
        records.feed(&mut l);
        l.finish()
    }
    with_model!(p, q, n_pmcs, |a, b| run(a, b, s, records))
}

/// The signatures a (valid) trace shows; empty when it does not diverge.
pub fn signatures(t: &TraceRef<'_>, p: &Policy, q: &Policy, n_pmcs: usize) -> Vec<Signature> {
    try_signatures(t, p, q, n_pmcs).unwrap_or_else(|e| panic!("{e}"))
}

/// [`signatures`], the room for the READ values allocated fallibly.
pub fn try_signatures(
    t: &TraceRef<'_>,
    p: &Policy,
    q: &Policy,
    n_pmcs: usize,
) -> Result<Vec<Signature>, CoreError> {
    let mut s = Scratch::default();
    let reads = crate::replay::count_reads(t);
    for r in [&mut s.reads_a, &mut s.reads_b] {
        memory::reserve(r, reads, "the READ values")?;
    }
    diverge(t, p, q, n_pmcs, &mut s);
    Ok(s.sigs)
}

/// One class: how many traces show it and the first (lowest-index) one that does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassTally {
    pub count: u64,
    pub first_trace: u64,
}

/// The tallies of a range of traces; merging is order-independent (sums and minima), so the
/// result is the same for any thread count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub traces: u64,
    pub records: u64,
    pub diverging: u64,
    /// The classes of the policy against the reference; with a baseline, only where the
    /// baseline does not show the class on the same trace.
    pub classes: BTreeMap<Signature, ClassTally>,
    /// With a baseline: the classes the baseline shows on a trace where the policy does not.
    pub gone: BTreeMap<Signature, ClassTally>,
}

fn tally_class(classes: &mut BTreeMap<Signature, ClassTally>, sig: Signature, index: u64) {
    classes
        .entry(sig)
        .and_modify(|c| c.count += 1)
        .or_insert(ClassTally {
            count: 1,
            first_trace: index,
        });
}

fn merge_classes(
    into: &mut BTreeMap<Signature, ClassTally>,
    from: BTreeMap<Signature, ClassTally>,
) {
    for (sig, t) in from {
        into.entry(sig)
            .and_modify(|c| {
                c.count += t.count;
                c.first_trace = c.first_trace.min(t.first_trace);
            })
            .or_insert(t);
    }
}

impl Tally {
    pub fn merge(mut self, other: Tally) -> Tally {
        self.traces += other.traces;
        self.records += other.records;
        self.diverging += other.diverging;
        merge_classes(&mut self.classes, other.classes);
        merge_classes(&mut self.gone, other.gone);
        self
    }
}

/// Everything a fuzzing run needs.
#[derive(Clone, Debug)]
pub struct FuzzSpec {
    pub policy: Policy,
    pub reference: Policy,
    pub generator: Generator,
    pub seed: u64,
    pub length: usize,
    /// Another policy to diff against (`svmpmu fuzz --baseline`), on the same traces.
    pub baseline: Option<Policy>,
}

/// Traces per rayon task: large enough to amortise the task, small enough to balance 2 cores.
const CHUNK: u64 = 512;

fn fuzz_chunk(
    spec: &FuzzSpec,
    start: u64,
    end: u64,
    cancel: &Cancel<'_>,
) -> Result<Tally, CoreError> {
    cancel.check()?;
    let mut s = Scratch::default();
    // Room for a trace's READ values (at most one a record), or an error if the memory cannot
    // be had: the length comes from users.
    for reads in [&mut s.reads_a, &mut s.reads_b] {
        memory::reserve(reads, spec.length, "the READ values of one trace")?;
    }
    let mut tally = Tally::default();
    let n_pmcs = spec.generator.n_pmcs;
    let mut unchecked = 0;
    for index in start..end {
        // Each record is replayed as it is drawn: no trace is stored (a class's trace is
        // drawn again from its index to be shrunk).
        let trace = Generated {
            generator: &spec.generator,
            seed: spec.seed,
            index,
            length: spec.length,
            cancel,
        };
        tally.traces += 1;
        tally.records += spec.length as u64;
        let diverges = diverge(&trace, &spec.policy, &spec.reference, n_pmcs, &mut s);
        // Checked every RECORDS_PER_CHECK records of traces (and a trace cut short by an
        // interruption is dropped with the whole tally at the last check).
        unchecked += spec.length;
        if unchecked >= RECORDS_PER_CHECK {
            unchecked = 0;
            cancel.check()?;
        }
        tally.diverging += diverges as u64;
        let Some(baseline) = &spec.baseline else {
            for &sig in &s.sigs {
                tally_class(&mut tally.classes, sig, index);
            }
            continue;
        };
        // The same trace against the baseline: the classes one shows and the other does not.
        let mine = std::mem::take(&mut s.sigs);
        diverge(&trace, baseline, &spec.reference, n_pmcs, &mut s);
        for &sig in mine.iter().filter(|sig| !s.sigs.contains(sig)) {
            tally_class(&mut tally.classes, sig, index);
        }
        for &sig in s.sigs.iter().filter(|sig| !mine.contains(sig)) {
            tally_class(&mut tally.gone, sig, index);
        }
    }
    // Some trace may have been cut short by an interruption since the last check.
    cancel.check()?;
    Ok(tally)
}

/// Fuzz traces `start..end` of the run (in parallel on the current rayon pool).
pub fn fuzz_range(spec: &FuzzSpec, start: u64, end: u64) -> Result<Tally, CoreError> {
    fuzz_range_with(spec, start, end, &Cancel::never())
}

/// [`fuzz_range`], checking `cancel` at the start of each task of 512 traces and every
/// `RECORDS_PER_CHECK` records of its traces.
pub fn fuzz_range_with(
    spec: &FuzzSpec,
    start: u64,
    end: u64,
    cancel: &Cancel<'_>,
) -> Result<Tally, CoreError> {
    tally_in_chunks(start, end, CHUNK, |s, e| fuzz_chunk(spec, s, e, cancel))
}

/// The tallies of `chunk(s, e)` over `start..end` cut into pieces of `size` traces, run in
/// parallel on the current rayon pool and merged (the same for any thread count).
pub(crate) fn tally_in_chunks(
    start: u64,
    end: u64,
    size: u64,
    chunk: impl Fn(u64, u64) -> Result<Tally, CoreError> + Sync,
) -> Result<Tally, CoreError> {
    let tasks = end.saturating_sub(start).div_ceil(size);
    (0..tasks)
        .into_par_iter()
        .map(|c| {
            let s = start + c * size;
            chunk(s, (s + size).min(end))
        })
        .try_reduce(Tally::default, |a, b| Ok(a.merge(b)))
}
