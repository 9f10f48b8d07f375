//! One vCPU's events become records (docs/ftrace.md, "Mapping"): the mode (L1 or L2) and
//! EFER.SVME are tracked from the events, so that every record emitted is valid (model.md
//! section 4); an event that would make an invalid record is skipped with its reason.

use super::fields::{Event, Kind};
use super::Options;
use crate::model::op;
use crate::trace::{Record, TraceBuf};

pub const MSR_EFER: u32 = 0xC000_0080;
pub const EFER_SVME: u64 = 1 << 12;
pub const MSR_PERF_GLOBAL_CTL: u32 = 0xC000_0301;
/// Legacy PerfEvtSel0..3 and PerfCtr0..3.
pub const MSR_K7_EVNTSEL0: u32 = 0xC001_0000;
pub const MSR_K7_PERFCTR0: u32 = 0xC001_0004;
/// PerfEvtSel*i* at `0xC0010200 + 2i`, PerfCtr*i* at `0xC0010201 + 2i`, i < 6.
pub const MSR_F15H_PERF_CTL0: u32 = 0xC001_0200;

/// A PMU MSR: selector or counter `i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PmuMsr {
    Selector(u8),
    Counter(u8),
}

/// Which PMU register `msr` is, if any.
pub fn pmu_msr(msr: u32) -> Option<PmuMsr> {
    match msr {
        MSR_K7_EVNTSEL0..=0xC001_0003 => Some(PmuMsr::Selector((msr - MSR_K7_EVNTSEL0) as u8)),
        MSR_K7_PERFCTR0..=0xC001_0007 => Some(PmuMsr::Counter((msr - MSR_K7_PERFCTR0) as u8)),
        MSR_F15H_PERF_CTL0..=0xC001_020B => {
            let off = msr - MSR_F15H_PERF_CTL0;
            let i = (off / 2) as u8;
            Some(if off & 1 == 0 {
                PmuMsr::Selector(i)
            } else {
                PmuMsr::Counter(i)
            })
        }
        _ => None,
    }
}

/// How a vCPU's trace starts (docs/ftrace.md, "Where a trace starts").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// From the reset state: svme = 0, L1 runs.
    Reset,
    /// L1 had EFER.SVME set before the capture: the trace starts with WRMSR_EFER(svme=1).
    Svme,
    /// L2 ran when the capture began: WRMSR_EFER(svme=1), SET_NESTED_STATE(guest_mode=1).
    Guest,
}

impl Start {
    pub fn name(self) -> &'static str {
        match self {
            Start::Reset => "reset",
            Start::Svme => "svme",
            Start::Guest => "guest",
        }
    }
}

/// Why an event maps to nothing (the `skipped` keys, after the event's name).
pub mod why {
    pub const FAULTED: &str = "the access faulted (#GP)";
    pub const EFER_IN_L2: &str = "EFER write in guest mode (L2's EFER, not L1's)";
    pub const NOT_MODELLED: &str = "an MSR the model does not have";
    pub const READ: &str = "a read of an MSR other than a counter";
    pub const COUNTER_READ: &str = "a counter read (reads=False)";
    pub const NO_ENTRY: &str = "no kvm_entry before it (the run's length is unknown)";
    pub const NO_TIME: &str = "no timestamp (the run's length is unknown)";
    pub const SHORT: &str = "a run too short for one event";
    pub const BACKWARDS: &str = "a timestamp before its kvm_entry";
    pub const VMX: &str = "an Intel (VMX) nested entry";
    pub const IN_L2: &str = "in guest mode (events lost?)";
    pub const IN_L1: &str = "in host mode (events lost?)";
    pub const NO_SVME: &str = "VMRUN with EFER.SVME = 0 (#UD)";
    pub const GUEST_FLAG: &str = "[guest] with EFER.SVME = 0 (events lost?)";
    pub const NO_VCPU: &str = "no vCPU (its task never ran one)";
    pub const L2_EXIT: &str = "an L2 exit that L0 handles (no mode change)";
}

