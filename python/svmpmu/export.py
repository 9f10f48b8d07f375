"""Export a trace: as a KVM selftest (C), as TraceBuilder code (Python), or as text.

:func:`to_selftest` writes a selftest in the style of the kernel's
``tools/testing/selftests/kvm/x86/svm_pmu_host_guest_test.c`` that replays the trace on an AMD
host (L1 is the selftest's guest, L2 a nested guest it enters with VMRUN) and checks every READ
with ``GUEST_ASSERT_EQ`` against the count of a chosen model (``arch`` by default): a reviewer
runs it to see which model the CPU and the kernel agree with. Every instruction the guest
retires while the trace runs is written out in assembly, so the counts are exact; the
instructions the test adds of its own (the MOVs that load a WRMSR's operands, the RDMSR of a
READ, ...) are part of the prediction: :func:`selftest_trace` is the trace the test really
executes, and the asserted values are the model's READs of that trace. docs/selftest-export.md
has the mapping of every op, the instruction counts and what is refused.

:func:`to_builder_code` writes Python that rebuilds the trace with
:class:`~svmpmu.TraceBuilder`; the text format is :meth:`Trace.to_text` (docs/text-format.md).
:func:`write_export` writes any of the three to a file, atomically.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from ._api import simulate, validate
from ._core import __version__
from .files import atomic_write
from .model import (
    BRANCHES_RETIRED,
    COUNTER_MASK,
    EN,
    GUEST_ONLY,
    HOST_ONLY,
    INSTRUCTIONS_RETIRED,
    INT,
    OS,
    RESERVED_BITS,
    USR,
    FilterAction,
    Op,
    selector_key,
)
from .policy import PRESETS, Policy, PolicyLike, resolve_policy
from .trace import Trace

__all__ = [
    "ExportFormat",
    "ExportError",
    "LOOP_MAX",
    "STEP_PORT",
    "selftest_trace",
    "to_builder_code",
    "to_selftest",
    "write_export",
]

ExportFormat = Literal["selftest", "python", "text"]
"""What :func:`write_export` writes: a KVM selftest (C), TraceBuilder code, or a text trace."""

LOOP_MAX = 1 << 32
"""The largest RUN a selftest replays: ``n`` instructions take one MOV and ``n - 1`` LOOPs,
whose count must fit ECX; 2^32 instructions run for a few seconds."""

STEP_PORT = 0x1100
"""The I/O port on which the exported selftest's guest asks the host for a userspace step
(a SET_FILTER): an OUT that KVM hands to userspace (the ucall port is 0x1000)."""

_EDGE = 1 << 18
_INV = 1 << 23
_CMASK = 0xFF << 24
_UNPREDICTABLE_BITS = _EDGE | _INV | _CMASK
"""Selector bits with which hardware counts something else than each retired instruction."""

_SELECTOR_FIELDS = 0xFF | 0xFF00 | 0xF << 32
"""Event select (bits 7:0 and 35:32) and unit mask (15:8) of a selector."""


class ExportError(ValueError):
    """A trace that cannot be exported as a selftest: which record, its op, and why.

    Nothing is written when it is raised.

    Attributes:
        index: the index of the record that cannot be exported (None for the trace as a whole).
        op: the name of its op (None for the trace as a whole).
        reason: why, in words.
    """

    def __init__(self, index: int | None, op: str | None, reason: str) -> None:
        """The refusal of record ``index`` (op ``op``), for ``reason``."""
        self.index = index
        self.op = op
        self.reason = reason
        where = "the trace" if index is None else f"record {index} ({op})"
        super().__init__(f"cannot export {where} as a KVM selftest: {reason}")

    def __reduce__(self) -> tuple[type[ExportError], tuple[int | None, str | None, str]]:
        """Keep the three fields through pickling (multiprocessing)."""
        return (type(self), (self.index, self.op, self.reason))


# --- the executed trace and the C body, built side by side ---------------------------------

_Record = tuple[int, int, int, int, int, int]
"""A record as ``(op, pmc, cpl, flag, key, value)``."""


def _run(n: int, cpl: int = 0) -> _Record:
    return (int(Op.RUN), 0, cpl, 0, INSTRUCTIONS_RETIRED, n)


_VMENTRY: _Record = (int(Op.VMENTRY), 0, 0, 0, 0, 0)


@dataclass
class _Replay:
    """Walks a trace once: the asm body of the selftest, its checks, and the executed trace."""

    n_pmcs: int
    asm: list[str] = field(default_factory=list)
    executed: list[_Record] = field(default_factory=list)
    reads: list[tuple[int, int]] = field(default_factory=list)
    """(record index, PMC) of each READ, in order."""
    exits: list[tuple[int, str, str]] = field(default_factory=list)
    """(record index, expected exit code in C, why) of each VMRUN and VMRUN_FAIL."""
    steps: list[tuple[int, int, int]] = field(default_factory=list)
    """(record index, filter action, event key) of each userspace step."""
    max_pmc: int = -1
    emulates: bool = False
    global_ctrl: bool = False
    user_l2: bool = False
    guest_mode: bool = False
    l2_cpl: int = 0
    started: bool = False
    selectors: list[int] = field(default_factory=list)
    unknown: list[bool] = field(default_factory=list)
    """Per PMC: whether its counter may hold counts of something else than instructions."""

    def __post_init__(self) -> None:
        """All selectors zero, as at reset."""
        self.selectors = [0] * self.n_pmcs
        self.unknown = [False] * self.n_pmcs

    # -- helpers --

    def glue(self, n: int) -> None:
        """``n`` instructions of the test's own, retired natively at CPL 0 in this context."""
        if n:
            self.executed.append(_run(n))

    def emulated(self, record: _Record) -> None:
        """An instruction KVM emulates (or the trace's own record), then the VM-entry after it."""
        self.executed.append(record)
        self.executed.append(_VMENTRY)

    def line(self, *texts: str) -> None:
        """Lines of the asm body, without their indentation."""
        self.asm.extend(texts)

    def where(self) -> str:
        if not self.guest_mode:
            return "L1"
        return f"L2, CPL {self.l2_cpl}"

    def cpl_substitution(self, index: int, op: str, cpl: int, keys: Iterable[int]) -> str:
        """The note for running at CPL 0 what the trace has at ``cpl``, or an ExportError
        if a PMC would count it differently there."""
        if cpl == 0:
            return ""
        keys = set(keys)
        for pmc, sel in enumerate(self.selectors):
            if sel & EN and selector_key(sel) in keys and bool(sel & OS) != bool(sel & USR):
                raise ExportError(
                    index,
                    op,
                    f"it runs at CPL {cpl}, but the selftest's {self.where()} runs at CPL 0, and"
                    f" PMC {pmc} counts only at CPL {'0' if sel & OS else '> 0'}"
                    f" (its selector has {'OS' if sel & OS else 'USR'} without"
                    f" {'USR' if sel & OS else 'OS'}), so the count would differ",
                )
        return " (run at CPL 0: every PMC that counts it has OS = USR)"

    def refuse_in_user_l2(self, index: int, op: str) -> None:
        if self.guest_mode and self.l2_cpl > 0:
            raise ExportError(
                index,
                op,
                f"L2 resumed at CPL {self.l2_cpl}, where the selftest cannot run anything: the"
                " selftest library maps guest memory supervisor-only (no U/S bit), so such an"
                " L2 faults (#PF) on its first instruction; the export lets that fault be the"
                " VMEXIT, so only VMEXIT and VMENTRY may follow a VMRUN with cpl > 0",
            )

    def set_selector(self, pmc: int, value: int) -> None:
        sel = value & ~RESERVED_BITS | value & (GUEST_ONLY | HOST_ONLY)
        self.selectors[pmc] = sel
        if not _predictable(sel):
            self.unknown[pmc] = True

    # -- records --

    def record(self, index: int, rec: _Record, text: str) -> None:
        op, pmc, cpl, flag, key, value = rec
        name = Op(op).name
        if op != Op.RESET:
            self.started = True
        self.line(f"/* record {index}: {text} ({self.where()}) */")
        if op in (Op.WRMSR_EVTSEL, Op.WRMSR_CTR, Op.WRMSR_GLOBAL_CTRL, Op.WRMSR_EFER):
            self.refuse_in_user_l2(index, name)
            self.wrmsr(rec)
        elif op == Op.VMRUN:
            self.vmrun(index, cpl)
        elif op == Op.VMRUN_FAIL:
            self.vmrun_fail(index)
        elif op == Op.VMEXIT:
            self.vmexit()
        elif op in (Op.FORCED_LEAVE, Op.SET_NESTED_STATE):
            self.nested_state(index, name, op, flag)
        elif op == Op.SET_FILTER:
            self.refuse_in_user_l2(index, name)
            self.set_filter(index, flag, key)
        elif op == Op.EMULATE:
            self.refuse_in_user_l2(index, name)
            self.emulate(index, cpl, flag)
        elif op == Op.RUN:
            self.run(index, cpl, key, value)
        elif op == Op.VMENTRY:
            self.line("/* nothing to emit: every return to the guest is a VM-entry */")
        elif op == Op.READ:
            self.refuse_in_user_l2(index, name)
            self.read(index, pmc)
        else:  # RESET
            if self.started:
                raise ExportError(
                    index,
                    name,
                    "a vCPU reset has no faithful selftest step: KVM has no reset ioctl, an INIT"
                    " does not reset the PMU, and a fresh vCPU or VM would drop the state the"
                    " model keeps (the VM's event filter); export the parts between RESETs"
                    " separately (slice the trace)",
                )
            self.line("/* nothing to emit: the vCPU starts from reset */")

    def wrmsr(self, rec: _Record) -> None:
        op, pmc, _, flag, _, value = rec
        if op == Op.WRMSR_EVTSEL:
            self.max_pmc = max(self.max_pmc, pmc)
            self.line(_wrmsr_insns(f"MSR_F15H_PERF_CTL{pmc}", value))
            self.set_selector(pmc, value)
        elif op == Op.WRMSR_CTR:
            self.max_pmc = max(self.max_pmc, pmc)
            written = value & COUNTER_MASK
            if written != value:
                self.line("/* the counter is 48 bits wide: the value is written masked */")
            self.line(_wrmsr_insns(f"MSR_F15H_PERF_CTR{pmc}", written))
            self.unknown[pmc] = not _predictable(self.selectors[pmc])
        elif op == Op.WRMSR_GLOBAL_CTRL:
            self.global_ctrl = True
            written = value & ((1 << self.n_pmcs) - 1)
            if written != value:
                self.line(
                    f"/* masked to the {self.n_pmcs} PMCs (KVM would #GP on the other bits) */"
                )
            self.line(_wrmsr_insns("MSR_AMD64_PERF_CNTR_GLOBAL_CTL", written))
        else:
            operand = "efer_svme_set" if flag else "efer_svme_clear"
            self.line(f"WRMSR_EFER_INSNS({operand})")
        self.glue(3)
        self.emulated(rec)

    def vmrun(self, index: int, cpl: int) -> None:
        k = len(self.exits)
        self.line(f"VMRUN_INSNS({cpl}, {k})")
        self.glue(4)
        self.emulated((int(Op.VMRUN), 0, cpl, 0, 0, 0))
        self.guest_mode, self.l2_cpl = True, cpl
        self.line(f'"jmp .Ll1_{k}_%=\\n"\t/* L1 goes on here after the #VMEXIT */')
        self.line(f'".Ll2_{k}_%=:\\n\\t"\t/* L2 starts here */')
        if cpl > 0:
            self.user_l2 = True
            self.line(
                f"/* L2 runs at CPL {cpl} from a supervisor page: its first fetch takes #PF,"
                " which L1 intercepts: that is its #VMEXIT */"
            )
            self.line('"ud2\\n\\t"\t/* never reached */')
            self.exits.append((index, "SVM_EXIT_EXCP_BASE + PF_VECTOR", f"VMRUN cpl={cpl}"))
        else:
            self.exits.append((index, "SVM_EXIT_VMMCALL", "VMRUN cpl=0"))

    def vmrun_fail(self, index: int) -> None:
        k = len(self.exits)
        self.line(f"VMRUN_FAIL_INSNS({k})")
        self.glue(2)
        self.emulated((int(Op.VMRUN_FAIL), 0, 0, 0, 0, 0))
        self.glue(3)
        self.exits.append((index, "SVM_EXIT_ERR", "VMRUN_FAIL"))

    def vmexit(self) -> None:
        k = len(self.exits) - 1
        if self.l2_cpl == 0:
            self.line(f"L2_EXIT_INSNS({k})")
            self.glue(2)
        else:
            self.line(f"L2_FAULT_EXIT_INSNS({k})")
        self.guest_mode, self.l2_cpl = False, 0
        self.executed.append((int(Op.VMEXIT), 0, 0, 0, 0, 0))
        self.executed.append(_VMENTRY)
        self.glue(3)

    def nested_state(self, index: int, name: str, op: int, flag: int) -> None:
        leaves = op == Op.FORCED_LEAVE or flag == 0
        if leaves and not self.guest_mode:
            self.line("/* nothing to emit: in host mode this changes nothing (no transition) */")
            return
        raise ExportError(
            index,
            name,
            "it needs userspace to change the nested state (KVM_SET_NESTED_STATE, then"
            " KVM_SET_REGS/KVM_SET_SREGS to the state of the level that resumes), and where L1"
            " or L2 then resumes, and whether the instruction that exited to userspace retires"
            " before or after the change, depend on KVM internals (the RIP saved in vmcb01"
            " around the VMRUN retirement) that svmpmu does not model: the counts could differ"
            " for reasons that have nothing to do with the PMU",
        )

    def set_filter(self, index: int, flag: int, key: int) -> None:
        step = len(self.steps)
        self.steps.append((index, flag, key))
        self.line(f"USERSPACE_STEP_INSNS({step})")
        self.glue(2)
        self.executed.append((int(Op.SET_FILTER), 0, 0, flag, key, 0))
        # the OUT retires (KVM emulates it) when the vCPU runs again, after the step
        self.emulated((int(Op.EMULATE), 0, 0, 0, 0, 0))

    def emulate(self, index: int, cpl: int, flag: int) -> None:
        keys = [INSTRUCTIONS_RETIRED, BRANCHES_RETIRED] if flag else [INSTRUCTIONS_RETIRED]
        note = self.cpl_substitution(index, "EMULATE", cpl, keys)
        self.emulates = True
        if flag:
            self.line(f"/* a JMP to the next instruction, forced through KVM's emulator{note} */")
            self.line('KVM_FEP "jmp 1f\\n"', '"1:\\n\\t"')
        else:
            self.line(f"/* a NOP, forced through KVM's emulator{note} */")
            self.line('KVM_FEP "nop\\n\\t"')
        self.emulated((int(Op.EMULATE), 0, 0, flag, 0, 0))

    def run(self, index: int, cpl: int, key: int, n: int) -> None:
        if n == 0:
            self.line("/* nothing to emit: no event occurs */")
            return
        self.refuse_in_user_l2(index, "RUN")
        if key != INSTRUCTIONS_RETIRED:
            raise ExportError(
                index,
                "RUN",
                f"it is a run of event {key:#05x}; the selftest can make only retired"
                f" instructions (event {INSTRUCTIONS_RETIRED:#05x}) happen an exactly known"
                " number of times",
            )
        if n > LOOP_MAX:
            raise ExportError(
                index,
                "RUN",
                f"{n} instructions: the selftest runs at most 2^32 ({LOOP_MAX}) in a loop"
                " (longer ones would run for minutes or more)",
            )
        note = self.cpl_substitution(index, "RUN", cpl, [INSTRUCTIONS_RETIRED])
        if n == 1:
            self.line(f"/* 1 instruction{note} */")
            self.line('"nop\\n\\t"')
        else:
            loops = f"{n - 1} LOOP" + ("s" if n - 1 > 1 else "")
            self.line(f"/* {n} instructions{note}: 1 MOV and {loops} */")
            self.line(f"LOOP_INSNS({n - 1})")
        self.executed.append(_run(n))

    def read(self, index: int, pmc: int) -> None:
        if self.unknown[pmc]:
            raise ExportError(
                index,
                "READ",
                f"PMC {pmc} has counted with a selector the selftest cannot predict (an event"
                f" other than retired instructions, {INSTRUCTIONS_RETIRED:#05x} with unit mask"
                " 0, or EDGE, INV or CNT_MASK set): hardware counts that event in everything"
                " the guest does, so its value is not known; write the counter (WRMSR_CTR)"
                " under a predictable selector first",
            )
        self.max_pmc = max(self.max_pmc, pmc)
        k = len(self.reads)
        self.reads.append((index, pmc))
        self.line(f"READ_INSNS(MSR_F15H_PERF_CTR{pmc}, {k})")
        self.glue(1)
        self.executed.append((int(Op.READ), pmc, 0, 0, 0, 0))
        self.glue(3)

    def finish(self) -> None:
        """Leave L2 if the trace ends there, so that L1 can check the results."""
        if not self.guest_mode:
            return
        self.line("/* after the last record (counts no longer matter): leave L2 */")
        self.vmexit()


