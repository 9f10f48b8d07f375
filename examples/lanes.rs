//! Lockstep prototype, measured against the scalar core (README "Performance", issue 4): the
//! KVM model of model.md section 6 run on `L` traces at once, one lane a trace, every common
//! op branch-free (each record's effects selected by masks, never jumped to), the per-lane
//! state in struct-of-arrays form so that each statement is a loop over the lanes, for the
//! compiler to vectorise. SET_FILTER and RESET (2.5% of records) are fixed up lane by lane.
//!
//! Measured on this project's machine (one thread, 65,536 traces of 64 records, `final`): 38 M
//! records/s against 70 M for the scalar core, about 395 instructions a record against 105.
//! Slower, so it stays a prototype; README "Performance" says why.
//!
//! It checks its results against `simulate_valid` on every trace, then times both:
//! `cargo run --release --no-default-features --example lanes -- [preset [n_traces [length]]]`.
//!
//! Prototype limits (asserted): valid traces of equal length, 6 PMCs, RUN counts below 2^63,
//! no validation while replaying. It is not wired into `simulate_batch`.
// Struct-of-arrays lanes: loops index several per-lane arrays by the lane on purpose.
#![allow(clippy::needless_range_loop)]
use _core::gen::{Generator, Mix};
use _core::model::{
    filter, op, selector_key, KvmPolicy, Policy, Timing, BRANCHES_RETIRED, COUNTER_BITS,
    COUNTER_MASK, EN, GUEST_ONLY, HOST_ONLY, INSTRUCTIONS_RETIRED, INT, OS, RESERVED_BITS, USR,
};
use _core::sim::{simulate_valid, SimResult};
use _core::trace::TraceRef;
use std::time::Instant;

const L: usize = 16;
const P: usize = 6;
type M = [u8; L];
type W = [u64; L];

#[inline(always)]
fn mask(b: bool) -> u8 {
    (b as u8).wrapping_neg()
}

#[inline(always)]
fn map(f: impl Fn(usize) -> u8) -> M {
    std::array::from_fn(f)
}

/// The state of `L` traces, lane `l` of every array belonging to trace `l`.
#[derive(Clone)]
struct Group {
    mode: M,
    gc: M,
    faction: M,
    fkey: [u32; L],
    filter_ok: M,
    en: M,
    ho: M,
    go: M,
    int: M,
    os: M,
    usr: M,
    instr: M,
    branch: M,
    key: [[u32; L]; P],
    sel: [W; P],
    hw_base: [W; P],
    hw_en: M,
    emul_ok: M,
    pending: M,
    stale: M,
    raw: [W; P],
    ovf: [W; P],
    pmis: [W; P],
}

const ALL: u8 = (1 << P) - 1;

impl Group {
    fn new() -> Self {
        Group {
            mode: [0; L],
            gc: [ALL; L],
            faction: [filter::NONE; L],
            fkey: [0; L],
            filter_ok: [ALL; L],
            en: [0; L],
            ho: [0; L],
            go: [0; L],
            int: [0; L],
            os: [0; L],
            usr: [0; L],
            instr: [0; L],
            branch: [0; L],
            key: [[0; L]; P],
            sel: [[0; L]; P],
            hw_base: [[0; L]; P],
            hw_en: [0; L],
            emul_ok: [0; L],
            pending: [0; L],
            stale: [0; L],
            raw: [[0; L]; P],
            ovf: [[0; L]; P],
            pmis: [[0; L]; P],
        }
    }

    /// Lane `l` back to the reset state.
    fn reset_lane(&mut self, l: usize) {
        let fresh = Group::new();
        macro_rules! copy {
            ($($f:ident),*) => { $( self.$f[l] = fresh.$f[l]; )* };
        }
        copy!(mode, gc, faction, fkey, filter_ok, en, ho, go, int, os, usr, instr, branch);
        copy!(hw_en, emul_ok, pending, stale);
        for p in 0..P {
            self.key[p][l] = 0;
            self.sel[p][l] = 0;
            self.hw_base[p][l] = 0;
            self.raw[p][l] = 0;
            self.ovf[p][l] = 0;
            self.pmis[p][l] = 0;
        }
    }

