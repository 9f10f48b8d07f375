"""The pure-Python oracle: a second, independent implementation of the svmpmu model.

This module implements ``shared/spec/model.md`` revision 2 (sections 2 to 8 as revised by
section 10, quoted as "spec §N") and the project's decisions in ``docs/semantics.md`` (quoted as
"semantics") as a plain per-record interpreter: explicit state, one loop over the PMCs for every
rule, Python ints for counters. Where revision 2 changed a rule that semantics still describes
the old way (VMRUN's CPL, VMRUN_FAIL with svme = 0, eventsel_hw right after a selector write),
the spec wins. It is written from the specification text only and imports nothing from the Rust
core, not even the presets: it keeps its own transcription of the preset table of spec §7
(:data:`PRESETS`) and reads a :class:`~svmpmu.Policy` by attribute name, so that cross-checking
the two finds mistakes in either. It is meant to be read, not to be fast (a few thousand records
take a few milliseconds).

Public functions, with the same signatures and result types as the core's:

- :func:`simulate` replays a trace under a policy (``model="kvm"``, spec §6) or the
  architectural reference (``model="arch"``, spec §5) and returns a :class:`~svmpmu.Result`;
- :func:`validate` checks a trace against the record rules (spec §4) and raises
  :class:`~svmpmu.TraceError` at the first invalid record;
- :func:`compare` simulates a policy and a reference and locates their divergence (spec §8).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, SupportsIndex, Union

import numpy as np

from .errors import PolicyError, TraceError
from .model import (
    BRANCHES_RETIRED,
    COUNTER_BITS,
    COUNTER_MASK,
    EN,
    GUEST_ONLY,
    HOST_ONLY,
    INSTRUCTIONS_RETIRED,
    INT,
    MAX_PMCS,
    OS,
    RESERVED_BITS,
    USR,
    FilterAction,
    Op,
    selector_key,
)
from .result import Comparison, Result
from .trace import Trace

if TYPE_CHECKING:  # only for annotations: the oracle does not use svmpmu.policy at run time
    from .policy import PolicyLike

__all__ = ["PRESETS", "compare", "simulate", "validate"]

HOST_GUEST = HOST_ONLY | GUEST_ONLY
"""Both mode bits: a selector "has an H or G bit" when it has any of these."""

KEY_LIMIT = 1 << 20
"""Event keys are 20 bits wide (spec §2: 12-bit event number, 8-bit unit mask)."""

MAX_CPL = 3
"""A CPL is 0..3 (semantics, validation rule 3)."""

# Ops that take a PMC index, and the allowed flag range of the ops that take a flag
# (semantics, validation rules 2 and 4).
_OPS_WITH_PMC = (Op.WRMSR_EVTSEL, Op.WRMSR_CTR, Op.READ)
_OPS_WITH_CPL = (Op.EMULATE, Op.RUN, Op.VMRUN)  # VMRUN: spec §10 change 1
_FLAG_LIMIT = {
    Op.WRMSR_EFER: 1,
    Op.SET_NESTED_STATE: 1,
    Op.SET_FILTER: 2,
    Op.EMULATE: 1,
}
_OPS_WITH_KEY = (Op.RUN, Op.SET_FILTER)


# --------------------------------------------------------------------------------------------
# Policies: the knobs (spec §5, §6) and the presets (spec §7), transcribed here on purpose
# --------------------------------------------------------------------------------------------

KnobValue = Union[str, bool]
"""The value of one knob: a word, or True/False for the two yes/no knobs."""

_TIMINGS = ("sync", "deferred", "none")

_MODELS = ("kvm", "arch")
"""``model``: the KVM model of spec §6 or the architectural reference of spec §5."""

_KVM_KNOBS: dict[str, tuple[KnobValue, ...]] = {
    "svme0": ("off", "ignore"),
    "hg": ("honored", "reserved"),
    "emul_mode_aware": (True, False),
    "filter_on_sync": (True, False),
    "efer_timing": _TIMINGS,
    "vmrun_timing": _TIMINGS,
    "vmexit_timing": _TIMINGS,
    "forced_leave_timing": _TIMINGS,
    "set_nested_state_timing": _TIMINGS,
    "vmrun_order": ("before_entry", "after_entry"),
}
"""The knobs of the KVM model (spec §6 "Policy knobs summary") and their values, in the column
order of the preset table of spec §7."""

_REFERENCE_KNOBS: dict[str, tuple[KnobValue, ...]] = {
    "enabling_wrmsr": ("old", "new"),
    "efer_retire": ("new", "old"),
    "vmrun_retire": ("guest", "host"),
    "failed_vmrun_retire": ("host", "guest"),
}
"""The knobs of the reference (spec §5 attribution table), each with its default first."""

# The rows of the preset table of spec §7, in its column order (that of _KVM_KNOBS): svme0, hg,
# emul_mode_aware, filter_on_sync (yes/no as True/False), then the timings of the efer, vmrun,
# vmexit, forced_leave and set_nested_state flows, then vmrun_order.
# fmt: off
_KVM_PRESET_ROWS: dict[str, tuple[KnobValue, ...]] = {
    "final":  ("off",    "honored",  True,  True,
               "sync",     "sync",     "sync",     "deferred", "sync",     "after_entry"),
    "v4":     ("ignore", "honored",  False, True,
               "deferred", "deferred", "deferred", "deferred", "deferred", "before_entry"),
    "v3":     ("ignore", "honored",  False, False,
               "sync",     "sync",     "sync",     "sync",     "sync",     "before_entry"),
    "v1":     ("ignore", "honored",  False, False,
               "sync",     "sync",     "sync",     "none",     "none",     "before_entry"),
    "hybrid": ("ignore", "honored",  True,  True,
               "sync",     "sync",     "sync",     "deferred", "sync",     "after_entry"),
    "legacy": ("off",    "reserved", False, True,
               "none",     "none",     "none",     "none",     "none",     "before_entry"),
}
# fmt: on

PRESETS: dict[str, dict[str, KnobValue]] = {
    **{
        name: {"model": "kvm", **dict(zip(_KVM_KNOBS, row))}
        for name, row in _KVM_PRESET_ROWS.items()
    },
    # "arch": the reference of spec §5, with the default of every attribution knob.
    "arch": {"model": "arch", **{knob: values[0] for knob, values in _REFERENCE_KNOBS.items()}},
}
"""The presets of spec §7, the oracle's own transcription: name -> the knobs that apply to the
preset's model (``model`` and the ten KVM knobs, or ``model`` and the four reference knobs)."""


