"""Import of KVM's trace events: ``trace-cmd report`` output and tracefs ``trace`` files.

:func:`read_ftrace` maps the kvm events of a capture to records, one :class:`~svmpmu.Trace` per
vCPU. The parsing is done by the Rust core; docs/ftrace.md describes the formats accepted, the
mapping of each event, what is skipped and why, and the assumptions (the RUN estimate and the
CPLs, which a trace does not carry).
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Union

from . import _core
from .files import TraceFileError, read_file_bytes
from .model import CPL_USER, INSTRUCTIONS_RETIRED
from .trace import Trace

__all__ = ["DEFAULT_RATE", "START_DESCRIPTIONS", "FtraceImport", "FtraceSource", "read_ftrace"]

DEFAULT_RATE = 1000.0
"""Events a RUN record counts per microsecond of guest time unless told otherwise: one a
nanosecond, an estimate (a trace says how long a vCPU ran, not how many instructions)."""

FtraceSource = Union[
    str,
    os.PathLike[str],
    bytes,
    bytearray,
    memoryview,
    IO[str],
    IO[bytes],
    Iterable[str],
    Iterable[bytes],
]
"""What :func:`read_ftrace` reads: a path (a ``str`` without a newline, or an ``os.PathLike``),
the text itself (``bytes``, or a ``str`` holding a newline, as :func:`svmpmu.read_text` takes
it), an open file (text or binary), or an iterable of lines (``str`` or ``bytes``)."""

_TRACE_DAT_MAGIC = b"\x17\x08\x44tracing"

START_DESCRIPTIONS = {
    "reset": "from the reset state",
    "svme": "L1 had EFER.SVME set before the capture: starts with WRMSR_EFER(svme=1)",
    "guest": "L2 ran when the capture began: starts with WRMSR_EFER(svme=1), "
    "SET_NESTED_STATE(guest_mode=1)",
}
"""What each value of :attr:`FtraceImport.start` means."""


@dataclass(frozen=True)
class FtraceImport:
    """What :func:`read_ftrace` found in a capture.

    Attributes:
        traces: one trace per vCPU id, in id order. Every trace is valid (model.md section 4):
            :func:`svmpmu.simulate` accepts it.
        skipped: lines that map to no record, by event name (``"kvm_fpu"``) or, for the events
            the importer knows, by ``"event: reason"`` (``"kvm_msr: the access faulted
            (#GP)"``); most frequent first. docs/ftrace.md lists the reasons.
        unparsed: lines that could not be read: their 1-based line number and text (for a
            wrapped event, its first line).
        mapped: the records made, by op name (``"RUN"``, ``"VMRUN"``, ...).
        start: how each vCPU's trace starts: ``"reset"``, ``"svme"`` or ``"guest"``
            (:data:`START_DESCRIPTIONS`).
        lines: the number of lines read.
        rate: the RUN estimate used, in events per microsecond.
    """

    traces: dict[int, Trace]
    skipped: dict[str, int] = field(default_factory=dict)
    unparsed: list[tuple[int, str]] = field(default_factory=list)
    mapped: dict[str, int] = field(default_factory=dict)
    start: dict[int, str] = field(default_factory=dict)
    lines: int = 0
    rate: float = DEFAULT_RATE

    def format(self, limit: int = 10) -> str:
        """A summary for people: the vCPUs and their records, what was mapped, skipped and
        could not be read (at most ``limit`` entries of each list)."""
        out = [f"{self.lines} lines, {len(self.traces)} vCPU(s)"]
        for vcpu, trace in self.traces.items():
            start = self.start.get(vcpu, "reset")
            out.append(f"  vCPU {vcpu}: {len(trace)} records ({START_DESCRIPTIONS[start]})")
        if self.mapped:
            out.append(
                "mapped: " + ", ".join(f"{name} {count}" for name, count in self.mapped.items())
            )
        if self.mapped.get("RUN"):
            out.append(
                f"  RUN records estimate {self.rate:g} events per microsecond of guest time"
                " (the trace does not count instructions)"
            )
        if self.skipped:
            out.append(f"skipped: {sum(self.skipped.values())} lines")
            out.extend(f"  {count:6d}  {key}" for key, count in list(self.skipped.items())[:limit])
            if len(self.skipped) > limit:
                out.append(f"  ... {len(self.skipped) - limit} more kinds")
        if self.unparsed:
            out.append(f"unparsed: {len(self.unparsed)} lines")
            out.extend(f"  line {number}: {text}" for number, text in self.unparsed[:limit])
            if len(self.unparsed) > limit:
                out.append(f"  ... {len(self.unparsed) - limit} more")
        return "\n".join(out)


def _as_line(line: str | bytes) -> bytes:
    data = line.encode("utf-8", "surrogateescape") if isinstance(line, str) else bytes(line)
    return data if data.endswith(b"\n") else data + b"\n"


def _read(source: FtraceSource) -> tuple[bytes, str | None]:
    """The bytes of ``source`` and, when it names a file, its name."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), None
    if isinstance(source, str) and "\n" in source:
        return source.encode("utf-8", "surrogateescape"), None
    if isinstance(source, (str, os.PathLike)):
        path = pathlib.Path(source)
        return read_file_bytes(path), str(path)
    read = getattr(source, "read", None)
    if callable(read):
        data = read()
        name = getattr(source, "name", None)
        raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else bytes(data)
        return raw, name if isinstance(name, str) else None
    if isinstance(source, Iterable):
        return b"".join(_as_line(line) for line in source), None
    raise TypeError(
        "read_ftrace reads a path, bytes, an open file or an iterable of lines,"
        f" not {type(source).__name__}"
    )


_CPL_MAX = 3


def _check_cpl(name: str, cpl: int) -> int:
    if isinstance(cpl, bool) or not isinstance(cpl, int):
        raise TypeError(f"{name} must be an int, got {type(cpl).__name__}")
    if not 0 <= cpl <= _CPL_MAX:
        raise ValueError(f"{name} must be 0..{_CPL_MAX}, got {cpl}")
    return cpl


def read_ftrace(
    source: FtraceSource,
    *,
    rate: float = DEFAULT_RATE,
    event: int = INSTRUCTIONS_RETIRED,
    run_cpl: int = CPL_USER,
    vmrun_cpl: int = 0,
    reads: bool = True,
    infer_start: bool = True,
) -> FtraceImport:
    """Import the kvm events of a ``trace-cmd report`` output or a tracefs ``trace`` file.

    Args:
        source: a path, the text (``bytes``, or a ``str`` holding a newline), an open file
            (text or binary) or an iterable of lines. Lines with and without the
            ``task-pid [cpu] flags timestamp:`` prefix, trace-cmd's and the kernel's spellings
            of each event, and events wrapped over several indented lines are all read
            (docs/ftrace.md, "Formats").
        rate: events per microsecond that a RUN record counts for the guest time between a
            ``kvm_entry`` and the next ``kvm_exit`` of its vCPU: an estimate, since the trace
            does not say how many instructions ran. A run shorter than one event is skipped.
        event: the event key of the RUN records (default: instructions retired).
        run_cpl: the CPL of the RUN records (default 3, user).
        vmrun_cpl: the CPL at which VMRUN resumes L2 (vmcb12's save.cpl, not in the trace).
        reads: map reads of a counter (``kvm_msr: msr_read`` of PerfCtr*i*) to READ records.
        infer_start: when a vCPU's first nested event shows that L1 had set EFER.SVME, or
            that L2 ran, before the capture began, start its trace with the records that
            establish that state (:attr:`FtraceImport.start`); else every trace starts from
            the reset state and such events are skipped.

    Returns:
        The traces per vCPU, with what was skipped and what could not be read.

    Raises:
        TraceFileError: for a trace-cmd binary ``trace.dat`` (run ``trace-cmd report``
            first), a binary file, or a file without any kvm event.
        ValueError: for an option out of its range.
    """
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise TypeError(f"rate must be a number, got {type(rate).__name__}")
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be a positive number of events per microsecond, got {rate}")
    if isinstance(event, bool) or not isinstance(event, int):
        raise TypeError(f"event must be an int (an event key), got {type(event).__name__}")
    if not 0 <= event < 1 << 20:
        raise ValueError(f"event key {event:#x} does not fit in 20 bits")
    data, name = _read(source)
    where = f"{name}: " if name else ""
    if data.startswith(_TRACE_DAT_MAGIC):
        raise TraceFileError(
            f"{where}a trace-cmd binary file (trace.dat): run 'trace-cmd report -i FILE >"
            " FILE.txt' and import its text output"
        )
    if b"\0" in data[:4096]:
        raise TraceFileError(f"{where}a binary file, not a trace-cmd report or tracefs trace")
    vcpus, skipped, unparsed, mapped, lines, kvm_events = _core.read_ftrace(
        data,
        float(rate),
        event,
        _check_cpl("run_cpl", run_cpl),
        _check_cpl("vmrun_cpl", vmrun_cpl),
        bool(reads),
        bool(infer_start),
    )
    if kvm_events == 0:
        raise TraceFileError(
            f"{where}no KVM trace event (kvm_*) in {lines} lines: capture with e.g."
            " 'trace-cmd record -e kvm' and import the output of 'trace-cmd report'"
        )
    return FtraceImport(
        traces={vcpu: Trace(*columns) for vcpu, columns, _ in vcpus},
        skipped=dict(skipped),
        unparsed=list(unparsed),
        mapped=dict(mapped),
        start={vcpu: start for vcpu, _, start in vcpus},
        lines=lines,
        rate=float(rate),
    )
