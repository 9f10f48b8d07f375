"""What the benchmark suites and the regression gate measure, in one place.

Every figure is a best-of-N wall time of one call, turned into records per second and into a
ratio to the *streaming baseline*: the time numpy takes to read every column of the same
records once (one ``max`` reduction per column, which runs at memory bandwidth). Ratios, not
absolute times, are what the gate compares, so that it holds on any machine of this kind.
"""

from __future__ import annotations

import functools
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import svmpmu
from svmpmu import Mix, Trace

PRESETS = ("final", "hybrid", "v4", "v3", "v1", "legacy", "arch")


@functools.cache
def random_trace(length: int, seed: int = 1) -> Trace:
    """Ops in random order (the default mix): the worst case for branch prediction."""
    return svmpmu.generate(1, length, seed=seed).trace(0)


@functools.cache
def workload_trace(length: int, seed: int = 1) -> Trace:
    """Long stretches of RUN and EMULATE between nested transitions (``Mix.workload()``)."""
    return svmpmu.generate(1, length, seed=seed, mix=Mix.workload()).trace(0)


@functools.cache
def batch(n_traces: int, length: int, seed: int = 1) -> svmpmu.TraceBatch:
    return svmpmu.generate(n_traces, length, seed=seed)


def best_seconds(fn: Callable[[], object], repeat: int) -> float:
    """The best wall time of ``repeat`` calls (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def median_seconds(fn: Callable[[], object], runs: int, warmup: int = 0) -> float:
    """The median wall time of ``runs`` calls, after ``warmup`` untimed ones. Unlike the best
    time, which a short call can take from the quiet moments of a busy machine, the median is
    what the machine gives most of the time: the gate's samples of its load (gate.py)."""
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def stream(trace: Trace) -> list:
    """Read every column of ``trace`` once: the memory-bandwidth limit of a replay."""
    return [column.max() for column in trace.columns().values()]


def stream_batch(b: svmpmu.TraceBatch) -> list:
    return stream(b.records)


@dataclass(frozen=True)
class Case:
    """One measurement: ``run`` replays ``records`` records; ``baseline`` streams the same
    records, and cases over the same records share ``data`` (the baseline is measured once
    for them)."""

    name: str
    records: int
    run: Callable[[], object]
    baseline: Callable[[], object]
    data: str


def cases(scale: float = 1.0) -> list[Case]:
    """The measured cases; ``scale`` shrinks their sizes for the short gate."""
    n = int(10_000_000 * scale)
    traces, length = int(1_000_000 * scale), 64
    out = []
    for kind, make in (("random", random_trace), ("workload", workload_trace)):
        t = make(n)
        out.extend(
            Case(
                f"replay/{kind}/{preset}",
                n,
                functools.partial(svmpmu.simulate, t, preset),
                functools.partial(stream, t),
                kind,
            )
            for preset in PRESETS
        )
        # The same trace on one thread: what a single replay loop does (simulate() uses
        # every core for a long trace).
        out.append(
            Case(
                f"replay/{kind}/final/1-thread",
                n,
                functools.partial(svmpmu.simulate, t, "final", threads=1),
                functools.partial(stream, t),
                kind,
            )
        )
    b = batch(traces, length)
    out.append(
        Case(
            "batch/final",
            traces * length,
            functools.partial(svmpmu.simulate_batch, b, "final"),
            functools.partial(stream_batch, b),
            "batch",
        )
    )
    out.append(
        Case(
            "generate",
            traces * length,
            functools.partial(svmpmu.generate, traces, length, seed=1),
            functools.partial(stream_batch, b),
            "batch",
        )
    )
    out.append(
        Case(
            "fuzz/final",
            traces * length,
            functools.partial(svmpmu.fuzz, "final", traces=traces, length=length, seed=1),
            functools.partial(stream_batch, b),
            "batch",
        )
    )
    return out


def baselines(all_cases: list[Case], repeat: int = 50) -> dict[str, float]:
    """The streaming baseline's best time for each set of records the cases use. It is short
    and sensitive to what ran before it, hence many runs, twice, keeping the better. Sets of
    as many records have the same layout and so the same streaming time: each gets the best
    of all of them (the random and the workload-like traces)."""
    first = {c.data: c for c in all_cases}
    best = {
        data: min(best_seconds(c.baseline, repeat) for _ in range(2)) for data, c in first.items()
    }
    return {
        data: min(best[d] for d, other in first.items() if other.records == c.records)
        for data, c in first.items()
    }


def peak_memory_ratio(length: int = 100_000_000) -> dict:
    """Replay a ``length``-record trace in a fresh interpreter; its peak resident memory as a
    ratio to the bytes of the trace itself (no hidden copies means close to 1)."""
    # The child's own high-water mark: VmHWM belongs to the child's address space. (Linux
    # carries ru_maxrss across exec, so the child would report this process's peak when it
    # is the larger, as it is after the full suite.)
    code = f"""
import json, resource, svmpmu
trace = svmpmu.generate(1, {length}, seed=1).trace(0)
result = svmpmu.simulate(trace, "final")
try:
    with open("/proc/self/status") as f:
        hwm = [line for line in f if line.startswith("VmHWM:")][0]
    peak = int(hwm.split()[1]) * 1024
except (OSError, IndexError):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"peak_bytes": peak, "trace_bytes": trace.nbytes}}))
"""
    out = subprocess.run(  # noqa: S603 (this interpreter, on code written just above)
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    )
    data = json.loads(out.stdout)
    data["ratio"] = data["peak_bytes"] / data["trace_bytes"]
    return data


def oracle_ratio(length: int = 20_000, kind: str = "random") -> dict:
    """The oracle's time over the core's on the same small trace (``random`` or
    ``workload``), and both rates."""
    import svmpmu.oracle

    t = (random_trace if kind == "random" else workload_trace)(length, seed=2)
    core = best_seconds(functools.partial(svmpmu.simulate, t, "final"), repeat=20)
    start = time.perf_counter()
    svmpmu.oracle.simulate(t, "final")
    oracle = time.perf_counter() - start
    return {
        "core_records_per_second": length / core,
        "oracle_records_per_second": length / oracle,
        "ratio": oracle / core,
    }
