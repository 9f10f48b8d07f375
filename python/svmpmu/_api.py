"""The calls into the Rust core: simulate, compare and validate one trace, generate and
replay batches; and the one validation layer every entry point shares.

The checks here run before anything is allocated: integers (a Python or numpy integer, never a
bool, within its range; the message names the argument and the range), the memory a result
will need against the memory the machine has (``MemoryError``, naming both), and the arrays
that cross into the core (dtype, one dimension, contiguous, equal lengths). The core checks
again what only it can know (the READ count of a trace, an address-space limit) and raises
``MemoryError`` for an allocation it cannot make; a long call stops at Ctrl-C
(``KeyboardInterrupt``) within a few milliseconds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import _core
from .batch import TraceBatch
from .mix import Mix
from .model import MAX_PMCS
from .policy import PolicyLike, resolve_policy
from .result import Comparison, Result
from .trace import COLUMNS, Columns, Trace

__all__ = ["BatchResult", "compare", "generate", "simulate", "simulate_batch", "validate"]

MAX_THREADS = 1024
"""The most worker threads a call may ask for."""

MAX_SIZE = 2**63 - 1
"""The largest count (of traces, of records) a call takes: the core's ``usize``."""

_BOUND_TEXT = {MAX_SIZE: "2**63-1", 2**64 - 1: "2**64-1"}


def _int(name: str, value: object, lo: int, hi: int) -> int:
    """``value`` as an int: a Python or numpy integer (not a bool) in ``lo..hi``.

    TypeError or ValueError naming the argument (``name``) and the range."""
    if type(value) is int and lo <= value <= hi:
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    v = int(value)
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be {lo}..{_BOUND_TEXT.get(hi, hi)}, got {v}")
    return v


def _n_pmcs(n_pmcs: object) -> int:
    return _int("n_pmcs", n_pmcs, 1, MAX_PMCS)


def _threads(threads: object) -> int | None:
    if threads is None:
        return None
    if isinstance(threads, (bool, np.bool_)) or not isinstance(threads, (int, np.integer)):
        raise TypeError(f"threads must be an int or None, got {type(threads).__name__}")
    return _int("threads", threads, 1, MAX_THREADS)


def _check_threads(threads: object) -> None:
    _threads(threads)


def _check_run(
    n_traces: object,
    length: object,
    seed: object,
    threads: object,
    *,
    n_pmcs: object = None,
    traces_name: str = "n_traces",
) -> tuple[int, int, int, int | None]:
    """The arguments shared by generate() and fuzz(), checked before any work; returned as
    ints (``traces_name``: what the caller calls the number of traces)."""
    checked = (
        _int(traces_name, n_traces, 0, MAX_SIZE),
        _int("length", length, 0, MAX_SIZE),
        _int("seed", seed, 0, 2**64 - 1),
        _threads(threads),
    )
    if n_pmcs is not None:
        _n_pmcs(n_pmcs)
    return checked


