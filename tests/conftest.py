"""Shared fixtures: the two implementations of the model (spec: shared/spec/model.md)."""

from __future__ import annotations

import pytest

import svmpmu
import svmpmu.oracle


@pytest.fixture(params=["core", "oracle"])
def impl(request):
    """The core's or the oracle's ``simulate(trace, policy, n_pmcs=6, timeline=False)``."""
    if request.param == "core":
        return svmpmu.simulate
    return svmpmu.oracle.simulate
