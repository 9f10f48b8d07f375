//! Traces as borrowed columns, and their validation (model.md section 4, docs/semantics.md).

use crate::error::CoreError;
use crate::model::{filter, op, KEY_LIMIT, MAX_PMCS};

/// One trace: six borrowed columns of equal length (16 bytes a record).
#[derive(Clone, Copy, Debug)]
pub struct TraceRef<'a> {
    pub op: &'a [u8],
    pub pmc: &'a [u8],
    pub cpl: &'a [u8],
    pub flag: &'a [u8],
    pub key: &'a [u32],
    pub value: &'a [u64],
}

/// One trace's columns, owned (the generator's and the shrinker's output).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceBuf {
    pub op: Vec<u8>,
    pub pmc: Vec<u8>,
    pub cpl: Vec<u8>,
    pub flag: Vec<u8>,
    pub key: Vec<u32>,
    pub value: Vec<u64>,
}

/// One record, unpacked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub op: u8,
    pub pmc: u8,
    pub cpl: u8,
    pub flag: u8,
    pub key: u32,
    pub value: u64,
}

impl<'a> TraceRef<'a> {
    /// Borrow six columns, checking that their lengths agree.
    pub fn new(
        op: &'a [u8],
        pmc: &'a [u8],
        cpl: &'a [u8],
        flag: &'a [u8],
        key: &'a [u32],
        value: &'a [u64],
    ) -> Result<Self, CoreError> {
        let n = op.len();
        for (name, len) in [
            ("pmc", pmc.len()),
            ("cpl", cpl.len()),
            ("flag", flag.len()),
            ("key", key.len()),
            ("value", value.len()),
        ] {
            if len != n {
                return Err(CoreError::Value(format!(
                    "column {name:?} has {len} records, but \"op\" has {n}"
                )));
            }
        }
        Ok(TraceRef {
            op,
            pmc,
            cpl,
            flag,
            key,
            value,
        })
    }

    pub fn len(&self) -> usize {
        self.op.len()
    }

    pub fn is_empty(&self) -> bool {
        self.op.is_empty()
    }

    /// Records `range` of this trace, as a trace.
    pub fn slice(&self, range: std::ops::Range<usize>) -> TraceRef<'a> {
        TraceRef {
            op: &self.op[range.clone()],
            pmc: &self.pmc[range.clone()],
            cpl: &self.cpl[range.clone()],
            flag: &self.flag[range.clone()],
            key: &self.key[range.clone()],
            value: &self.value[range],
        }
    }

    /// The records in order. The columns are cut to one length first, so that the compiler
    /// can drop the per-column bounds checks from the loop.
    #[inline(always)]
    pub fn records(&self) -> impl Iterator<Item = Record> + 'a {
        let n = self.op.len();
        let (op, pmc, cpl) = (&self.op[..n], &self.pmc[..n], &self.cpl[..n]);
        let (flag, key, value) = (&self.flag[..n], &self.key[..n], &self.value[..n]);
        (0..n).map(move |i| Record {
            op: op[i],
            pmc: pmc[i],
            cpl: cpl[i],
            flag: flag[i],
            key: key[i],
            value: value[i],
        })
    }

    #[inline(always)]
    pub fn record(&self, i: usize) -> Record {
        Record {
            op: self.op[i],
            pmc: self.pmc[i],
            cpl: self.cpl[i],
            flag: self.flag[i],
            key: self.key[i],
            value: self.value[i],
        }
    }
}

impl TraceBuf {
    pub fn with_capacity(n: usize) -> Self {
        TraceBuf {
            op: Vec::with_capacity(n),
            pmc: Vec::with_capacity(n),
            cpl: Vec::with_capacity(n),
            flag: Vec::with_capacity(n),
            key: Vec::with_capacity(n),
            value: Vec::with_capacity(n),
        }
    }

    /// Room for `n` records, or an error if the memory cannot be had (`n` comes from users:
    /// a failed allocation must be an error, not an abort).
    pub fn try_with_capacity(n: usize) -> Result<Self, CoreError> {
        // The error names the bytes of the whole trace, 16 a record.
        fn column<T>(n: usize) -> Result<Vec<T>, CoreError> {
            let mut v = Vec::new();
            v.try_reserve_exact(n).map_err(|_| {
                crate::memory::error(n as u128 * 16, &format!("a trace of {n} records"))
            })?;
            Ok(v)
        }
        Ok(TraceBuf {
            op: column(n)?,
            pmc: column(n)?,
            cpl: column(n)?,
            flag: column(n)?,
            key: column(n)?,
            value: column(n)?,
        })
    }

