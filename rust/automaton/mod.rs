//! The automaton fuzzing engine: random walks on the compiled product automaton of a policy
//! and its reference, at a table lookup a PMC a record.
//!
//! A fuzzer needs no counter values to find where two models part, only their decision
//! states: the product automaton of `crate::verify`, one PMC at a time ([`build`]). A walk
//! draws each abstract record from the generator's mix with one random word ([`draw`]: the
//! same op weights and mode rules, the fields the abstraction sees drawn with the
//! generator's probabilities), looks up each PMC's next state and parting class in one dense
//! table, and keeps, per PMC, the running count difference the partings make: a RUN's parting
//! makes it non-zero for good (its count is left generic, see [`walk_trace`]), any other
//! record's moves it by one, a WRMSR_CTR of the PMC and a RESET set it back to 0, and a READ of
//! a PMC whose difference is not 0 diverges the trace. A walk diverges when a READ saw a
//! difference or a difference is left at its end (model.md section 8, with counters in place
//! of their values), and then shows the class of every parting, as `crate::fuzz` reads a
//! trace.
//!
//! Concrete values come in only for a walk that is reported: [`walk_trace`] turns it into a
//! trace (the letters are concrete records; each parting RUN gets a count that keeps the
//! difference from coming back to 0) and replays it through the concrete models, which must
//! show the same classes. Walk `i` of a run depends only on the seed, `i` and the compiled
//! table (the pair, the mix and the PMCs, as this version compiles them), so a run is the
//! same for any thread count and any split.

pub mod build;
pub mod draw;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::cancel::Cancel;
use crate::error::CoreError;
use crate::fuzz::gen::{Generator, Mix, Rng};
use crate::fuzz::{ClassTally, Signature, Tally};
use crate::model::{op, Policy, MAX_PMCS};
use crate::trace::{Record, TraceBuf, STATE_RESET};
use draw::{Slot, WyRand, MODES};

/// The most classes one component can have (labels are bytes; 0 is "no parting").
const MAX_CLASSES: usize = 255;
/// Entries of `proj` a letter: a column for each PMC, and the special mask.
const PROJ: usize = 8;
const SPECIAL: usize = 7;
/// The most table entries: 16 MiB of address space.
const TABLE_CAP: usize = 1 << 22;
/// Where a table entry keeps its label, above the next state's index.
const LABEL_SHIFT: u32 = 24;

/// How a table was built, and how big it is.
#[derive(Clone, Debug, PartialEq)]
pub struct BuildStats {
    /// Reachable product states of one PMC's component, and after minimisation.
    pub explored_states: usize,
    pub states: usize,
    /// The component's symbols, and the columns left after merging equal ones.
    pub symbols: usize,
    pub columns: usize,
    /// The letters of the mix (with `n_pmcs` PMCs), and those a walk draws after merging the
    /// letters it cannot tell apart.
    pub letters: usize,
    pub merged_letters: usize,
    /// The classes the table can show.
    pub classes: usize,
    /// Bytes of the transition table, and of every table a walk reads.
    pub table_bytes: usize,
    pub total_bytes: usize,
    pub seconds: f64,
}

/// A policy and a reference compiled for walks with a mix and a number of PMCs.
pub struct Compiled {
    pub policy: Policy,
    pub reference: Policy,
    pub mix: Mix,
    pub n_pmcs: usize,
    letters: Vec<Record>,
    /// The alias tables of the mode states, `size` slots each (that of state 2 is never used).
    slots: Vec<Slot>,
    size: usize,
    /// `proj[letter][p]`: the table column of the letter for PMC `p`; `proj[letter][SPECIAL]`
    /// the PMCs whose count difference the letter reads (READ) or sets back to 0 (WRMSR_CTR,
    /// RESET).
    proj: Vec<[u32; PROJ]>,
    /// `table[state * stride + column]`: `label << LABEL_SHIFT | next state * stride`, in an array of
    /// [`TABLE_CAP`] entries, so that an index masked to it needs no bounds check (the pages
    /// beyond the table are never touched, so never made resident).
    table: Box<[u32; TABLE_CAP]>,
    start: u32,
    /// The class of each label (label `k` is `classes[k - 1]`).
    classes: Vec<Signature>,
    pub stats: BuildStats,
}