def _available_memory() -> int | None:
    """The memory that can be had without swapping: MemAvailable of /proc/meminfo, else the
    free physical pages (``os.sysconf``); None when neither is known."""
    try:
        with Path("/proc/meminfo").open("rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


_CHECKED_FROM = 64 << 20
"""Results smaller than this are not checked against the memory available (reading
/proc/meminfo costs tens of microseconds); the core still allocates them fallibly."""


def _check_memory(call: str, what: str, nbytes: int) -> None:
    """MemoryError, before anything is allocated, when ``nbytes`` for ``what`` exceed the
    memory the machine has available: the allocation might succeed (memory is overcommitted)
    and the process be killed while it fills it."""
    if nbytes < _CHECKED_FROM:
        return
    available = _available_memory()
    if available is not None and nbytes > available:
        raise MemoryError(
            f"{call}: cannot allocate {nbytes} bytes ({nbytes / 2**30:.1f} GiB) for {what}: "
            f"the machine has {available} bytes ({available / 2**30:.1f} GiB) available"
        )


def _array_error(
    argument: str, name: str, a: object, dtype: np.dtype, length: int | None
) -> TypeError | ValueError | None:
    """What is wrong with ``a`` as the array ``name`` of ``argument``, which the core takes
    as a contiguous one-dimensional array of ``dtype`` (``length`` long, unless None): a
    TypeError (not an array, another dtype) or a ValueError, or None."""
    what = f"{argument}: {name}"
    if not isinstance(a, np.ndarray):
        return TypeError(f"{what} must be a numpy array, got {type(a).__name__}")
    if a.dtype != dtype:
        return TypeError(f"{what} must have dtype {dtype}, got {a.dtype}")
    if a.ndim != 1:
        return ValueError(f"{what} must be one-dimensional, got shape {a.shape}")
    if not a.flags.c_contiguous:
        return ValueError(f"{what} must be contiguous")
    if length is not None and len(a) != length:
        return ValueError(f"{what} has {len(a)} entries, but column 'op' has {length}")
    return None


def _check_array(argument: str, name: str, a: object, dtype: np.dtype) -> int:
    """That ``a`` is a contiguous one-dimensional array of ``dtype``; its length."""
    error = _array_error(argument, name, a, dtype, None)
    if error is not None:
        raise error
    return len(a)  # type: ignore[arg-type]  # an array, checked above


_COLUMNS = tuple(COLUMNS.items())
_U8, _U32, _U64 = (np.dtype(t) for t in (np.uint8, np.uint32, np.uint64))
_ARRAY = np.ndarray


def _check_columns(argument: str, columns: tuple[object, ...]) -> int:
    """That ``columns`` are a trace's columns as the core takes them: six contiguous
    one-dimensional arrays of the dtypes of :data:`~svmpmu.COLUMNS`, of one length (which
    is returned). TypeError or ValueError naming the argument and the column.

    It runs on every call, so the common case is one expression (1 us; a Trace's columns
    are right by construction); the messages come from a second look at a failure."""
    op, pmc, cpl, flag, key, value = columns
    shape = getattr(op, "shape", None)
    if (
        isinstance(op, _ARRAY)
        and isinstance(pmc, _ARRAY)
        and isinstance(cpl, _ARRAY)
        and isinstance(flag, _ARRAY)
        and isinstance(key, _ARRAY)
        and isinstance(value, _ARRAY)
        and op.dtype == _U8
        and pmc.dtype == _U8
        and cpl.dtype == _U8
        and flag.dtype == _U8
        and key.dtype == _U32
        and value.dtype == _U64
        and len(op.shape) == 1
        and pmc.shape == shape
        and cpl.shape == shape
        and flag.shape == shape
        and key.shape == shape
        and value.shape == shape
        and op.flags.c_contiguous
        and pmc.flags.c_contiguous
        and cpl.flags.c_contiguous
        and flag.flags.c_contiguous
        and key.flags.c_contiguous
        and value.flags.c_contiguous
    ):
        return len(op)
    # The op column's own problem first: the others' lengths are measured by it.
    n = _check_array(argument, "column 'op'", op, _U8)
    for (name, dtype), a in zip(_COLUMNS, columns):
        error = _array_error(argument, f"column {name!r}", a, dtype, n)
        if error is not None:
            raise error
    return n


def _columns(trace: Trace, argument: str = "trace") -> Columns:
    """A trace's columns as the core takes them (TypeError for anything but a Trace)."""
    if not isinstance(trace, Trace):
        raise TypeError(f"{argument}: expected a svmpmu.Trace, got {type(trace).__name__}")
    columns = (trace.op, trace.pmc, trace.cpl, trace.flag, trace.key, trace.value)
    _check_columns(argument, columns)
    return columns


def simulate(
    trace: Trace,
    policy: PolicyLike = "final",
    *,
    n_pmcs: int = 6,
    timeline: bool = False,
    threads: int | None = None,
) -> Result:
    """Replay ``trace`` through ``policy`` (a :class:`Policy` or a preset name) in the Rust core.

    The trace is validated first (:class:`TraceError` on the first invalid record, and nothing
    is counted). With ``timeline=True`` the result also holds the per-record ``hw_enabled``,
    ``svme`` and ``guest_mode`` arrays.

    A long trace (at least 8,192 records) is cut into chunks replayed on up to ``threads``
    threads (default: one per core, or ``RAYON_NUM_THREADS``; never more than the cores or the
    threads of the rayon pool); the timeline is always made on one.
    The results are the same for any thread count (README, "One trace on several threads").
    """
    threads = _threads(threads)
    n = _n_pmcs(n_pmcs)
    knobs = resolve_policy(policy)._core_knobs
    columns = _columns(trace)
    if timeline:
        # Three bytes a record (hw_enabled, svme, guest_mode); the READ values are the core's
        # to check, which counts them.
        _check_memory("simulate", "the timeline", 3 * len(trace))
    return Result(*_core.simulate(columns, knobs, n, bool(timeline), threads))


def compare(
    trace: Trace, policy: PolicyLike, reference: PolicyLike = "arch", *, n_pmcs: int = 6
) -> Comparison:
    """Replay ``trace`` through ``policy`` and ``reference`` side by side (model.md section 8)."""
    n_pmcs = _n_pmcs(n_pmcs)
    p, q = resolve_policy(policy), resolve_policy(reference)
    diverges, first, a, b = _core.compare(_columns(trace), p._core_knobs, q._core_knobs, n_pmcs)
    policy_result, reference_result = Result(*a), Result(*b)
    differing_pmcs = tuple(
        i
        for i in range(n_pmcs)
        if policy_result.counters[i] != reference_result.counters[i]
        or policy_result.overflows[i] != reference_result.overflows[i]
        or policy_result.pmis[i] != reference_result.pmis[i]
    )
    differing_reads = tuple(
        int(k) for k in (policy_result.reads != reference_result.reads).nonzero()[0]
    )
    return Comparison(
        diverges=bool(diverges),
        first_divergence=first,
        differing_pmcs=differing_pmcs,
        differing_reads=differing_reads,
        policy=policy_result,
        reference=reference_result,
    )


def validate(trace: Trace, *, n_pmcs: int = 6) -> None:
    """Check every record rule of model.md section 4.

    Raises :class:`TraceError` for the first invalid record.
    """
    n = _n_pmcs(n_pmcs)
    _core.validate(_columns(trace), n)


def generate(
    n_traces: int,
    length: int,
    *,
    seed: int,
    mix: Mix | None = None,
    n_pmcs: int = 6,
    threads: int | None = None,
) -> TraceBatch:
    """``n_traces`` random valid traces of ``length`` records each, from the Rust generator.

    Trace ``i`` depends only on ``seed``, ``i``, ``length``, ``n_pmcs`` and ``mix`` (see
    :class:`Mix`), so a seed gives the same batch on every machine and for every thread count.
    """
    n_traces, length, seed, threads = _check_run(n_traces, length, seed, threads)
    n = _n_pmcs(n_pmcs)
    if mix is not None and not isinstance(mix, Mix):
        raise TypeError(f"mix must be a svmpmu.Mix or None, got {type(mix).__name__}")
    # 16 bytes a record, and an offset (8 bytes) a trace and one more.
    records = n_traces * length
    _check_memory(
        "generate",
        f"{n_traces} traces of {length} records",
        16 * records + 8 * (n_traces + 1),
    )
    columns, offsets = _core.generate(
        n_traces, length, seed, n, mix if mix is not None else Mix(), threads
    )
    return TraceBatch(offsets, *columns)


@dataclass(frozen=True, eq=False)
class BatchResult:
    """Per-trace results of :func:`simulate_batch`: ``counters``, ``eventsel_hw``,
    ``overflows`` and ``pmis`` are uint64 arrays of shape (traces, PMCs); the READ values of
    trace ``t`` are ``reads[read_offsets[t]:read_offsets[t + 1]]``."""

    counters: np.ndarray
    eventsel_hw: np.ndarray
    overflows: np.ndarray
    pmis: np.ndarray
    reads: np.ndarray
    read_offsets: np.ndarray

    def __len__(self) -> int:
        """The number of traces."""
        return len(self.counters)

    def result(self, index: int) -> Result:
        """The :class:`Result` of trace ``index``, as :func:`simulate` would give it. A
        negative index counts from the end, as for a list; IndexError out of range."""
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"a trace index must be an int, got {type(index).__name__}")
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"trace index {index} out of range for {n} traces")
        index = int(index) % n
        start, end = int(self.read_offsets[index]), int(self.read_offsets[index + 1])
        return Result(
            self.counters[index],
            self.eventsel_hw[index],
            self.overflows[index],
            self.pmis[index],
            self.reads[start:end],
        )


