"""Fixtures of the specification-derived tests (tests/spec/); ``impl`` is in tests/conftest.py."""

from __future__ import annotations

import pytest

import svmpmu
import svmpmu.oracle


@pytest.fixture(params=["core", "oracle"])
def impl_compare(request):
    """The core's or the oracle's ``compare(trace, policy, reference="arch", n_pmcs=6)``."""
    if request.param == "core":
        return svmpmu.compare
    return svmpmu.oracle.compare
