//! Shrinking a diverging trace to a minimal one that still shows a given divergence class:
//! records dropped, then values made simpler, while the class still shows.

use super::{diverge, Scratch, Signature};
use crate::model::{op, Policy, GUEST_ONLY, HOST_ONLY, RESERVED_BITS};
use crate::trace::{validate, Record, TraceBuf, TraceRef};

/// What a shrunk trace must keep showing: class `sig` between `p` and `q`, and, with a
/// `baseline`, not between the baseline and `q` (a class the policy adds to the baseline's).
#[derive(Clone, Copy)]
struct Target<'a> {
    sig: Signature,
    p: &'a Policy,
    q: &'a Policy,
    baseline: Option<&'a Policy>,
    n_pmcs: usize,
}

fn shows(records: &[Record], c: Target<'_>, s: &mut Scratch) -> bool {
    let buf = TraceBuf::from_records(records);
    let t = buf.as_ref();
    let shows_in =
        |p: &Policy, s: &mut Scratch| diverge(&t, p, c.q, c.n_pmcs, s) && s.sigs.contains(&c.sig);
    validate(&t, c.n_pmcs).is_ok() && shows_in(c.p, s) && c.baseline.is_none_or(|b| !shows_in(b, s))
}

/// Simpler values to try for a record, most readable first.
fn simpler(r: Record) -> Vec<Record> {
    let mut out = Vec::new();
    let with_value = |v: u64| Record { value: v, ..r };
    match r.op {
        op::RUN => {
            for n in [1, 1000, 1 << 48] {
                if n < r.value {
                    out.push(with_value(n));
                }
            }
            if r.cpl != 0 && r.cpl != 3 {
                out.push(Record { cpl: 3, ..r });
            }
        }
        op::WRMSR_EVTSEL => {
            // Drop reserved junk, then INT.
            let clean = r.value & !(RESERVED_BITS & !(HOST_ONLY | GUEST_ONLY));
            if clean != r.value {
                out.push(with_value(clean));
            }
            if clean & crate::model::INT != 0 {
                out.push(with_value(clean & !crate::model::INT));
            }
        }
        op::WRMSR_CTR if r.value != 0 => out.push(with_value(0)),
        op::WRMSR_GLOBAL_CTRL if r.value != 0x3F => out.push(with_value(0x3F)),
        _ => {}
    }
    out
}

/// Shrink a trace to a minimal one that still shows `sig`: remove runs of records, halving
/// their length down to single records, while the trace stays valid and shows the class;
/// then simplify values. The result is 1-minimal: removing any one record loses the class.
pub fn shrink(
    trace: &TraceRef<'_>,
    sig: Signature,
    p: &Policy,
    q: &Policy,
    n_pmcs: usize,
) -> TraceBuf {
    shrink_against(trace, sig, p, q, None, n_pmcs)
}

/// [`shrink`], keeping also that the `baseline` does not show `sig` against `q` on the trace
/// (a class `p` adds to the baseline's, `svmpmu fuzz --baseline`).
pub fn shrink_against(
    trace: &TraceRef<'_>,
    sig: Signature,
    p: &Policy,
    q: &Policy,
    baseline: Option<&Policy>,
    n_pmcs: usize,
) -> TraceBuf {
    let c = Target {
        sig,
        p,
        q,
        baseline,
        n_pmcs,
    };
    let mut s = Scratch::default();
    let mut recs: Vec<Record> = (0..trace.len()).map(|i| trace.record(i)).collect();
    if !shows(&recs, c, &mut s) {
        return TraceBuf::from_records(&recs);
    }
    let mut size = recs.len().div_ceil(2).max(1);
    loop {
        let mut removed_any = false;
        let mut start = 0;
        while start < recs.len() {
            let end = (start + size).min(recs.len());
            let mut candidate = Vec::with_capacity(recs.len() - (end - start));
            candidate.extend_from_slice(&recs[..start]);
            candidate.extend_from_slice(&recs[end..]);
            if shows(&candidate, c, &mut s) {
                recs = candidate;
                removed_any = true;
            } else {
                start = end;
            }
        }
        if size == 1 && !removed_any {
            break;
        }
        if !removed_any {
            size = size.div_ceil(2);
        }
    }
    for i in 0..recs.len() {
        for candidate in simpler(recs[i]) {
            let old = recs[i];
            recs[i] = candidate;
            if shows(&recs, c, &mut s) {
                break;
            }
            recs[i] = old;
        }
    }
    TraceBuf::from_records(&recs)
}