/// One vCPU's records and what the import knows of its state.
#[derive(Debug)]
pub struct Vcpu {
    pub id: u32,
    pub buf: TraceBuf,
    pub start: Start,
    svme: bool,
    guest: bool,
    /// Whether the mode at the start of the capture is known (else it may still be inferred).
    mode_known: bool,
    /// Whether SVME at the start of the capture is known.
    svme_known: bool,
    /// The last kvm_entry not yet followed by a kvm_exit, and its timestamp.
    entry: Option<Option<u64>>,
    /// The VMRUN record not yet followed by a kvm_entry: a SVM_EXIT_ERR exit turns it into
    /// VMRUN_FAIL.
    vmrun_at: Option<usize>,
}

fn rec(op: u8) -> Record {
    Record {
        op,
        ..Record::default()
    }
}

impl Vcpu {
    pub fn new(id: u32, opts: &Options) -> Self {
        Vcpu {
            id,
            buf: TraceBuf::default(),
            start: Start::Reset,
            svme: false,
            guest: false,
            mode_known: !opts.infer_start,
            svme_known: !opts.infer_start,
            entry: None,
            vmrun_at: None,
        }
    }

    fn push(&mut self, r: Record) {
        self.buf.push(r);
    }

    /// The capture began with L1's EFER.SVME set.
    fn infer_svme(&mut self) {
        if !self.svme_known && !self.svme {
            self.svme = true;
            self.start = Start::Svme;
        }
        self.svme_known = true;
    }

    /// Evidence that L2 runs now: when nothing showed the mode yet, the capture began in L2.
    fn infer_guest(&mut self) {
        if !self.mode_known && !self.guest {
            self.infer_svme();
            self.guest = true;
            self.start = Start::Guest;
        }
        self.mode_known = true;
    }

    /// The records the inferred start needs, to put before the others.
    pub fn prologue(&self) -> Vec<Record> {
        let efer = Record {
            op: op::WRMSR_EFER,
            flag: 1,
            ..Record::default()
        };
        let nested = Record {
            op: op::SET_NESTED_STATE,
            flag: 1,
            ..Record::default()
        };
        match self.start {
            Start::Reset => vec![],
            Start::Svme => vec![efer],
            Start::Guest => vec![efer, nested],
        }
    }

