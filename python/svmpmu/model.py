"""Register bits, event keys and record op codes (model.md sections 2 and 4)."""

from __future__ import annotations

import enum

__all__ = [
    "BRANCHES_RETIRED",
    "CPL_USER",
    "COUNTER_BITS",
    "COUNTER_MASK",
    "EN",
    "FilterAction",
    "GUEST_ONLY",
    "HOST_ONLY",
    "INSTRUCTIONS_RETIRED",
    "INT",
    "MAX_PMCS",
    "OS",
    "Op",
    "RESERVED_BITS",
    "USR",
    "event_key",
    "eventsel",
    "selector_key",
]

USR = 1 << 16
"""PerfEvtSel bit 16: count at CPL > 0."""
OS = 1 << 17
"""PerfEvtSel bit 17: count at CPL 0."""
INT = 1 << 20
"""PerfEvtSel bit 20: raise a PMI when the counter wraps."""
EN = 1 << 22
"""PerfEvtSel bit 22: counter enable."""
GUEST_ONLY = 1 << 40
"""PerfEvtSel bit 40 (G): count only in guest mode (when EFER.SVME = 1)."""
HOST_ONLY = 1 << 41
"""PerfEvtSel bit 41 (H): count only in host mode (when EFER.SVME = 1)."""
RESERVED_BITS = 0xFFFF_FFF0_0028_0000
"""Selector bits a guest write drops (19, 21, 36..63); 40/41 are kept when H/G is honoured."""

COUNTER_BITS = 48
"""Width of a counter: counters wrap modulo 2**48."""
COUNTER_MASK = (1 << COUNTER_BITS) - 1
MAX_PMCS = 6
"""AMD core PMCs: a trace is simulated with 1 to 6 of them."""
CPL_USER = 3
"""The CPL that TraceBuilder uses for user mode; any CPL in 1..3 counts as user."""

INSTRUCTIONS_RETIRED = 0x0C0
"""Event key of 'retired instructions' (event 0x0C0, unit mask 0)."""
BRANCHES_RETIRED = 0x0C2
"""Event key of 'retired branch instructions' (event 0x0C2, unit mask 0)."""


class Op(enum.IntEnum):
    """Record op codes, the values of the ``op`` column of a trace (model.md section 4)."""

    WRMSR_EVTSEL = 0
    WRMSR_CTR = 1
    WRMSR_GLOBAL_CTRL = 2
    WRMSR_EFER = 3
    VMRUN = 4
    VMRUN_FAIL = 5
    VMEXIT = 6
    FORCED_LEAVE = 7
    SET_NESTED_STATE = 8
    SET_FILTER = 9
    EMULATE = 10
    RUN = 11
    VMENTRY = 12
    READ = 13
    RESET = 14


class FilterAction(enum.IntEnum):
    """The ``flag`` of a SET_FILTER record."""

    NONE = 0
    ALLOW = 1
    DENY = 2


def event_key(event: int, unit_mask: int = 0) -> int:
    """The 20-bit key of an event: ``event | unit_mask << 12`` (model.md section 2)."""
    if not 0 <= event < 1 << 12:
        raise ValueError(f"event number {event:#x} does not fit in 12 bits")
    if not 0 <= unit_mask < 1 << 8:
        raise ValueError(f"unit mask {unit_mask:#x} does not fit in 8 bits")
    return event | unit_mask << 12


def selector_key(selector: int) -> int:
    """The event key a PerfEvtSel value counts: event bits 7:0 and 35:32, unit mask 15:8."""
    event = (selector & 0xFF) | ((selector >> 32) & 0xF) << 8
    return event | ((selector >> 8) & 0xFF) << 12


def eventsel(
    event: int,
    unit_mask: int = 0,
    *,
    usr: bool = True,
    os: bool = True,
    enable: bool = True,
    host_only: bool = False,
    guest_only: bool = False,
    interrupt: bool = False,
) -> int:
    """Build a PerfEvtSel value.

    ``event`` is the 12-bit event number (or a key from :func:`event_key` with a zero unit mask,
    such as :data:`INSTRUCTIONS_RETIRED`); ``unit_mask`` the 8-bit unit mask.

    >>> hex(eventsel(INSTRUCTIONS_RETIRED, guest_only=True))
    '0x100004300c0'
    """
    if not 0 <= event < 1 << 12:
        raise ValueError(f"event number {event:#x} does not fit in 12 bits")
    if not 0 <= unit_mask < 1 << 8:
        raise ValueError(f"unit mask {unit_mask:#x} does not fit in 8 bits")
    value = (event & 0xFF) | (event >> 8) << 32 | unit_mask << 8
    value |= USR if usr else 0
    value |= OS if os else 0
    value |= EN if enable else 0
    value |= HOST_ONLY if host_only else 0
    value |= GUEST_ONLY if guest_only else 0
    value |= INT if interrupt else 0
    return value