@dataclass(frozen=True)
class _KvmKnobs:
    """A KVM policy as the oracle reads it: the knobs of spec §6."""

    svme0: str
    hg: str
    emul_mode_aware: bool
    filter_on_sync: bool
    efer_timing: str
    vmrun_timing: str
    vmexit_timing: str
    forced_leave_timing: str
    set_nested_state_timing: str
    vmrun_order: str


@dataclass(frozen=True)
class _ReferenceKnobs:
    """The reference as the oracle reads it: the attribution knobs of spec §5."""

    enabling_wrmsr: str
    efer_retire: str
    vmrun_retire: str
    failed_vmrun_retire: str


def _knob(read: Callable[[str], object], knob: str, allowed: tuple[KnobValue, ...]) -> KnobValue:
    """One knob, checked against its allowed values (a yes/no knob must be a real bool, not 1
    or "yes"); returned as the allowed value it equals."""
    value = read(knob)
    if not (isinstance(value, (str, bool)) and value in allowed):
        raise PolicyError(
            f"knob {knob!r} cannot be {value!r}; allowed: " + ", ".join(map(repr, allowed))
        )
    return allowed[allowed.index(value)]


def _text(value: KnobValue) -> str:
    """A word knob's value (one of its allowed words, checked by _knob)."""
    return str(value)


def _yes(value: KnobValue) -> bool:
    """A yes/no knob's value (True or False, checked by _knob)."""
    return value is True


def _resolve(policy: PolicyLike) -> _KvmKnobs | _ReferenceKnobs:
    """The knobs of ``policy``: a preset name, looked up in :data:`PRESETS`, or any object with
    the knobs as attributes (a :class:`~svmpmu.Policy`). Only the knobs that apply to its model
    are read (semantics, "Which knobs apply"). PolicyError for anything else."""
    read: Callable[[str], object]
    if isinstance(policy, str):
        if policy not in PRESETS:
            raise PolicyError(f"unknown preset {policy!r}; presets: " + ", ".join(PRESETS))
        read = PRESETS[policy].__getitem__
    else:

        def read(knob: str) -> object:
            try:
                return getattr(policy, knob)
            except AttributeError:
                raise PolicyError(
                    f"expected a Policy or a preset name, got {type(policy).__name__} "
                    f"(no knob {knob!r})"
                ) from None

    model = _knob(read, "model", _MODELS)
    if model == "arch":
        ref = {knob: _knob(read, knob, allowed) for knob, allowed in _REFERENCE_KNOBS.items()}
        return _ReferenceKnobs(
            enabling_wrmsr=_text(ref["enabling_wrmsr"]),
            efer_retire=_text(ref["efer_retire"]),
            vmrun_retire=_text(ref["vmrun_retire"]),
            failed_vmrun_retire=_text(ref["failed_vmrun_retire"]),
        )
    kvm = {knob: _knob(read, knob, allowed) for knob, allowed in _KVM_KNOBS.items()}
    return _KvmKnobs(
        svme0=_text(kvm["svme0"]),
        hg=_text(kvm["hg"]),
        emul_mode_aware=_yes(kvm["emul_mode_aware"]),
        filter_on_sync=_yes(kvm["filter_on_sync"]),
        efer_timing=_text(kvm["efer_timing"]),
        vmrun_timing=_text(kvm["vmrun_timing"]),
        vmexit_timing=_text(kvm["vmexit_timing"]),
        forced_leave_timing=_text(kvm["forced_leave_timing"]),
        set_nested_state_timing=_text(kvm["set_nested_state_timing"]),
        vmrun_order=_text(kvm["vmrun_order"]),
    )


