"""The pure-Python oracle against the core on the same small trace (target: the core at
least 1,000 times faster)."""

from __future__ import annotations

import measure
import svmpmu
import svmpmu.oracle


def test_oracle_against_core(benchmark):
    trace = measure.random_trace(20_000, seed=2)
    result = benchmark.pedantic(svmpmu.oracle.simulate, args=(trace, "final"), rounds=1)
    assert result == svmpmu.simulate(trace, "final")
    if benchmark.disabled:
        return
    figures = measure.oracle_ratio(20_000)
    benchmark.extra_info.update(figures)
    # For the record: on a workload-like trace the core is faster (steady stretches).
    benchmark.extra_info["workload_ratio"] = measure.oracle_ratio(20_000, "workload")["ratio"]
    assert figures["ratio"] >= 1000, f"the core is only {figures['ratio']:.0f}x faster"
