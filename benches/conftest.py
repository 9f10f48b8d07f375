"""Shared helpers of the benchmark suites: throughput figures and targets.

Run with ``python -m pytest benches --benchmark-enable``. Without ``--benchmark-enable`` (the
default in pyproject.toml) every benchmark body runs once, as a smoke test, and no target is
checked.
"""

from __future__ import annotations

import functools

import svmpmu


@functools.cache
def random_trace(length: int, seed: int = 1) -> svmpmu.Trace:
    """One random valid trace from the Rust generator (default mix), cached per session."""
    return svmpmu.generate(1, length, seed=seed).trace(0)


def report(benchmark, records: int, target: float | None = None) -> float | None:
    """Attach records per second to the benchmark, and check ``target`` (records/s) if timed."""
    if benchmark.disabled or benchmark.stats is None:
        return None
    seconds = benchmark.stats.stats.min
    rate = records / seconds
    benchmark.extra_info["records"] = records
    benchmark.extra_info["records_per_second"] = rate
    if target is not None:
        benchmark.extra_info["target_records_per_second"] = target
        assert rate >= target, (
            f"{rate / 1e6:.1f} M records/s is below the target {target / 1e6:.0f} M"
        )
    return rate
