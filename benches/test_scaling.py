"""Fuzzing speed-up from 1 to 2 threads (target: at least 1.6x on this 2-core machine)."""

from __future__ import annotations

import os

import pytest

import measure
import svmpmu


def test_fuzz_speedup_one_to_two_threads(benchmark):
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 cores")

    def run(threads: int) -> None:
        svmpmu.fuzz("final", traces=500_000, length=64, seed=1, threads=threads)

    benchmark.pedantic(run, args=(2,), rounds=1, iterations=1)
    if benchmark.disabled:
        return
    one = measure.best_seconds(lambda: run(1), repeat=2)
    two = measure.best_seconds(lambda: run(2), repeat=2)
    benchmark.extra_info.update(seconds_1_thread=one, seconds_2_threads=two, speedup=one / two)
    assert one / two >= 1.6, f"speed-up {one / two:.2f}x from 1 to 2 threads"
