"""Shared fixtures: the two implementations of the model (spec: shared/spec/model.md)."""

from __future__ import annotations

import importlib

import pytest

import svmpmu


def _oracle_simulate():
    # Imported lazily: the pure-Python oracle may not exist yet, and the tests of the Rust core
    # must still run. Only a missing svmpmu.oracle module skips; any other error is a failure.
    try:
        oracle = importlib.import_module("svmpmu.oracle")
    except ModuleNotFoundError as exc:
        if exc.name != "svmpmu.oracle":
            raise
        pytest.skip("svmpmu.oracle does not exist yet")
    return oracle.simulate


@pytest.fixture(params=["core", "oracle"])
def impl(request):
    """The core's or the oracle's ``simulate(trace, policy, n_pmcs=6, timeline=False)``."""
    if request.param == "core":
        return svmpmu.simulate
    return _oracle_simulate()
