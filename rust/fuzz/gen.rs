//! The trace generator: valid random traces (model.md section 4), deterministic from a seed.
//!
//! Trace `t` of a batch draws from its own random stream, seeded from `(seed, t)`, so a batch
//! is the same whatever the thread count and however the traces are split between threads.

use crate::cancel::Cancel;
use crate::error::CoreError;
use crate::memory;
use crate::model::{
    filter, op, BRANCHES_RETIRED, COUNTER_MASK, EN, GUEST_ONLY, HOST_ONLY, INSTRUCTIONS_RETIRED,
    INT, MAX_PMCS, OS, USR,
};
use crate::trace::{is_valid, next_state, ops_using, Field, Record, TraceBuf, STATE_RESET};

/// SplitMix64 (Steele, Lea and Flood 2014): tiny, fast and its output is fixed by its
/// definition, so a seed reproduces the same traces on every version and platform.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// The stream of trace `index` of a batch generated from `seed`.
    pub fn for_trace(seed: u64, index: u64) -> Self {
        let mut r = Rng(seed ^ 0x5851_F42D_4C95_7F2D);
        let a = r.next_u64();
        Rng(a ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    #[inline(always)]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// What the generator draws, and how often (docs: README "Generator mix").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mix {
    /// Relative weight of each op, indexed by op code. Ops that are invalid in the current mode
    /// are left out of the draw, so every weight applies among the ops valid at that point.
    pub ops: [u32; op::COUNT],
    /// Weights of the H/G bits of a written selector: none, G only, H only, both.
    pub hg: [u32; 4],
    /// Weights of the event of a written selector, a RUN and a filter: instructions retired,
    /// branches retired, another event (0x076, cycles not in halt).
    pub events: [u32; 3],
    /// Weights of the OS/USR bits of a written selector: both, OS only, USR only, neither.
    pub cpl_bits: [u32; 4],
    /// Per mille of written selectors with EN set.
    pub enable: u32,
    /// Per mille of written selectors with INT set.
    pub interrupt: u32,
    /// Per mille of written selectors that are 0 (a counter being torn down).
    pub zero_selector: u32,
    /// Per mille of written selectors with random reserved bits set (dropped by the write).
    pub reserved_junk: u32,
    /// Per mille of EMULATE and RUN records at CPL 0 (the rest at CPL 3).
    pub kernel: u32,
    /// Per mille of VMRUN records into an L2 that resumes at CPL 3 (the rest at CPL 0, where
    /// a nested hypervisor's VMRUN mostly lands).
    pub vmrun_user: u32,
    /// Per mille of EMULATE records that are branches.
    pub branch: u32,
    /// Per mille of WRMSR_CTR records that write a value within 2^12 of the wrap.
    pub ctr_near_wrap: u32,
    /// Per mille of RUN records with a huge n (2^47 to 2^48) that make counters wrap;
    /// the others run 1 to `run_max` events.
    pub run_huge: u32,
    pub run_max: u64,
    /// Weights of SET_FILTER actions: none, allow, deny.
    pub filter: [u32; 3],
    /// Per mille of WRMSR_GLOBAL_CTRL records that enable every PMC (the rest are random).
    pub global_all: u32,
}

impl Default for Mix {
    fn default() -> Self {
        let mut ops = [0; op::COUNT];
        ops[op::WRMSR_EVTSEL as usize] = 120;
        ops[op::WRMSR_CTR as usize] = 25;
        ops[op::WRMSR_GLOBAL_CTRL as usize] = 25;
        ops[op::WRMSR_EFER as usize] = 60;
        ops[op::VMRUN as usize] = 90;
        ops[op::VMRUN_FAIL as usize] = 15;
        ops[op::VMEXIT as usize] = 80;
        ops[op::FORCED_LEAVE as usize] = 15;
        ops[op::SET_NESTED_STATE as usize] = 15;
        ops[op::SET_FILTER as usize] = 15;
        ops[op::EMULATE as usize] = 180;
        ops[op::RUN as usize] = 250;
        ops[op::VMENTRY as usize] = 50;
        ops[op::READ as usize] = 50;
        ops[op::RESET as usize] = 10;
        Mix {
            ops,
            hg: [25, 25, 25, 25],
            events: [70, 20, 10],
            cpl_bits: [70, 10, 10, 10],
            enable: 900,
            interrupt: 300,
            zero_selector: 30,
            reserved_junk: 50,
            kernel: 300,
            vmrun_user: 200,
            branch: 200,
            ctr_near_wrap: 300,
            run_huge: 10,
            run_max: 1000,
            filter: [40, 30, 30],
            global_all: 500,
        }
    }
}

/// Slots of an op table: ops are drawn with a resolution of 1/4096.
pub const OP_SLOTS: usize = 4096;

/// The third event a mix can draw: cycles not in halt (0x076).
pub const OTHER_EVENT: u32 = 0x076;

impl Mix {
    /// The default mix with the op weights of Python's `Mix.workload()`: a guest that mostly
    /// runs (the benchmarks' workload-like trace).
    pub fn workload() -> Self {
        let mut ops = [0; op::COUNT];
        for (o, w) in [
            (op::RUN, 480),
            (op::EMULATE, 420),
            (op::VMENTRY, 20),
            (op::READ, 20),
            (op::WRMSR_EVTSEL, 8),
            (op::WRMSR_CTR, 2),
            (op::WRMSR_GLOBAL_CTRL, 2),
            (op::WRMSR_EFER, 2),
            (op::VMRUN, 15),
            (op::VMRUN_FAIL, 1),
            (op::VMEXIT, 15),
            (op::FORCED_LEAVE, 1),
            (op::SET_NESTED_STATE, 1),
            (op::SET_FILTER, 1),
        ] {
            ops[o as usize] = w;
        }
        Mix {
            ops,
            ..Mix::default()
        }
    }

    /// The per-mille fields by name, in a fixed order (for the Python glue).
    pub fn permille_fields(&self) -> [(&'static str, u32); 10] {
        [
            ("enable", self.enable),
            ("interrupt", self.interrupt),
            ("zero_selector", self.zero_selector),
            ("reserved_junk", self.reserved_junk),
            ("kernel", self.kernel),
            ("vmrun_user", self.vmrun_user),
            ("branch", self.branch),
            ("ctr_near_wrap", self.ctr_near_wrap),
            ("run_huge", self.run_huge),
            ("global_all", self.global_all),
        ]
    }

    pub fn permille_fields_mut(&mut self) -> [(&'static str, &mut u32); 10] {
        [
            ("enable", &mut self.enable),
            ("interrupt", &mut self.interrupt),
            ("zero_selector", &mut self.zero_selector),
            ("reserved_junk", &mut self.reserved_junk),
            ("kernel", &mut self.kernel),
            ("vmrun_user", &mut self.vmrun_user),
            ("branch", &mut self.branch),
            ("ctr_near_wrap", &mut self.ctr_near_wrap),
            ("run_huge", &mut self.run_huge),
            ("global_all", &mut self.global_all),
        ]
    }

    pub fn check(&self) -> Result<(), CoreError> {
        let bad = |what: &str| Err(CoreError::Value(format!("mix: {what}")));
        for (name, v) in self.permille_fields() {
            if v > 1000 {
                return bad(&format!("{name} is a per-mille value (0..1000), got {v}"));
            }
        }
        // Every mode must leave some op to draw: the ones valid everywhere.
        let always = [
            op::WRMSR_EVTSEL,
            op::WRMSR_CTR,
            op::WRMSR_GLOBAL_CTRL,
            op::FORCED_LEAVE,
            op::SET_NESTED_STATE,
            op::SET_FILTER,
            op::EMULATE,
            op::RUN,
            op::VMENTRY,
            op::READ,
            op::RESET,
        ];
        if self.ops.iter().map(|&w| w as u64).sum::<u64>() > u32::MAX as u64 {
            return bad("op weights must add up to less than 2^32");
        }
        if always.iter().all(|&o| self.ops[o as usize] == 0) {
            return bad("at least one op valid in every mode needs a non-zero weight");
        }
        for (name, w) in [
            ("hg", &self.hg[..]),
            ("events", &self.events[..]),
            ("cpl_bits", &self.cpl_bits[..]),
            ("filter", &self.filter[..]),
        ] {
            if w.iter().all(|&x| x == 0) {
                return bad(&format!("{name} weights are all zero"));
            }
        }
        if self.run_max == 0 {
            return bad("run_max must be at least 1");
        }
        Ok(())
    }

    /// The lookup tables of this mix (see [`Tables`]).
    fn tables(&self) -> Tables {
        let mut ops = Box::new([[0u8; OP_SLOTS]; 4]);
        for (state, row) in ops.iter_mut().enumerate() {
            let w: Vec<u32> = (0..op::COUNT)
                .map(|o| {
                    let probe = Record {
                        op: o as u8,
                        ..Record::default()
                    };
                    if is_valid(probe, state as u8, MAX_PMCS) {
                        self.ops[o]
                    } else {
                        0
                    }
                })
                .collect();
            // State 2 (svme = 0 in guest mode) never occurs and keeps an empty row.
            if w.iter().any(|&x| x != 0) {
                fill_slots(row, &w);
            }
        }
        let mut t = Tables {
            ops,
            event: [0; 256],
            cpl_bits: [0; 256],
            hg: [0; 256],
            filter: [0; 256],
        };
        fill_slots(&mut t.event, &self.events);
        fill_slots(&mut t.cpl_bits, &self.cpl_bits);
        fill_slots(&mut t.hg, &self.hg);
        fill_slots(&mut t.filter, &self.filter);
        t
    }
}

/// Fill `slots` with indices into `weights`, each index holding a share of the slots in
/// proportion to its weight (the index whose cumulative range holds each slot's midpoint).
fn fill_slots(slots: &mut [u8], weights: &[u32]) {
    let total: u64 = weights.iter().map(|&w| w as u64).sum();
    let n = slots.len() as u64;
    for (s, out) in slots.iter_mut().enumerate() {
        let x = (2 * s as u64 + 1) * total / (2 * n);
        let mut acc = 0;
        for (i, &w) in weights.iter().enumerate() {
            acc += w as u64;
            if x < acc {
                *out = i as u8;
                break;
            }
        }
    }
}

/// A mix as lookup tables, so that every draw is a few random bits and one lookup: ops by
/// mode state (1/4096 resolution), and the small weighted choices (1/256 resolution).
#[derive(Clone, Debug)]
struct Tables {
    ops: Box<[[u8; OP_SLOTS]; 4]>,
    event: [u8; 256],
    cpl_bits: [u8; 256],
    hg: [u8; 256],
    filter: [u8; 256],
}

const EVENTS: [u32; 3] = [INSTRUCTIONS_RETIRED, BRANCHES_RETIRED, OTHER_EVENT];
/// The OS/USR bits of `Mix::cpl_bits`, in its order.
const CPL_BITS: [u64; 4] = [OS | USR, OS, USR, 0];
/// The H/G bits of `Mix::hg`, in its order.
const HG_BITS: [u64; 4] = [0, GUEST_ONLY, HOST_ONLY, GUEST_ONLY | HOST_ONLY];

/// True with probability about `permille / 1000`, from 10 random bits (resolution 1/1024).
#[inline(always)]
fn chance(bits: u64, permille: u32) -> bool {
    ((bits & 1023) * 1000) >> 10 < permille as u64
}

/// `0..n` from 32 random bits.
#[inline(always)]
fn below(bits: u64, n: u64) -> u64 {
    (((bits & 0xFFFF_FFFF) as u128 * n as u128) >> 32) as u64
}

/// What each op's record uses, for the branch-free assembly of a record.
const USES_PMC: u16 = ops_using(Field::Pmc);
const USES_CPL: u16 = ops_using(Field::Cpl);

#[inline(always)]
fn when(o: u8, ops: u16) -> u64 {
    (((ops >> o) & 1) as u64).wrapping_neg()
}

#[inline(always)]
fn is(o: u8, which: u8) -> u64 {
    ((o == which) as u64).wrapping_neg()
}

/// Append one random valid record for mode state `state` to `buf`; returns the next state.
#[inline]
fn push_record(
    rng: &mut Rng,
    mix: &Mix,
    t: &Tables,
    state: u8,
    n_pmcs: usize,
    buf: &mut impl RecordSink,
) -> u8 {
    // Four random words; every field of every op is drawn from them and the record keeps the
    // fields its op uses. There is no branch on the op: on random op sequences one would
    // mispredict on almost every record. Fields of one op come from disjoint bits.
    let (a, b, c, d) = (
        rng.next_u64(),
        rng.next_u64(),
        rng.next_u64(),
        rng.next_u64(),
    );
    let o = t.ops[state as usize][(a >> 52) as usize];
    let all = (1u64 << n_pmcs) - 1;
    // a: the op, PMC, CPL, branch flag, the RUN event, the EFER and nested-state flags.
    let pmc = (((a >> 36) & 0xFFFF) * n_pmcs as u64) >> 16;
    // VMRUN's CPL (that of L2) has a chance of its own; one select, no branch on the op.
    let cpl = std::hint::select_unpredictable(
        o == op::VMRUN,
        3 * chance(d >> 40, mix.vmrun_user) as u64,
        3 * !chance(a >> 26, mix.kernel) as u64,
    );
    let branch = chance(a >> 16, mix.branch) as u64;
    let event = EVENTS[t.event[((a >> 8) & 255) as usize] as usize] as u64;
    let svme_bit = (a >> 7) & 1;
    let nested_bit = (a >> 6) & 1 & (state as u64 & 1); // guest mode needs SVME
                                                        // b: a selector.
    let sel_event = EVENTS[t.event[((b >> 10) & 255) as usize] as usize] as u64;
    let mut sel = (sel_event & 0xFF) | (sel_event >> 8) << 32;
    sel |= CPL_BITS[t.cpl_bits[((b >> 18) & 255) as usize] as usize];
    sel |= HG_BITS[t.hg[((b >> 26) & 255) as usize] as usize];
    sel |= EN & (chance(b >> 34, mix.enable) as u64).wrapping_neg();
    sel |= INT & (chance(b >> 44, mix.interrupt) as u64).wrapping_neg();
    // Bits 19, 21 and 36..63 except H/G, which a write must drop.
    sel |= c & 0xFFFF_FCF0_0028_0000 & (chance(b >> 54, mix.reserved_junk) as u64).wrapping_neg();
    sel &= !(chance(b, mix.zero_selector) as u64).wrapping_neg();
    // c: a counter value, a global control value, a filter; c and d: a RUN's n.
    let ctr = if chance(c, mix.ctr_near_wrap) {
        COUNTER_MASK - ((c >> 10) & 0xFFF)
    } else {
        (c >> 22) & 0xF_FFFF
    };
    let gctl = if chance(c >> 42, mix.global_all) {
        all
    } else {
        (c >> 52) & all
    };
    let action = t.filter[(c & 255) as usize] as u64;
    let filter_event = EVENTS[t.event[((c >> 8) & 255) as usize] as usize] as u64;
    let n = if chance(c, mix.run_huge) {
        (1 << 47) + ((c >> 10) & ((1 << 47) - 1))
    } else {
        1 + below(d, mix.run_max)
    };
    let filter_key = filter_event & ((action != filter::NONE as u64) as u64).wrapping_neg();
    let r = Record {
        op: o,
        pmc: (pmc & when(o, USES_PMC)) as u8,
        cpl: (cpl & when(o, USES_CPL)) as u8,
        flag: ((svme_bit & is(o, op::WRMSR_EFER))
            | (nested_bit & is(o, op::SET_NESTED_STATE))
            | (action & is(o, op::SET_FILTER))
            | (branch & is(o, op::EMULATE))) as u8,
        key: ((event & is(o, op::RUN)) | (filter_key & is(o, op::SET_FILTER))) as u32,
        value: (sel & is(o, op::WRMSR_EVTSEL))
            | (ctr & is(o, op::WRMSR_CTR))
            | (gctl & is(o, op::WRMSR_GLOBAL_CTRL))
            | (n & is(o, op::RUN)),
    };
    debug_assert!(is_valid(r, state, n_pmcs));
    buf.push(r);
    next_state(r, state)
}

/// Records drawn between two checks of a `Cancel`: 10 to 25 ms here (a quarter of
/// `crate::cancel::RECORDS_PER_CHECK`: drawing a record costs more than replaying one).
pub const RECORDS_PER_CHECK: usize = 1 << 18;

/// Generate trace `index` of the batch seeded by `seed` and append it to `buf`, checking
/// `cancel` every [`RECORDS_PER_CHECK`] records (a shorter trace is not checked). The records
/// are the same however the trace is cut.
#[allow(clippy::too_many_arguments)]
fn generate_into(
    buf: &mut impl RecordSink,
    seed: u64,
    index: u64,
    length: usize,
    n_pmcs: usize,
    mix: &Mix,
    tables: &Tables,
    cancel: &Cancel<'_>,
) -> Result<(), CoreError> {
    let mut rng = Rng::for_trace(seed, index);
    let mut state = STATE_RESET;
    let mut left = length;
    loop {
        let piece = left.min(RECORDS_PER_CHECK);
        for _ in 0..piece {
            state = push_record(&mut rng, mix, tables, state, n_pmcs, buf);
        }
        left -= piece;
        if left == 0 {
            return Ok(());
        }
        cancel.check()?;
    }
}

/// Where generated records go: a growing [`TraceBuf`], or preallocated column slices.
pub trait RecordSink {
    fn push(&mut self, r: Record);
}

impl RecordSink for TraceBuf {
    fn push(&mut self, r: Record) {
        TraceBuf::push(self, r);
    }
}

/// Column slices filled from the start; a batch's traces are written straight into the
/// output, so no second copy of a batch is ever held.
struct SliceSink<'a> {
    op: &'a mut [u8],
    pmc: &'a mut [u8],
    cpl: &'a mut [u8],
    flag: &'a mut [u8],
    key: &'a mut [u32],
    value: &'a mut [u64],
    at: usize,
}

impl RecordSink for SliceSink<'_> {
    #[inline(always)]
    fn push(&mut self, r: Record) {
        let i = self.at;
        self.op[i] = r.op;
        self.pmc[i] = r.pmc;
        self.cpl[i] = r.cpl;
        self.flag[i] = r.flag;
        self.key[i] = r.key;
        self.value[i] = r.value;
        self.at += 1;
    }
}

/// A generator bound to a mix: precomputed per-state op tables.
#[derive(Clone, Debug)]
pub struct Generator {
    pub mix: Mix,
    tables: Tables,
    pub n_pmcs: usize,
}

impl Generator {
    pub fn new(mix: Mix, n_pmcs: usize) -> Result<Self, CoreError> {
        mix.check()?;
        crate::trace::check_n_pmcs(n_pmcs)?;
        let tables = mix.tables();
        Ok(Generator {
            mix,
            tables,
            n_pmcs,
        })
    }

    /// Trace `index` of the batch seeded by `seed`, appended to `buf`.
    pub fn trace_into(&self, buf: &mut impl RecordSink, seed: u64, index: u64, length: usize) {
        // Never stopped: no error.
        let _ = self.trace_into_with(buf, seed, index, length, &Cancel::never());
    }

    /// [`Generator::trace_into`], checking `cancel` every [`RECORDS_PER_CHECK`] records:
    /// `Err(CoreError::Interrupted)` (and part of the trace in `buf`) if it says stop.
    pub fn trace_into_with(
        &self,
        buf: &mut impl RecordSink,
        seed: u64,
        index: u64,
        length: usize,
        cancel: &Cancel<'_>,
    ) -> Result<(), CoreError> {
        generate_into(
            buf,
            seed,
            index,
            length,
            self.n_pmcs,
            &self.mix,
            &self.tables,
            cancel,
        )
    }

    /// Trace `index` of the batch seeded by `seed` (for the tests and tools in Rust: panics if
    /// the memory for it cannot be had).
    pub fn trace(&self, seed: u64, index: u64, length: usize) -> TraceBuf {
        self.try_trace(seed, index, length)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Generator::trace`], with an error rather than an abort when memory runs out.
    pub fn try_trace(&self, seed: u64, index: u64, length: usize) -> Result<TraceBuf, CoreError> {
        self.try_trace_with(seed, index, length, &Cancel::never())
    }

    /// [`Generator::try_trace`], checking `cancel` every [`RECORDS_PER_CHECK`] records.
    pub fn try_trace_with(
        &self,
        seed: u64,
        index: u64,
        length: usize,
        cancel: &Cancel<'_>,
    ) -> Result<TraceBuf, CoreError> {
        let mut buf = TraceBuf::try_with_capacity(length)?;
        self.trace_into_with(&mut buf, seed, index, length, cancel)?;
        Ok(buf)
    }
}

/// How the generator draws, as shares of its lookup tables: what the automaton engine
/// (`crate::automaton`) needs to draw abstract records with the generator's probabilities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Shares {
    /// Per mode state, how many of the [`OP_SLOTS`] op slots hold each op.
    pub ops: [[u32; op::COUNT]; 4],
    /// Of 256 slots: the events ([`Mix::events`] order), the OS/USR bits, the H/G bits and
    /// the filter actions.
    pub event: [u32; 3],
    pub cpl_bits: [u32; 4],
    pub hg: [u32; 4],
    pub filter: [u32; 3],
}

/// Of the 1024 values of [`chance`]'s 10 bits, how many say yes for `permille`.
pub(crate) fn chance_share(permille: u32) -> u32 {
    (0..1024u64).filter(|&v| chance(v, permille)).count() as u32
}

/// Of the 65536 values of the 16 bits a PMC is drawn from, how many give `pmc` of `n_pmcs`.
pub(crate) fn pmc_share(pmc: usize, n_pmcs: usize) -> u32 {
    (0..1u64 << 16)
        .filter(|&x| ((x * n_pmcs as u64) >> 16) as usize == pmc)
        .count() as u32
}

/// The constants the generator builds records from, in the order of the mix's weights.
pub(crate) const GEN_EVENTS: [u32; 3] = EVENTS;
pub(crate) const GEN_CPL_BITS: [u64; 4] = CPL_BITS;
pub(crate) const GEN_HG_BITS: [u64; 4] = HG_BITS;

impl Generator {
    /// The shares of this generator's tables (see [`Shares`]).
    pub(crate) fn shares(&self) -> Shares {
        fn count<const N: usize>(slots: &[u8]) -> [u32; N] {
            let mut out = [0; N];
            for &s in slots {
                out[s as usize] += 1;
            }
            out
        }
        let t = &self.tables;
        let mut ops = [[0; op::COUNT]; 4];
        for (state, row) in ops.iter_mut().enumerate() {
            // State 2 keeps an empty row (all slots 0): it never occurs.
            if state != 2 {
                *row = count(&t.ops[state][..]);
            }
        }
        Shares {
            ops,
            event: count(&t.event),
            cpl_bits: count(&t.cpl_bits),
            hg: count(&t.hg),
            filter: count(&t.filter),
        }
    }
}

/// The offsets of a batch of `n_traces` traces of `length` records: `i * length` for `i` in
/// `0..=n_traces`, allocated fallibly.
pub fn batch_offsets(n_traces: usize, length: usize) -> Result<Vec<u64>, CoreError> {
    let count = n_traces
        .checked_add(1)
        .ok_or_else(|| memory::error(memory::bytes_of::<u64>(n_traces) + 8, "the offsets"))?;
    let mut offsets = memory::with_capacity(count, "the offsets")?;
    offsets.extend((0..count as u64).map(|i| i * length as u64));
    Ok(offsets)
}

impl Generator {
    /// Traces `0..n_traces` of the batch seeded by `seed`, concatenated (in parallel on the
    /// current rayon pool; the same for any thread count).
    pub fn batch(&self, seed: u64, n_traces: usize, length: usize) -> Result<TraceBuf, CoreError> {
        self.batch_with(seed, n_traces, length, &Cancel::never())
    }

    /// [`Generator::batch`], checking `cancel` at the start of each task (2^16 records, or
    /// one trace) and every [`RECORDS_PER_CHECK`] records of a longer trace. The records
    /// are allocated fallibly, before any is drawn ([`CoreError::Memory`]).
    pub fn batch_with(
        &self,
        seed: u64,
        n_traces: usize,
        length: usize,
        cancel: &Cancel<'_>,
    ) -> Result<TraceBuf, CoreError> {
        use rayon::prelude::*;
        let total = n_traces.checked_mul(length).ok_or_else(|| {
            memory::error(
                n_traces as u128 * length as u128 * 16,
                &format!("{n_traces} traces of {length} records"),
            )
        })?;
        let mut out = TraceBuf::try_zeroed_with(total, cancel)?;
        if total == 0 {
            return Ok(out);
        }
        const PER_TASK: usize = 1 << 16;
        let per = (PER_TASK / length).max(1);
        let chunk = per * length;
        let TraceBuf {
            op,
            pmc,
            cpl,
            flag,
            key,
            value,
        } = &mut out;
        op.par_chunks_mut(chunk)
            .zip(pmc.par_chunks_mut(chunk))
            .zip(cpl.par_chunks_mut(chunk))
            .zip(flag.par_chunks_mut(chunk))
            .zip(key.par_chunks_mut(chunk))
            .zip(value.par_chunks_mut(chunk))
            .enumerate()
            .try_for_each(|(c, (((((op, pmc), cpl), flag), key), value))| {
                cancel.check()?;
                let n = op.len() / length;
                let mut sink = SliceSink {
                    op,
                    pmc,
                    cpl,
                    flag,
                    key,
                    value,
                    at: 0,
                };
                for j in 0..n {
                    let index = (c * per + j) as u64;
                    self.trace_into_with(&mut sink, seed, index, length, cancel)?;
                }
                Ok(())
            })?;
        Ok(out)
    }
}

/// `len` records with every field drawn from (a little beyond) its whole range: mostly invalid
/// traces, for tests that replay must neither panic nor disagree with the validator.
#[cfg(test)]
pub(crate) fn arbitrary_records(rng: &mut Rng, len: usize) -> Vec<Record> {
    use crate::model::INSTRUCTIONS_RETIRED;
    (0..len)
        .map(|_| {
            let x = rng.next_u64();
            Record {
                op: (x % 17) as u8,
                pmc: ((x >> 8) % 9) as u8,
                cpl: ((x >> 16) % 5) as u8,
                flag: ((x >> 24) % 4) as u8,
                key: [0, INSTRUCTIONS_RETIRED, 1 << 20][((x >> 32) % 3) as usize],
                value: rng.next_u64() >> (x >> 58),
            }
        })
        .collect()
}
