//! Exhaustive verification: a policy and its reference compiled into one finite automaton
//! over the product of their decision states (counter values left out), explored breadth-first
//! from reset. Every reachable product state is visited, so the divergence classes found are
//! all there are, for the alphabet of `alphabet`; each comes with its shortest witness.
//! docs/verification.md argues why the abstraction is exact.
//!
//! Two passes. The first visits every reachable product state once, stepping the models'
//! own rules (`state` takes a state apart and puts it back together) on every letter, and
//! keeps the transition table. The second walks that table breadth-first over (state, the
//! running difference of the two models' counts per PMC, whether a READ already differed):
//! the class of a record at which exactly one model counts is reachable in a diverging trace,
//! and the shortest such trace is its witness (the fuzzer's reading: a trace belongs to the
//! class of every record at which the models part, when it diverges).

pub mod alphabet;
pub mod state;

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use rayon::prelude::*;

use crate::error::CoreError;
use crate::fuzz::Signature;
use crate::model::{op, with_model, Policy, MAX_PMCS};
use crate::trace::{check_n_pmcs, is_valid, Record, TraceBuf};
use state::{decode, encode, mode_of, Abstract};

/// What to explore.
#[derive(Clone, Debug)]
pub struct VerifySpec {
    pub policy: Policy,
    pub reference: Policy,
    pub n_pmcs: usize,
    /// The letters; `alphabet::letters(n_pmcs)` for the full exploration.
    pub letters: Vec<Record>,
    /// Classes set aside: their witnesses are still found, but they do not make the verdict
    /// "not equivalent".
    pub ignore: Vec<Signature>,
    /// Stop after this many product states (the verdict is then bounded).
    pub max_states: Option<usize>,
}

/// One reachable class and its shortest witness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassWitness {
    pub signature: Signature,
    /// The shortest diverging trace with a record of this class.
    pub witness: TraceBuf,
    /// How many transitions of the product automaton show this class.
    pub transitions: u64,
    pub ignored: bool,
}

/// The outcome of an exploration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// No class outside `ignore` is reachable (and the exploration was complete).
    pub equivalent: bool,
    /// `max_states` stopped the exploration: the classes found are some of those reachable.
    pub bounded: bool,
    /// Reachable product states.
    pub states: usize,
    /// The longest shortest path from reset to a product state.
    pub depth: usize,
    /// Transitions followed (states times the letters valid in each).
    pub transitions: u64,
    pub classes: Vec<ClassWitness>,
}

/// A multiply-shift hasher for the packed states and nodes (SipHash, the default, took a
/// third of the exploration).
#[derive(Clone, Copy, Default)]
struct Mix64(u64);

impl std::hash::Hasher for Mix64 {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(26) ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_u128(&mut self, v: u128) {
        self.write_u64(v as u64);
        self.write_u64((v >> 64) as u64);
    }
}

type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Mix64>>;

/// A signature as a small dense number: op (4 bits), H/G (2), the modes before and after (2
/// each) and who counted (1).
fn class_number(s: Signature) -> usize {
    (s.op as usize) << 7
        | (s.hg as usize) << 5
        | (s.before as usize) << 3
        | (s.after as usize) << 1
        | s.policy_counts as usize
}

const CLASS_NUMBERS: usize = 1 << 11;

/// No transition: the letter is invalid in the state.
const NONE: u32 = u32::MAX;

/// One transition of the product automaton.
#[derive(Clone, Copy, Debug)]
struct Edge {
    next: u32,
    /// The PMCs each model counted on.
    policy: u8,
    reference: u8,
    /// The reference's selectors' H/G bits after the letter, 2 bits a PMC.
    reference_hg: u16,
}

/// The first pass: every reachable product state and the transition table.
struct Automaton {
    keys: Vec<u128>,
    /// The state each was first reached from, and by which letter.
    parent: Vec<(u32, u16)>,
    depth: usize,
    /// `edges[s * letters + l]`.
    edges: Vec<Edge>,
    bounded: bool,
}

/// Progress reports: (states so far, depth so far); called once a breadth-first layer.
pub type Progress<'a> = &'a (dyn Fn(usize, usize) + Sync);

/// States expanded between two checks of the state bound.
const CHUNK: usize = 4096;

