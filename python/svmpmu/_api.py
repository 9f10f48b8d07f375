"""The calls into the Rust core: simulate, compare and validate one trace."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _core
from .batch import TraceBatch
from .mix import Mix
from .model import MAX_PMCS
from .policy import PolicyLike, resolve_policy
from .result import Comparison, Result
from .trace import Columns, Trace

__all__ = ["BatchResult", "compare", "generate", "simulate", "simulate_batch", "validate"]


def _columns(trace: Trace) -> Columns:
    """A trace's columns as the core takes them (TypeError for anything but a Trace)."""
    if not isinstance(trace, Trace):
        raise TypeError(f"expected a svmpmu.Trace, got {type(trace).__name__}")
    return (trace.op, trace.pmc, trace.cpl, trace.flag, trace.key, trace.value)


def _n_pmcs(n_pmcs: int) -> int:
    if isinstance(n_pmcs, bool) or not isinstance(n_pmcs, int):
        raise TypeError(f"n_pmcs must be an int, got {type(n_pmcs).__name__}")
    if not 1 <= n_pmcs <= MAX_PMCS:
        raise ValueError(f"n_pmcs must be 1..{MAX_PMCS}, got {n_pmcs}")
    return n_pmcs


MAX_THREADS = 1024
"""The most worker threads a call may ask for."""


def _check_threads(threads: int | None) -> None:
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise TypeError(f"threads must be an int or None, got {type(threads).__name__}")
    if not 1 <= threads <= MAX_THREADS:
        raise ValueError(f"threads must be 1..{MAX_THREADS}, got {threads}")


def _check_run(n_traces: int, length: int, seed: int, threads: int | None) -> None:
    """The arguments shared by generate() and fuzz(), checked before any work."""
    if n_traces < 0 or length < 0:
        raise ValueError("the number of traces and their length must not be negative")
    if not 0 <= seed < 1 << 64:
        raise ValueError("seed must be an integer in 0..2**64-1")
    _check_threads(threads)


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
    _check_threads(threads)
    knobs = resolve_policy(policy)._core_knobs
    columns = _columns(trace)
    return Result(*_core.simulate(columns, knobs, _n_pmcs(n_pmcs), bool(timeline), threads))


def compare(
    trace: Trace, policy: PolicyLike, reference: PolicyLike = "arch", *, n_pmcs: int = 6
) -> Comparison:
    """Replay ``trace`` through ``policy`` and ``reference`` side by side (model.md section 8)."""
    p, q = resolve_policy(policy), resolve_policy(reference)
    diverges, first, a, b = _core.compare(
        _columns(trace), p._core_knobs, q._core_knobs, _n_pmcs(n_pmcs)
    )
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
    _core.validate(_columns(trace), _n_pmcs(n_pmcs))


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
    _check_run(n_traces, length, seed, threads)
    columns, offsets = _core.generate(
        n_traces, length, seed, _n_pmcs(n_pmcs), mix if mix is not None else Mix(), threads
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
        """The :class:`Result` of trace ``index``, as :func:`simulate` would give it."""
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
        raise TypeError(f"expected a svmpmu.TraceBatch, got {type(batch).__name__}")
    _check_threads(threads)
    knobs = resolve_policy(policy)._core_knobs
    columns, offsets = batch._core_args()
    return BatchResult(*_core.simulate_batch(columns, offsets, knobs, _n_pmcs(n_pmcs), threads))
