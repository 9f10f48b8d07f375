//! The KVM model (model.md section 6): native RUN events count under `eventsel_hw`, emulated
//! instructions under the emulation bitmap `emul_ok`, and both are brought up to date only at
//! the moments a policy's knobs say: synchronously at a transition, at the next VM-entry
//! (`pending`, KVM_REQ_PMU), or never. Written after KVM's own `pmu.c`: `reevaluate` is
//! `reprogram_counter`, `vm_entry` is the servicing of KVM_REQ_PMU, `retire` is
//! `kvm_pmu_instruction_retired`.

use crate::model::state::Pmu;
use crate::model::{op, KvmPolicy, Model, Timing, GUEST_ONLY, HOST_ONLY, MAX_PMCS, RESERVED_BITS};
use crate::replay::counters::LANES;
use crate::trace::Record;

/// The KVM model's state: the shared state and KVM's per-PMC bookkeeping.
#[derive(Clone, Debug)]
pub struct Kvm {
    pub(crate) p: KvmPolicy,
    pub(crate) pmu: Pmu,
    pub(crate) n_pmcs: usize,
    /// The selector bits a guest write drops.
    reserved: u64,
    /// PMCs whose programmed `eventsel_hw` has EN set.
    pub(crate) hw_en: u8,
    /// The emulation bitmap: may KVM increment this PMC for an emulated instruction now.
    pub(crate) emul_ok: u8,
    /// PMCs awaiting re-evaluation at the next VM-entry (KVM_REQ_PMU).
    pub(crate) pending: u8,
    /// Per flow, the (sync, deferred) masks its timing knob selects: all PMCs or none.
    flows: [(u8, u8); 5],
    /// 0xFF when `emul_ok` ignores the mode (`emul_mode_aware = false`), else 0.
    emul_any_mode: u8,
}

/// The flows a transition belongs to (model.md section 6), indexing `Kvm::flows`.
#[derive(Clone, Copy, Debug)]
enum Flow {
    Efer,
    Vmrun,
    Vmexit,
    ForcedLeave,
    SetNestedState,
}

/// The (sync, deferred) masks of a flow's timing.
fn flow_masks(t: Timing) -> (u8, u8) {
    match t {
        Timing::Sync => (0xFF, 0),
        Timing::Deferred => (0, 0xFF),
        Timing::None => (0, 0),
    }
}

impl Kvm {
    pub fn new(p: KvmPolicy, n_pmcs: usize) -> Self {
        let reserved = if p.hg_honored {
            RESERVED_BITS & !(HOST_ONLY | GUEST_ONLY)
        } else {
            RESERVED_BITS
        };
        Kvm {
            p,
            pmu: Pmu::new(n_pmcs),
            n_pmcs,
            reserved,
            hw_en: 0,
            emul_ok: 0,
            pending: 0,
            emul_any_mode: if p.emul_mode_aware { 0 } else { 0xFF },
            flows: [
                p.efer,
                p.vmrun,
                p.vmexit,
                p.forced_leave,
                p.set_nested_state,
            ]
            .map(flow_masks),
        }
    }

    /// The PMCs that count in the current mode (`svme0` applies; with H/G reserved the
    /// selectors never hold H/G bits, so every PMC counts).
    #[inline(always)]
    fn counts_in_mode(&self) -> u8 {
        self.pmu
            .counts_in_mode(self.pmu.svme, self.pmu.guest, self.p.svme0_ignore)
    }

    /// Re-evaluate the PMCs in `set`: `eventsel_hw` EN and `emul_ok` (model.md section 6).
    #[inline(always)]
    fn reevaluate(&mut self, set: u8, with_filter: bool) {
        let cim = self.counts_in_mode();
        let f = self.pmu.filter_ok | !(with_filter as u8).wrapping_neg();
        let en = self.pmu.en;
        self.hw_en = (self.hw_en & !set) | (set & en & cim & f);
        let mode = cim | self.emul_any_mode;
        self.emul_ok = (self.emul_ok & !set) | (set & en & mode);
    }

    /// A VM-entry: every pending PMC is re-evaluated, with the filter.
    #[inline(always)]
    pub(crate) fn vm_entry(&mut self) {
        // Re-evaluating an empty set changes nothing: no branch needed.
        self.reevaluate(self.pending, true);
        self.pending = 0;
    }

    /// A change of (svme, guest_mode), or none (`changed` false), in `flow`: the PMCs with an
    /// H or G bit are re-evaluated now, marked pending, or left stale, as its timing says.
    #[inline(always)]
    fn transition(&mut self, flow: Flow, changed: bool) {
        let hg = self.pmu.has_hg() & (changed as u8).wrapping_neg();
        let (sync, deferred) = self.flows[flow as usize];
        self.reevaluate(hg & sync, self.p.filter_on_sync);
        self.pending |= hg & deferred;
    }

    /// An emulated instruction retires at `cpl`: counted where `emul_ok` allows.
    #[inline(always)]
    fn retire(&mut self, cpl: u8, branch: bool) -> u8 {
        self.pmu.retire(self.emul_ok, cpl, branch)
    }

    #[inline(always)]
    fn set_guest_mode(&mut self, guest: bool, flow: Flow) {
        let changed = self.pmu.guest != guest;
        self.pmu.guest = guest;
        self.transition(flow, changed);
    }

    /// RUN: a VM-entry, then hardware counts `n` events under `eventsel_hw` (the filter is
    /// folded into its EN).
    #[inline(always)]
    fn run(&mut self, r: Record) -> u8 {
        self.vm_entry();
        self.pmu.count_events(self.hw_en, r.key, r.cpl, r.value)
    }