/// Compile `policy` against `reference` for walks of `generator`'s mix.
pub fn compile(
    policy: &Policy,
    reference: &Policy,
    generator: &Generator,
) -> Result<Compiled, CoreError> {
    let started = Instant::now();
    let n_pmcs = generator.n_pmcs;
    let letters = draw::letters(generator);
    // The component symbols: every letter as every PMC sees it.
    let mut symbols: Vec<Record> = Vec::new();
    let mut symbol_of = std::collections::HashMap::new();
    let mut proj_symbol = vec![0usize; letters.letters.len() * PROJ];
    for (l, &r) in letters.letters.iter().enumerate() {
        for p in 0..n_pmcs {
            let s = build::project(r, p);
            let key = (s.op, s.pmc, s.cpl, s.flag, s.key, s.value);
            let id = *symbol_of.entry(key).or_insert_with(|| {
                symbols.push(s);
                symbols.len() - 1
            });
            proj_symbol[l * PROJ + p] = id;
        }
    }
    let explored = build::explore(policy, reference, &symbols, MAX_CLASSES)?;
    // Minimisation packs a state's block number in 24 bits.
    if explored.states >= 1 << 24 {
        return Err(CoreError::Value(format!(
            "the automaton has {} states: too many to minimise",
            explored.states
        )));
    }
    let minimal = build::minimise(&explored, symbols.len());
    let (column_of, columns) = build::merge_symbols(&minimal, symbols.len());
    let stride = columns;
    if minimal.states * stride > TABLE_CAP {
        return Err(CoreError::Value(format!(
            "the automaton has {} states of {} columns: too many for its table",
            minimal.states, columns
        )));
    }
    // `calloc`'s zeros: the pages past the table are never touched.
    let mut table: Box<[u32; TABLE_CAP]> = vec![0u32; TABLE_CAP]
        .into_boxed_slice()
        .try_into()
        .map_err(|_| CoreError::Value("table size".into()))?;
    for s in 0..minimal.states {
        for j in 0..symbols.len() {
            let t = s * symbols.len() + j;
            let next = minimal.next[t] as usize * stride;
            table[s * stride + column_of[j] as usize] =
                (minimal.label[t] as u32) << LABEL_SHIFT | next as u32;
        }
    }
    let proj: Vec<[u32; PROJ]> = proj_symbol
        .chunks(PROJ)
        .zip(&letters.letters)
        .map(|(c, r)| {
            let mut p: [u32; PROJ] = std::array::from_fn(|p| column_of[c[p]] as u32);
            p[SPECIAL] = match r.op {
                op::READ | op::WRMSR_CTR => 1u32 << r.pmc,
                op::RESET => (1u32 << n_pmcs) - 1,
                _ => 0,
            };
            p
        })
        .collect();
    let drawn_letters = letters.letters.len();
    // Letters that no walk can tell apart (the same columns for every PMC, the same special
    // PMCs and kind, the same next mode from every mode) are one letter to draw: its
    // representative is the likeliest of them.
    let (letters, proj) = merge_letters(letters, proj);
    let size = draw::widest(&letters);
    if letters.letters.len() > 0xFFFF {
        return Err(CoreError::Value(format!(
            "the automaton engine draws at most 65535 letters, this mix has {}",
            letters.letters.len()
        )));
    }
    if 4 * size > 0xFFFF {
        return Err(CoreError::Value(format!(
            "the automaton engine draws at most 16383 letters in a mode, this mix has {size}"
        )));
    }
    let mut slots = vec![Slot::default(); 4 * size];
    for (m, &mode) in MODES.iter().enumerate() {
        let at = mode as usize * size;
        slots[at..at + size].copy_from_slice(&draw::alias_table(&letters, m, size, size));
    }
    let classes = explored.classes;
    let table_bytes = minimal.states * stride * 4;
    let total_bytes =
        table_bytes + proj.len() * PROJ * 4 + slots.len() * std::mem::size_of::<Slot>();
    let stats = BuildStats {
        explored_states: explored.states,
        states: minimal.states,
        symbols: symbols.len(),
        columns,
        letters: drawn_letters,
        merged_letters: letters.letters.len(),
        classes: classes.len(),
        table_bytes,
        total_bytes,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok(Compiled {
        policy: *policy,
        reference: *reference,
        mix: generator.mix.clone(),
        n_pmcs,
        letters: letters.letters,
        slots,
        size,
        proj,
        table,
        start: minimal.start * stride as u32,
        classes,
        stats,
    })
}

/// Merge the letters whose walks are the same (see [`compile`]): valid in the same modes,
/// leading to the same mode from each; their probabilities add up.
fn merge_letters(
    letters: draw::Letters,
    proj: Vec<[u32; PROJ]>,
) -> (draw::Letters, Vec<[u32; PROJ]>) {
    let mut groups: std::collections::HashMap<_, usize> = std::collections::HashMap::new();
    let mut members: Vec<Vec<usize>> = Vec::new();
    for (l, &r) in letters.letters.iter().enumerate() {
        // A letter stands for another only where both are valid, and lead to the same mode.
        let next = MODES.map(|m| {
            crate::trace::is_valid(r, m, MAX_PMCS).then(|| crate::trace::next_state(r, m))
        });
        let key = (proj[l], next, r.op == op::READ);
        let g = *groups.entry(key).or_insert_with(|| {
            members.push(Vec::new());
            members.len() - 1
        });
        members[g].push(l);
    }
    let total = |l: usize| -> f64 { letters.probability.iter().map(|row| row[l]).sum() };
    let mut out = draw::Letters {
        letters: Vec::with_capacity(members.len()),
        probability: Default::default(),
    };
    let mut out_proj = Vec::with_capacity(members.len());
    for group in &members {
        // The likeliest, the first of equals.
        let best = group
            .iter()
            .copied()
            .fold(group[0], |b, l| if total(l) > total(b) { l } else { b });
        out.letters.push(letters.letters[best]);
        out_proj.push(proj[best]);
        for (m, row) in out.probability.iter_mut().enumerate() {
            row.push(group.iter().map(|&l| letters.probability[m][l]).sum());
        }
    }
    (out, out_proj)
}

/// The tables compiled in this process, newest last: a run compiles its pair once, and
/// later runs of the same pair, mix and PMCs (a CLI session, a campaign's shards on one
/// worker) reuse it.
static CACHE: Mutex<Vec<Arc<Compiled>>> = Mutex::new(Vec::new());
const CACHED: usize = 8;

/// The compiled tables of `policy` against `reference` for `generator`, from the cache or
/// compiled now; the flag says whether they came from the cache.
pub fn compiled(
    policy: &Policy,
    reference: &Policy,
    generator: &Generator,
) -> Result<(Arc<Compiled>, bool), CoreError> {
    let lookup = |c: &Arc<Compiled>| {
        c.policy == *policy
            && c.reference == *reference
            && c.mix == generator.mix
            && c.n_pmcs == generator.n_pmcs
    };
    {
        let cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.iter().find(|c| lookup(c)) {
            return Ok((c.clone(), true));
        }
    }
    let c = Arc::new(compile(policy, reference, generator)?);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if !cache.iter().any(lookup) {
        if cache.len() >= CACHED {
            cache.remove(0);
        }
        cache.push(c.clone());
    }
    Ok((c, false))
}

/// Walk `index`'s random stream: seeded as the generator seeds trace `index` (but for a
/// constant of its own), then wyrand.
fn walk_rng(seed: u64, index: u64) -> WyRand {
    WyRand(Rng::for_trace(seed ^ 0xA170_3A70_0000_0001, index).next_u64())
}

/// What a walk left: whether it diverged, and the labels it showed (bit k of word k / 64).
#[derive(Clone, Copy, Debug, Default)]
struct Outcome {
    diverged: bool,
    labels: [u64; 4],
}

/// Where a recorded walk puts each step: the letter and each PMC's label.
trait Steps {
    /// `entries`: each PMC's table entry of the step (its label on top).
    fn step(&mut self, letter: u32, entries: &[u32]);
}

struct NoSteps;
impl Steps for NoSteps {
    #[inline(always)]
    fn step(&mut self, _letter: u32, _entries: &[u32]) {}
}

impl Steps for Vec<(u32, [u8; MAX_PMCS])> {
    fn step(&mut self, letter: u32, entries: &[u32]) {
        let mut l = [0; MAX_PMCS];
        for (l, &e) in l.iter_mut().zip(entries) {
            *l = (e >> LABEL_SHIFT) as u8;
        }
        self.push((letter, l));
    }
}

/// The running count differences of a walk's PMCs.
#[derive(Default)]
struct Differences {
    /// The difference made by partings of records other than RUN (each counts one event).
    ones: [i64; MAX_PMCS],
    /// PMCs on which a RUN parted since their last reset: their difference is non-zero.
    run: u8,
    /// PMCs whose difference is not 0.
    dirty: u8,
    /// A READ saw a difference.
    seen: bool,
}

impl Differences {
    /// The rare step: a parting, or a READ or reset of a PMC whose difference is not 0.
    /// `state` holds each PMC's table entry of the step, its label in the top byte.
    #[cold]
    #[inline(never)]
    fn update(&mut self, c: &Compiled, letter: usize, state: &[u32], out: &mut Outcome) {
        let r = c.letters[letter];
        let special = c.proj[letter][SPECIAL] as u8;
        let mut touched = special;
        for (p, &e) in state.iter().enumerate() {
            touched |= ((e >> LABEL_SHIFT != 0) as u8) << p;
        }
        while touched != 0 {
            let p = touched.trailing_zeros() as usize;
            let bit = 1u8 << p;
            touched &= !bit;
            // As `crate::verify`'s search: a READ reads the difference before the record's own
            // counts, a reset sets it to 0 before them.
            if special & bit != 0 {
                if r.op == op::READ {
                    self.seen |= self.dirty & bit != 0;
                } else {
                    self.ones[p] = 0;
                    self.run &= !bit;
                }
            }
            let label = state[p] >> LABEL_SHIFT;
            if label != 0 {
                out.labels[label as usize >> 6] |= 1 << (label & 63);
                let class = c.classes[label as usize - 1];
                // A RUN's parting: its difference is a RUN's count, generic.
                if class.op == op::RUN {
                    self.run |= bit;
                } else {
                    self.ones[p] += if class.policy_counts { 1 } else { -1 };
                }
            }
            let nonzero = self.ones[p] != 0 || self.run & bit != 0;
            self.dirty = (self.dirty & !bit) | (nonzero as u8) << p;
        }
    }
}

/// One walk of `length` records over `N` PMCs, its steps recorded.
#[inline(always)]
fn walk<const N: usize>(
    c: &Compiled,
    seed: u64,
    index: u64,
    length: usize,
    steps: &mut impl Steps,
) -> Outcome {
    let mut rng = walk_rng(seed, index);
    let (slots, size, table, proj) = (&c.slots[..], c.size, &*c.table, &c.proj[..]);
    let mut base = STATE_RESET as usize * size;
    let mut state = [c.start; N];
    let mut d = Differences::default();
    let mut out = Outcome::default();
    for _ in 0..length {
        let packed = draw::draw(slots, base, size, rng.next_u64());
        base = (packed & 0xFFFF) as usize;
        let letter = (packed >> 16) as usize;
        let columns = proj[letter];
        let mut any = 0u32;
        for p in 0..N {
            // The entry is the next state (its row's first index) with the label on top, which
            // the mask drops at the next step.
            state[p] = table[(state[p] + columns[p]) as usize & (TABLE_CAP - 1)];
            any |= state[p];
        }
        steps.step(letter as u32, &state);
        if any >> LABEL_SHIFT != 0 || d.dirty as u32 & columns[SPECIAL] != 0 {
            // A copy: the states stay in registers on the common path.
            let entries = state;
            d.update(c, letter, &entries, &mut out);
        }
    }
    out.diverged = d.seen || d.dirty != 0;
    out
}

fn walk_n(c: &Compiled, seed: u64, index: u64, length: usize, steps: &mut impl Steps) -> Outcome {
    match c.n_pmcs {
        1 => walk::<1>(c, seed, index, length, steps),
        2 => walk::<2>(c, seed, index, length, steps),
        3 => walk::<3>(c, seed, index, length, steps),
        4 => walk::<4>(c, seed, index, length, steps),
        5 => walk::<5>(c, seed, index, length, steps),
        _ => walk::<6>(c, seed, index, length, steps),
    }
}

/// Walks per rayon task.
const CHUNK: u64 = 2048;

#[inline(never)]
fn walk_chunk(
    c: &Compiled,
    seed: u64,
    length: usize,
    start: u64,
    end: u64,
    cancel: &Cancel<'_>,
) -> Result<Tally, CoreError> {
    cancel.check()?;
    // Per label: (count, first walk).
    let mut counts = vec![(0u64, u64::MAX); c.classes.len() + 1];
    let mut diverging = 0;
    let mut unchecked = 0;
    let mut tally_one = |index: u64, out: Outcome| {
        if out.diverged {
            diverging += 1;
            for (w, &word) in out.labels.iter().enumerate() {
                let mut bits = word;
                while bits != 0 {
                    let k = w * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    counts[k].0 += 1;
                    counts[k].1 = counts[k].1.min(index);
                }
            }
        }
    };
    for index in start..end {
        tally_one(index, walk_n(c, seed, index, length, &mut NoSteps));
        unchecked += length;
        if unchecked >= crate::cancel::RECORDS_PER_CHECK {
            unchecked = 0;
            cancel.check()?;
        }
    }
    let mut tally = Tally {
        traces: end - start,
        records: (end - start) * length as u64,
        diverging,
        ..Tally::default()
    };
    for (k, &(count, first)) in counts.iter().enumerate().skip(1) {
        if count > 0 {
            tally.classes.insert(
                c.classes[k - 1],
                ClassTally {
                    count,
                    first_trace: first,
                },
            );
        }
    }
    Ok(tally)
}

/// Walks `start..end` of the run seeded by `seed` (in parallel on the current rayon pool),
/// tallied as `crate::fuzz` tallies traces, checking `cancel` at the start of each task and
/// every `RECORDS_PER_CHECK` records.
pub fn walk_range(
    c: &Compiled,
    seed: u64,
    length: usize,
    start: u64,
    end: u64,
    cancel: &Cancel<'_>,
) -> Result<Tally, CoreError> {
    crate::fuzz::tally_in_chunks(start, end, CHUNK, |s, e| {
        walk_chunk(c, seed, length, s, e, cancel)
    })
}

/// A walk made concrete: its trace, the classes the walk showed (when it diverged), and
/// whether it diverged.
pub struct Concrete {
    pub trace: TraceBuf,
    pub classes: Vec<Signature>,
    pub diverged: bool,
}

/// Walk `index` of the run seeded by `seed` as a concrete trace. Its records are the walk's
/// letters, except a RUN's count. A RUN at which no PMC parts runs 1 event. A parting RUN runs
/// the fewest events that keep, on every PMC it parts on, the count difference further from 0
/// than the one-event partings left on that PMC before its next reset: so the difference
/// never comes back to 0 before that reset, and a READ or the end sees it, as the walk says.
/// The counts stay about as large as the walk is long.
pub fn walk_trace(
    c: &Compiled,
    seed: u64,
    index: u64,
    length: usize,
) -> Result<Concrete, CoreError> {
    let mut steps: Vec<(u32, [u8; MAX_PMCS])> = crate::memory::with_capacity(length, "a walk")?;
    let out = walk_n(c, seed, index, length, &mut steps);
    let n = c.n_pmcs;
    let resets =
        |l: usize, p: usize| c.proj[l][SPECIAL] & (1 << p) != 0 && c.letters[l].op != op::READ;
    let sign = |label: u8| -> i64 {
        if c.classes[label as usize - 1].policy_counts {
            1
        } else {
            -1
        }
    };
    // Per step and PMC, the one-event partings on the PMC after the step and before its next
    // reset (a reset zeroes the difference before the record's own counts).
    let mut left: Vec<[u64; MAX_PMCS]> = crate::memory::with_capacity(length, "a walk")?;
    left.resize(steps.len(), [0; MAX_PMCS]);
    let mut after = [0u64; MAX_PMCS];
    for (t, &(l, labels)) in steps.iter().enumerate().rev() {
        left[t] = after;
        let l = l as usize;
        for p in 0..n {
            if resets(l, p) {
                after[p] = 0;
            } else if labels[p] != 0 && c.letters[l].op != op::RUN {
                after[p] += 1;
            }
        }
    }
    let mut d = [0i64; MAX_PMCS];
    let mut trace = TraceBuf::try_with_capacity(length)?;
    for (t, &(l, labels)) in steps.iter().enumerate() {
        let l = l as usize;
        let mut r = c.letters[l];
        for (p, d) in d.iter_mut().enumerate().take(n) {
            if resets(l, p) {
                *d = 0;
            }
        }
        if r.op == op::RUN {
            // The smallest count out of every interval that would leave a parting PMC's
            // difference within reach of 0.
            let mut count = 1i64;
            let mut moved = true;
            while moved {
                moved = false;
                for p in (0..n).filter(|&p| labels[p] != 0) {
                    let (reach, s) = (left[t][p] as i64, sign(labels[p]));
                    let (lo, hi) = if s > 0 {
                        (-reach - d[p], reach - d[p])
                    } else {
                        (d[p] - reach, d[p] + reach)
                    };
                    if lo <= count && count <= hi {
                        count = hi + 1;
                        moved = true;
                    }
                }
            }
            r.value = count as u64;
            for p in (0..n).filter(|&p| labels[p] != 0) {
                d[p] += sign(labels[p]) * count;
            }
        } else {
            for p in (0..n).filter(|&p| labels[p] != 0) {
                d[p] += sign(labels[p]);
            }
        }
        trace.push(r);
    }
    let mut classes = Vec::new();
    if out.diverged {
        for (w, &word) in out.labels.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let k = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                classes.push(c.classes[k - 1]);
            }
        }
        classes.sort_unstable();
    }
    Ok(Concrete {
        trace,
        classes,
        diverged: out.diverged,
    })
}

#[cfg(test)]
mod tests;

#[cfg(feature = "python")]
pub mod py;