    /// `n` zero records, or an error if the memory cannot be had.
    /// The zeros are written in parallel on the current rayon pool
    /// ([`crate::memory::fill_zeros`]).
    pub fn try_zeroed(n: usize) -> Result<Self, CoreError> {
        TraceBuf::try_zeroed_with(n, &crate::cancel::Cancel::never())
    }

    /// [`TraceBuf::try_zeroed`], checking `cancel` as it writes the zeros.
    pub fn try_zeroed_with(
        n: usize,
        cancel: &crate::cancel::Cancel<'_>,
    ) -> Result<Self, CoreError> {
        use crate::memory::fill_zeros;
        let mut t = TraceBuf::try_with_capacity(n)?;
        fill_zeros(&mut t.op, n, cancel)?;
        fill_zeros(&mut t.pmc, n, cancel)?;
        fill_zeros(&mut t.cpl, n, cancel)?;
        fill_zeros(&mut t.flag, n, cancel)?;
        fill_zeros(&mut t.key, n, cancel)?;
        fill_zeros(&mut t.value, n, cancel)?;
        Ok(t)
    }

    pub fn push(&mut self, r: Record) {
        self.op.push(r.op);
        self.pmc.push(r.pmc);
        self.cpl.push(r.cpl);
        self.flag.push(r.flag);
        self.key.push(r.key);
        self.value.push(r.value);
    }

    pub fn len(&self) -> usize {
        self.op.len()
    }

    pub fn is_empty(&self) -> bool {
        self.op.is_empty()
    }

    pub fn extend(&mut self, other: &TraceBuf) {
        self.op.extend_from_slice(&other.op);
        self.pmc.extend_from_slice(&other.pmc);
        self.cpl.extend_from_slice(&other.cpl);
        self.flag.extend_from_slice(&other.flag);
        self.key.extend_from_slice(&other.key);
        self.value.extend_from_slice(&other.value);
    }

    pub fn clear(&mut self) {
        self.op.clear();
        self.pmc.clear();
        self.cpl.clear();
        self.flag.clear();
        self.key.clear();
        self.value.clear();
    }

    pub fn as_ref(&self) -> TraceRef<'_> {
        TraceRef {
            op: &self.op,
            pmc: &self.pmc,
            cpl: &self.cpl,
            flag: &self.flag,
            key: &self.key,
            value: &self.value,
        }
    }

    pub fn from_records(records: &[Record]) -> Self {
        let mut buf = TraceBuf::with_capacity(records.len());
        for &r in records {
            buf.push(r);
        }
        buf
    }

    pub fn records(&self) -> Vec<Record> {
        let t = self.as_ref();
        (0..t.len()).map(|i| t.record(i)).collect()
    }
}

// The mode state as two bits: bit 0 svme, bit 1 guest_mode (1 = svme in host mode).
// (svme 0, guest 1) never occurs.
const S00: u8 = 0;
const S11: u8 = 3;

/// Which ops use which field (model.md section 4; docs/semantics.md, "Record layout"): the
/// one statement of it, as a predicate per field. The validator ([`RULES`], [`fields_ok`]),
/// the generator ([`ops_using`]) and the stretch decoder (`crate::replay::stretch`) derive
/// from these. A field an op does not use is ignored, whatever it holds.
#[inline(always)]
pub const fn uses_pmc(o: u8) -> bool {
    (o == op::WRMSR_EVTSEL) | (o == op::WRMSR_CTR) | (o == op::READ)
}

/// Ops with a CPL (0 is kernel, 1..3 user): the CPL of an emulated instruction or a run,
/// and the CPL at which VMRUN resumes L2.
#[inline(always)]
pub const fn uses_cpl(o: u8) -> bool {
    (o == op::EMULATE) | (o == op::RUN) | (o == op::VMRUN)
}

/// Ops with an event key (20 bits).
#[inline(always)]
pub const fn uses_key(o: u8) -> bool {
    (o == op::SET_FILTER) | (o == op::RUN)
}