# --------------------------------------------------------------------------------------------
# Rules shared by both models
# --------------------------------------------------------------------------------------------


def _cpl_matches(selector: int, cpl: int) -> bool:
    """Spec §2 CPL match: OS counts at CPL 0, USR at CPL > 0 (semantics: CPL 1..3 are user)."""
    if cpl == 0:
        return bool(selector & OS)
    return bool(selector & USR)


def _mode_rule(selector: int, svme: bool, guest_mode: bool, svme0_counts: bool) -> bool:
    """The H/G table of spec §5 (APM Table 13-4).

    ``svme0_counts`` is the svme = 0 column for a selector with an H or G bit: False for the
    reference and ``svme0 = "off"``, True for ``svme0 = "ignore"`` (spec §6).
    """
    if not selector & HOST_GUEST:
        return True  # H = G = 0: counts in every column
    if not svme:
        return svme0_counts
    if guest_mode:
        return bool(selector & GUEST_ONLY)  # G and HG count in guest mode
    return bool(selector & HOST_ONLY)  # H and HG count in host mode


def _programmed_value(selector: int, enabled: bool, hg_honored: bool) -> int:
    """The value of a re-evaluation (spec §6): ``(eventsel & ~H) | G`` with EN replaced.

    With ``hg = reserved`` the selector is programmed as it is (only EN replaced). A selector
    of 0 programs 0 (spec §6: "eventsel_hw[i] is 0 while eventsel[i] is 0").
    """
    if selector == 0:
        return 0
    value = (selector & ~HOST_ONLY) | GUEST_ONLY if hg_honored else selector
    return (value & ~EN) | (EN if enabled else 0)


class _Vcpu:
    """The state both models share (spec §3), the filter and the counter arithmetic."""

    def __init__(self, n_pmcs: int) -> None:
        self.n_pmcs = n_pmcs
        self.all_pmcs = (1 << n_pmcs) - 1
        self.reads: list[int] = []  # an output, not state: RESET does not clear it
        # The filter is the VM's, not the vCPU's: none at the start of a trace, and RESET
        # leaves it as it is (spec §3, §10 change 4).
        self.filter_action = FilterAction.NONE
        self.filter_key = 0
        self.reset()

    def reset(self) -> None:
        """Spec §3 reset state: svme = 0, host mode, all PMCs globally enabled, selectors,
        counters, overflow and PMI counts zero. The filter is kept (spec §10 change 4)."""
        self.svme = False
        self.guest_mode = False
        self.global_ctrl = self.all_pmcs
        self.eventsel = [0] * self.n_pmcs
        self.counter = [0] * self.n_pmcs
        self.overflows = [0] * self.n_pmcs
        self.pmis = [0] * self.n_pmcs

    def globally_enabled(self, i: int) -> bool:
        """Spec §3: bit i of PerfCntGlobalCtl."""
        return bool(self.global_ctrl >> i & 1)

    def filter_ok(self, i: int) -> bool:
        """Spec §3 / semantics: the filter judges a counter by its selector's event key."""
        key = selector_key(self.eventsel[i])
        if self.filter_action == FilterAction.ALLOW:
            return key == self.filter_key
        if self.filter_action == FilterAction.DENY:
            return key != self.filter_key
        return True

    def set_filter(self, flag: int, key: int) -> None:
        """SET_FILTER: replace the filter (with action none the key is ignored)."""
        self.filter_action = FilterAction(flag)
        self.filter_key = key if self.filter_action != FilterAction.NONE else 0

    def write_global_ctrl(self, value: int) -> int:
        """WRMSR_GLOBAL_CTRL: masked to existing PMCs (spec §4). Returns the changed bits."""
        new = value & self.all_pmcs
        changed = new ^ self.global_ctrl
        self.global_ctrl = new
        return changed

    def add(self, i: int, n: int) -> None:
        """Spec §5 counter arithmetic: add n modulo 2^48; each wrap is an overflow, and a PMI
        when the INT bit of the counter's selector is set (semantics: several wraps if n is
        2^48 or more)."""
        total = self.counter[i] + n
        wraps = total >> COUNTER_BITS
        self.counter[i] = total & COUNTER_MASK
        self.overflows[i] += wraps
        if self.eventsel[i] & INT:
            self.pmis[i] += wraps

    def read(self, pmc: int) -> None:
        """READ: record counter[pmc], no side effect."""
        self.reads.append(self.counter[pmc])