    /// WRMSR to a selector (`amd_pmu_set_msr`): on a change, the new value is stored,
    /// `eventsel_hw` is set from it at once with EN as written (before any mode or filter
    /// check), the emulation bitmap is recomputed at once, and the PMC is marked pending, so
    /// that the next VM-entry clears EN where it must not count; then the WRMSR retires.
    #[inline(always)]
    fn write_eventsel(&mut self, pmc: u8, value: u64) -> u8 {
        let i = pmc as usize & (LANES - 1);
        let v = value & !self.reserved;
        // KVM acts only on a change; written without branches (a same-value write then
        // recomputes what it already holds).
        let b = (1u8 << i) & ((v != self.pmu.eventsel[i]) as u8).wrapping_neg();
        self.pmu.set_eventsel(i, v);
        self.hw_en = (self.hw_en & !b) | (b & self.pmu.en);
        let mode = self.counts_in_mode() | self.emul_any_mode;
        self.emul_ok = (self.emul_ok & !b) | (b & self.pmu.en & mode);
        self.pending |= b;
        self.retire(0, false)
    }

    /// WRMSR to a counter, then it retires (the written counter counts its own WRMSR).
    #[inline(always)]
    fn write_ctr(&mut self, pmc: u8, value: u64) -> u8 {
        self.pmu.write_ctr(pmc as usize & (LANES - 1), value);
        self.retire(0, false)
    }

    /// WRMSR to the global control: the PMCs whose bit changed are reprogrammed at the next
    /// VM-entry (`reprogram_counters(pmu, diff)`).
    #[inline(always)]
    fn write_global_ctrl(&mut self, value: u64) -> u8 {
        self.pending |= self.pmu.write_global_ctrl(value);
        self.retire(0, false)
    }

    /// WRMSR(EFER): the `efer` flow, then it retires.
    #[inline(always)]
    fn write_efer(&mut self, svme: bool) -> u8 {
        let changed = self.pmu.svme != svme;
        self.pmu.svme = svme;
        self.transition(Flow::Efer, changed);
        self.retire(0, false)
    }

    /// VMRUN: retired at CPL 0 before entering guest mode, or after it at the CPL L2 resumes
    /// at (`cpl`: KVM has switched to vmcb02 by then), as `vmrun_order` says.
    #[inline(always)]
    fn vmrun(&mut self, cpl: u8) -> u8 {
        if self.p.vmrun_after_entry {
            self.set_guest_mode(true, Flow::Vmrun);
            self.retire(cpl, false)
        } else {
            let m = self.retire(0, false);
            self.set_guest_mode(true, Flow::Vmrun);
            m
        }
    }

    /// SET_FILTER: every PMC is reprogrammed at the next VM-entry.
    #[inline(always)]
    fn set_filter(&mut self, action: u8, key: u32) -> u8 {
        self.pmu.set_filter(action, key);
        self.pending = self.pmu.all;
        0
    }

    /// RESET: back to the reset state, but for the filter, which is the VM's.
    #[inline(always)]
    fn reset(&mut self) -> u8 {
        let (action, key) = self.pmu.filter();
        *self = Kvm::new(self.p, self.n_pmcs);
        self.pmu.set_filter(action, key);
        0
    }
}

impl Model for Kvm {
    /// One record, by its op (model.md section 6).
    #[inline(always)]
    fn step(&mut self, r: Record, reads: &mut Vec<u64>) -> u8 {
        match r.op {
            op::RUN => self.run(r),
            op::EMULATE => self.retire(r.cpl, r.flag != 0),
            op::WRMSR_EVTSEL => self.write_eventsel(r.pmc, r.value),
            op::WRMSR_CTR => self.write_ctr(r.pmc, r.value),
            op::WRMSR_GLOBAL_CTRL => self.write_global_ctrl(r.value),
            op::WRMSR_EFER => self.write_efer(r.flag != 0),
            op::VMRUN => self.vmrun(r.cpl),
            op::VMRUN_FAIL => self.retire(0, false),
            op::VMEXIT => self.leave(Flow::Vmexit),
            op::FORCED_LEAVE => self.leave(Flow::ForcedLeave),
            op::SET_NESTED_STATE => self.set_nested_state(r.flag != 0),
            op::SET_FILTER => self.set_filter(r.flag, r.key),
            op::VMENTRY => {
                self.vm_entry();
                0
            }
            op::READ => self.pmu.read_into(r.pmc, reads),
            _ => self.reset(),
        }
    }

    fn pmu(&self) -> &Pmu {
        &self.pmu
    }

    fn hw_enabled(&self) -> u8 {
        self.hw_en
    }

    fn eventsel_hw(&self) -> [u64; MAX_PMCS] {
        let mut out = [0; MAX_PMCS];
        for (i, o) in out.iter_mut().enumerate().take(self.n_pmcs) {
            let en = self.hw_en & (1 << i) != 0;
            *o = Pmu::programmed(self.pmu.eventsel[i], en, self.p.hg_honored);
        }
        out
    }
}

impl Kvm {
    /// VMEXIT or a forced leave: back to host mode in `flow`.
    #[inline(always)]
    fn leave(&mut self, flow: Flow) -> u8 {
        self.set_guest_mode(false, flow);
        0
    }

    /// SET_NESTED_STATE: userspace enters guest mode through the VMRUN preparation (the
    /// `set_nested_state` flow), or leaves it through svm_leave_nested (the `forced_leave`
    /// flow).
    #[inline(always)]
    fn set_nested_state(&mut self, guest: bool) -> u8 {
        let flow = if guest {
            Flow::SetNestedState
        } else {
            Flow::ForcedLeave
        };
        self.set_guest_mode(guest, flow);
        0
    }
}