    /// PMCs of lane `l` whose selector key is `k`.
    fn key_match_lane(&self, l: usize, k: u32) -> u8 {
        (0..P).fold(0, |m, p| m | (((self.key[p][l] == k) as u8) << p))
    }

    /// `counts_in_mode` of every lane in mode `mode` (model.md section 6).
    #[inline(always)]
    fn cim(&self, mode: &M, ignore: u8) -> M {
        map(|l| {
            let hg = self.ho[l] | self.go[l];
            let svme = mask(mode[l] & 1 != 0);
            let guest = mask(mode[l] & 2 != 0);
            (ALL & !hg)
                | (!svme & ignore & hg)
                | (svme & ((guest & self.go[l]) | (!guest & self.ho[l])))
        })
    }
}

/// The KVM policy as masks.
struct Knobs {
    reserved: u64,
    ignore: u8,
    any_mode: u8,
    sync_filter: bool,
    after_entry: bool,
    hg_honored: bool,
    /// Per op: (sync, deferred) masks of its flow.
    flow: [(u8, u8); 16],
}

impl Knobs {
    fn new(p: &KvmPolicy) -> Self {
        let masks = |t: Timing| match t {
            Timing::Sync => (0xFF, 0),
            Timing::Deferred => (0, 0xFF),
            Timing::None => (0, 0),
        };
        let mut flow = [(0, 0); 16];
        flow[op::WRMSR_EFER as usize] = masks(p.efer);
        flow[op::VMRUN as usize] = masks(p.vmrun);
        flow[op::VMEXIT as usize] = masks(p.vmexit);
        flow[op::FORCED_LEAVE as usize] = masks(p.forced_leave);
        flow[op::SET_NESTED_STATE as usize] = masks(p.set_nested_state);
        Knobs {
            reserved: if p.hg_honored {
                RESERVED_BITS & !(HOST_ONLY | GUEST_ONLY)
            } else {
                RESERVED_BITS
            },
            ignore: mask(p.svme0_ignore),
            any_mode: mask(!p.emul_mode_aware),
            sync_filter: p.filter_on_sync,
            after_entry: p.vmrun_after_entry,
            hg_honored: p.hg_honored,
            flow,
        }
    }
}

/// How each op changes the mode (bit 0 svme, bit 1 guest mode), as in `Kvm::step`:
/// `next = (mode & keep) | set`, by [op][flag != 0].
const MODE_CHANGE: [[(u8, u8); 2]; 16] = {
    let mut t = [[(3u8, 0u8); 2]; 16];
    t[op::WRMSR_EFER as usize] = [(2, 0), (2, 1)];
    t[op::VMRUN as usize] = [(3, 2), (3, 2)];
    t[op::VMEXIT as usize] = [(1, 0), (1, 0)];
    t[op::FORCED_LEAVE as usize] = [(1, 0), (1, 0)];
    t[op::SET_NESTED_STATE as usize] = [(1, 0), (1, 2)];
    t
};

/// The ops that retire an instruction after their handler (VMRUN: unless `before_entry`).
const RETIRES_AFTER: [u8; 16] = {
    let mut t = [0u8; 16];
    let ops = [
        op::WRMSR_EVTSEL,
        op::WRMSR_CTR,
        op::WRMSR_GLOBAL_CTRL,
        op::WRMSR_EFER,
        op::VMRUN,
        op::VMRUN_FAIL,
        op::EMULATE,
    ];
    let mut i = 0;
    while i < ops.len() {
        t[ops[i] as usize] = 0xFF;
        i += 1;
    }
    t
};

/// One record of each lane.
struct Step {
    o: M,
    pmc: M,
    cpl: M,
    flag: M,
    key: [u32; L],
    v: W,
}

impl Group {
    /// Re-evaluate the PMCs in `set` in mode `mode` (model.md section 6).
    #[inline(always)]
    fn reevaluate(&mut self, set: &M, cim: &M, filt: &M, k: &Knobs) {
        for l in 0..L {
            let s = set[l];
            self.hw_en[l] = (self.hw_en[l] & !s) | (s & self.en[l] & cim[l] & filt[l]);
            self.emul_ok[l] = (self.emul_ok[l] & !s) | (s & self.en[l] & (cim[l] | k.any_mode));
            self.stale[l] &= !s;
        }
    }