/// Ops with a value: the value written, or a RUN's count.
#[inline(always)]
pub const fn uses_value(o: u8) -> bool {
    (o == op::WRMSR_EVTSEL) | (o == op::WRMSR_CTR) | (o == op::WRMSR_GLOBAL_CTRL) | (o == op::RUN)
}

/// Ops whose flag is 0 or 1: WRMSR_EFER's new SVME, SET_NESTED_STATE's guest mode,
/// EMULATE's "is a branch".
#[inline(always)]
pub const fn uses_binary_flag(o: u8) -> bool {
    (o == op::WRMSR_EFER) | (o == op::SET_NESTED_STATE) | (o == op::EMULATE)
}

/// The largest flag op `o` takes: 1 for a binary flag, SET_FILTER's action (none, allow,
/// deny), and [`ANY`] for the ops that take none.
pub const fn flag_max(o: u8) -> u8 {
    if uses_binary_flag(o) {
        1
    } else if o == op::SET_FILTER {
        filter::DENY
    } else {
        ANY
    }
}

/// The largest CPL.
pub const CPL_MAX: u8 = 3;

/// A record field that some ops use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Pmc,
    Cpl,
    Key,
    Value,
}

/// The ops that use `field`, as a mask over op codes (bit `op`).
pub const fn ops_using(field: Field) -> u16 {
    let mut mask = 0u16;
    let mut o = 0u8;
    while o < 16 {
        let uses = match field {
            Field::Pmc => uses_pmc(o),
            Field::Cpl => uses_cpl(o),
            Field::Key => uses_key(o),
            Field::Value => uses_value(o),
        };
        if uses {
            mask |= 1 << o;
        }
        o += 1;
    }
    mask
}

/// Per-op validation data, derived from the predicates above, so that validating a record is
/// a few table lookups and no data-dependent branch: [`TRANSITION`] gives the state after the
/// record and `LEGAL` the same shape, true where the mode rules allow the record.
struct OpRules {
    uses_pmc: bool,
    uses_cpl: bool,
    uses_key: bool,
    flag_max: u8,
}

/// A flag limit that any flag meets.
pub const ANY: u8 = u8::MAX;

const RULES: [OpRules; 16] = {
    let mut t = [const {
        OpRules {
            uses_pmc: false,
            uses_cpl: false,
            uses_key: false,
            flag_max: ANY,
        }
    }; 16];
    let mut o = 0;
    while o < 16 {
        t[o] = OpRules {
            uses_pmc: uses_pmc(o as u8),
            uses_cpl: uses_cpl(o as u8),
            uses_key: uses_key(o as u8),
            flag_max: flag_max(o as u8),
        };
        o += 1;
    }
    t
};

/// How a record changes the mode state: `next = (state & keep) | set`, by [op][flag & 1].
/// The pair depends on the record alone, so the chain from one record's state to the next is
/// an AND and an OR, not a table lookup that waits for the previous state.
pub(crate) const TRANSITION: [[(u8, u8); 2]; 16] = {
    let mut t = [[(3u8, 0u8); 2]; 16];
    let mut o = 0;
    while o < 16 {
        let mut f = 0;
        while f < 2 {
            t[o][f] = match o as u8 {
                op::WRMSR_EFER => (0, f as u8), // host mode only: (svme = flag, host)
                op::VMRUN => (0, S11),
                op::VMEXIT | op::FORCED_LEAVE => (1, 0), // keep svme, leave guest mode
                op::SET_NESTED_STATE => (1, (f as u8) << 1),
                op::RESET => (0, S00),
                _ => (3, 0),
            };
            f += 1;
        }
        o += 1;
    }
    t
};

#[inline(always)]
fn next(r: Record, state: u8) -> u8 {
    let (keep, set) = TRANSITION[(r.op & 15) as usize][(r.flag & 1) as usize];
    (state & keep) | set
}

/// Mode legality by [op][flag & 1][state], and the reason when illegal.
const fn mode_error(o: u8, flag: u8, state: u8) -> Option<&'static str> {
    let guest = state & 2 != 0;
    let svme = state & 1 != 0;
    match o {
        op::WRMSR_EFER if guest => {
            Some("WRMSR_EFER in guest mode (EFER is L1's, written in host mode)")
        }
        op::VMRUN if guest => Some("VMRUN in guest mode"),
        op::VMRUN_FAIL if guest => Some("VMRUN_FAIL in guest mode"),
        op::VMRUN if !svme => Some("VMRUN with EFER.SVME = 0 (#UD: nothing retires)"),
        op::VMRUN_FAIL if !svme => Some("VMRUN_FAIL with EFER.SVME = 0 (#UD: nothing retires)"),
        op::VMEXIT if !guest => Some("VMEXIT in host mode"),
        op::SET_NESTED_STATE if flag == 1 && !svme => {
            Some("SET_NESTED_STATE entering guest mode with EFER.SVME = 0")
        }
        _ => None,
    }
}

