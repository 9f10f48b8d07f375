"""Single-trace replay throughput of the Rust core (issue: 100 M records/s on `final`)."""

from __future__ import annotations

import svmpmu
import svmpmu.oracle
from conftest import random_trace, report

LENGTH = 10_000_000
ORACLE_LENGTH = 20_000


def test_replay_random_final(benchmark):
    trace = random_trace(LENGTH)
    result = benchmark.pedantic(svmpmu.simulate, args=(trace, "final"), rounds=5, iterations=1)
    assert result.counters.shape == (6,)
    report(benchmark, LENGTH, target=100e6)


def test_oracle_random_final(benchmark):
    trace = random_trace(ORACLE_LENGTH)
    result = benchmark.pedantic(
        svmpmu.oracle.simulate, args=(trace, "final"), rounds=1, iterations=1
    )
    assert result == svmpmu.simulate(trace, "final")
    report(benchmark, ORACLE_LENGTH)