def _predictable(sel: int) -> bool:
    """Whether a selector counts, if at all, exactly the retired instructions the model counts."""
    if not sel & EN:
        return True
    return selector_key(sel) == INSTRUCTIONS_RETIRED and not sel & _UNPREDICTABLE_BITS


def _wrmsr_insns(msr: str, value: int) -> str:
    return f"WRMSR_INSNS({msr}, {value & 0xFFFF_FFFF:#010x}, {value >> 32:#010x})"


def _walk(trace: Trace, n_pmcs: int) -> tuple[_Replay, list[str]]:
    """Validate ``trace`` and replay it into a :class:`_Replay`; also the text of each record."""
    if not isinstance(trace, Trace):
        raise TypeError(f"expected a svmpmu.Trace, got {type(trace).__name__}")
    validate(trace, n_pmcs=n_pmcs)
    texts = [line for line in trace.to_text().splitlines() if not line.startswith("#")]
    replay = _Replay(n_pmcs)
    for index, rec in enumerate(trace.records()):
        replay.record(index, rec, texts[index])
    replay.finish()
    return replay, texts


def _trace_of(records: list[_Record]) -> Trace:
    if not records:
        return Trace([])
    op, pmc, cpl, flag, key, value = zip(*records)
    return Trace(op, pmc, cpl, flag, key, value)