# --------------------------------------------------------------------------------------------
# The architectural reference (spec §5)
# --------------------------------------------------------------------------------------------


class _Reference(_Vcpu):
    """What a bare-metal AMD CPU would count if L1 ran on it directly (spec §5)."""

    # The reference is the hardware: H/G are always honoured, so bits 40/41 are writable
    # (spec §2, semantics "Selector writes").
    reserved = RESERVED_BITS & ~HOST_GUEST

    def __init__(self, policy: _ReferenceKnobs, n_pmcs: int) -> None:
        self.policy = policy
        super().__init__(n_pmcs)

    def counts(self, i: int, key: int, cpl: int, guest_mode: bool) -> bool:
        """Spec §5 rules 1-4 for PMC i, an event ``key`` at ``cpl``, in ``guest_mode``."""
        selector = self.eventsel[i]
        return (
            bool(selector & EN)  # 1. EN ...
            and self.globally_enabled(i)  # ... and global_ctrl bit i
            and selector_key(selector) == key  # 2. the key ...
            and _cpl_matches(selector, cpl)  # ... and the CPL match
            and self.filter_ok(i)  # 3. the filter allows it
            and _mode_rule(selector, self.svme, guest_mode, svme0_counts=False)  # 4. mode
        )

    def count_event(self, key: int, cpl: int, n: int, guest_mode: bool | None = None) -> None:
        """Count n occurrences of an event on every PMC that counts it at this moment."""
        if guest_mode is None:
            guest_mode = self.guest_mode
        for i in range(self.n_pmcs):
            if self.counts(i, key, cpl, guest_mode):
                self.add(i, n)

    def retire(self, cpl: int = 0, branch: bool = False, guest_mode: bool | None = None) -> None:
        """One retired instruction (and a retired branch when flagged), spec §4."""
        self.count_event(INSTRUCTIONS_RETIRED, cpl, 1, guest_mode)
        if branch:
            self.count_event(BRANCHES_RETIRED, cpl, 1, guest_mode)

    def step(self, op: int, pmc: int, cpl: int, flag: int, key: int, value: int) -> None:
        """Apply one (valid) record, with the attribution table of spec §5."""
        policy = self.policy
        if op == Op.WRMSR_EVTSEL:
            # Attributed to the old selector (counting starts/stops when the WRMSR completes),
            # or to the new one with enabling_wrmsr = "new".
            if policy.enabling_wrmsr == "old":
                self.retire()
            self.eventsel[pmc] = value & ~self.reserved
            if policy.enabling_wrmsr == "new":
                self.retire()
        elif op == Op.WRMSR_CTR:
            # State after the write: the counter counts its own WRMSR on top of the value.
            self.counter[pmc] = value & COUNTER_MASK
            self.retire()
        elif op == Op.WRMSR_GLOBAL_CTRL:
            self.write_global_ctrl(value)  # state after the write
            self.retire()
        elif op == Op.WRMSR_EFER:
            # efer_retire: "new" (default, the seed thread's position) or "old".
            if policy.efer_retire == "old":
                self.retire()
            self.svme = bool(flag)
            if policy.efer_retire == "new":
                self.retire()
        elif op == Op.VMRUN:
            # vmrun_retire: "guest" (hardware counts VMRUN as a guest instruction, at L2's CPL:
            # the record's cpl, spec §10 change 1) or "host" (host mode, CPL 0).
            if policy.vmrun_retire == "host":
                self.retire(cpl=0)
            self.guest_mode = True
            if policy.vmrun_retire == "guest":
                self.retire(cpl=cpl)
        elif op == Op.VMRUN_FAIL:
            # failed_vmrun_retire: "host" (default) or "guest"; semantics: the guest reading
            # takes the mode rule with guest_mode = true and the current svme.
            self.retire(guest_mode=policy.failed_vmrun_retire == "guest")
        elif op in (Op.VMEXIT, Op.FORCED_LEAVE):
            self.guest_mode = False  # FORCED_LEAVE in host mode: a no-op, as this is
        elif op == Op.SET_NESTED_STATE:
            # Only the mode matters to the reference; the flow (set_nested_state or
            # forced_leave) is KVM's business.
            self.guest_mode = bool(flag)
        elif op == Op.SET_FILTER:
            self.set_filter(flag, key)
        elif op == Op.EMULATE:
            self.retire(cpl, branch=bool(flag))  # current state
        elif op == Op.RUN:
            self.count_event(key, cpl, value)
        elif op == Op.VMENTRY:
            pass  # the reference has no programmed value to refresh
        elif op == Op.READ:
            self.read(pmc)
        elif op == Op.RESET:
            self.reset()  # the filter survives (spec §10 change 4)

    def programmed(self, i: int) -> int:
        """Spec §8 / semantics: what an ideal hypervisor would program now (filter included,
        section 5 mode table, global control not folded in)."""
        selector = self.eventsel[i]
        enabled = (
            bool(selector & EN)
            and _mode_rule(selector, self.svme, self.guest_mode, svme0_counts=False)
            and self.filter_ok(i)
        )
        return _programmed_value(selector, enabled, hg_honored=True)