/// Every letter's transition from each of `keys`: the next state's key and the edge (its
/// `next` still to be numbered; [`NONE`] where the letter is invalid).
fn expand<A: Abstract, B: Abstract>(
    a0: &A,
    b0: &B,
    keys: &[u128],
    letters: &[Record],
    n_pmcs: usize,
) -> Vec<Vec<(u128, Edge)>> {
    keys.par_iter()
        .map(|&key| {
            let (a, b) = decode(a0, b0, key, n_pmcs);
            let mode = mode_of(key);
            let mut reads = Vec::new();
            letters
                .iter()
                .map(|&r| {
                    if !is_valid(r, mode, n_pmcs) {
                        let none = Edge {
                            next: NONE,
                            policy: 0,
                            reference: 0,
                            reference_hg: 0,
                        };
                        return (0, none);
                    }
                    let (mut a, mut b) = (a.clone(), b.clone());
                    let policy = a.step(r, &mut reads);
                    let reference = b.step(r, &mut reads);
                    reads.clear();
                    let mut reference_hg = 0u16;
                    for (i, &sel) in b.eventsel().iter().enumerate().take(n_pmcs) {
                        reference_hg |= (crate::fuzz::hg_bits(sel) as u16) << (2 * i);
                    }
                    let edge = Edge {
                        next: 0,
                        policy,
                        reference,
                        reference_hg,
                    };
                    (encode(&a, &b, n_pmcs), edge)
                })
                .collect()
        })
        .collect()
}

fn explore<A: Abstract, B: Abstract>(
    a0: &A,
    b0: &B,
    spec: &VerifySpec,
    progress: Progress<'_>,
) -> Automaton {
    let (n_pmcs, letters) = (spec.n_pmcs, &spec.letters);
    let root = encode(a0, b0, n_pmcs);
    let mut index: FastMap<u128, u32> = FastMap::default();
    index.insert(root, 0);
    let mut keys = vec![root];
    let mut parent = vec![(0u32, 0u16)];
    let mut edges = Vec::new();
    let (mut layer_start, mut depth, mut bounded) = (0usize, 0usize, false);
    while layer_start < keys.len() {
        let layer_end = keys.len();
        progress(keys.len(), depth);
        // Expand the layer in parallel, a chunk at a time (so that a state bound is met
        // within a chunk, and memory with it); number the new states in layer order, letter
        // order.
        for chunk_start in (layer_start..layer_end).step_by(CHUNK) {
            let chunk_end = (chunk_start + CHUNK).min(layer_end);
            let expanded = expand(a0, b0, &keys[chunk_start..chunk_end], letters, n_pmcs);
            for (k, row) in expanded.into_iter().enumerate() {
                let from = (chunk_start + k) as u32;
                for (l, (key, mut edge)) in row.into_iter().enumerate() {
                    if edge.next != NONE {
                        edge.next = *index.entry(key).or_insert_with(|| {
                            keys.push(key);
                            parent.push((from, l as u16));
                            (keys.len() - 1) as u32
                        });
                    }
                    edges.push(edge);
                }
                // Within a row of the bound: the rows after this one are not taken.
                if spec.max_states.is_some_and(|m| keys.len() >= m) {
                    bounded = true;
                    break;
                }
            }
            if bounded {
                break;
            }
        }
        if bounded {
            break;
        }
        layer_start = layer_end;
        if keys.len() > layer_end {
            depth += 1;
        }
    }
    Automaton {
        keys,
        parent,
        depth,
        edges,
        bounded,
    }
}

/// The signature of PMC `p` on a parting edge from state `key` by letter `r`.
fn signature(r: Record, key: u128, next_key: u128, e: &Edge, p: usize) -> Signature {
    Signature::of_parting(
        r.op,
        (e.reference_hg >> (2 * p) & 3) as u8,
        mode_of(key),
        mode_of(next_key),
        e.policy & (1 << p) != 0,
    )
}

/// The largest running count difference the witness search follows, per PMC.
fn max_difference(n_pmcs: usize) -> i8 {
    if n_pmcs == 1 {
        8
    } else {
        2
    }
}

/// A node of the witness search: a product state, the running count difference per PMC,
/// and whether a READ already showed a difference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Node {
    state: u32,
    diff: [i8; MAX_PMCS],
    read_differed: bool,
}

impl Node {
    fn diverged(&self) -> bool {
        self.read_differed || self.diff.iter().any(|&d| d != 0)
    }

    /// The running difference and the READ bit after letter `r` on edge `e` (the state is
    /// the caller's): a READ of a PMC whose counts differ shows the divergence; a RESET sets
    /// every counter to 0 in both models, and a WRMSR_CTR sets its counter to the same value
    /// in both, so their difference starts again from 0 before the record's own counts.
    fn advance(&mut self, r: Record, e: &Edge, n_pmcs: usize) {
        if r.op == op::READ && self.diff[r.pmc as usize] != 0 {
            self.read_differed = true;
        }
        if r.op == op::RESET {
            self.diff = [0; MAX_PMCS];
        }
        if r.op == op::WRMSR_CTR {
            self.diff[r.pmc as usize] = 0;
        }
        for p in 0..n_pmcs {
            self.diff[p] += ((e.policy >> p) & 1) as i8 - ((e.reference >> p) & 1) as i8;
        }
    }

