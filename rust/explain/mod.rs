//! Every record explained: what each model counted on it and, for each PMC it did not count
//! on, the rule that ruled it out (`svmpmu.explain`).
//!
//! The models keep the factors of their last counting decision when asked to
//! ([`crate::model::state::Decision`]): EN, what the model allowed (`emul_ok`, `eventsel_hw`,
//! or EN and the mode rule), the global control, the filter, the CPL match and the event
//! match, as they were at the moment of attribution that the knobs choose. A PMC's reason is
//! the first factor that is clear, and for KVM's own bookkeeping, why it is: the H/G mode
//! rule, a re-evaluation deferred to the next VM-entry, or a bit left stale by a flow that
//! does not re-evaluate. Nothing here decides a count: the counts are the models' own `step`.

#[cfg(feature = "python")]
pub mod py;
#[cfg(test)]
mod tests;

use crate::model::state::{self, Decision};
use crate::model::{op, with_model, Arch, Kvm, Model, Pmu, Policy, MAX_PMCS};
use crate::trace::{Record, TraceRef};

/// Why a PMC was or was not counted on a record (the `reason` codes of `svmpmu.explain`).
pub mod reason {
    /// The record made no counting decision (it retires nothing).
    pub const NONE: u8 = 0;
    pub const COUNTED: u8 = 1;
    /// KVM counted an emulated instruction although the mode rule says no: `emul_ok` ignores
    /// the mode (`emul_mode_aware = false`).
    pub const COUNTED_MODE_BLIND: u8 = 2;
    /// KVM counted although the mode rule says no: its bit was not re-evaluated since.
    pub const COUNTED_STALE: u8 = 3;
    /// KVM's hardware counted although the filter denies the event: `eventsel_hw` was
    /// re-evaluated without the filter (`filter_on_sync = false`).
    pub const COUNTED_FILTER_BYPASSED: u8 = 4;
    pub const NOT_ENABLED: u8 = 5;
    pub const OTHER_EVENT: u8 = 6;
    pub const CPL: u8 = 7;
    pub const GLOBAL_CTRL: u8 = 8;
    pub const FILTER: u8 = 9;
    /// The H/G rule of the mode (APM Table 13-4, or `svme0`).
    pub const MODE_RULE: u8 = 10;
    /// KVM: a re-evaluation now would count; the bit was not re-evaluated since.
    pub const STALE: u8 = 11;
    /// KVM: the re-evaluation is deferred to the next VM-entry (KVM_REQ_PMU).
    pub const PENDING: u8 = 12;
    /// Every factor allowed it, but a RUN of 0 events counts nothing.
    pub const NO_EVENTS: u8 = 13;
}

/// No record: `since` of a PMC whose bookkeeping is up to date.
pub const NEVER: u32 = u32::MAX;

/// What [`explain`] gives: per record, and per model (0 the policy, 1 the reference).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Explained {
    pub n_pmcs: usize,
    /// The mode before and after each record (bit 0 SVME, bit 1 guest mode).
    pub mode_before: Vec<u8>,
    pub mode_after: Vec<u8>,
    /// `[record][model]`: the PMCs counted on.
    pub counted: Vec<[u8; 2]>,
    /// `[record][model][pmc]`: a [`reason`] code.
    pub reasons: Vec<[[u8; MAX_PMCS]; 2]>,
    /// `[record][model][pmc]`: the record since which KVM's bit was out of date ([`NEVER`]).
    pub since: Vec<[[u32; MAX_PMCS]; 2]>,
    /// `[record][model][pmc]`: `eventsel_hw` after the record.
    pub eventsel_hw: Vec<[[u64; MAX_PMCS]; 2]>,
    /// Each model's READ values, in order.
    pub reads: [Vec<u64>; 2],
}

/// What a model's bookkeeping tells about a decision, beyond the shared factors.
trait Bookkeeping: Model {
    fn pmu_mut(&mut self) -> &mut Pmu;
    fn keep_decisions(&mut self) {
        self.pmu_mut().decision.keep = true;
    }
    /// The last decision, which is then marked as read.
    fn decision(&mut self) -> Decision {
        let d = self.pmu().decision;
        self.pmu_mut().decision.made = false;
        d
    }
    /// The PMCs whose own bits (`emul_ok`, `eventsel_hw` EN) differ from what a
    /// re-evaluation now would give: out of date (whether or not one is pending).
    fn out_of_date(&self) -> u8;
    /// Why PMC bit `b` of decision `d` was not allowed although EN, the event, the CPL, the
    /// global control and the filter were; or, when it was counted, whether the count rests
    /// on out-of-date bookkeeping.
    fn own_reason(&self, d: &Decision, b: u8, counted: bool, run: bool) -> u8;
}

/// The PMCs that count in the decision's mode, under `svme0_ignore`.
fn counts_in_mode(d: &Decision, all: u8, svme0_ignore: bool) -> u8 {
    state::counts_in_mode(
        all,
        d.host_only,
        d.guest_only,
        d.svme,
        d.guest,
        svme0_ignore,
    )
}

