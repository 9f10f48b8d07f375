//! Arbitrary bytes as a trace, two policies and a PMC count; every path of the core must
//! agree with the others and nothing may panic or overflow (overflow checks are on).
//!
//! - validation and every replay path: `simulate` (checked loop and steady stretches), the
//!   timeline, the parallel split cut into 2 and 3 chunks with a short warm-up (so guesses
//!   fail and joins are exercised), `compare` and `explain`, which must give the same reads;
//! - the text format: writing then reading gives the same columns; reading arbitrary bytes
//!   gives a trace or a syntax error;
//! - the KVM trace-event importer on arbitrary bytes: every trace it makes is valid.

#![no_main]

use _core::explain::explain;
use _core::ftrace;
use _core::model::{Policy, KNOBS};
use _core::replay::{self, split};
use _core::text;
use _core::trace::{validate, Record, TraceBuf};
use libfuzzer_sys::fuzz_target;

/// Two policies from 15 bytes: the low nibble picks the policy's value of each knob, the high
/// nibble the reference's.
fn policies(head: &[u8]) -> Option<(Policy, Policy)> {
    let pick = |shift: u8| -> Option<Policy> {
        let values: [&str; 15] = std::array::from_fn(|k| {
            let allowed = KNOBS[k].1;
            allowed[(head[k] >> shift) as usize % allowed.len()]
        });
        Policy::from_knobs(&values).ok()
    };
    Some((pick(0)?, pick(4)?))
}

fn records(body: &[u8]) -> TraceBuf {
    let mut t = TraceBuf::default();
    for c in body.chunks_exact(16) {
        t.push(Record {
            // A few op codes beyond the last one, to exercise validation.
            op: c[0] % 17,
            pmc: c[1] % 8,
            cpl: c[2] % 5,
            flag: c[3] % 4,
            key: u32::from_le_bytes(c[4..8].try_into().unwrap()) & 0x1F_FFFF,
            value: u64::from_le_bytes(c[8..16].try_into().unwrap()),
        });
    }
    t
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let (head, body) = data.split_at(16);
    let n_pmcs = 1 + head[15] as usize % 6;
    let Some((p, q)) = policies(&head[..15]) else {
        return;
    };
    let buf = records(body);
    let t = buf.as_ref();
    let valid = validate(&t, n_pmcs).is_ok();
    let one = replay::simulate(&t, &p, n_pmcs, false);
    assert_eq!(one.is_ok(), valid);
    if let Ok(one) = one {
        let timeline = replay::simulate(&t, &p, n_pmcs, true).unwrap();
        assert_eq!(timeline.reads, one.reads);
        assert_eq!(timeline.counters, one.counters);
        for chunks in [2, 3] {
            let (cut, _) = split::simulate_split(&t, &p, n_pmcs, chunks, Some(4)).unwrap();
            assert_eq!(cut, one, "{chunks} chunks");
        }
        let c = replay::compare(&t, &p, &q, n_pmcs).unwrap();
        assert_eq!(c.policy.reads, one.reads);
        let e = explain(&t, &p, &q, n_pmcs);
        assert_eq!(e.reads[0], c.policy.reads);
        assert_eq!(e.reads[1], c.reference.reads);
    }
    if buf.op.iter().all(|&o| (o as usize) < _core::model::op::COUNT) {
        let mut out = Vec::new();
        text::write(&t, &mut out).unwrap();
        assert_eq!(text::parse(&out).unwrap(), buf);
    }
    let _ = text::parse(data);
    if let Ok(import) = ftrace::import(data, &ftrace::Options::default()) {
        for v in &import.vcpus {
            let t = v.trace.as_ref();
            assert!(validate(&t, 6).is_ok(), "an imported trace is invalid");
        }
    }
});
