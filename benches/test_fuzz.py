"""Batch simulation, generation and end-to-end fuzzing throughput (issue: 50 M records/s on
2 cores end to end, and at least 1.6x from 1 to 2 threads)."""

from __future__ import annotations

import os

import pytest

import svmpmu
from conftest import report

TRACES, LENGTH = 1_000_000, 64
RECORDS = TRACES * LENGTH


def test_generate(benchmark):
    batch = benchmark.pedantic(
        svmpmu.generate, args=(TRACES, LENGTH), kwargs={"seed": 1}, rounds=3, iterations=1
    )
    assert batch.n_records == RECORDS
    report(benchmark, RECORDS)


def test_simulate_batch(benchmark):
    batch = svmpmu.generate(TRACES, LENGTH, seed=1)
    result = benchmark.pedantic(svmpmu.simulate_batch, args=(batch, "final"), rounds=3)
    assert result.counters.shape == (TRACES, 6)
    report(benchmark, RECORDS)


@pytest.mark.parametrize("threads", [1, 2])
def test_fuzz_end_to_end(benchmark, threads):
    if threads > (os.cpu_count() or 1):
        pytest.skip("needs more cores")
    rep = benchmark.pedantic(
        svmpmu.fuzz,
        args=("final",),
        kwargs={"traces": TRACES, "length": LENGTH, "seed": 1, "threads": threads},
        rounds=3,
    )
    assert rep.traces == TRACES
    rate = report(benchmark, RECORDS, target=50e6 if threads == 2 else None)
    if rate is not None:
        test_fuzz_end_to_end.rates[threads] = rate
        if {1, 2} <= set(test_fuzz_end_to_end.rates):
            speedup = test_fuzz_end_to_end.rates[2] / test_fuzz_end_to_end.rates[1]
            benchmark.extra_info["speedup_1_to_2_threads"] = speedup
            assert speedup >= 1.6, f"speed-up {speedup:.2f}x from 1 to 2 threads"


test_fuzz_end_to_end.rates = {}
