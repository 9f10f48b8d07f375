"""A trace's timeline as Chrome trace-event JSON, for ui.perfetto.dev and chrome://tracing.

The output is the JSON Object Format of the Trace Event Format: ``{"traceEvents": [...],
"displayTimeUnit": "ns", "otherData": {...}}``. Everything is in one process (``pid``) named
``svmpmu: POLICY vs REFERENCE``; docs/pictures.md lists its tracks and events. Times are
*record time*, not wall time: record ``i`` is at ``start_us + i * us_per_record``
microseconds (1 µs a record by default), and the state after it lasts until the next record.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from .files import atomic_write
from .policy import PolicyLike
from .timeline import MODE_NAMES, Timeline, timeline
from .trace import Trace, format_record

__all__ = [
    "COUNTER_ARG",
    "DIVERGENCE_EVENT",
    "EN_EVENT",
    "MODE_TRACK",
    "PerfettoTrace",
    "perfetto",
    "trace_events",
    "write_perfetto",
]

PerfettoTrace = dict[str, Any]
"""A trace-event JSON object: ``traceEvents``, ``displayTimeUnit`` and ``otherData``."""

MODE_TRACK = "mode"
"""The thread (track) holding the mode spans, named by :data:`~svmpmu.timeline.MODE_NAMES`."""
EN_EVENT = "EN"
"""The name of a span during which ``eventsel_hw``.EN is set."""
COUNTER_ARG = "count"
"""The argument of the counter events (Perfetto names a counter track ``NAME count``)."""
DIVERGENCE_EVENT = "first divergence"
"""The instant event at the first record after which the two models' counts differ."""

_CATEGORY = "svmpmu"
_MODE_TID = 1


