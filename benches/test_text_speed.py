"""Reading text traces (issue 15's target: at least 5 million records per second)."""

from __future__ import annotations

import functools

import pytest

import svmpmu
from svmpmu import Mix

RECORDS = 5_000_000
MIN_RATE = 5e6


@functools.cache
def text(kind: str) -> bytes:
    mix = Mix() if kind == "random" else Mix.workload()
    return svmpmu.generate(1, RECORDS, seed=1, mix=mix).trace(0).to_text().encode()


@pytest.mark.parametrize("kind", ["random", "workload"])
def test_read_text(benchmark, kind):
    data = text(kind)
    trace = benchmark.pedantic(svmpmu.read_text, args=(data,), rounds=3, warmup_rounds=1)
    assert len(trace) == RECORDS
    if benchmark.disabled:
        return
    rate = RECORDS / benchmark.stats.stats.min
    benchmark.extra_info.update(records_per_second=rate, bytes_per_record=len(data) / RECORDS)
    assert rate >= MIN_RATE, f"read_text: {rate / 1e6:.1f} M records/s < {MIN_RATE / 1e6:.0f} M"


def test_write_text(benchmark):
    trace = svmpmu.generate(1, RECORDS, seed=1).trace(0)
    out = benchmark.pedantic(trace.to_text, rounds=3, warmup_rounds=1)
    assert out.count("\n") == RECORDS + 1
    if not benchmark.disabled:
        benchmark.extra_info["records_per_second"] = RECORDS / benchmark.stats.stats.min