# --------------------------------------------------------------------------------------------
# The KVM model (spec §6)
# --------------------------------------------------------------------------------------------


class _Kvm(_Vcpu):
    """KVM (L0) virtualizing the PMU of L1 under one policy (spec §6)."""

    def __init__(self, policy: _KvmKnobs, n_pmcs: int) -> None:
        self.policy = policy
        self.hg_honored = policy.hg == "honored"
        # Spec §2: bits 40/41 are reserved (dropped on write) unless H/G is honoured.
        self.reserved = RESERVED_BITS & ~HOST_GUEST if self.hg_honored else RESERVED_BITS
        # Spec §6: one timing knob per flow, by the flow's name.
        self.timing = {
            "efer": policy.efer_timing,
            "vmrun": policy.vmrun_timing,
            "vmexit": policy.vmexit_timing,
            "forced_leave": policy.forced_leave_timing,
            "set_nested_state": policy.set_nested_state_timing,
        }
        super().__init__(n_pmcs)

    def reset(self) -> None:
        """Spec §6 RESET: everything to the reset state (nothing stale survives), except the
        filter, which is the VM's (kept by _Vcpu.reset)."""
        super().reset()
        self.eventsel_hw = [0] * self.n_pmcs
        self.emul_ok = [False] * self.n_pmcs
        self.pending: set[int] = set()

    # -- re-evaluation ---------------------------------------------------------------------

    def counts_in_mode(self, i: int) -> bool:
        """Whether PMC i counts in the current mode: spec §6 ``counts_in_mode``, the §5 table
        with the svme0 and hg knobs."""
        if not self.hg_honored:
            return True  # hg = reserved: every counter counts in both modes
        return _mode_rule(
            self.eventsel[i],
            self.svme,
            self.guest_mode,
            svme0_counts=self.policy.svme0 == "ignore",
        )

    def emul_ok_now(self, i: int) -> bool:
        """Spec §6: emul_ok[i] = eventsel.EN && (counts_in_mode(i) if emul_mode_aware)."""
        if not self.eventsel[i] & EN:
            return False
        return self.counts_in_mode(i) if self.policy.emul_mode_aware else True

    def reevaluate(self, i: int, honour_filter: bool) -> None:
        """Spec §6 re-evaluation of PMC i: sets eventsel_hw[i] and emul_ok[i]."""
        selector = self.eventsel[i]
        enabled = (
            bool(selector & EN)
            and self.counts_in_mode(i)
            and (self.filter_ok(i) if honour_filter else True)
        )
        self.eventsel_hw[i] = _programmed_value(selector, enabled, self.hg_honored)
        self.emul_ok[i] = self.emul_ok_now(i)

    def vm_entry(self) -> None:
        """Spec §6 VM-entry: re-evaluate every pending PMC (always honouring the filter), then
        nothing is pending."""
        for i in sorted(self.pending):
            self.reevaluate(i, honour_filter=True)
        self.pending.clear()

    def transition(self, flow: str, svme: bool, guest_mode: bool) -> None:
        """A change of (svme, guest_mode) made by one flow (spec §6 "transition"): ``flow`` is
        ``"efer"``, ``"vmrun"``, ``"vmexit"``, ``"forced_leave"`` or ``"set_nested_state"``."""
        if (svme, guest_mode) == (self.svme, self.guest_mode):
            return  # a record that leaves both unchanged makes no transition
        self.svme, self.guest_mode = svme, guest_mode
        with_hg = [i for i in range(self.n_pmcs) if self.eventsel[i] & HOST_GUEST]
        timing = self.timing[flow]
        if timing == "sync":
            # Re-evaluate at once; the filter only if filter_on_sync. `pending` is left as it
            # is (semantics "Synchronous re-evaluation").
            for i in with_hg:
                self.reevaluate(i, honour_filter=self.policy.filter_on_sync)
        elif timing == "deferred":
            self.pending.update(with_hg)  # KVM_REQ_PMU, serviced at the next VM-entry
        # timing "none": the flow is not hooked; eventsel_hw and emul_ok stay stale.

    # -- counting --------------------------------------------------------------------------

    def retire(self, cpl: int = 0, branch: bool = False) -> None:
        """Spec §6: an emulated instruction counts 1 on PMC i iff emul_ok[i], global_ctrl bit
        i, the filter allows it, key and CPL match (as they are when it retires)."""
        events = [INSTRUCTIONS_RETIRED] + ([BRANCHES_RETIRED] if branch else [])
        for key in events:
            for i in range(self.n_pmcs):
                selector = self.eventsel[i]
                if (
                    self.emul_ok[i]
                    and self.globally_enabled(i)
                    and self.filter_ok(i)
                    and selector_key(selector) == key
                    and _cpl_matches(selector, cpl)
                ):
                    self.add(i, 1)

    def run(self, key: int, cpl: int, n: int) -> None:
        """Spec §6 RUN: after the implicit VM-entry, hardware counts n on PMC i iff
        eventsel_hw[i].EN, global_ctrl bit i, key and CPL match (the filter is folded into
        eventsel_hw; semantics: key and OS/USR taken from eventsel_hw)."""
        self.vm_entry()
        for i in range(self.n_pmcs):
            hw = self.eventsel_hw[i]
            if (
                hw & EN
                and self.globally_enabled(i)
                and selector_key(hw) == key
                and _cpl_matches(hw, cpl)
            ):
                self.add(i, n)

    # -- records ---------------------------------------------------------------------------

    def step(self, op: int, pmc: int, cpl: int, flag: int, key: int, value: int) -> None:
        """Apply one (valid) record (spec §6 "Other moments" and "Counting in the KVM model")."""
        if op == Op.WRMSR_EVTSEL:
            # Drop the reserved bits; act only on a change: store; program eventsel_hw at once
            # with EN as written, before any mode or filter check (amd_pmu_set_msr, spec §10
            # change 5); recompute emul_ok at once; make the PMC pending, so that the next
            # VM-entry corrects EN. Either way the WRMSR then retires (after the handler).
            selector = value & ~self.reserved
            if selector != self.eventsel[pmc]:
                self.eventsel[pmc] = selector
                self.eventsel_hw[pmc] = _programmed_value(
                    selector, bool(selector & EN), self.hg_honored
                )
                self.emul_ok[pmc] = self.emul_ok_now(pmc)
                self.pending.add(pmc)
            self.retire()
        elif op == Op.WRMSR_CTR:
            self.counter[pmc] = value & COUNTER_MASK
            self.retire()  # after the handler: counts on top of the written value
        elif op == Op.WRMSR_GLOBAL_CTRL:
            changed = self.write_global_ctrl(value)
            # semantics: the affected PMCs are those whose global-control bit changed
            self.pending.update(i for i in range(self.n_pmcs) if changed >> i & 1)
            self.retire()
        elif op == Op.WRMSR_EFER:
            # The WRMSR retires after the handler, so it sees the new state only if the efer
            # flow re-evaluated synchronously.
            self.transition("efer", bool(flag), self.guest_mode)
            self.retire()
        elif op == Op.VMRUN:
            # vmrun_order: retired at CPL 0 before entering guest mode (pre-2026), or after the
            # entry and the vmrun flow at L2's CPL, the record's cpl (the fix: KVM is on vmcb02
            # by then, spec §10 change 1); either way with whatever emul_ok holds then.
            if self.policy.vmrun_order == "before_entry":
                self.retire(cpl=0)
            self.transition("vmrun", self.svme, True)
            if self.policy.vmrun_order == "after_entry":
                self.retire(cpl=cpl)
        elif op == Op.VMRUN_FAIL:
            self.retire()  # retired in host mode with the current emul_ok; nothing changes
        elif op == Op.VMEXIT:
            self.transition("vmexit", self.svme, False)
        elif op == Op.FORCED_LEAVE:
            self.transition("forced_leave", self.svme, False)  # no-op in host mode
        elif op == Op.SET_NESTED_STATE:
            # Entering guest mode goes through the same preparation as VMRUN (the
            # set_nested_state flow); leaving goes through svm_leave_nested (the forced_leave
            # flow), spec §4 and §10 change 2. To the mode in force: no transition.
            if flag:
                self.transition("set_nested_state", self.svme, True)
            else:
                self.transition("forced_leave", self.svme, False)
        elif op == Op.SET_FILTER:
            self.set_filter(flag, key)
            self.pending.update(range(self.n_pmcs))  # semantics: all PMCs, even if unchanged
        elif op == Op.EMULATE:
            self.retire(cpl, branch=bool(flag))
        elif op == Op.RUN:
            self.run(key, cpl, value)
        elif op == Op.VMENTRY:
            self.vm_entry()
        elif op == Op.READ:
            self.read(pmc)
        elif op == Op.RESET:
            self.reset()

    def programmed(self, i: int) -> int:
        """The value KVM has programmed for PMC i (possibly stale, or EN as written since a
        selector write)."""
        return self.eventsel_hw[i]