def _en_tid(pmc: int, reference: bool) -> int:
    """The thread of a PMC's EN spans: 10, 11 for PMC 0 (policy, reference), 12, 13 for PMC 1..."""
    return 10 + 2 * pmc + int(reference)


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The runs of equal values of a 1-D array: (first index, index after the last) of each."""
    change = np.flatnonzero(values[1:] != values[:-1]) + 1
    return np.concatenate(([0], change)), np.concatenate((change, [len(values)]))


def _metadata(name: str, pid: int, tid: int, args: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "ph": "M", "pid": pid, "tid": tid, "args": args}


def _check_time(us_per_record: float, start_us: float) -> None:
    for name, value in (("us_per_record", us_per_record), ("start_us", start_us)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (math.isfinite(us_per_record) and us_per_record > 0):
        raise ValueError(f"us_per_record must be finite and positive, got {us_per_record!r}")
    if not (math.isfinite(start_us) and start_us >= 0):
        raise ValueError(f"start_us must be finite and at least 0, got {start_us!r}")


class _Clock:
    """Record indices to trace-event timestamps (microseconds of record time)."""

    def __init__(self, us_per_record: float, start_us: float) -> None:
        integral = float(us_per_record).is_integer() and float(start_us).is_integer()
        self.scale: float = int(us_per_record) if integral else float(us_per_record)
        self.start: float = int(start_us) if integral else float(start_us)

    def times(self, records: np.ndarray) -> list[float]:
        """The timestamps of records (ints when both the scale and the start are)."""
        values = self.start + records.astype(np.int64) * self.scale
        return values.tolist()  # type: ignore[no-any-return]


def trace_events(
    tl: Timeline,
    trace: Trace,
    *,
    us_per_record: float = 1.0,
    start_us: float = 0.0,
    pid: int = 1,
) -> list[dict[str, Any]]:
    """The trace events of a :class:`~svmpmu.timeline.Timeline` of ``trace`` (see the module
    docstring): metadata, then the mode spans, the EN spans, the counters and the divergence."""
    _check_time(us_per_record, start_us)
    clock = _Clock(us_per_record, start_us)
    out: list[dict[str, Any]] = [
        _metadata("process_name", pid, 0, {"name": f"svmpmu: {tl.policy} vs {tl.reference}"}),
        _metadata("thread_name", pid, _MODE_TID, {"name": MODE_TRACK}),
        _metadata("thread_sort_index", pid, _MODE_TID, {"sort_index": 0}),
    ]
    for pmc in range(tl.n_pmcs):
        for reference, policy in ((False, tl.policy), (True, tl.reference)):
            tid = _en_tid(pmc, reference)
            side = "reference" if reference else "policy"
            name = f"PMC {pmc} EN ({side} {policy})"
            out.append(_metadata("thread_name", pid, tid, {"name": name}))
            out.append(_metadata("thread_sort_index", pid, tid, {"sort_index": tid}))
    if len(tl) == 0:
        return out

    def spans(tid: int, values: np.ndarray, names: dict[int, str]) -> None:
        """One X event for each run of a value that has a name in ``names``."""
        starts, ends = _runs(values)
        keep = np.isin(values[starts], list(names))
        starts, ends = starts[keep], ends[keep]
        for value, first, end, ts, stop in zip(
            values[starts].tolist(),
            starts.tolist(),
            ends.tolist(),
            clock.times(starts),
            clock.times(ends),
        ):
            out.append(
                {
                    "name": names[value],
                    "cat": _CATEGORY,
                    "ph": "X",
                    "pid": pid,
                    "tid": tid,
                    "ts": ts,
                    "dur": stop - ts,
                    "args": {"first_record": first, "last_record": end - 1},
                }
            )

    spans(_MODE_TID, tl.mode, dict(enumerate(MODE_NAMES)))
    for pmc in range(tl.n_pmcs):
        for reference in (False, True):
            enabled = tl.enabled(pmc, reference=reference)
            spans(_en_tid(pmc, reference), enabled, {True: EN_EVENT})
    for pmc in range(tl.n_pmcs):
        for side, counts in (("policy", tl.counts), ("reference", tl.reference_counts)):
            column = counts[:, pmc]
            starts, _ = _runs(column)
            name = f"PMC {pmc} {side}"
            out.extend(
                {
                    "name": name,
                    "ph": "C",
                    "pid": pid,
                    "tid": _MODE_TID,
                    "ts": ts,
                    "args": {COUNTER_ARG: value},
                }
                for ts, value in zip(clock.times(starts), column[starts].tolist())
            )
    if tl.first_divergence is not None:
        k = tl.first_divergence
        out.append(
            {
                "name": DIVERGENCE_EVENT,
                "cat": _CATEGORY,
                "ph": "i",
                "s": "p",
                "pid": pid,
                "tid": _MODE_TID,
                "ts": clock.times(np.array([k]))[0],
                "args": {
                    "record": k,
                    "op": format_record(*next(trace[k : k + 1].records())),
                    "policy": tl.counts[k].tolist(),
                    "reference": tl.reference_counts[k].tolist(),
                },
            }
        )
    return out


def perfetto(
    trace: Trace,
    *,
    policy: PolicyLike = "final",
    reference: PolicyLike = "arch",
    n_pmcs: int | None = None,
    us_per_record: float = 1.0,
    start_us: float = 0.0,
    pid: int = 1,
) -> PerfettoTrace:
    """The timeline of ``trace`` under ``policy`` and ``reference`` as a trace-event JSON object
    (a dict that ``json.dumps`` writes), for ui.perfetto.dev or chrome://tracing.

    Record ``i`` is at ``start_us + i * us_per_record`` microseconds of *record time* (not wall
    time); pass a scale and a start to line the model up with a host trace, and a ``pid`` not
    used by that trace. Runs of equal state are merged into one span and a counter event is
    written only where a count changes, so the size follows the changes, not the records.
    ``n_pmcs`` as for :func:`~svmpmu.timeline.timeline`.
    """
    _check_time(us_per_record, start_us)  # before the replay
    tl = timeline(trace, policy, reference, n_pmcs=n_pmcs)
    return {
        "traceEvents": trace_events(
            tl, trace, us_per_record=us_per_record, start_us=start_us, pid=pid
        ),
        "displayTimeUnit": "ns",
        "otherData": {
            "generator": "svmpmu",
            "policy": str(tl.policy),
            "reference": str(tl.reference),
            "records": len(tl),
            "n_pmcs": tl.n_pmcs,
            "clock": f"record time: record i at {start_us} + i * {us_per_record} us",
            "first_divergence": tl.first_divergence,
        },
    }


def write_perfetto(
    trace: Trace,
    path: str | os.PathLike[str],
    *,
    policy: PolicyLike = "final",
    reference: PolicyLike = "arch",
    n_pmcs: int | None = None,
    us_per_record: float = 1.0,
    start_us: float = 0.0,
    pid: int = 1,
) -> None:
    """Write :func:`perfetto` of ``trace`` to ``path`` as JSON (open it at ui.perfetto.dev).

    The file is written to a temporary file in the same directory and renamed over ``path``,
    so a failure leaves no half-written file.
    """
    data = perfetto(
        trace,
        policy=policy,
        reference=reference,
        n_pmcs=n_pmcs,
        us_per_record=us_per_record,
        start_us=start_us,
        pid=pid,
    )
    encoded = json.dumps(data, separators=(",", ":")).encode()
    atomic_write(path, lambda f: f.write(encoded))