    /// The node as one number, for the visited set: the state, 5 bits a PMC's difference
    /// (|d| <= 15), the READ bit.
    fn pack(&self) -> u64 {
        let mut k = self.state as u64 | (self.read_differed as u64) << 32;
        for (i, &d) in self.diff.iter().enumerate() {
            k |= ((d as u8 & 0x1F) as u64) << (33 + 5 * i);
        }
        k
    }
}

/// The second pass: for every class, the shortest diverging trace with a record of it.
fn witnesses(auto: &Automaton, spec: &VerifySpec) -> BTreeMap<Signature, (Vec<u16>, u64)> {
    let (n_pmcs, letters) = (spec.n_pmcs, &spec.letters);
    let nl = letters.len();
    let edge = |s: u32, l: usize| &auto.edges[s as usize * nl + l];
    let expanded = auto.edges.len() / nl;
    // How many transitions show each class, over the whole automaton.
    let mut count = vec![0u64; CLASS_NUMBERS];
    let mut signature_of = vec![None; CLASS_NUMBERS];
    for s in 0..expanded {
        for (l, &r) in letters.iter().enumerate() {
            let e = edge(s as u32, l);
            let mut d = e.policy ^ e.reference;
            while e.next != NONE && d != 0 {
                let p = d.trailing_zeros() as usize;
                d &= d - 1;
                let sig = signature(r, auto.keys[s], auto.keys[e.next as usize], e, p);
                count[class_number(sig)] += 1;
                signature_of[class_number(sig)] = Some(sig);
            }
        }
    }
    // Escape: the fewest letters from a state to and including a parting one.
    let mut escape = vec![(u32::MAX, 0u16); auto.keys.len()];
    for (s, esc) in escape.iter_mut().enumerate().take(expanded) {
        for l in 0..nl {
            let e = edge(s as u32, l);
            if e.next != NONE && e.policy != e.reference {
                *esc = (1, l as u16);
                break;
            }
        }
    }
    loop {
        let mut changed = false;
        for s in 0..expanded {
            for l in 0..nl {
                let e = edge(s as u32, l);
                if e.next == NONE {
                    continue;
                }
                let via = escape[e.next as usize].0.saturating_add(1);
                if via < escape[s].0 {
                    escape[s] = (via, l as u16);
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    // Breadth-first over nodes; the best candidate of each class: (length, node, letter).
    let dmax = max_difference(n_pmcs);
    let root = Node {
        state: 0,
        diff: [0; MAX_PMCS],
        read_differed: false,
    };
    let mut nodes = vec![root];
    let mut node_parent: Vec<(u32, u16)> = vec![(0, 0)];
    let mut seen: FastMap<u64, u32> = FastMap::default();
    seen.insert(root.pack(), 0);
    let classes: Vec<usize> = (0..CLASS_NUMBERS).filter(|&c| count[c] > 0).collect();
    // Per class number: (length, node, letter) of the best candidate.
    let mut best = vec![(u32::MAX, 0u32, 0u16); CLASS_NUMBERS];
    let (mut start, mut dist) = (0usize, 0u32);
    while start < nodes.len() {
        // Every candidate from here on is at least dist + 1 long.
        if classes.iter().all(|&c| best[c].0 <= dist + 1) {
            break;
        }
        let end = nodes.len();
        for ni in start..end {
            let node = nodes[ni];
            if node.state as usize >= expanded {
                continue; // beyond a bounded exploration
            }
            for (l, &r) in letters.iter().enumerate() {
                let e = edge(node.state, l);
                if e.next == NONE {
                    continue;
                }
                let mut next = Node {
                    state: e.next,
                    ..node
                };
                next.advance(r, e, n_pmcs);
                let too_far = next.diff.iter().any(|d| d.abs() > dmax);
                let mut d = e.policy ^ e.reference;
                while d != 0 {
                    let p = d.trailing_zeros() as usize;
                    d &= d - 1;
                    let sig = signature(
                        r,
                        auto.keys[node.state as usize],
                        auto.keys[e.next as usize],
                        e,
                        p,
                    );
                    let rest = if next.diverged() {
                        0
                    } else {
                        escape[e.next as usize].0
                    };
                    let len = (dist + 1).saturating_add(rest);
                    let b = &mut best[class_number(sig)];
                    if len < b.0 {
                        *b = (len, ni as u32, l as u16);
                    }
                }
                if too_far {
                    continue;
                }
                if let std::collections::hash_map::Entry::Vacant(v) = seen.entry(next.pack()) {
                    v.insert(nodes.len() as u32);
                    nodes.push(next);
                    node_parent.push((ni as u32, l as u16));
                }
            }
        }
        start = end;
        dist += 1;
    }
    // Rebuild each witness: the path to the node, the class's letter, then the escape. A
    // class the search did not reach within the difference it follows (none is known) gets
    // the first pass's path to its edge instead: a witness, maybe not the shortest.
    let mut out = BTreeMap::new();
    for &c in &classes {
        let sig = signature_of[c].expect("a counted class has a signature");
        let (mut path, node, l) = match best[c] {
            (len, ni, l) if len < u32::MAX => {
                let mut path = Vec::new();
                let mut n = ni;
                while n != 0 {
                    let (p, pl) = node_parent[n as usize];
                    path.push(pl);
                    n = p;
                }
                path.reverse();
                (path, nodes[ni as usize], l)
            }
            _ => first_edge_of(auto, spec, sig),
        };
        path.push(l);
        let mut after = node;
        let e = edge(node.state, l as usize);
        after.advance(letters[l as usize], e, n_pmcs);
        let mut s = e.next;
        if !after.diverged() {
            loop {
                let (steps, el) = escape[s as usize];
                path.push(el);
                if steps == 1 {
                    break;
                }
                s = edge(s, el as usize).next;
            }
        }
        out.insert(sig, (path, count[c]));
    }
    out
}

/// The first pass's shortest path to the first edge that shows `sig`, as a node (with the
/// count difference along that path) and the edge's letter.
fn first_edge_of(auto: &Automaton, spec: &VerifySpec, sig: Signature) -> (Vec<u16>, Node, u16) {
    let nl = spec.letters.len();
    let expanded = auto.edges.len() / nl;
    for s in 0..expanded {
        for (l, &r) in spec.letters.iter().enumerate() {
            let e = &auto.edges[s * nl + l];
            let mut d = e.policy ^ e.reference;
            while e.next != NONE && d != 0 {
                let p = d.trailing_zeros() as usize;
                d &= d - 1;
                if signature(r, auto.keys[s], auto.keys[e.next as usize], e, p) != sig {
                    continue;
                }
                let mut path = Vec::new();
                let mut n = s as u32;
                while n != 0 {
                    let (from, pl) = auto.parent[n as usize];
                    path.push(pl);
                    n = from;
                }
                path.reverse();
                // The count difference along the path (READs on it do not matter here).
                let mut node = Node {
                    state: 0,
                    diff: [0; MAX_PMCS],
                    read_differed: false,
                };
                for &pl in &path {
                    let e = &auto.edges[node.state as usize * nl + pl as usize];
                    node.advance(spec.letters[pl as usize], e, spec.n_pmcs);
                    node.state = e.next;
                }
                return (path, node, l as u16);
            }
        }
    }
    unreachable!("a counted class has an edge")
}

fn run<A: Abstract, B: Abstract>(
    a0: A,
    b0: B,
    spec: &VerifySpec,
    progress: Progress<'_>,
) -> Verdict {
    let auto = explore(&a0, &b0, spec, progress);
    let found = witnesses(&auto, spec);
    let transitions = auto.edges.iter().filter(|e| e.next != NONE).count() as u64;
    let classes: Vec<ClassWitness> = found
        .into_iter()
        .map(|(signature, (path, transitions))| ClassWitness {
            signature,
            witness: TraceBuf::from_records(
                &path
                    .iter()
                    .map(|&l| spec.letters[l as usize])
                    .collect::<Vec<_>>(),
            ),
            transitions,
            ignored: spec.ignore.contains(&signature),
        })
        .collect();
    Verdict {
        equivalent: !auto.bounded && classes.iter().all(|c| c.ignored),
        bounded: auto.bounded,
        states: auto.keys.len(),
        depth: auto.depth,
        transitions,
        classes,
    }
}

/// Explore `spec.policy` against `spec.reference` (on the current rayon pool).
pub fn verify(spec: &VerifySpec, progress: Progress<'_>) -> Result<Verdict, CoreError> {
    check_n_pmcs(spec.n_pmcs)?;
    if spec.letters.len() > u16::MAX as usize {
        return Err(CoreError::Value("too many letters".into()));
    }
    Ok(with_model!(
        &spec.policy,
        &spec.reference,
        spec.n_pmcs,
        |a, b| run(a, b, spec, progress)
    ))
}

#[cfg(test)]
mod tests;