def selftest_trace(trace: Trace, *, n_pmcs: int = 6) -> Trace:
    """The trace the selftest of ``trace`` (:func:`to_selftest`) really executes.

    It is ``trace`` with the instructions the test retires of its own added as RUN records
    at CPL 0 (the MOVs before each WRMSR, the RDMSR of each READ and the stores of its value,
    the few instructions around each VMRUN, ...), each SET_FILTER followed by the emulated OUT
    that asked for it, a VMENTRY after every instruction KVM emulates and every #VMEXIT (KVM
    re-enters the guest there), the trace's own VMENTRY and empty RUN records left out, and
    RUN and EMULATE records at the CPL the test runs them at (0). Its READs are the values the
    test asserts. Raises :class:`ExportError` where :func:`to_selftest` would.
    """
    replay, _ = _walk(trace, n_pmcs)
    return _trace_of(replay.executed)


# --- the C source ----------------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

_HELPERS = r"""/*
 * Every instruction the guest retires from the first record to the last is
 * written out below, so that every count is exact.  Each helper says what it
 * retires; "native" instructions are counted by the CPU, "emulated" ones are
 * intercepted and retired by KVM (kvm_skip_emulated_instruction()).
 *
 * Registers: RBX holds the VMCB, RDI the reads[] array, RSI the exit_codes[]
 * array; the code and L2 only clobber RAX, RCX and RDX.
 */

/* 3 native MOVs, then the WRMSR (emulated). */
#define WRMSR_INSNS(msr, lo, hi)						\
	"mov $" __stringify(msr) ", %%ecx\n\t"					\
	"mov $" __stringify(lo) ", %%eax\n\t"					\
	"mov $" __stringify(hi) ", %%edx\n\t"					\
	"wrmsr\n\t"

/* 3 native MOVs (EFER's value, read before the trace starts), then the WRMSR (emulated). */
#define WRMSR_EFER_INSNS(value)							\
	"mov $" __stringify(MSR_EFER) ", %%ecx\n\t"				\
	"mov %[" #value "], %%eax\n\t"						\
	"mov $0, %%edx\n\t"							\
	"wrmsr\n\t"

/* 1 native MOV, the RDMSR (native: the mediated PMU passes the counters through), 2 native MOVs. */
#define READ_INSNS(msr, i)							\
	"mov $" __stringify(msr) ", %%ecx\n\t"					\
	"rdmsr\n\t"								\
	"mov %%eax, 8 * " #i "(%%rdi)\n\t"					\
	"mov %%edx, 8 * " #i " + 4(%%rdi)\n\t"

/* m + 1 native instructions: a MOV and m LOOPs (m >= 1). */
#define LOOP_INSNS(m)								\
	"mov $" #m ", %%ecx\n\t"						\
	"1: loop 1b\n\t"

/*
 * 4 native instructions (L2's CPL and RIP into the VMCB, its address into RAX),
 * then the VMRUN (emulated).  L1 goes on after the #VMEXIT with the JMP that
 * follows (see L2_EXIT_INSNS).
 */
#define VMRUN_INSNS(cpl, i)							\
	"movb $" #cpl ", %c[cpl](%%rbx)\n\t"					\
	"lea .Ll2_" #i "_%=(%%rip), %%rax\n\t"					\
	"mov %%rax, %c[rip](%%rbx)\n\t"						\
	"mov %[vmcb_gpa], %%rax\n\t"						\
	"vmrun %%rax\n\t"

/*
 * L2: 2 native MOVs (the "safe" RAX and RCX of vmmcall()), then VMMCALL, which
 * L1 intercepts: it does not retire.  L1: the JMP after its VMRUN, then 2 native
 * MOVs that save the exit code.
 */
#define L2_EXIT_INSNS(i)							\
	"mov $0xdeadbeef, %%eax\n\t"						\
	"mov $0xbeefdead, %%ecx\n\t"						\
	"vmmcall\n"								\
	L1_RESUME_INSNS(i)

/* An L2 at CPL > 0 retires nothing; L1 as in L2_EXIT_INSNS. */
#define L2_FAULT_EXIT_INSNS(i)							\
	L1_RESUME_INSNS(i)

#define L1_RESUME_INSNS(i)							\
	".Ll1_" #i "_%=:\n\t"							\
	"mov %c[exit_code](%%rbx), %%eax\n\t"					\
	"mov %%eax, 4 * " #i "(%%rsi)\n\t"

/*
 * 2 native instructions (clear the VMRUN intercept, the VMCB's address into
 * RAX), the VMRUN (emulated: it fails KVM's consistency checks), then 3 native
 * ones: restore the intercept, save the exit code.
 */
#define VMRUN_FAIL_INSNS(i)							\
	"btrq %[vmrun_bit], %c[intercept](%%rbx)\n\t"				\
	"mov %[vmcb_gpa], %%rax\n\t"						\
	"vmrun %%rax\n\t"							\
	"btsq %[vmrun_bit], %c[intercept](%%rbx)\n\t"				\
	"mov %c[exit_code](%%rbx), %%eax\n\t"					\
	"mov %%eax, 4 * " #i "(%%rsi)\n\t"

/*
 * 2 native MOVs, then an OUT to SVMPMU_STEP_PORT: KVM exits to userspace, which
 * does the step (main() below), and retires the OUT (emulated) when the vCPU
 * runs again.
 */
#define USERSPACE_STEP_INSNS(step)						\
	"mov $" __stringify(SVMPMU_STEP_PORT) ", %%dx\n\t"			\
	"mov $" #step ", %%eax\n\t"						\
	"outl %%eax, %%dx\n\t"
"""