    #[inline(always)]
    fn step(&mut self, s: &Step, k: &Knobs, reads: &mut [Vec<u64>; L], n_reads: &mut [usize; L]) {
        let is = |x: u8| map(|l| mask(s.o[l] == x));
        let (is_run, is_vmentry, is_evtsel) = (is(op::RUN), is(op::VMENTRY), is(op::WRMSR_EVTSEL));
        let (is_ctr, is_global, is_vmrun) =
            (is(op::WRMSR_CTR), is(op::WRMSR_GLOBAL_CTRL), is(op::VMRUN));
        let is_emulate = is(op::EMULATE);
        // A. The VM-entry before RUN and VMENTRY.
        let cim = self.cim(&self.mode, k.ignore);
        let entered = map(|l| self.pending[l] & (is_run[l] | is_vmentry[l]));
        let filt = self.filter_ok;
        self.reevaluate(&entered, &cim, &filt, k);
        for l in 0..L {
            self.pending[l] &= !(is_run[l] | is_vmentry[l]);
        }
        // B. WRMSR(PerfEvtSel) and C. WRMSR(PerfCtr), lane by lane on the PMC each names
        // (written back unchanged on the lanes of other ops).
        let mut written = [0u8; L];
        for l in 0..L {
            let p = (s.pmc[l] as usize).min(P - 1);
            let b = 1u8 << p;
            let (evtsel, ctr) = (is_evtsel[l] != 0, is_ctr[l] != 0);
            // Both settle the counter first (the wraps so far, under the old INT bit).
            let raw = self.raw[p][l];
            let wraps = (raw >> COUNTER_BITS) & ((evtsel | ctr) as u64).wrapping_neg();
            self.ovf[p][l] += wraps;
            self.pmis[p][l] += wraps & (((self.int[l] >> p) & 1) as u64).wrapping_neg();
            let settled = raw - (wraps << COUNTER_BITS);
            self.raw[p][l] = std::hint::select_unpredictable(ctr, s.v[l] & COUNTER_MASK, settled);
            let tb = b & mask(evtsel);
            let v = s.v[l] & !k.reserved;
            let old = self.sel[p][l];
            let fresh = tb & mask(v != old);
            written[l] = fresh;
            let keep_base = evtsel & (self.stale[l] & b == 0);
            self.hw_base[p][l] =
                std::hint::select_unpredictable(keep_base, old, self.hw_base[p][l]);
            self.stale[l] |= fresh;
            self.sel[p][l] = std::hint::select_unpredictable(evtsel, v, old);
            let key = selector_key(v);
            self.key[p][l] = std::hint::select_unpredictable(evtsel, key, self.key[p][l]);
            let bit = |on: bool, x: u8| (x & !tb) | (tb & mask(on));
            self.en[l] = bit(v & EN != 0, self.en[l]);
            self.ho[l] = bit(v & HOST_ONLY != 0, self.ho[l]);
            self.go[l] = bit(v & GUEST_ONLY != 0, self.go[l]);
            self.int[l] = bit(v & INT != 0, self.int[l]);
            self.os[l] = bit(v & OS != 0, self.os[l]);
            self.usr[l] = bit(v & USR != 0, self.usr[l]);
            self.instr[l] = bit(key == INSTRUCTIONS_RETIRED, self.instr[l]);
            self.branch[l] = bit(key == BRANCHES_RETIRED, self.branch[l]);
            let hit = key == self.fkey[l];
            let (allow, deny) = (
                self.faction[l] == filter::ALLOW,
                self.faction[l] == filter::DENY,
            );
            self.filter_ok[l] = bit(!(allow | deny) | (hit == allow), self.filter_ok[l]);
        }
        let cim = self.cim(&self.mode, k.ignore);
        for l in 0..L {
            let w = written[l];
            self.emul_ok[l] = (self.emul_ok[l] & !w) | (w & self.en[l] & (cim[l] | k.any_mode));
            self.pending[l] |= w;
        }
        // D. WRMSR(PerfCntGlobalCtl).
        for l in 0..L {
            let v = (s.v[l] as u8) & ALL;
            let g = is_global[l];
            self.pending[l] |= g & (self.gc[l] ^ v);
            self.gc[l] = (v & g) | (self.gc[l] & !g);
        }
        // E. What retires before the change of mode: VMRUN with `before_entry`.
        let retire = |g: &Group, l: usize, emulated: bool| {
            let cpl = if emulated { s.cpl[l] } else { 0 };
            let kernel = mask(cpl == 0);
            let cplm = (g.os[l] & kernel) | (g.usr[l] & !kernel);
            let br = g.branch[l] & mask(emulated & (s.flag[l] != 0));
            g.emul_ok[l] & g.gc[l] & g.filter_ok[l] & cplm & (g.instr[l] | br)
        };
        let before = if k.after_entry { [0; L] } else { is_vmrun };
        let counted_before = map(|l| before[l] & retire(self, l, false));
        // F. The change of mode and its flow.
        let next = map(|l| {
            let (keep, set) = MODE_CHANGE[(s.o[l] & 15) as usize][(s.flag[l] != 0) as usize];
            (self.mode[l] & keep) | set
        });
        let mut synced = [0u8; L];
        for l in 0..L {
            let changed = mask(next[l] != self.mode[l]);
            let hg = (self.ho[l] | self.go[l]) & changed;
            let (sync, deferred) = k.flow[(s.o[l] & 15) as usize];
            synced[l] = hg & sync;
            self.pending[l] |= hg & deferred;
        }
        self.mode = next;
        let cim = self.cim(&self.mode, k.ignore);
        let filt = if k.sync_filter {
            self.filter_ok
        } else {
            [0xFF; L]
        };
        self.reevaluate(&synced, &cim, &filt, k);
        // G. What retires after the record's handler, and H. what a RUN counts.
        let retires_after =
            map(|l| RETIRES_AFTER[(s.o[l] & 15) as usize] & !(is_vmrun[l] & before[l]));
        let counted = map(|l| {
            let kernel = mask(s.cpl[l] == 0);
            let cplm = (self.os[l] & kernel) | (self.usr[l] & !kernel);
            let km = (0..P).fold(0u8, |m, p| m | ((self.key[p][l] == s.key[l]) as u8) << p);
            let ran = is_run[l] & self.hw_en[l] & self.gc[l] & km & cplm & mask(s.v[l] != 0);
            let after = retires_after[l] & retire(self, l, is_emulate[l] != 0);
            ran | after | counted_before[l]
        });
        // I. The adds.
        for p in 0..P {
            for l in 0..L {
                let amount = if is_run[l] != 0 { s.v[l] } else { 1 };
                let on = (((counted[l] >> p) & 1) as u64).wrapping_neg();
                self.raw[p][l] += amount & on;
            }
        }
        // J. READ, into each lane's next slot (a spare slot for other ops).
        for l in 0..L {
            let p = (s.pmc[l] as usize).min(P - 1);
            reads[l][n_reads[l]] = self.raw[p][l] & COUNTER_MASK;
            n_reads[l] += (s.o[l] == op::READ) as usize;
        }
        // K. The rare ops, lane by lane.
        let rare = (0..L).fold(false, |a, l| {
            a | (s.o[l] == op::SET_FILTER) | (s.o[l] == op::RESET)
        });
        if rare {
            for l in 0..L {
                match s.o[l] {
                    op::SET_FILTER => {
                        self.faction[l] = s.flag[l];
                        self.fkey[l] = s.key[l];
                        let hit = self.key_match_lane(l, s.key[l]);
                        self.filter_ok[l] = match s.flag[l] {
                            filter::ALLOW => hit,
                            filter::DENY => ALL & !hit,
                            _ => ALL,
                        };
                        self.pending[l] = ALL;
                    }
                    op::RESET => self.reset_lane(l),
                    _ => {}
                }
            }
        }
    }

