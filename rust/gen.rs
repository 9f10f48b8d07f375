//! The trace generator: valid random traces (model.md section 4), deterministic from a seed.
//!
//! Trace `t` of a batch draws from its own random stream, seeded from `(seed, t)`, so a batch
//! is the same whatever the thread count and however the traces are split between threads.

use crate::error::CoreError;
use crate::model::{
    filter, op, BRANCHES_RETIRED, COUNTER_MASK, EN, GUEST_ONLY, HOST_ONLY, INSTRUCTIONS_RETIRED,
    INT, MAX_PMCS, OS, USR,
};
use crate::trace::{is_valid, next_state, Record, TraceBuf, STATE_RESET};

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

    /// Uniform in `0..n` (n > 0), by Lemire's multiply-shift (bias below 2^-32 for small n).
    #[inline(always)]
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() >> 32) * n) >> 32
    }

    /// True with probability `permille / 1000`.
    #[inline(always)]
    pub fn chance(&mut self, permille: u32) -> bool {
        self.below(1000) < permille as u64
    }

    /// An index drawn with the given weights (at least one non-zero).
    #[inline]
    pub fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u64 = weights.iter().map(|&w| w as u64).sum();
        let mut x = self.below(total);
        for (i, &w) in weights.iter().enumerate() {
            if x < w as u64 {
                return i;
            }
            x -= w as u64;
        }
        weights.len() - 1
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
type OpTables = Box<[[u8; OP_SLOTS]; 4]>;

/// The third event a mix can draw: cycles not in halt (0x076).
pub const OTHER_EVENT: u32 = 0x076;