def _c_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _header(t: _Selftest) -> list[str]:
    """The comment at the top: where the test comes from, the trace, the predictions."""
    out = [
        "// SPDX-License-Identifier: GPL-2.0-only",
        "/*",
        f" * {t.name}: a KVM nested SVM PMU Host-Only/Guest-Only test.",
        f" * Generated by svmpmu {__version__} (svmpmu export-selftest)"
        + ("" if t.source else f", {len(t.texts)} records."),
    ]
    if t.source:
        out.append(f" * from {t.source} ({len(t.texts)} records).")
    out += [
        " *",
        " * L1 (this guest) and L2 (a nested guest that L1 enters with VMRUN) execute",
        " * the trace below record by record, and every READ is checked with",
        f" * GUEST_ASSERT_EQ against the count of the svmpmu model `{t.label}`: if the",
        f" * test passes, the CPU and the kernel count as `{t.label}` says.  The host",
        " * prints the values read and which svmpmu presets agree with them all.",
        " *",
        " * Besides the trace's instructions the test retires a few of its own (the",
        " * MOVs that load a WRMSR's operands, the RDMSR of each READ, ...; see the",
        " * helpers below): the expected values are the model's counts for the trace",
        " * with those instructions added (svmpmu.export.selftest_trace()).",
        " *",
        " * The trace:",
    ]
    out += [f" * {i:5d}  {text}" for i, text in enumerate(t.texts)]
    out += [" *", f" * READ values under `{t.label}`, as written in the trace / as asserted:"]
    for k, (index, pmc) in enumerate(t.replay.reads):
        out.append(f" *   reads[{k}] (record {index}, PMC {pmc}): {t.written[k]} / {t.asserted[k]}")
    agree = [m for m, values in t.tables.items() if values == t.asserted and m != t.label]
    differ = [(m, values) for m, values in t.tables.items() if values != t.asserted]
    out += [" *", f" * Presets that predict the same values: {', '.join(agree) or 'none'}."]
    if differ:
        out.append(" * Presets that predict other values (reads[k]: value):")
        for model, values in differ:
            diffs = [f"[{k}] {v}" for k, (v, a) in enumerate(zip(values, t.asserted)) if v != a]
            out += _wrap(f" *   {model}: ", ", ".join(diffs), " *       ")
    return [*out, " */"]


