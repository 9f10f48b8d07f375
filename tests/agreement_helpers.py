"""Assertions shared by the tests that hold the core and the oracle to each other."""

from __future__ import annotations

from svmpmu import Comparison


def assert_same_comparison(a: Comparison, b: Comparison) -> None:
    """Two comparisons agree on the divergence, its location and both models' results."""
    assert (a.diverges, a.first_divergence, a.differing_pmcs, a.differing_reads) == (
        b.diverges,
        b.first_divergence,
        b.differing_pmcs,
        b.differing_reads,
    )
    assert a.policy == b.policy
    assert a.reference == b.reference