impl Mix {
    /// The per-mille fields by name, in a fixed order (for the Python glue).
    pub fn permille_fields(&self) -> [(&'static str, u32); 9] {
        [
            ("enable", self.enable),
            ("interrupt", self.interrupt),
            ("zero_selector", self.zero_selector),
            ("reserved_junk", self.reserved_junk),
            ("kernel", self.kernel),
            ("branch", self.branch),
            ("ctr_near_wrap", self.ctr_near_wrap),
            ("run_huge", self.run_huge),
            ("global_all", self.global_all),
        ]
    }

    pub fn permille_fields_mut(&mut self) -> [(&'static str, &mut u32); 9] {
        [
            ("enable", &mut self.enable),
            ("interrupt", &mut self.interrupt),
            ("zero_selector", &mut self.zero_selector),
            ("reserved_junk", &mut self.reserved_junk),
            ("kernel", &mut self.kernel),
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

    /// Per mode state, a table of `OP_SLOTS` ops in which each op valid in that state holds
    /// a share of slots proportional to its weight: drawing an op is one lookup. Weights are
    /// thus resolved to 1/4096 of the total of the valid ops' weights.
    fn op_tables(&self) -> OpTables {
        let mut t = Box::new([[0u8; OP_SLOTS]; 4]);
        for (state, row) in t.iter_mut().enumerate() {
            let mut w = [0u64; op::COUNT];
            for (o, slot) in w.iter_mut().enumerate() {
                let probe = Record {
                    op: o as u8,
                    ..Record::default()
                };
                if is_valid(probe, state as u8, MAX_PMCS) {
                    *slot = self.ops[o] as u64;
                }
            }
            let total: u64 = w.iter().sum();
            if total == 0 {
                continue; // state 2 (svme = 0 in guest mode) never occurs
            }
            for (s, out) in row.iter_mut().enumerate() {
                // The op whose cumulative weight range holds the slot's midpoint.
                let x = (2 * s as u64 + 1) * total / (2 * OP_SLOTS as u64);
                let mut acc = 0;
                for (o, &wo) in w.iter().enumerate() {
                    acc += wo;
                    if x < acc {
                        *out = o as u8;
                        break;
                    }
                }
            }
        }
        t
    }
}

fn event(rng: &mut Rng, mix: &Mix) -> u32 {
    [INSTRUCTIONS_RETIRED, BRANCHES_RETIRED, OTHER_EVENT][rng.weighted(&mix.events)]
}

fn selector(rng: &mut Rng, mix: &Mix) -> u64 {
    if rng.chance(mix.zero_selector) {
        return 0;
    }
    let e = event(rng, mix) as u64;
    let mut v = (e & 0xFF) | (e >> 8) << 32;
    v |= [OS | USR, OS, USR, 0][rng.weighted(&mix.cpl_bits)];
    v |= [0, GUEST_ONLY, HOST_ONLY, GUEST_ONLY | HOST_ONLY][rng.weighted(&mix.hg)];
    if rng.chance(mix.enable) {
        v |= EN;
    }
    if rng.chance(mix.interrupt) {
        v |= INT;
    }
    if rng.chance(mix.reserved_junk) {
        // Bits 19, 21 and 36..63 except H/G: a write must drop them.
        v |= rng.next_u64() & 0xFFFF_FCF0_0028_0000;
    }
    v
}

/// Append one random valid record for mode state `state` to `buf`; returns the next state.
#[inline]
fn push_record(
    rng: &mut Rng,
    mix: &Mix,
    tables: &[[u8; OP_SLOTS]; 4],
    state: u8,
    n_pmcs: usize,
    buf: &mut impl RecordSink,
) -> u8 {
    let o = tables[state as usize][(rng.next_u64() >> 52) as usize];
    let mut r = Record {
        op: o,
        ..Record::default()
    };
    let cpl = |rng: &mut Rng| if rng.chance(mix.kernel) { 0 } else { 3 };
    match o {
        op::WRMSR_EVTSEL => {
            r.pmc = rng.below(n_pmcs as u64) as u8;
            r.value = selector(rng, mix);
        }
        op::WRMSR_CTR => {
            r.pmc = rng.below(n_pmcs as u64) as u8;
            r.value = if rng.chance(mix.ctr_near_wrap) {
                COUNTER_MASK - rng.below(1 << 12)
            } else {
                rng.below(1 << 20)
            };
        }
        op::WRMSR_GLOBAL_CTRL => {
            r.value = if rng.chance(mix.global_all) {
                (1 << n_pmcs) - 1
            } else {
                rng.below(1 << n_pmcs)
            };
        }
        op::WRMSR_EFER => r.flag = rng.below(2) as u8,
        op::SET_NESTED_STATE => r.flag = (state & 1 != 0 && rng.below(2) == 1) as u8,
        op::SET_FILTER => {
            r.flag = [filter::NONE, filter::ALLOW, filter::DENY][rng.weighted(&mix.filter)];
            r.key = if r.flag == filter::NONE {
                0
            } else {
                event(rng, mix)
            };
        }
        op::EMULATE => {
            r.cpl = cpl(rng);
            r.flag = rng.chance(mix.branch) as u8;
        }
        op::RUN => {
            r.cpl = cpl(rng);
            r.key = event(rng, mix);
            r.value = if rng.chance(mix.run_huge) {
                (1 << 47) + rng.below(1 << 47)
            } else {
                1 + rng.below(mix.run_max)
            };
        }
        op::READ => r.pmc = rng.below(n_pmcs as u64) as u8,
        _ => {}
    }
    debug_assert!(is_valid(r, state, n_pmcs));
    buf.push(r);
    next_state(r, state)
}

/// Generate trace `index` of the batch seeded by `seed` and append it to `buf`.
pub fn generate_into(
    buf: &mut impl RecordSink,
    seed: u64,
    index: u64,
    length: usize,
    n_pmcs: usize,
    mix: &Mix,
    tables: &[[u8; OP_SLOTS]; 4],
) {
    let mut rng = Rng::for_trace(seed, index);
    let mut state = STATE_RESET;
    for _ in 0..length {
        state = push_record(&mut rng, mix, tables, state, n_pmcs, buf);
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
    tables: OpTables,
    pub n_pmcs: usize,
}

impl Generator {
    pub fn new(mix: Mix, n_pmcs: usize) -> Result<Self, CoreError> {
        mix.check()?;
        crate::trace::check_n_pmcs(n_pmcs)?;
        let tables = mix.op_tables();
        Ok(Generator {
            mix,
            tables,
            n_pmcs,
        })
    }

    /// Trace `index` of the batch seeded by `seed`, appended to `buf`.
    pub fn trace_into(&self, buf: &mut impl RecordSink, seed: u64, index: u64, length: usize) {
        generate_into(
            buf,
            seed,
            index,
            length,
            self.n_pmcs,
            &self.mix,
            &self.tables,
        );
    }

    pub fn trace(&self, seed: u64, index: u64, length: usize) -> TraceBuf {
        let mut buf = TraceBuf::with_capacity(length);
        self.trace_into(&mut buf, seed, index, length);
        buf
    }
}

impl Generator {
    /// Traces `0..n_traces` of the batch seeded by `seed`, concatenated (in parallel on the
    /// current rayon pool; the same for any thread count).
    pub fn batch(&self, seed: u64, n_traces: usize, length: usize) -> Result<TraceBuf, CoreError> {
        use rayon::prelude::*;
        let total = n_traces
            .checked_mul(length)
            .ok_or_else(|| CoreError::Value("n_traces * length is too large".into()))?;
        let mut out = TraceBuf::zeroed(total);
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
            .for_each(|(c, (((((op, pmc), cpl), flag), key), value))| {
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
                    self.trace_into(&mut sink, seed, (c * per + j) as u64, length);
                }
            });
        Ok(out)
    }
}