def _wrap(first: str, text: str, indent: str, width: int = 80) -> list[str]:
    """``text`` after ``first``, wrapped at commas to ``width`` columns with ``indent``."""
    lines, line = [], first
    for word in text.split(", "):
        piece = word if line in (first, indent) else ", " + word
        if len(line) + len(piece) > width and line not in (first, indent):
            lines.append(line + ",")
            line = indent + word
        else:
            line += piece
    lines.append(line)
    return lines


def _filter_call(action: int, key: int) -> str:
    event = f"RAW_EVENT({key & 0xFFF:#x}, {key >> 12:#x})"
    if action == FilterAction.NONE:
        return "set_event_filter(vm, KVM_PMU_EVENT_DENY, 0, 0);\t/* deny nothing */"
    kind = "KVM_PMU_EVENT_ALLOW" if action == FilterAction.ALLOW else "KVM_PMU_EVENT_DENY"
    return f"set_event_filter(vm, {kind}, {event}, 1);"


@dataclass
class _Selftest:
    """What the C source is made of: the replay, the texts of the records, the predictions."""

    name: str
    source: str | None
    label: str
    replay: _Replay
    texts: list[str]
    asserted: list[int]
    written: list[int]
    tables: dict[str, list[int]]


def _c_data(t: _Selftest) -> list[str]:
    """The includes, the constants, the results and the models' predictions."""
    replay = t.replay
    out = [
        "#include <fcntl.h>",
        "#include <stddef.h>",
        "#include <stdio.h>",
        "#include <stdlib.h>",
        "#include <string.h>",
        "",
        '#include "test_util.h"',
        '#include "kvm_util.h"',
        '#include "processor.h"',
        '#include "svm_util.h"',
        '#include "pmu.h"',
        "",
        f"#define NR_READS\t{len(replay.reads)}",
    ]
    if replay.exits:
        out.append(f"#define NR_VMRUNS\t{len(replay.exits)}")
    out += [
        f"#define NR_PMCS\t\t{max(replay.max_pmc + 1, 1)}",
        f"#define NR_MODELS\t{len(t.tables)}",
    ]
    if replay.steps:
        out.append(f"#define SVMPMU_STEP_PORT\t{STEP_PORT:#x}")
    out += ["", "/* Written by the guest, one a READ record, then read by the host. */"]
    out.append("static uint64_t reads[NR_READS];")
    if replay.exits:
        out.append("static uint32_t exit_codes[NR_VMRUNS];")
    out += ["", "static const char *const read_records[NR_READS] = {"]
    out += [f'\t"record {index}: {_c_string(t.texts[index])}",' for index, _ in replay.reads]
    out += ["};", "", "/* What each svmpmu model predicts for reads[], given the code below. */"]
    out.append("static const char *const model_names[NR_MODELS] = {")
    out += _wrap("\t", ", ".join(f'"{_c_string(m)}"' for m in t.tables) + ",", "\t")
    out += ["};", "", "static const uint64_t model_reads[NR_MODELS][NR_READS] = {"]
    for model_name, values in t.tables.items():
        out += _wrap("\t{ ", ", ".join(map(str, values)) + f" }},\t/* {model_name} */", "\t  ")
    return [*out, "};"]


