//! Compiling a policy and its reference into one PMC's transition table.
//!
//! A PMC's decisions do not depend on another PMC's (docs/verification.md section 4), so a
//! walk over `n_pmcs` PMCs runs `n_pmcs` copies of one component automaton, each fed the
//! letters as its PMC sees them ([`project`]). The component is explored breadth-first over
//! product states of two-PMC models with PMC 1 cleared (`crate::verify::state::only_pmc0`):
//! PMC 1 stands for every other PMC, whose selector writes, counter writes and READs are
//! letters of their own. Each transition is labelled with the class of its parting (PMC 0
//! counted under one model only), or 0. The automaton is then minimised (Moore's partition
//! refinement: states with the same labels after every sequence of letters are merged, which
//! is exact for the walk, since the walk reads labels only), and symbols with the same column
//! in every state are merged into one column (`crate::automaton` lays the table out densely,
//! by column, and merges the letters no walk can tell apart).

use std::collections::HashMap;

use rayon::prelude::*;

use crate::error::CoreError;
use crate::fuzz::{hg_bits, Signature};
use crate::model::{op, with_model, Policy};
use crate::trace::{is_valid, Record};
use crate::verify::state::{decode, encode, mode_of, only_pmc0, Abstract};

/// Letter `r` (of `n_pmcs` PMCs) as PMC `p`'s component sees it: PMC `p` becomes PMC 0 and
/// any other PMC becomes PMC 1, whose selector is 0 (a write to another PMC's selector is,
/// for PMC `p`, an instruction retiring at CPL 0); a global-control write keeps `p`'s bit.
pub fn project(r: Record, p: usize) -> Record {
    let own = r.pmc as usize == p;
    match r.op {
        op::WRMSR_EVTSEL if own => Record { pmc: 0, ..r },
        op::WRMSR_EVTSEL => Record {
            pmc: 1,
            value: 0,
            ..r
        },
        op::WRMSR_CTR | op::READ => Record {
            pmc: if own { 0 } else { 1 },
            ..r
        },
        op::WRMSR_GLOBAL_CTRL => Record {
            value: (r.value >> p) & 1,
            ..r
        },
        _ => r,
    }
}

/// The component's models have two PMCs: 0, the PMC itself, and 1, every other.
const COMPONENT_PMCS: usize = 2;

/// The explored component: states in breadth-first order (0 is reset), `next` and `label`
/// per (state, symbol).
pub struct Explored {
    pub states: usize,
    pub next: Vec<u32>,
    pub label: Vec<u8>,
    /// The class of each label (label `k` is `classes[k - 1]`).
    pub classes: Vec<Signature>,
}

/// The transitions of one state: per symbol, the next key and the parting class (if any).
fn expand_one<A: Abstract, B: Abstract>(
    a0: &A,
    b0: &B,
    key: u128,
    symbols: &[Record],
) -> Vec<(u128, Option<Signature>)> {
    let (a, b) = decode(a0, b0, key, COMPONENT_PMCS);
    let mode = mode_of(key);
    let mut reads = Vec::new();
    symbols
        .iter()
        .map(|&r| {
            if !is_valid(r, mode, COMPONENT_PMCS) {
                // Never taken: a walk draws only letters valid in its mode.
                return (key, None);
            }
            let (mut a, mut b) = (a.clone(), b.clone());
            let policy = a.step(r, &mut reads) & 1;
            let reference = b.step(r, &mut reads) & 1;
            reads.clear();
            let next = only_pmc0(encode(&a, &b, COMPONENT_PMCS));
            let class = (policy != reference).then(|| {
                Signature::of_parting(
                    r.op,
                    hg_bits(b.eventsel()[0]),
                    mode,
                    mode_of(next),
                    policy != 0,
                )
            });
            (next, class)
        })
        .collect()
}