def simulate_batch(
    batch: TraceBatch,
    policy: PolicyLike = "final",
    *,
    n_pmcs: int = 6,
    threads: int | None = None,
) -> BatchResult:
    """Replay every trace of ``batch`` through ``policy``, spread over ``threads`` threads
    (default: all cores, or ``RAYON_NUM_THREADS``). The same as :func:`simulate` on each trace,
    for any thread count. An invalid trace raises :class:`TraceError` for the whole batch; its
    ``index`` counts records from the start of the batch."""
    if not isinstance(batch, TraceBatch):
        raise TypeError(f"batch: expected a svmpmu.TraceBatch, got {type(batch).__name__}")
    threads = _threads(threads)
    n = _n_pmcs(n_pmcs)
    knobs = resolve_policy(policy)._core_knobs
    columns, offsets = batch._core_args()
    records = _check_columns("batch", columns)
    n_traces = _check_array("batch", "offsets", offsets, np.dtype(np.uint64)) - 1
    if n_traces < 0:
        raise ValueError("batch: offsets must have at least one entry")
    if int(offsets[-1]) != records:
        raise ValueError(f"batch: the last offset must be the number of records ({records})")
    # The four per-PMC arrays and the READ offsets (the READ values are the core's to check).
    _check_memory(
        "simulate_batch",
        f"the results of {n_traces} traces",
        4 * 8 * n_traces * n + 8 * (n_traces + 1),
    )
    return BatchResult(*_core.simulate_batch(columns, offsets, knobs, n, threads))