def _c_l1(t: _Selftest) -> list[str]:
    """L1's code: the setup, the asm body (with L2's code inline), the checks."""
    replay = t.replay
    out = [
        "static void l1_guest_code(struct svm_test_data *svm)",
        "{",
        "\tstruct vmcb *vmcb = svm->vmcb;",
        "\tuint64_t vmcb_gpa = svm->vmcb_gpa;",
        "\tuint32_t efer_svme_clear, efer_svme_set;",
        "",
        "\t/*",
        "\t * Set up L2 (this sets EFER.SVME and VM_HSAVE_PA), let L2 access the PMU",
        "\t * MSRs without exiting to L1, then go back to the trace's reset state:",
        "\t * SVME = 0.  No counter is enabled yet, so nothing here is counted.",
        "\t */",
        "\tgeneric_svm_setup(svm, NULL);\t/* each VMRUN below sets L2's RIP and CPL */",
        "\tvmcb->control.intercept &= ~(1ULL << INTERCEPT_MSR_PROT);",
    ]
    if replay.user_l2:
        out.append("\tvmcb->control.intercept_exceptions |= 1U << PF_VECTOR;")
    out += [
        "\tefer_svme_clear = rdmsr(MSR_EFER) & ~EFER_SVME;",
        "\tefer_svme_set = efer_svme_clear | EFER_SVME;",
        "\twrmsr(MSR_EFER, efer_svme_clear);",
        "",
        "\tasm volatile(",
        *("\t\t" + text for text in replay.asm),
        "\t\t:",
        '\t\t: "b" (vmcb), "D" (reads),' + (' "S" (exit_codes),' if replay.exits else ""),
        '\t\t  [vmcb_gpa] "m" (vmcb_gpa),',
        '\t\t  [efer_svme_clear] "m" (efer_svme_clear),',
        '\t\t  [efer_svme_set] "m" (efer_svme_set),',
        '\t\t  [rip] "i" (offsetof(struct vmcb, save.rip)),',
        '\t\t  [cpl] "i" (offsetof(struct vmcb, save.cpl)),',
        '\t\t  [exit_code] "i" (offsetof(struct vmcb, control.exit_code)),',
        '\t\t  [intercept] "i" (offsetof(struct vmcb, control.intercept)),',
        '\t\t  [vmrun_bit] "i" (INTERCEPT_VMRUN)',
        '\t\t: "rax", "rcx", "rdx", "cc", "memory");',
        "",
    ]
    for k, (index, expected, why) in enumerate(replay.exits):
        out.append(f"\t/* record {index}: {why} */")
        out.append(f"\tGUEST_ASSERT_EQ(exit_codes[{k}], (uint32_t)({expected}));")
    for k, (index, _) in enumerate(replay.reads):
        out.append(f"\t/* record {index}: {t.texts[index]} */")
        out.append(f"\tGUEST_ASSERT_EQ(reads[{k}], {t.asserted[k]});")
    return [*out, "\tGUEST_DONE();", "}"]


def _c_steps(t: _Selftest) -> list[str]:
    """The host's userspace steps (SET_FILTER), if the trace has any."""
    if not t.replay.steps:
        return []
    out = [
        "",
        "static void set_event_filter(struct kvm_vm *vm, uint32_t action, uint64_t event,",
        "\t\t\t     uint32_t nevents)",
        "{",
        "\tstruct kvm_pmu_event_filter *filter;",
        "",
        "\tfilter = calloc(1, sizeof(*filter) + sizeof(event));",
        '\tTEST_ASSERT(filter != NULL, "Filter allocation failed");',
        "\tfilter->action = action;",
        "\tfilter->nevents = nevents;",
        "\tfilter->events[0] = event;",
        "\tvm_ioctl(vm, KVM_SET_PMU_EVENT_FILTER, filter);",
        "\tfree(filter);",
        "}",
        "",
        "/* The userspace steps the guest asks for (USERSPACE_STEP_INSNS), in order. */",
        "static void do_userspace_step(struct kvm_vm *vm, struct kvm_vcpu *vcpu)",
        "{",
        "\tstruct kvm_run *run = vcpu->run;",
        "\tuint32_t step = *(uint32_t *)((char *)run + run->io.data_offset);",
        "",
        "\tTEST_ASSERT(run->io.direction == KVM_EXIT_IO_OUT && run->io.size == 4,",
        '\t\t    "Unexpected I/O on the step port");',
        "\tswitch (step) {",
    ]
    for step, (index, action, key) in enumerate(t.replay.steps):
        out += [
            f"\tcase {step}:\t/* record {index}: {t.texts[index]} */",
            f"\t\t{_filter_call(action, key)}",
            "\t\tbreak;",
        ]
    return [*out, "\tdefault:", '\t\tTEST_FAIL("Unknown userspace step %u", step);', "\t}", "}"]


def _c_host(t: _Selftest) -> list[str]:
    """The host: the report of the values read, the userspace steps, main()."""
    replay = t.replay
    out = [
        "static void report_reads(struct kvm_vm *vm)",
        "{",
        "\tint i, m;",
        "",
        "\tsync_global_from_guest(vm, reads);",
        "\tfor (i = 0; i < NR_READS; i++)",
        f'\t\tprintf("reads[%d] = %lu (%s), `{_c_string(t.label)}` expects %lu\\n", i,',
        f"\t\t       reads[i], read_records[i], model_reads[{list(t.tables).index(t.label)}][i]);",
        "\tfor (m = 0; m < NR_MODELS; m++)",
        '\t\tprintf("%-8s %s\\n", model_names[m],',
        "\t\t       memcmp(reads, model_reads[m], sizeof(reads)) ?",
        '\t\t       "predicts other values" : "agrees with every READ");',
        "}",
        *_c_steps(t),
        "",
        "int main(int argc, char *argv[])",
        "{",
        "\tstruct kvm_vcpu *vcpu;",
        "\tstruct kvm_vm *vm;",
        "\tstruct ucall uc;",
        "\tgva_t svm_gva;",
        "",
        "\tTEST_REQUIRE(kvm_cpu_has(X86_FEATURE_SVM));",
        "\tTEST_REQUIRE(kvm_is_pmu_enabled());",
        "\tTEST_REQUIRE(kvm_is_mediated_pmu_enabled());",
        "\tTEST_REQUIRE(kvm_cpu_has(X86_FEATURE_PERFCTR_CORE));",
        "\tTEST_REQUIRE(!kvm_cpu_has(X86_FEATURE_PERFMON_V2) ||",
        "\t\t     kvm_cpu_property(X86_PROPERTY_NR_PERFCTR_CORE) >= NR_PMCS);",
    ]
    if replay.global_ctrl:
        out.append("\tTEST_REQUIRE(kvm_cpu_has(X86_FEATURE_PERFMON_V2));")
    if replay.emulates:
        out.append("\tTEST_REQUIRE(kvm_is_forced_emulation_enabled());")
    if replay.steps:
        out.append("\tTEST_REQUIRE(kvm_has_cap(KVM_CAP_PMU_EVENT_FILTER));")
    out += [
        "",
        "\tvm = vm_create_with_one_vcpu(&vcpu, l1_guest_code);",
        "",
        "\tvcpu_alloc_svm(vm, &svm_gva);",
        "\tvcpu_args_set(vcpu, 1, svm_gva);",
        "",
        "\tfor (;;) {",
        "\t\tvcpu_run(vcpu);",
        "\t\tTEST_ASSERT_KVM_EXIT_REASON(vcpu, KVM_EXIT_IO);",
        "",
    ]
    if replay.steps:
        out += [
            "\t\tif (vcpu->run->io.port == SVMPMU_STEP_PORT) {",
            "\t\t\tdo_userspace_step(vm, vcpu);",
            "\t\t\tcontinue;",
            "\t\t}",
            "",
        ]
    return [
        *out,
        "\t\tswitch (get_ucall(vcpu, &uc)) {",
        "\t\tcase UCALL_ABORT:",
        "\t\t\treport_reads(vm);",
        "\t\t\tREPORT_GUEST_ASSERT(uc);",
        "\t\t\tgoto done;",
        "\t\tcase UCALL_DONE:",
        "\t\t\treport_reads(vm);",
        "\t\t\tgoto done;",
        "\t\tdefault:",
        '\t\t\tTEST_FAIL("Unknown ucall %lu", uc.cmd);',
        "\t\t\tgoto done;",
        "\t\t}",
        "\t}",
        "done:",
        "\tkvm_vm_free(vm);",
        "\treturn 0;",
        "}",
    ]


