"""The replay of a trace for the KVM selftest export: :class:`ExportError` (what cannot be
exported, and why), the walk that turns each record into the selftest's asm body and its
checks (``_Replay``, ``_walk``), and :func:`selftest_trace`, the trace the selftest really
executes, with the instructions it adds of its own; :mod:`svmpmu.export.selftest` turns the
replay into C.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from svmpmu._api import validate
from svmpmu.model import (
    BRANCHES_RETIRED,
    COUNTER_MASK,
    EN,
    GUEST_ONLY,
    HOST_ONLY,
    INSTRUCTIONS_RETIRED,
    OS,
    RESERVED_BITS,
    USR,
    Op,
    selector_key,
)
from svmpmu.trace import Trace

LOOP_MAX = 1 << 32
"""The largest RUN a selftest replays: ``n`` instructions take one MOV and ``n - 1`` LOOPs,
whose count must fit ECX; 2^32 instructions run for a few seconds."""

_EDGE = 1 << 18
_INV = 1 << 23
_CMASK = 0xFF << 24
_UNPREDICTABLE_BITS = _EDGE | _INV | _CMASK
"""Selector bits with which hardware counts something else than each retired instruction."""


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
