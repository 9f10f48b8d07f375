"""Throughput of every core path, in records per second and as a ratio to the streaming
baseline (numpy reading every column of the same records once)."""

from __future__ import annotations

import pytest

import measure

CASES = {case.name: case for case in measure.cases(1.0)}


@pytest.fixture(scope="session")
def streaming():
    """The streaming baseline's best time for each set of records."""
    return measure.baselines(list(CASES.values()))


# The issues' targets: records per second at least, or ratio to the streaming baseline at most.
MIN_RATE = {
    "replay/random/final": 100e6,
    "batch/final": 50e6,
    "fuzz/final": 50e6,
}
MAX_RATIO = {"replay/workload/final": 4.0}


def test_streaming_baseline(benchmark):
    case = CASES["replay/random/final"]
    benchmark.pedantic(case.baseline, rounds=10, warmup_rounds=1)
    if not benchmark.disabled:
        benchmark.extra_info["records_per_second"] = case.records / benchmark.stats.stats.min


@pytest.mark.parametrize("name", list(CASES))
def test_throughput(benchmark, name, streaming):
    case = CASES[name]
    benchmark.pedantic(case.run, rounds=3, warmup_rounds=1)
    if benchmark.disabled:
        return
    seconds = benchmark.stats.stats.min
    ratio = seconds / streaming[case.data]
    rate = case.records / seconds
    benchmark.extra_info.update(records_per_second=rate, ratio_to_streaming=ratio)
    failures = []
    if name in MIN_RATE and rate < MIN_RATE[name]:
        failures.append(f"{rate / 1e6:.1f} M records/s < target {MIN_RATE[name] / 1e6:.0f} M")
    if name in MAX_RATIO and ratio > MAX_RATIO[name]:
        failures.append(f"{ratio:.2f}x the streaming baseline > target {MAX_RATIO[name]}x")
    assert not failures, f"{name}: " + "; ".join(failures)