def to_selftest(
    trace: Trace,
    *,
    name: str = "svmpmu_case",
    model: PolicyLike = "arch",
    n_pmcs: int = 6,
    source: str | None = None,
) -> str:
    """The C source of a KVM selftest that replays ``trace`` on an AMD host with nested SVM
    and checks each READ against the count of ``model`` (a preset name or a
    :class:`~svmpmu.Policy`; ``arch`` by default).

    ``name`` names the test (a C identifier; the file is ``NAME.c``) and ``source`` (say, the
    trace's file name) goes into the header comment, with the svmpmu version, the model, the
    trace and, for every preset of :data:`~svmpmu.PRESETS`, the READs where it predicts other
    values. The expected values are the model's READs of :func:`selftest_trace`: the trace
    with the test's own instructions added. Records that a selftest cannot replay faithfully
    raise :class:`ExportError` (docs/selftest-export.md lists them); an invalid trace raises
    :class:`~svmpmu.TraceError`.
    """
    if not _NAME.match(str(name)):
        raise ValueError(f"the test's name must be a C identifier, got {name!r}")
    policy = resolve_policy(model)
    replay, texts = _walk(trace, n_pmcs)
    if not replay.reads:
        raise ExportError(None, None, "it has no READ record: the selftest would check nothing")
    executed = _trace_of(replay.executed)
    label = str(policy)

    def reads(of: Trace, p: Policy) -> list[int]:
        return [int(v) for v in simulate(of, p, n_pmcs=n_pmcs).reads]

    asserted = reads(executed, policy)
    tables = {m: reads(executed, p) for m, p in PRESETS.items()}
    tables.setdefault(label, asserted)
    t = _Selftest(name, source, label, replay, texts, asserted, reads(trace, policy), tables)
    out = [
        *_header(t),
        *_c_data(t),
        "",
        _HELPERS.rstrip("\n"),
        "",
        *_c_l1(t),
        "",
        *_c_host(t),
    ]
    return "\n".join(out) + "\n"


# --- TraceBuilder code -----------------------------------------------------------------------

_BUILDER_FIELDS: dict[int, tuple[str, ...]] = {
    Op.WRMSR_EVTSEL: ("pmc", "value"),
    Op.WRMSR_CTR: ("pmc", "value"),
    Op.WRMSR_GLOBAL_CTRL: ("value",),
    Op.WRMSR_EFER: ("flag",),
    Op.VMRUN: ("cpl",),
    Op.VMRUN_FAIL: (),
    Op.VMEXIT: (),
    Op.FORCED_LEAVE: (),
    Op.SET_NESTED_STATE: ("flag",),
    Op.SET_FILTER: ("flag", "key"),
    Op.EMULATE: ("cpl", "flag"),
    Op.RUN: ("cpl", "key", "value"),
    Op.VMENTRY: (),
    Op.READ: ("pmc",),
    Op.RESET: (),
}
"""The fields each TraceBuilder method sets; a record with any other field set is rebuilt
with ``TraceBuilder.extend(Trace(...))``."""

_COLUMN_NAMES = ("op", "pmc", "cpl", "flag", "key", "value")
_CHAIN_MAX = 200
"""Up to this many records the code is one chained expression; beyond, one statement a record."""


def _key_code(key: int, names: set[str]) -> str:
    if key == INSTRUCTIONS_RETIRED:
        names.add("INSTRUCTIONS_RETIRED")
        return "INSTRUCTIONS_RETIRED"
    if key == BRANCHES_RETIRED:
        names.add("BRANCHES_RETIRED")
        return "BRANCHES_RETIRED"
    if key >> 12 and key < 1 << 20:
        names.add("event_key")
        return f"event_key({key & 0xFFF:#05x}, {key >> 12:#04x})"
    return f"{key:#05x}"


_BIT_NAMES = (
    (EN, "EN"),
    (OS, "OS"),
    (USR, "USR"),
    (INT, "INT"),
    (HOST_ONLY, "HOST_ONLY"),
    (GUEST_ONLY, "GUEST_ONLY"),
)