impl Bookkeeping for Kvm {
    fn pmu_mut(&mut self) -> &mut Pmu {
        &mut self.pmu
    }
    fn out_of_date(&self) -> u8 {
        // What `Kvm::reevaluate` would set now, with the filter. (Written out rather than
        // shared with it: routing the hot path through a shared helper cost 0.4 to 1.1 M more
        // instructions per 1 M replayed records, callgrind.)
        let cim = self
            .pmu
            .counts_in_mode(self.pmu.svme, self.pmu.guest, self.p.svme0_ignore);
        let any = if self.p.emul_mode_aware { 0 } else { 0xFF };
        let emul = self.pmu.en & (cim | any);
        let hw = self.pmu.en & cim & self.pmu.filter_ok;
        ((self.emul_ok ^ emul) | (self.hw_en ^ hw)) & self.pmu.all
    }
    fn own_reason(&self, d: &Decision, b: u8, counted: bool, run: bool) -> u8 {
        let mode_ok = counts_in_mode(d, self.pmu.all, self.p.svme0_ignore) & b != 0;
        match (counted, mode_ok) {
            (true, false) if !run && !self.p.emul_mode_aware => reason::COUNTED_MODE_BLIND,
            (true, false) => reason::COUNTED_STALE,
            (true, true) if run && d.filter & b == 0 => reason::COUNTED_FILTER_BYPASSED,
            (true, true) => reason::COUNTED,
            (false, false) => reason::MODE_RULE,
            (false, true) if self.pending & b != 0 => reason::PENDING,
            (false, true) => reason::STALE,
        }
    }
}

impl Bookkeeping for Arch {
    fn pmu_mut(&mut self) -> &mut Pmu {
        &mut self.pmu
    }
    fn out_of_date(&self) -> u8 {
        0
    }
    fn own_reason(&self, _d: &Decision, _b: u8, counted: bool, _run: bool) -> u8 {
        // EN is set, and `allowed` is EN and the mode rule (and the filter, checked before).
        if counted {
            reason::COUNTED
        } else {
            reason::MODE_RULE
        }
    }
}

/// The reason of PMC `i` in decision `d` of a record that counted `counted` on model `m`.
fn reason_of<M: Bookkeeping>(m: &M, d: &Decision, i: usize, counted: u8, r: &Record) -> u8 {
    if !d.made {
        return reason::NONE;
    }
    let b = 1u8 << i;
    let run = r.op == op::RUN;
    if counted & b != 0 {
        return m.own_reason(d, b, true, run);
    }
    // KVM folds the filter into `eventsel_hw` for a RUN, and checks it for an emulated
    // instruction; `arch` applies it to both: it is a factor either way.
    let factors = [
        (d.en, reason::NOT_ENABLED),
        (d.event, reason::OTHER_EVENT),
        (d.cpl, reason::CPL),
        (d.global, reason::GLOBAL_CTRL),
        (d.filter, reason::FILTER),
    ];
    if let Some(&(_, why)) = factors.iter().find(|(mask, _)| mask & b == 0) {
        return why;
    }
    if d.allowed & b == 0 {
        return m.own_reason(d, b, false, run);
    }
    reason::NO_EVENTS
}

fn run_pair<P: Bookkeeping, Q: Bookkeeping>(
    t: &TraceRef<'_>,
    mut p: P,
    mut q: Q,
    n_pmcs: usize,
) -> Explained {
    let n = t.len();
    let mut out = Explained {
        n_pmcs,
        mode_before: Vec::with_capacity(n),
        mode_after: Vec::with_capacity(n),
        counted: Vec::with_capacity(n),
        reasons: Vec::with_capacity(n),
        since: Vec::with_capacity(n),
        eventsel_hw: Vec::with_capacity(n),
        reads: [Vec::new(), Vec::new()],
    };
    let mut since = [[NEVER; MAX_PMCS]; 2];
    let [reads_p, reads_q] = &mut out.reads;
    for index in 0..n {
        let r = t.record(index);
        // (Again before each record: a RESET starts the state afresh.)
        p.keep_decisions();
        q.keep_decisions();
        out.mode_before.push(p.mode_state());
        let counted = [p.step(r, reads_p), q.step(r, reads_q)];
        out.mode_after.push(p.mode_state());
        let (dp, dq) = (p.decision(), q.decision());
        let mut reasons = [[reason::NONE; MAX_PMCS]; 2];
        let [rp, rq] = &mut reasons;
        for (i, (a, b)) in rp.iter_mut().zip(rq.iter_mut()).enumerate().take(n_pmcs) {
            *a = reason_of(&p, &dp, i, counted[0], &r);
            *b = reason_of(&q, &dq, i, counted[1], &r);
        }
        // Out of date before this record: what a decision on it rests on.
        let before = since;
        for (model, dirty) in [p.out_of_date(), q.out_of_date()].into_iter().enumerate() {
            for (i, s) in since[model].iter_mut().enumerate().take(n_pmcs) {
                *s = match (dirty >> i & 1 != 0, *s) {
                    (false, _) => NEVER,
                    (true, NEVER) => index as u32,
                    (true, s) => s,
                };
            }
        }
        // A reason that rests on out-of-date bookkeeping points at the record since which it
        // was (this one, when the record itself left it so before deciding); the others have
        // no `since`.
        let mut record_since = [[NEVER; MAX_PMCS]; 2];
        for ((out, why), was) in record_since.iter_mut().zip(&reasons).zip(&before) {
            for ((s, &code), &b) in out.iter_mut().zip(why).zip(was).take(n_pmcs) {
                if matches!(
                    code,
                    reason::COUNTED_STALE | reason::STALE | reason::PENDING
                ) {
                    *s = b.min(index as u32);
                }
            }
        }
        out.counted.push(counted);
        out.reasons.push(reasons);
        out.since.push(record_since);
        out.eventsel_hw.push([p.eventsel_hw(), q.eventsel_hw()]);
    }
    out
}

/// Explain every record of the (validated) trace `t` under `policy` and `reference`.
pub fn explain(t: &TraceRef<'_>, policy: &Policy, reference: &Policy, n_pmcs: usize) -> Explained {
    with_model!(policy, reference, n_pmcs, |p, q| run_pair(t, p, q, n_pmcs))
}