const LEGAL: [[[bool; 4]; 2]; 16] = {
    let mut t = [[[false; 4]; 2]; 16];
    let mut o = 0;
    while o < 16 {
        let mut f = 0;
        while f < 2 {
            let mut s = 0;
            while s < 4 {
                t[o][f][s] = mode_error(o as u8, f as u8, s as u8).is_none();
                s += 1;
            }
            f += 1;
        }
        o += 1;
    }
    t
};

/// Whether record `r` is valid in mode state `state`, table-driven and branch-free.
#[inline(always)]
fn record_ok(r: Record, state: u8, n_pmcs: u8) -> bool {
    let o = (r.op & 15) as usize;
    let rule = &RULES[o];
    let f = (r.flag & 1) as usize;
    let bad = (r.op as usize >= op::COUNT)
        | (rule.uses_pmc & (r.pmc >= n_pmcs))
        | (rule.uses_cpl & (r.cpl > CPL_MAX))
        | (r.flag > rule.flag_max)
        | (rule.uses_key & (r.key >= KEY_LIMIT))
        | !LEGAL[o][f][state as usize];
    !bad
}

/// The reason record `r` is invalid in `state`, in the order docs/semantics.md gives.
fn reason(r: Record, state: u8, n_pmcs: u8) -> String {
    if r.op as usize >= op::COUNT {
        return format!("unknown op {}", r.op);
    }
    let name = op::NAMES[r.op as usize];
    let rule = &RULES[r.op as usize];
    if rule.uses_pmc && r.pmc >= n_pmcs {
        return format!("{name}: pmc {} is out of range (n_pmcs = {n_pmcs})", r.pmc);
    }
    if rule.uses_cpl && r.cpl > CPL_MAX {
        return format!("{name}: cpl {} is out of range (0..3)", r.cpl);
    }
    if r.flag > rule.flag_max {
        return format!(
            "{name}: flag {} is out of range (0..{})",
            r.flag, rule.flag_max
        );
    }
    if rule.uses_key && r.key >= KEY_LIMIT {
        return format!("{name}: event key {:#x} is wider than 20 bits", r.key);
    }
    match mode_error(r.op, r.flag & 1, state) {
        Some(msg) => msg.to_string(),
        None => unreachable_reason(),
    }
}

#[cold]
fn unreachable_reason() -> String {
    "invalid record".to_string()
}

/// Validate a whole trace (model.md section 4). Returns the first invalid record's index and
/// the rule it breaks. Table-driven, so that the cost does not depend on the op sequence.
pub fn validate(t: &TraceRef<'_>, n_pmcs: usize) -> Result<(), CoreError> {
    validate_with(t, n_pmcs, &crate::cancel::Cancel::never())
}

/// [`validate`], checking `cancel` every [`crate::cancel::RECORDS_PER_CHECK`] records.
pub fn validate_with(
    t: &TraceRef<'_>,
    n_pmcs: usize,
    cancel: &crate::cancel::Cancel<'_>,
) -> Result<(), CoreError> {
    check_n_pmcs(n_pmcs)?;
    let n = n_pmcs as u8;
    let mut state = S00;
    // Chunks: accumulate a "bad" flag over a block without branching, then locate it.
    const BLOCK: usize = 256;
    const _: () = assert!(crate::cancel::RECORDS_PER_CHECK.is_multiple_of(BLOCK));
    let len = t.len();
    let mut start = 0;
    while start < len {
        if start > 0 && start.is_multiple_of(crate::cancel::RECORDS_PER_CHECK) {
            cancel.check()?;
        }
        let end = (start + BLOCK).min(len);
        let entry_state = state;
        let mut all_ok = true;
        for i in start..end {
            let r = t.record(i);
            all_ok &= record_ok(r, state, n);
            state = next(r, state);
        }
        if !all_ok {
            let mut s = entry_state;
            for i in start..end {
                let r = t.record(i);
                if !record_ok(r, s, n) {
                    return Err(CoreError::Trace {
                        index: i,
                        reason: reason(r, s, n),
                    });
                }
                s = next(r, s);
            }
        }
        start = end;
    }
    Ok(())
}

