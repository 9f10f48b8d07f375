"""The TraceBuilder code of a trace: :func:`to_builder_code` writes Python that rebuilds it
with :class:`~svmpmu.TraceBuilder`, selectors written with :func:`~svmpmu.eventsel` or as
named bits, and every record the builder's methods cannot express appended with
``.extend(Trace(...))``.
"""

from __future__ import annotations

from svmpmu.model import (
    BRANCHES_RETIRED,
    EN,
    GUEST_ONLY,
    HOST_ONLY,
    INSTRUCTIONS_RETIRED,
    INT,
    OS,
    USR,
    FilterAction,
    Op,
)
from svmpmu.trace import Trace

from .replay import _Record

_SELECTOR_FIELDS = 0xFF | 0xFF00 | 0xF << 32
"""Event select (bits 7:0 and 35:32) and unit mask (15:8) of a selector."""

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
