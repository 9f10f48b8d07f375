"""Property tests over the public boundary: arbitrary arrays, policies and mixes either raise a
documented exception or give the oracle's result (the hardening issue)."""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import svmpmu
from svmpmu import KNOB_VALUES, Mix, Policy, PolicyError, Trace, TraceError, oracle

DOCUMENTED = (TraceError, ValueError, TypeError, PolicyError)
"""What a bad input may raise at the boundary (TraceError and PolicyError are ValueErrors)."""

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DTYPES = st.sampled_from(
    [np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int32, np.int64, np.float64, bool]
)


@st.composite
def columns(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """Six columns of arbitrary dtypes, lengths (mostly equal) and values."""
    n = draw(st.integers(0, 40))
    out = {}
    for name in svmpmu.COLUMNS:
        length = n if draw(st.integers(0, 9)) else draw(st.integers(0, 40))
        dtype = draw(DTYPES) if draw(st.integers(0, 4)) == 0 else svmpmu.COLUMNS[name]
        out[name] = draw(hnp.arrays(dtype, length))
    return out


@st.composite
def valid_columns(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """Columns of the right dtypes whose ops and fields are in range (modes may be invalid)."""
    n = draw(st.integers(0, 60))
    ints = lambda hi, dtype: hnp.arrays(dtype, n, elements=st.integers(0, hi))  # noqa: E731
    return {
        "op": draw(ints(14, np.uint8)),
        "pmc": draw(ints(5, np.uint8)),
        "cpl": draw(ints(3, np.uint8)),
        "flag": draw(ints(2, np.uint8)),
        "key": draw(st.sampled_from([0xC0, 0xC2, 0x10C0]).map(lambda k: np.full(n, k, np.uint32))),
        "value": draw(hnp.arrays(np.uint64, n)),
    }


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    """A policy with every knob drawn from its allowed values."""
    knobs = {k: draw(st.sampled_from(v)) for k, v in KNOB_VALUES.items()}
    return Policy(**knobs)


@SETTINGS
@given(columns(), st.integers(-2, 8))
def test_arbitrary_arrays_raise_a_documented_error_or_agree_with_the_oracle(cols, n_pmcs):
    try:
        trace = Trace(**cols)
    except DOCUMENTED:
        return
    outcomes = []
    for impl in (svmpmu.simulate, oracle.simulate):
        try:
            outcomes.append(impl(trace, "final", n_pmcs=n_pmcs))
        except DOCUMENTED as e:  # noqa: PERF203 (two calls)
            outcomes.append(e)
    core, reference = outcomes
    if isinstance(core, Exception) or isinstance(reference, Exception):
        # Both refuse it (the same record, when it is a record error).
        assert isinstance(core, Exception), f"only the oracle refused: {reference}"
        assert isinstance(reference, Exception), f"only the core refused: {core}"
        if isinstance(core, TraceError) and isinstance(reference, TraceError):
            assert core.index == reference.index
        return
    assert core == reference


@SETTINGS
@given(valid_columns(), policies(), policies())
def test_arbitrary_policies_agree_with_the_oracle(cols, p, q):
    trace = Trace(**cols)
    try:
        svmpmu.validate(trace)
    except TraceError:
        return
    assert svmpmu.simulate(trace, p) == oracle.simulate(trace, p)
    c, o = svmpmu.compare(trace, p, q), oracle.compare(trace, p, q)
    assert c.diverges == o.diverges
    assert c.first_divergence == o.first_divergence


@SETTINGS
@given(st.dictionaries(st.text(min_size=1, max_size=12), st.integers(-5, 5), max_size=3))
def test_arbitrary_knobs_are_a_policy_error_or_a_policy(knobs):
    try:
        Policy(**knobs)
    except PolicyError:
        return


MIX_FIELDS = [f.name for f in dataclasses.fields(Mix) if f.name != "ops"]


@SETTINGS
@given(
    st.sampled_from(MIX_FIELDS),
    st.one_of(st.integers(-3, 5000), st.tuples(st.integers(-2, 9), st.integers(0, 9))),
    st.dictionaries(st.sampled_from(["RUN", "VMRUN", "RESET", "NOPE"]), st.integers(-1, 9)),
)
def test_arbitrary_mixes_raise_a_value_error_or_generate_valid_traces(field, value, ops):
    error = None
    try:
        mix = dataclasses.replace(Mix(), **{field: value}).with_ops(**ops)
    except (ValueError, TypeError) as e:
        error = str(e)
    if error is not None:
        assert field in error or "op" in error.lower(), error
        return
    batch = svmpmu.generate(3, 40, seed=1, mix=mix)
    for i in range(len(batch)):
        svmpmu.validate(batch.trace(i))