def _selector_code(value: int, names: set[str]) -> str:
    """A selector as ``eventsel(...)`` (when it has an event or unit mask) or named bits."""
    event = (value & 0xFF) | ((value >> 32) & 0xF) << 8
    umask = (value >> 8) & 0xFF
    known = _SELECTOR_FIELDS | USR | OS | EN | INT | HOST_ONLY | GUEST_ONLY
    rest = value & ~known
    if value & _SELECTOR_FIELDS:
        names.add("eventsel")
        args = [_key_code(event, names)]
        if umask:
            args.append(f"{umask:#04x}")
        for bit, kw, default in (
            (USR, "usr", True),
            (OS, "os", True),
            (EN, "enable", True),
            (HOST_ONLY, "host_only", False),
            (GUEST_ONLY, "guest_only", False),
            (INT, "interrupt", False),
        ):
            if bool(value & bit) != default:
                args.append(f"{kw}={not default}")
        parts = [f"eventsel({', '.join(args)})"]
    else:
        parts = []
        for bit, bit_name in _BIT_NAMES:
            if value & bit:
                names.add(bit_name)
                parts.append(bit_name)
    if rest:
        parts.append(f"{rest:#x}")
    return " | ".join(parts) or "0"


def _call_code(rec: _Record, names: set[str]) -> str:
    """The TraceBuilder call that appends ``rec`` (without the leading dot)."""
    op, pmc, cpl, flag, key, value = rec
    fields = dict(zip(_COLUMN_NAMES, rec))
    used = _BUILDER_FIELDS.get(op)
    expressible = used is not None and all(
        fields[c] == 0 for c in _COLUMN_NAMES[1:] if c not in used
    )
    if expressible and op == Op.SET_FILTER and flag not in tuple(FilterAction):
        expressible = False
    if not expressible:
        names.add("Trace")
        columns = [f"[{op}]"] + [f"{c}=[{fields[c]:#x}]" for c in _COLUMN_NAMES[1:] if fields[c]]
        return f"extend(Trace({', '.join(columns)}))"
    if op == Op.WRMSR_EVTSEL:
        return f"wrmsr_evtsel({pmc}, {_selector_code(value, names)})"
    if op == Op.WRMSR_CTR:
        return f"wrmsr_ctr({pmc}, {value:#x})"
    if op == Op.WRMSR_GLOBAL_CTRL:
        return f"wrmsr_global_ctrl({value:#x})"
    if op == Op.WRMSR_EFER:
        return f"wrmsr_efer({flag})"
    if op == Op.VMRUN:
        return f"vmrun(cpl={cpl})" if cpl else "vmrun()"
    if op == Op.SET_NESTED_STATE:
        return f"set_nested_state({flag})"
    if op == Op.SET_FILTER:
        action = FilterAction(flag).name.lower()
        if flag == FilterAction.NONE and key == 0:
            return 'set_filter("none")'
        return f'set_filter("{action}", {_key_code(key, names)})'
    if op == Op.EMULATE:
        args = [f"cpl={cpl}"] if cpl else []
        if flag:
            args.append("branch=True" if flag == 1 else f"branch={flag}")
        return f"emulate({', '.join(args)})"
    if op == Op.RUN:
        event = "" if key == INSTRUCTIONS_RETIRED else f", event={_key_code(key, names)}"
        return f"run({value}{event}, cpl={cpl})"
    if op == Op.READ:
        return f"read({pmc})"
    return f"{Op(op).name.lower()}()"


def to_builder_code(trace: Trace) -> str:
    """Python source that rebuilds ``trace`` with :class:`~svmpmu.TraceBuilder` and binds it to
    the name ``trace``: ``exec(code, ns)`` leaves in ``ns["trace"]`` a trace equal to
    ``trace``. Selectors are written with :func:`~svmpmu.eventsel` (or the named bits ``EN |
    OS | ...`` when they have no event); a record with fields its op does not use, or an
    unknown op, is appended with ``.extend(Trace(...))``. The text form of a trace is
    :meth:`Trace.to_text`.

    >>> import svmpmu
    >>> print(to_builder_code(svmpmu.TraceBuilder().wrmsr_efer(1).vmrun(cpl=3).build()))
    from svmpmu import TraceBuilder
    <BLANKLINE>
    trace = (
        TraceBuilder()
        .wrmsr_efer(1)
        .vmrun(cpl=3)
        .build()
    )
    <BLANKLINE>
    """
    if not isinstance(trace, Trace):
        raise TypeError(f"expected a svmpmu.Trace, got {type(trace).__name__}")
    names = {"TraceBuilder"}
    calls = [_call_code(rec, names) for rec in trace.records()]
    head = f"from svmpmu import {', '.join(sorted(names, key=lambda n: (n[0].islower(), n)))}"
    if len(calls) <= _CHAIN_MAX:
        body = ["trace = (", "    TraceBuilder()"]
        body += [f"    .{call}" for call in calls]
        body += ["    .build()", ")"]
    else:
        body = ["builder = TraceBuilder()"]
        body += [f"builder.{call}" for call in calls]
        body += ["trace = builder.build()"]
    return "\n".join([head, "", *body]) + "\n"


# --- files -----------------------------------------------------------------------------------


def write_export(
    trace: Trace,
    path: str | os.PathLike[str],
    *,
    format: ExportFormat = "selftest",  # noqa: A002 (the option's name in the CLI and the docs)
    **options: object,
) -> None:
    """Write ``trace`` to ``path`` as a KVM selftest (``"selftest"``: :func:`to_selftest`,
    which takes ``options`` such as ``name``, ``model``, ``n_pmcs`` and ``source``), as
    TraceBuilder code (``"python"``: :func:`to_builder_code`) or as a text trace (``"text"``:
    :meth:`Trace.to_text`). The content is made first, then written through a temporary file:
    a refusal (:class:`ExportError`) or any failure leaves ``path`` as it was."""
    if format == "selftest":
        text = to_selftest(trace, **options)  # type: ignore[arg-type]
    elif options:
        raise TypeError(f"format {format!r} takes no options, got {', '.join(sorted(options))}")
    elif format == "python":
        text = to_builder_code(trace)
    elif format == "text":
        if not isinstance(trace, Trace):
            raise TypeError(f"expected a svmpmu.Trace, got {type(trace).__name__}")
        text = trace.to_text()
    else:
        raise ValueError(f"format must be 'selftest', 'python' or 'text', got {format!r}")
    data = text.encode()
    atomic_write(path, lambda f: f.write(data))