# --------------------------------------------------------------------------------------------
# Validation (spec §4, semantics "Validation")
# --------------------------------------------------------------------------------------------


def _check_n_pmcs(n_pmcs: object) -> int:
    if not isinstance(n_pmcs, SupportsIndex):
        raise ValueError(f"n_pmcs must be an integer in 1..{MAX_PMCS}, got {n_pmcs!r}")
    n = operator.index(n_pmcs)
    if not 1 <= n <= MAX_PMCS:
        raise ValueError(f"n_pmcs must be in 1..{MAX_PMCS}, got {n}")
    return n


def _as_trace(trace: object) -> Trace:
    if isinstance(trace, Trace):
        return trace
    if isinstance(trace, Mapping):
        return Trace.from_columns(trace)
    raise TypeError(f"expected a Trace, got {type(trace).__name__}")


def _record_error(
    op: int, pmc: int, cpl: int, flag: int, key: int, svme: bool, guest_mode: bool, n_pmcs: int
) -> str | None:
    """Why a record is invalid in the current (svme, guest_mode), or None; the rules in the
    order of docs/semantics.md. Fields the op does not use are not looked at."""
    # 1. unknown op
    if op > max(Op):
        return f"unknown op {op}"
    op = Op(op)
    # 2. pmc index
    if op in _OPS_WITH_PMC and pmc >= n_pmcs:
        return f"{op.name}: pmc index {pmc} >= n_pmcs ({n_pmcs})"
    # 3. CPL 0..3
    if op in _OPS_WITH_CPL and cpl > MAX_CPL:
        return f"{op.name}: cpl {cpl} outside 0..{MAX_CPL}"
    # 4. flag range
    if op in _FLAG_LIMIT and flag > _FLAG_LIMIT[op]:
        return f"{op.name}: flag {flag} outside 0..{_FLAG_LIMIT[op]}"
    # 5. event key width
    if op in _OPS_WITH_KEY and key >= KEY_LIMIT:
        return f"{op.name}: event key {key:#x} wider than 20 bits"
    # 6. mode rules
    if op in (Op.WRMSR_EFER, Op.VMRUN, Op.VMRUN_FAIL) and guest_mode:
        return f"{op.name} in guest mode"
    if op == Op.VMEXIT and not guest_mode:
        return "VMEXIT in host mode"
    if op in (Op.VMRUN, Op.VMRUN_FAIL) and not svme:
        # the CPU raises #UD: nothing retires (spec §4; VMRUN_FAIL since §10 change 3)
        return f"{op.name} with svme = 0"
    if op == Op.SET_NESTED_STATE and flag == 1 and not svme:
        return "SET_NESTED_STATE entering guest mode with svme = 0"
    return None


