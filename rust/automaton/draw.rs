//! The generator's mix as a distribution over abstract records (the letters of
//! `crate::verify::alphabet`, with `n_pmcs` PMCs), per mode state, and the alias tables that
//! draw from it with one random word a record.
//!
//! The generator draws every field of a record from its own bits of four random words
//! (`crate::fuzz::gen::push_record`), so a record's abstract letter has the product of the
//! shares of its fields as its probability: the op's share of the mode's op slots, the PMC's,
//! and for a selector the event, the OS/USR bits, the H/G bits, EN and INT (a zero selector
//! apart); a RUN's count, a counter's value and a selector's reserved bits are left out (the
//! abstraction does not see them). [`letter_of`] maps any generated record to its letter,
//! which the tests use to check these probabilities against the generator itself.

use crate::fuzz::gen::{
    chance_share, pmc_share, Generator, GEN_CPL_BITS, GEN_EVENTS, GEN_HG_BITS, OP_SLOTS,
};
use crate::model::{filter, op, EN, INT};
use crate::trace::{is_valid, next_state, Record};

/// The mode states a walk can be in (2, guest mode with svme = 0, never occurs).
pub const MODES: [u8; 3] = [0, 1, 3];

/// A selector as the alphabet writes it: the event's key bits, the flags, no reserved bits.
fn selector(event: u32, flags: u64) -> u64 {
    let key = event as u64;
    (key & 0xFF) | (key >> 8 & 0xF) << 32 | flags
}

/// The abstract letter of a generated record: the record with the values the abstraction
/// leaves out set as the alphabet sets them (a RUN's n to 1, a counter value to 0, a
/// selector's reserved bits dropped, the key of a filter with action none to 0).
pub fn letter_of(r: Record) -> Record {
    let mut l = r;
    match r.op {
        op::RUN => l.value = 1,
        op::WRMSR_CTR => l.value = 0,
        op::WRMSR_EVTSEL => {
            let kept = 0xFF | 0xF << 32 | crate::model::OS | crate::model::USR;
            let flags = EN | INT | crate::model::HOST_ONLY | crate::model::GUEST_ONLY;
            l.value = r.value & (kept | flags);
        }
        op::SET_FILTER if r.flag == filter::NONE => l.key = 0,
        _ => {}
    }
    l
}

/// The letters of a mix: every letter the generator can draw in some mode, and for each mode
/// the probability of each (as a share, the sum of a mode's shares is 1).
pub struct Letters {
    pub letters: Vec<Record>,
    /// `probability[m][l]` for mode `MODES[m]`.
    pub probability: [Vec<f64>; 3],
}

/// A set of letters with their probabilities, built up draw by draw.
struct Builder {
    letters: Vec<Record>,
    index: std::collections::HashMap<(u8, u8, u8, u8, u32, u64), usize>,
    probability: [Vec<f64>; 3],
}

impl Builder {
    fn add(&mut self, m: usize, r: Record, p: f64) {
        if p <= 0.0 {
            return;
        }
        let key = (r.op, r.pmc, r.cpl, r.flag, r.key, r.value);
        let i = *self.index.entry(key).or_insert_with(|| {
            self.letters.push(r);
            for row in self.probability.iter_mut() {
                row.push(0.0);
            }
            self.letters.len() - 1
        });
        self.probability[m][i] += p;
    }
}

fn share(count: u32, of: u32) -> f64 {
    count as f64 / of as f64
}