    fn result(&self, l: usize, k: &Knobs, reads: Vec<u64>) -> SimResult {
        let programmed = |sel: u64, en: bool| {
            if sel == 0 {
                return 0;
            }
            let base = if k.hg_honored {
                (sel & !HOST_ONLY) | GUEST_ONLY
            } else {
                sel
            };
            (base & !EN) | if en { EN } else { 0 }
        };
        let wraps = |p: usize| self.raw[p][l] >> COUNTER_BITS;
        SimResult {
            counters: (0..P).map(|p| self.raw[p][l] & COUNTER_MASK).collect(),
            eventsel_hw: (0..P)
                .map(|p| {
                    let b = 1 << p;
                    let base = if self.stale[l] & b != 0 {
                        self.hw_base[p][l]
                    } else {
                        self.sel[p][l]
                    };
                    programmed(base, self.hw_en[l] & b != 0)
                })
                .collect(),
            overflows: (0..P).map(|p| self.ovf[p][l] + wraps(p)).collect(),
            pmis: (0..P)
                .map(|p| {
                    self.pmis[p][l] + (wraps(p) & (((self.int[l] >> p) & 1) as u64).wrapping_neg())
                })
                .collect(),
            reads,
            timeline: None,
        }
    }
}

/// Replay traces `first..first + L` of a batch of equal-length traces in lockstep.
fn replay_group(t: &TraceRef<'_>, first: usize, length: usize, k: &Knobs) -> Vec<SimResult> {
    let mut g = Group::new();
    let mut reads: [Vec<u64>; L] = std::array::from_fn(|_| vec![0; length + 1]);
    let mut n_reads = [0usize; L];
    for i in 0..length {
        let at = |l: usize| (first + l) * length + i;
        let s = Step {
            o: map(|l| t.op[at(l)]),
            pmc: map(|l| t.pmc[at(l)]),
            cpl: map(|l| t.cpl[at(l)]),
            flag: map(|l| t.flag[at(l)]),
            key: std::array::from_fn(|l| t.key[at(l)]),
            v: std::array::from_fn(|l| t.value[at(l)]),
        };
        g.step(&s, k, &mut reads, &mut n_reads);
    }
    (0..L)
        .map(|l| {
            let mut r = std::mem::take(&mut reads[l]);
            r.truncate(n_reads[l]);
            g.result(l, k, r)
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let preset = args.get(1).map(String::as_str).unwrap_or("final");
    let n_traces: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1 << 16);
    let length: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(64);
    assert!(
        n_traces.is_multiple_of(L),
        "n_traces must be a multiple of {L}"
    );
    let policy = Policy::preset(preset).expect("preset");
    let Policy::Kvm(kvm) = policy else {
        panic!("the prototype runs the KVM model only");
    };
    let knobs = Knobs::new(&kvm);
    let batch = Generator::new(Mix::default(), P)
        .expect("mix")
        .batch(1, n_traces, length)
        .expect("batch");
    let t = batch.as_ref();
    assert!(t
        .value
        .iter()
        .zip(t.op.iter())
        .all(|(&v, &o)| o != op::RUN || v < 1 << 63));
    let records = (n_traces * length) as f64;

    // Exactness first: every trace against the scalar core.
    let scalar: Vec<SimResult> = (0..n_traces)
        .map(|j| simulate_valid(&t.slice(j * length..(j + 1) * length), &policy, P, false))
        .collect();
    let lanes: Vec<SimResult> = (0..n_traces / L)
        .flat_map(|g| replay_group(&t, g * L, length, &knobs))
        .collect();
    for (j, (a, b)) in scalar.iter().zip(&lanes).enumerate() {
        assert_eq!(a, b, "trace {j} differs");
    }
    println!("{preset}: {n_traces} traces x {length}: lockstep results identical to the core");

    let mut best = [f64::INFINITY; 2];
    for _ in 0..5 {
        let start = Instant::now();
        let mut sink = 0u64;
        for j in 0..n_traces {
            let r = simulate_valid(&t.slice(j * length..(j + 1) * length), &policy, P, false);
            sink ^= r.counters[0];
        }
        best[0] = best[0].min(start.elapsed().as_secs_f64());
        let start = Instant::now();
        for g in 0..n_traces / L {
            sink ^= replay_group(&t, g * L, length, &knobs)[0].counters[0];
        }
        best[1] = best[1].min(start.elapsed().as_secs_f64());
        std::hint::black_box(sink);
    }
    println!(
        "one thread: scalar {:.1} M records/s, lockstep ({L} lanes) {:.1} M records/s",
        records / best[0] / 1e6,
        records / best[1] / 1e6
    );
}