def _next_mode(op: int, flag: int, svme: bool, guest_mode: bool) -> tuple[bool, bool]:
    """(svme, guest_mode) after a valid record; the same in every policy (semantics)."""
    if op == Op.WRMSR_EFER:
        return bool(flag), guest_mode
    if op == Op.VMRUN:
        return svme, True
    if op in (Op.VMEXIT, Op.FORCED_LEAVE):
        return svme, False
    if op == Op.SET_NESTED_STATE:
        return svme, bool(flag)
    if op == Op.RESET:
        return False, False
    return svme, guest_mode


def _validate(trace: Trace, n_pmcs: int) -> None:
    svme, guest_mode = False, False
    for index, (op, pmc, cpl, flag, key, _value) in enumerate(trace.records()):
        reason = _record_error(op, pmc, cpl, flag, key, svme, guest_mode, n_pmcs)
        if reason is not None:
            raise TraceError(index, reason)
        svme, guest_mode = _next_mode(op, flag, svme, guest_mode)


def validate(trace: Trace, *, n_pmcs: int = 6) -> None:
    """Check ``trace`` against the record rules (model.md section 4, docs/semantics.md).

    Raises :class:`~svmpmu.TraceError` naming the first invalid record and the rule it breaks,
    and ``ValueError`` when ``n_pmcs`` is outside 1..6. Returns None for a valid trace.
    """
    n = _check_n_pmcs(n_pmcs)
    _validate(_as_trace(trace), n)