    /// Map one event: `Ok(())` when it made records (or completed one), `Err(reason)` when
    /// it maps to nothing.
    pub fn event(&mut self, e: &Event, opts: &Options) -> Result<(), &'static str> {
        match e.kind {
            Kind::Entry { guest } => {
                self.entry = Some(e.ts);
                self.vmrun_at = None;
                // Kernels that print [guest] show mode changes that print no nested event:
                // KVM_SET_NESTED_STATE (svm_set_nested_state) and svm_leave_nested.
                match guest {
                    Some(true) if !self.guest && !self.mode_known => self.infer_guest(),
                    Some(true) if !self.guest => {
                        if !self.svme {
                            return Err(why::GUEST_FLAG);
                        }
                        self.push(Record {
                            op: op::SET_NESTED_STATE,
                            flag: 1,
                            ..Record::default()
                        });
                        self.guest = true;
                    }
                    Some(false) if self.guest => {
                        self.push(rec(op::FORCED_LEAVE));
                        self.guest = false;
                    }
                    Some(_) => self.mode_known = true,
                    None => {}
                }
                self.push(rec(op::VMENTRY));
                Ok(())
            }
            Kind::Exit => {
                let start = self.entry.take().ok_or(why::NO_ENTRY)?;
                let (start, end) = start.zip(e.ts).ok_or(why::NO_TIME)?;
                let ns = end.checked_sub(start).ok_or(why::BACKWARDS)?;
                let n = (ns as f64 * opts.rate / 1000.0).round();
                if n < 1.0 {
                    return Err(why::SHORT);
                }
                self.push(Record {
                    op: op::RUN,
                    cpl: opts.run_cpl,
                    key: opts.event,
                    value: if n >= u64::MAX as f64 {
                        u64::MAX
                    } else {
                        n as u64
                    },
                    ..Record::default()
                });
                Ok(())
            }
            Kind::Msr {
                write,
                msr,
                value,
                fault,
            } => self.msr(write, msr, value, fault, opts),
            Kind::VmRun { vmx } => {
                if vmx {
                    return Err(why::VMX);
                }
                if self.guest {
                    return Err(why::IN_L2);
                }
                self.mode_known = true;
                if !self.svme {
                    if self.svme_known {
                        return Err(why::NO_SVME);
                    }
                    self.infer_svme();
                }
                self.vmrun_at = Some(self.buf.len());
                self.push(Record {
                    op: op::VMRUN,
                    cpl: opts.vmrun_cpl,
                    ..Record::default()
                });
                self.guest = true;
                Ok(())
            }
            Kind::VmExitInject { invalid } => {
                if let (true, Some(at)) = (invalid, self.vmrun_at.take()) {
                    // The VMRUN failed after its consistency checks passed: enter_svm_guest_mode
                    // failed and nested_svm_vmrun exits with SVM_EXIT_ERR (svm/nested.c).
                    if let Some(o) = self.buf.op.get_mut(at) {
                        *o = op::VMRUN_FAIL;
                    }
                    if let Some(c) = self.buf.cpl.get_mut(at) {
                        *c = 0;
                    }
                    self.guest = false;
                    return Ok(());
                }
                if !self.guest {
                    if self.mode_known {
                        return Err(why::IN_L1);
                    }
                    self.infer_guest();
                }
                self.mode_known = true;
                self.vmrun_at = None;
                self.push(rec(op::VMEXIT));
                self.guest = false;
                Ok(())
            }
            Kind::NestedVmexit => {
                if !self.guest && !self.mode_known {
                    self.infer_guest();
                }
                Err(why::L2_EXIT)
            }
        }
    }

    fn msr(
        &mut self,
        write: bool,
        msr: u32,
        value: u64,
        fault: bool,
        opts: &Options,
    ) -> Result<(), &'static str> {
        let pmu = pmu_msr(msr);
        let known = pmu.is_some() || msr == MSR_EFER || msr == MSR_PERF_GLOBAL_CTL;
        if !known {
            return Err(if write { why::NOT_MODELLED } else { why::READ });
        }
        if fault {
            return Err(why::FAULTED);
        }
        if !write {
            return match pmu {
                Some(PmuMsr::Counter(i)) if opts.reads => {
                    self.push(Record {
                        op: op::READ,
                        pmc: i,
                        ..Record::default()
                    });
                    Ok(())
                }
                Some(PmuMsr::Counter(_)) => Err(why::COUNTER_READ),
                _ => Err(why::READ),
            };
        }
        let r = match pmu {
            Some(PmuMsr::Selector(i)) => Record {
                op: op::WRMSR_EVTSEL,
                pmc: i,
                value,
                ..Record::default()
            },
            Some(PmuMsr::Counter(i)) => Record {
                op: op::WRMSR_CTR,
                pmc: i,
                value,
                ..Record::default()
            },
            None if msr == MSR_PERF_GLOBAL_CTL => Record {
                op: op::WRMSR_GLOBAL_CTRL,
                value,
                ..Record::default()
            },
            None => {
                if self.guest {
                    return Err(why::EFER_IN_L2);
                }
                // An EFER write is L1's only in host mode: with the mode unknown, the
                // import takes it as L1's, and the mode as known from here.
                self.mode_known = true;
                self.svme_known = true;
                self.svme = value & EFER_SVME != 0;
                Record {
                    op: op::WRMSR_EFER,
                    flag: u8::from(self.svme),
                    ..Record::default()
                }
            }
        };
        self.push(r);
        Ok(())
    }
}