/// The error for a trace that a checked replay found invalid: the trace validated again, to
/// locate and explain its first invalid record. The one way every replay path explains one.
#[cold]
pub fn explain_invalid(t: &TraceRef<'_>, n_pmcs: usize) -> CoreError {
    match validate(t, n_pmcs) {
        Err(e) => e,
        Ok(()) => CoreError::Value("invalid trace".into()),
    }
}

/// `n_pmcs` is 1 to 6 (model.md section 2).
pub fn check_n_pmcs(n_pmcs: usize) -> Result<(), CoreError> {
    if (1..=MAX_PMCS).contains(&n_pmcs) {
        Ok(())
    } else {
        Err(CoreError::Value(format!(
            "n_pmcs must be 1..{MAX_PMCS}, got {n_pmcs}"
        )))
    }
}

/// The mode state after each valid record is known without a policy; used by the generator
/// and the shrinker to keep traces valid.
#[inline]
pub fn next_state(r: Record, state: u8) -> u8 {
    next(r, state)
}

/// Whether `r` is valid in `state` (for the generator and the shrinker).
#[inline]
pub fn is_valid(r: Record, state: u8, n_pmcs: usize) -> bool {
    record_ok(r, state, n_pmcs as u8)
}

/// Whether `r` is legal in mode `state` (the mode rules alone: rule 6 of
/// docs/semantics.md "Validation"); with [`fields_ok`], the same verdict as [`is_valid`].
#[inline(always)]
pub fn mode_ok(r: Record, state: u8) -> bool {
    LEGAL[(r.op & 15) as usize][(r.flag & 1) as usize][(state & 3) as usize]
}

/// Whether every record of `t` passes the rules on its own fields (rules 1 to 5 of
/// docs/semantics.md "Validation"). Written with comparisons only, no lookup by op, so that it
/// vectorises: a pass over a span costs a fraction of a nanosecond a record. Always inlined,
/// so that it is vectorised for AVX2 too in the replay loops built for it (`crate::replay::checked`): 9
/// fewer instructions a record on records in random order.
#[inline(always)]
pub fn fields_ok(t: &TraceRef<'_>, n_pmcs: usize) -> bool {
    let n = t.len();
    let (ops, pmcs, cpls) = (&t.op[..n], &t.pmc[..n], &t.cpl[..n]);
    let (flags, keys) = (&t.flag[..n], &t.key[..n]);
    let n_pmcs = n_pmcs as u8;
    let mut bad = false;
    for i in 0..n {
        let (o, f) = (ops[i], flags[i]);
        bad |= (o as usize >= op::COUNT)
            | (uses_pmc(o) & (pmcs[i] >= n_pmcs))
            | (uses_cpl(o) & (cpls[i] > CPL_MAX))
            | (uses_binary_flag(o) & (f > 1))
            | ((o == op::SET_FILTER) & (f > filter::DENY))
            | (uses_key(o) & (keys[i] >= KEY_LIMIT));
    }
    !bad
}

pub const STATE_RESET: u8 = S00;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_mode_rules_make_the_whole_verdict() {
        // Every field over its whole range (ops, PMCs, CPLs, flags and keys around each
        // limit), in every mode state: fields_ok and mode_ok together agree with is_valid.
        let keys = [0, 0xC0, KEY_LIMIT - 1, KEY_LIMIT, u32::MAX];
        for o in 0..=16u8 {
            for pmc in [0, 1, 5, 6, 7, 255] {
                for cpl in [0, 3, 4, 255] {
                    for flag in [0, 1, 2, 3, 255] {
                        for key in keys {
                            let r = Record {
                                op: o,
                                pmc,
                                cpl,
                                flag,
                                key,
                                value: 7,
                            };
                            for n_pmcs in [1, 6] {
                                let t = TraceBuf::from_records(&[r]);
                                let fields = fields_ok(&t.as_ref(), n_pmcs);
                                for state in [0, 1, 3] {
                                    assert_eq!(
                                        is_valid(r, state, n_pmcs),
                                        fields && mode_ok(r, state),
                                        "{r:?} in state {state}, n_pmcs {n_pmcs}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