# --------------------------------------------------------------------------------------------
# Simulation and comparison (spec §8)
# --------------------------------------------------------------------------------------------


def _u64(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


def _replay(
    trace: Trace,
    policy: _KvmKnobs | _ReferenceKnobs,
    n_pmcs: int,
    timeline: bool,
    snapshots: bool,
) -> tuple[Result, list[tuple[int, ...]]]:
    """Run a validated trace; optionally keep (counters, overflows, pmis) after each record."""
    machine: _Reference | _Kvm
    if isinstance(policy, _ReferenceKnobs):
        machine = _Reference(policy, n_pmcs)
    else:
        machine = _Kvm(policy, n_pmcs)
    hw_enabled: list[int] = []
    svme: list[bool] = []
    guest_mode: list[bool] = []
    states: list[tuple[int, ...]] = []
    for record in trace.records():
        machine.step(*record)
        if timeline:
            hw_enabled.append(sum(1 << i for i in range(n_pmcs) if machine.programmed(i) & EN))
            svme.append(machine.svme)
            guest_mode.append(machine.guest_mode)
        if snapshots:
            states.append((*machine.counter, *machine.overflows, *machine.pmis))
    result = Result(
        counters=_u64(machine.counter),
        eventsel_hw=_u64([machine.programmed(i) for i in range(n_pmcs)]),
        overflows=_u64(machine.overflows),
        pmis=_u64(machine.pmis),
        reads=_u64(machine.reads),
        hw_enabled=np.array(hw_enabled, dtype=np.uint8) if timeline else None,
        svme=np.array(svme, dtype=bool) if timeline else None,
        guest_mode=np.array(guest_mode, dtype=bool) if timeline else None,
    )
    return result, states


def simulate(
    trace: Trace, policy: PolicyLike = "final", *, n_pmcs: int = 6, timeline: bool = False
) -> Result:
    """Replay ``trace`` under ``policy`` (a :class:`~svmpmu.Policy` or a preset name).

    ``model="arch"`` is the architectural reference (model.md section 5), ``model="kvm"`` the
    KVM model (section 6). The whole trace is validated first (:class:`~svmpmu.TraceError` at
    the first invalid record, nothing counted); ``n_pmcs`` outside 1..6 is a ``ValueError``.
    Returns a :class:`~svmpmu.Result`: the final ``counters``, ``eventsel_hw``, ``overflows``
    and ``pmis`` per PMC, the ``reads`` in order, and with ``timeline=True`` the per-record
    ``hw_enabled`` bitmask, ``svme`` and ``guest_mode`` after each record.
    """
    resolved = _resolve(policy)
    n = _check_n_pmcs(n_pmcs)
    checked = _as_trace(trace)
    _validate(checked, n)
    result, _ = _replay(checked, resolved, n, timeline=timeline, snapshots=False)
    return result


def compare(
    trace: Trace, policy: PolicyLike, reference: PolicyLike = "arch", *, n_pmcs: int = 6
) -> Comparison:
    """Simulate ``policy`` and ``reference`` on ``trace`` and locate their divergence.

    Following model.md section 8 and docs/semantics.md: they diverge when a READ value or a
    final counter, overflow count or PMI count differs; ``first_divergence`` is then the index
    of the first record after which the counters, overflow or PMI counts differ (None when
    they do not diverge); ``differing_pmcs`` are the PMCs whose final counter, overflows or
    PMIs differ, ``differing_reads`` the positions in ``reads`` whose values differ.
    """
    resolved = _resolve(policy)
    resolved_reference = _resolve(reference)
    n = _check_n_pmcs(n_pmcs)
    checked = _as_trace(trace)
    _validate(checked, n)
    ours, our_states = _replay(checked, resolved, n, timeline=False, snapshots=True)
    theirs, their_states = _replay(checked, resolved_reference, n, timeline=False, snapshots=True)

    differing_pmcs = tuple(
        i
        for i in range(n)
        if ours.counters[i] != theirs.counters[i]
        or ours.overflows[i] != theirs.overflows[i]
        or ours.pmis[i] != theirs.pmis[i]
    )
    differing_reads = tuple(k for k in range(len(ours.reads)) if ours.reads[k] != theirs.reads[k])
    diverges = bool(differing_pmcs or differing_reads)
    first_divergence = None
    if diverges:
        for index, (a, b) in enumerate(zip(our_states, their_states)):
            if a != b:
                first_divergence = index
                break
    return Comparison(
        diverges=diverges,
        first_divergence=first_divergence,
        differing_pmcs=differing_pmcs,
        differing_reads=differing_reads,
        policy=ours,
        reference=theirs,
    )
