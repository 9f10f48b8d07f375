"""Peak memory of replaying a 100-million-record trace, in a fresh interpreter: at most 1.2x
the bytes of the trace itself (no hidden copies)."""

from __future__ import annotations

import measure


def test_peak_memory_of_a_100m_replay(benchmark):
    figures = benchmark.pedantic(measure.peak_memory_ratio, rounds=1, iterations=1)
    benchmark.extra_info.update(figures)
    assert figures["ratio"] <= 1.2, f"peak {figures['ratio']:.3f}x the trace's bytes"