fn explore_models<A: Abstract, B: Abstract>(
    a0: A,
    b0: B,
    symbols: &[Record],
    max_classes: usize,
) -> Result<Explored, CoreError> {
    let root = only_pmc0(encode(&a0, &b0, COMPONENT_PMCS));
    let mut index: HashMap<u128, u32> = HashMap::new();
    index.insert(root, 0);
    let mut keys = vec![root];
    let mut next = Vec::new();
    let mut label = Vec::new();
    let mut classes: Vec<Signature> = Vec::new();
    let mut class_ids: HashMap<Signature, u8> = HashMap::new();
    let mut done = 0;
    while done < keys.len() {
        let layer: Vec<Vec<(u128, Option<Signature>)>> = keys[done..]
            .par_iter()
            .map(|&k| expand_one(&a0, &b0, k, symbols))
            .collect();
        done = keys.len();
        for row in layer {
            for (key, class) in row {
                let n = keys.len() as u32;
                next.push(*index.entry(key).or_insert_with(|| {
                    keys.push(key);
                    n
                }));
                label.push(match class {
                    None => 0,
                    Some(sig) => match class_ids.get(&sig) {
                        Some(&id) => id,
                        None => {
                            if classes.len() >= max_classes {
                                return Err(CoreError::Value(format!(
                                    "the automaton engine handles at most {max_classes} classes"
                                )));
                            }
                            classes.push(sig);
                            let id = classes.len() as u8;
                            class_ids.insert(sig, id);
                            id
                        }
                    },
                });
            }
        }
    }
    Ok(Explored {
        states: keys.len(),
        next,
        label,
        classes,
    })
}

/// Explore the component of `policy` against `reference` over `symbols`.
pub fn explore(
    policy: &Policy,
    reference: &Policy,
    symbols: &[Record],
    max_classes: usize,
) -> Result<Explored, CoreError> {
    with_model!(policy, reference, COMPONENT_PMCS, |a, b| explore_models(
        a,
        b,
        symbols,
        max_classes
    ))
}

/// The minimal automaton: `states` states, `next`/`label` per (state, symbol), the start.
pub struct Minimal {
    pub states: usize,
    pub next: Vec<u32>,
    pub label: Vec<u8>,
    pub start: u32,
}

/// Moore's partition refinement: split blocks by (block of the next state, label) for every
/// symbol until no block splits. Blocks are numbered in order of their first state, so the
/// result does not depend on hashing or threads.
pub fn minimise(e: &Explored, n_symbols: usize) -> Minimal {
    let mut block = vec![0u32; e.states];
    let mut count = 1usize;
    loop {
        let rows: Vec<Vec<u32>> = (0..e.states)
            .into_par_iter()
            .map(|s| {
                let mut row = Vec::with_capacity(n_symbols + 1);
                row.push(block[s]);
                for j in 0..n_symbols {
                    let t = s * n_symbols + j;
                    row.push(block[e.next[t] as usize] << 8 | e.label[t] as u32);
                }
                row
            })
            .collect();
        let mut ids: HashMap<&[u32], u32> = HashMap::new();
        let mut new_block = vec![0u32; e.states];
        for (s, row) in rows.iter().enumerate() {
            let n = ids.len() as u32;
            new_block[s] = *ids.entry(&row[..]).or_insert(n);
        }
        let new_count = ids.len();
        block = new_block;
        if new_count == count {
            break;
        }
        count = new_count;
    }
    let mut next = vec![0u32; count * n_symbols];
    let mut label = vec![0u8; count * n_symbols];
    let mut filled = vec![false; count];
    for s in 0..e.states {
        let b = block[s] as usize;
        if filled[b] {
            continue;
        }
        filled[b] = true;
        for j in 0..n_symbols {
            let t = s * n_symbols + j;
            next[b * n_symbols + j] = block[e.next[t] as usize];
            label[b * n_symbols + j] = e.label[t];
        }
    }
    Minimal {
        states: count,
        next,
        label,
        start: block[0],
    }
}

/// Symbols with the same column (the same next state and label from every state) merged:
/// `merged[j]` is symbol `j`'s column, and there are `columns` of them.
pub fn merge_symbols(m: &Minimal, n_symbols: usize) -> (Vec<u16>, usize) {
    let mut ids: HashMap<Vec<u32>, u16> = HashMap::new();
    let merged = (0..n_symbols)
        .map(|j| {
            let column: Vec<u32> = (0..m.states)
                .map(|s| m.next[s * n_symbols + j] << 8 | m.label[s * n_symbols + j] as u32)
                .collect();
            let n = ids.len() as u16;
            *ids.entry(column).or_insert(n)
        })
        .collect();
    (merged, ids.len())
}
