//! The architectural reference `arch` (model.md section 5): what a bare-metal AMD CPU would
//! count if L1 ran on it directly. Every retired instruction and RUN event counts where the
//! selector's EN, the global control, the key and CPL, the filter and the H/G mode rule (APM
//! Table 13-4) all allow it, at the moment of attribution that the reference knobs choose.

use crate::model::state::Pmu;
use crate::model::{op, ArchPolicy, Model, GUEST_ONLY, HOST_ONLY, MAX_PMCS, RESERVED_BITS};
use crate::replay::counters::LANES;
use crate::trace::Record;

/// The reference's state: the shared state alone.
#[derive(Clone, Debug)]
pub struct Arch {
    pub(crate) p: ArchPolicy,
    pub(crate) pmu: Pmu,
    pub(crate) n_pmcs: usize,
}

/// With H/G honoured, every reserved bit but bits 40 and 41.
const RESERVED: u64 = RESERVED_BITS & !(HOST_ONLY | GUEST_ONLY);

impl Arch {
    pub fn new(p: ArchPolicy, n_pmcs: usize) -> Self {
        Arch {
            p,
            pmu: Pmu::new(n_pmcs),
            n_pmcs,
        }
    }

    /// PMCs allowed to count in mode (svme, guest): EN and the H/G rule of APM Table 13-4.
    #[inline(always)]
    pub(crate) fn allowed(&self, svme: bool, guest: bool) -> u8 {
        self.pmu.en & self.pmu.counts_in_mode(svme, guest, false)
    }

    /// An instruction retires at `cpl`, attributed to mode (svme, guest).
    #[inline(always)]
    fn retire_in(&mut self, svme: bool, guest: bool, cpl: u8, branch: bool) -> u8 {
        let allowed = self.allowed(svme, guest);
        self.pmu.retire(allowed, cpl, branch)
    }

    /// An instruction retires at `cpl` in the current mode.
    #[inline(always)]
    fn retire(&mut self, cpl: u8, branch: bool) -> u8 {
        self.retire_in(self.pmu.svme, self.pmu.guest, cpl, branch)
    }

    /// Apply a state change and retire the instruction that made it at CPL 0, after the
    /// change (`after`) or before it.
    #[inline(always)]
    fn retire_around(&mut self, after: bool, change: impl FnOnce(&mut Pmu)) -> u8 {
        if after {
            change(&mut self.pmu);
            self.retire(0, false)
        } else {
            let m = self.retire(0, false);
            change(&mut self.pmu);
            m
        }
    }

    /// RUN: `n` events count where EN, the mode rule, the global control, the filter, the
    /// key and the CPL allow.
    #[inline(always)]
    fn run(&mut self, r: Record) -> u8 {
        let allowed = self.allowed(self.pmu.svme, self.pmu.guest) & self.pmu.filter_ok;
        self.pmu.count_events(allowed, r.key, r.cpl, r.value)
    }

    /// WRMSR to a selector, attributed to the old selector or the new one (`enabling_wrmsr`).
    #[inline(always)]
    fn write_eventsel(&mut self, pmc: u8, value: u64) -> u8 {
        let i = pmc as usize & (LANES - 1);
        let v = value & !RESERVED;
        // Written out rather than through `retire_around`: the closure was not inlined.
        if self.p.enabling_wrmsr_new {
            self.pmu.set_eventsel(i, v);
            self.retire(0, false)
        } else {
            let m = self.retire(0, false);
            self.pmu.set_eventsel(i, v);
            m
        }
    }

    /// WRMSR to a counter, then it retires.
    #[inline(always)]
    fn write_ctr(&mut self, pmc: u8, value: u64) -> u8 {
        self.pmu.write_ctr(pmc as usize & (LANES - 1), value);
        self.retire(0, false)
    }

    /// WRMSR to the global control, then it retires.
    #[inline(always)]
    fn write_global_ctrl(&mut self, value: u64) -> u8 {
        self.pmu.write_global_ctrl(value);
        self.retire(0, false)
    }

    /// WRMSR(EFER), attributed to the state after the write or before it (`efer_retire`).
    #[inline(always)]
    fn write_efer(&mut self, svme: bool) -> u8 {
        self.retire_around(self.p.efer_retire_new, |pmu| pmu.svme = svme)
    }

    /// VMRUN, attributed to the guest at the CPL L2 resumes at, or to the host at CPL 0
    /// (`vmrun_retire`).
    #[inline(always)]
    fn vmrun(&mut self, cpl: u8) -> u8 {
        if self.p.vmrun_retire_guest {
            self.pmu.guest = true;
            self.retire(cpl, false)
        } else {
            let m = self.retire(0, false);
            self.pmu.guest = true;
            m
        }
    }

    /// A failed VMRUN: attributed to the host, or the guest (`failed_vmrun_retire`).
    #[inline(always)]
    fn vmrun_fail(&mut self) -> u8 {
        let guest = self.p.failed_vmrun_retire_guest;
        self.retire_in(self.pmu.svme, guest, 0, false)
    }

    /// A change of guest mode that retires nothing.
    #[inline(always)]
    fn set_guest_mode(&mut self, guest: bool) -> u8 {
        self.pmu.guest = guest;
        0
    }

    /// RESET: back to the reset state, but for the filter, which is the VM's.
    #[inline(always)]
    fn reset(&mut self) -> u8 {
        let (action, key) = self.pmu.filter();
        *self = Arch::new(self.p, self.n_pmcs);
        self.pmu.set_filter(action, key);
        0
    }
}

impl Model for Arch {
    /// One record, by its op (model.md section 5).
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
            op::VMRUN_FAIL => self.vmrun_fail(),
            op::VMEXIT | op::FORCED_LEAVE => self.set_guest_mode(false),
            op::SET_NESTED_STATE => self.set_guest_mode(r.flag != 0),
            op::SET_FILTER => {
                self.pmu.set_filter(r.flag, r.key);
                0
            }
            op::VMENTRY => 0,
            op::READ => self.pmu.read_into(r.pmc, reads),
            _ => self.reset(),
        }
    }

    fn pmu(&self) -> &Pmu {
        &self.pmu
    }

    /// What an ideal hypervisor would program: EN where the selector, the mode and the filter
    /// allow counting now.
    fn hw_enabled(&self) -> u8 {
        self.allowed(self.pmu.svme, self.pmu.guest) & self.pmu.filter_ok
    }

    fn eventsel_hw(&self) -> [u64; MAX_PMCS] {
        let en = self.hw_enabled();
        let mut out = [0; MAX_PMCS];
        for (i, o) in out.iter_mut().enumerate().take(self.n_pmcs) {
            *o = Pmu::programmed(self.pmu.eventsel[i], en & (1 << i) != 0, true);
        }
        out
    }
}