/// The letters of `generator`'s mix and their probabilities in each mode.
pub fn letters(generator: &Generator) -> Letters {
    let shares = generator.shares();
    let mix = &generator.mix;
    let n = generator.n_pmcs;
    let mut b = Builder {
        letters: Vec::new(),
        index: Default::default(),
        probability: Default::default(),
    };
    let yes = |permille: u32| share(chance_share(permille), 1024);
    let events = shares.event.map(|c| share(c, 256));
    let rec = |o: u8| Record {
        op: o,
        ..Record::default()
    };
    for (m, &mode) in MODES.iter().enumerate() {
        for o in 0..op::COUNT as u8 {
            let p_op = share(shares.ops[mode as usize][o as usize], OP_SLOTS as u32);
            if p_op == 0.0 {
                continue;
            }
            let mut add = |r: Record, p: f64| {
                debug_assert!(is_valid(r, mode, n), "{r:?} in mode {mode}");
                b.add(m, r, p_op * p);
            };
            match o {
                op::WRMSR_EVTSEL => {
                    let zero = yes(mix.zero_selector);
                    for pmc in 0..n {
                        let pp = share(pmc_share(pmc, n), 1 << 16);
                        let at = |value| Record {
                            op: o,
                            pmc: pmc as u8,
                            value,
                            ..Record::default()
                        };
                        add(at(0), pp * zero);
                        for (e, &pe) in events.iter().enumerate() {
                            for (c, &cc) in shares.cpl_bits.iter().enumerate() {
                                for (h, &hc) in shares.hg.iter().enumerate() {
                                    for en in [false, true] {
                                        for int in [false, true] {
                                            let p_en = if en {
                                                yes(mix.enable)
                                            } else {
                                                1.0 - yes(mix.enable)
                                            };
                                            let p_int = if int {
                                                yes(mix.interrupt)
                                            } else {
                                                1.0 - yes(mix.interrupt)
                                            };
                                            let flags = GEN_CPL_BITS[c]
                                                | GEN_HG_BITS[h]
                                                | if en { EN } else { 0 }
                                                | if int { INT } else { 0 };
                                            let p = pp
                                                * (1.0 - zero)
                                                * pe
                                                * share(cc, 256)
                                                * share(hc, 256)
                                                * p_en
                                                * p_int;
                                            add(at(selector(GEN_EVENTS[e], flags)), p);
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                op::WRMSR_CTR | op::READ => {
                    for pmc in 0..n {
                        let r = Record {
                            op: o,
                            pmc: pmc as u8,
                            ..Record::default()
                        };
                        add(r, share(pmc_share(pmc, n), 1 << 16));
                    }
                }
                op::WRMSR_GLOBAL_CTRL => {
                    let all = (1u64 << n) - 1;
                    let p_all = yes(mix.global_all);
                    for v in 0..=all {
                        let p =
                            (1.0 - p_all) / (all + 1) as f64 + if v == all { p_all } else { 0.0 };
                        add(Record { value: v, ..rec(o) }, p);
                    }
                }
                op::WRMSR_EFER => {
                    for flag in 0..2 {
                        add(Record { flag, ..rec(o) }, 0.5);
                    }
                }
                op::SET_NESTED_STATE => {
                    if mode & 1 == 0 {
                        add(rec(o), 1.0);
                    } else {
                        for flag in 0..2 {
                            add(Record { flag, ..rec(o) }, 0.5);
                        }
                    }
                }
                op::VMRUN => {
                    let user = yes(mix.vmrun_user);
                    add(Record { cpl: 3, ..rec(o) }, user);
                    add(rec(o), 1.0 - user);
                }
                op::SET_FILTER => {
                    let none = share(shares.filter[0], 256);
                    add(rec(o), none);
                    for (action, &ac) in shares.filter.iter().enumerate().skip(1) {
                        for (e, &pe) in events.iter().enumerate() {
                            let r = Record {
                                flag: action as u8,
                                key: GEN_EVENTS[e],
                                ..rec(o)
                            };
                            add(r, share(ac, 256) * pe);
                        }
                    }
                }
                op::EMULATE => {
                    let kernel = yes(mix.kernel);
                    let branch = yes(mix.branch);
                    for (cpl, pc) in [(0, kernel), (3, 1.0 - kernel)] {
                        for (flag, pf) in [(1, branch), (0, 1.0 - branch)] {
                            add(
                                Record {
                                    cpl,
                                    flag,
                                    ..rec(o)
                                },
                                pc * pf,
                            );
                        }
                    }
                }
                op::RUN => {
                    let kernel = yes(mix.kernel);
                    for (cpl, pc) in [(0, kernel), (3, 1.0 - kernel)] {
                        for (e, &pe) in events.iter().enumerate() {
                            let r = Record {
                                cpl,
                                key: GEN_EVENTS[e],
                                value: 1,
                                ..rec(o)
                            };
                            add(r, pc * pe);
                        }
                    }
                }
                _ => add(rec(o), 1.0),
            }
        }
    }
    Letters {
        letters: b.letters,
        probability: b.probability,
    }
}

/// One slot of an alias table: below `threshold` (of the low 32 bits of the random word) the
/// slot's own letter, else its alias. Each letter is packed with where the alias table of the
/// mode it leads to starts: `letter << 16 | next mode * size`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Slot {
    pub threshold: u32,
    pub own: u32,
    pub alias: u32,
}

/// The alias table (Walker's method, Vose's construction) of mode `MODES[m]` with `size`
/// slots (at least the letters of non-zero probability; the others get probability 0), the
/// tables of the modes `stride` slots apart: each
/// letter is drawn with its probability to within 2^-32. Every mode's table has the same size,
/// so that the slot a random word picks does not wait for the mode.
pub fn alias_table(letters: &Letters, m: usize, size: usize, stride: usize) -> Vec<Slot> {
    let mode = MODES[m];
    let pack = |l: usize| -> u32 {
        let next = next_state(letters.letters[l], mode);
        (l as u32) << 16 | (next as usize * stride) as u32
    };
    let mut drawn: Vec<(usize, f64)> = letters.probability[m]
        .iter()
        .enumerate()
        .filter(|(_, &p)| p > 0.0)
        .map(|(l, &p)| (l, p))
        .collect();
    let total: f64 = drawn.iter().map(|d| d.1).sum();
    let any = drawn[0].0;
    assert!(
        drawn.len() <= size,
        "an alias table of {size} slots for {} letters",
        drawn.len()
    );
    drawn.resize(size, (any, 0.0));
    let mut scaled: Vec<f64> = drawn.iter().map(|d| d.1 / total * size as f64).collect();
    let (mut small, mut large): (Vec<usize>, Vec<usize>) =
        (0..size).partition(|&i| scaled[i] < 1.0);
    let mut slots = vec![Slot::default(); size];
    while let (Some(&s), Some(&g)) = (small.last(), large.last()) {
        small.pop();
        slots[s] = Slot {
            threshold: (scaled[s] * 4_294_967_296.0).min(u32::MAX as f64) as u32,
            own: pack(drawn[s].0),
            alias: pack(drawn[g].0),
        };
        scaled[g] -= 1.0 - scaled[s];
        if scaled[g] < 1.0 {
            large.pop();
            small.push(g);
        }
    }
    // What is left has probability 1 (up to rounding): always its own letter.
    for i in small.into_iter().chain(large) {
        slots[i] = Slot {
            threshold: u32::MAX,
            own: pack(drawn[i].0),
            alias: pack(drawn[i].0),
        };
    }
    slots
}

/// The letters of non-zero probability in the mode that has the most.
pub fn widest(letters: &Letters) -> usize {
    letters
        .probability
        .iter()
        .map(|row| row.iter().filter(|&&p| p > 0.0).count())
        .max()
        .unwrap_or(0)
}

/// wyrand (Wang Yi): one multiply a word. The walks' generator: they draw one word a record,
/// and the generator's SplitMix64 would cost a third of a step. Its output is fixed by its
/// definition, so a seed gives the same walks on every machine (for one compiled table).
#[derive(Clone, Copy, Debug)]
pub struct WyRand(pub u64);

impl WyRand {
    #[inline(always)]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xA076_1D64_78BD_642F);
        let t = (self.0 as u128).wrapping_mul((self.0 ^ 0xE703_7ED1_A0B4_28DB) as u128);
        (t >> 64) as u64 ^ t as u64
    }
}

/// Draw a letter in the mode whose table starts at `base` of `slots` (each `size` long) from
/// one random word: the high 32 bits pick the slot, the low 32 bits decide between its letter
/// and its alias. Returns the packed letter.
#[inline(always)]
pub fn draw(slots: &[Slot], base: usize, size: usize, x: u64) -> u32 {
    let i = (((x >> 32) * size as u64) >> 32) as usize;
    let s = slots[base + i];
    // Taken half the time at random: no branch, and no load that waits for the comparison
    // (the next draw waits for this one).
    let own = (((x as u32) < s.threshold) as u32).wrapping_neg();
    s.alias ^ ((s.own ^ s.alias) & own)
}
