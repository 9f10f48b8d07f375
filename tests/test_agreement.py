"""Property tests: the Rust core and the pure-Python oracle agree (results, comparisons and
errors) on many thousands of traces, for every preset and for random knob combinations."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import random
import subprocess
import sys
import typing

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import svmpmu
from agreement_helpers import assert_same_comparison
from svmpmu import KNOB_VALUES, PRESETS, Policy, Trace, TraceError, oracle


def random_policy(rng: random.Random) -> Policy:
    return Policy(**{knob: rng.choice(values) for knob, values in KNOB_VALUES.items()})


def assert_same(trace: Trace, policy, n_pmcs: int = 6, timeline: bool = True) -> None:
    core = svmpmu.simulate(trace, policy, n_pmcs=n_pmcs, timeline=timeline)
    ref = oracle.simulate(trace, policy, n_pmcs=n_pmcs, timeline=timeline)
    if core != ref:
        pytest.fail(
            f"core and oracle disagree under {policy}:\n{trace.format(None)}\n"
            f"core:\n{core.format()}\noracle:\n{ref.format()}"
        )


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_agree_on_generated_traces(preset):
    batch = svmpmu.generate(1500, 48, seed=1000 + list(PRESETS).index(preset))
    for trace in batch:
        assert_same(trace, preset)


def test_random_knob_combinations_agree():
    rng = random.Random(20261125)
    for k in range(300):
        policy = random_policy(rng)
        n_pmcs = rng.randint(1, 6)
        for trace in svmpmu.generate(20, 40, seed=k, n_pmcs=n_pmcs):
            assert_same(trace, policy, n_pmcs=n_pmcs)


def test_long_traces_agree():
    # Long traces reach counter wraps (huge RUNs, counters written near the wrap) and resets.
    batch = svmpmu.generate(4, 5000, seed=77)
    for trace in batch:
        for preset in ("final", "v4", "arch", "legacy"):
            assert_same(trace, preset, timeline=False)


@pytest.mark.parametrize("policy", ["final", "hybrid", "v4", "v3", "v1", "legacy"])
def test_comparisons_agree(policy):
    diverging = 0
    for trace in svmpmu.generate(400, 48, seed=5):
        a = svmpmu.compare(trace, policy, "arch")
        b = oracle.compare(trace, policy, "arch")
        assert_same_comparison(a, b)
        diverging += a.diverges
    # These policies are known to differ from the reference somewhere in 400 random traces.
    assert diverging > 0


# Records drawn from the whole range of every field, so that invalid ones are common too.
records = st.tuples(
    st.integers(0, 16),  # op: 15 and 16 are unknown
    st.integers(0, 7),  # pmc
    st.integers(0, 4),  # cpl
    st.integers(0, 3),  # flag
    st.sampled_from([0, 0x0C0, 0x0C2, 0x076, 0xFFFFF, 0x100000]),  # key
    st.one_of(
        st.integers(0, 2000),
        st.integers(0, 2**64 - 1),
        st.sampled_from([svmpmu.eventsel(0x0C0, guest_only=True), 2**48 - 1]),
    ),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(records, max_size=40),
    st.integers(1, 6),
    st.sampled_from(list(PRESETS)),
)
def test_arbitrary_records_agree_including_errors(recs, n_pmcs, preset):
    columns = list(zip(*recs)) if recs else [[]] * 6
    dtypes = [np.uint8, np.uint8, np.uint8, np.uint8, np.uint32, np.uint64]
    trace = Trace(*(np.array(c, dtype=d) for c, d in zip(columns, dtypes)))
    try:
        core = svmpmu.simulate(trace, preset, n_pmcs=n_pmcs, timeline=True)
    except TraceError as e:
        error: TraceError | None = e
    else:
        error = None
    if error is not None:
        with pytest.raises(TraceError) as info:
            oracle.simulate(trace, preset, n_pmcs=n_pmcs, timeline=True)
        assert info.value.index == error.index
        # Without a timeline the core validates while it replays: the same error.
        with pytest.raises(TraceError) as fused:
            svmpmu.simulate(trace, preset, n_pmcs=n_pmcs)
        assert fused.value.index == error.index
        return
    assert core == oracle.simulate(trace, preset, n_pmcs=n_pmcs, timeline=True)
    # The replay that validates as it goes accepts exactly the traces `validate` accepts.
    fused = svmpmu.simulate(trace, preset, n_pmcs=n_pmcs)
    assert fused == dataclasses.replace(core, hw_enabled=None, svme=None, guest_mode=None)


def test_policy_overrides_reach_both():
    # A knob change must change the result of both implementations the same way.
    trace = svmpmu.generate(1, 2000, seed=3).trace(0)
    base = Policy.preset("final")
    for knob, values in KNOB_VALUES.items():
        for value in values:
            assert_same(trace, dataclasses.replace(base, **{knob: value}), timeline=False)


def test_a_policy_used_by_the_core_still_copies_and_pickles():
    # The core reads a policy's knobs once (Policy._core_knobs, cached on the instance).
    trace = svmpmu.generate(1, 500, seed=4).trace(0)
    p = dataclasses.replace(Policy.preset("final"), vmrun_order="before_entry")
    first = svmpmu.simulate(trace, p)
    assert first != svmpmu.simulate(trace, "final")  # the knob matters on this trace
    for q in (pickle.loads(pickle.dumps(p)), copy.deepcopy(p), copy.copy(p)):  # noqa: S301 (its own pickle)
        assert q == p
        assert repr(q) == repr(p)
        assert svmpmu.simulate(trace, q) == first
    # A replaced knob is read again, not taken from the original's cache.
    back = dataclasses.replace(p, vmrun_order="after_entry")
    assert svmpmu.simulate(trace, back) == svmpmu.simulate(trace, "final")


@pytest.mark.parametrize("preset", ["final", "v4", "legacy", "arch"])
def test_workload_like_traces_agree(preset):
    # Long stretches of RUN and EMULATE take the core's steady path.
    batch = svmpmu.generate(300, 400, seed=31, mix=svmpmu.Mix.workload())
    for trace in batch:
        assert_same(trace, preset, timeline=False)


# The fields each op reads (docs/semantics.md "Record layout"); every other field is ignored.
USED = {
    "pmc": {"WRMSR_EVTSEL", "WRMSR_CTR", "READ"},
    "cpl": {"EMULATE", "RUN", "VMRUN"},
    "flag": {"WRMSR_EFER", "SET_NESTED_STATE", "SET_FILTER", "EMULATE"},
    "key": {"RUN", "SET_FILTER"},
    "value": {"WRMSR_EVTSEL", "WRMSR_CTR", "WRMSR_GLOBAL_CTRL", "RUN"},
}


def with_junk_in_unused_fields(trace: Trace, seed: int) -> Trace:
    """A copy of ``trace`` whose unused fields hold random junk."""
    rng = np.random.default_rng(seed)
    columns = {name: column.copy() for name, column in trace.columns().items()}
    names = np.array([o.name for o in svmpmu.Op])[columns["op"]]
    for field, users in USED.items():
        column = columns[field]
        unused = ~np.isin(names, sorted(users))
        info = np.iinfo(column.dtype)
        # Small junk as often as junk of any size (a fast path may test a value's size).
        junk = rng.integers(0, info.max, size=len(column), dtype=column.dtype, endpoint=True)
        small = rng.random(len(column)) < 0.5
        junk[small] = rng.integers(0, 256, size=int(small.sum()), dtype=column.dtype)
        column[unused] = junk[unused]
    return Trace(**columns)


@pytest.mark.parametrize("mix", ["default", "workload"])
@pytest.mark.parametrize("preset", ["final", "v4", "arch"])
def test_unused_fields_are_ignored(mix, preset):
    # Both replays of the core (validating as it goes, and with a timeline) and the oracle
    # must give the junk-filled traces the results of the clean ones.
    batch = svmpmu.generate(
        200, 200, seed=41, mix=svmpmu.Mix.workload() if mix == "workload" else svmpmu.Mix()
    )
    for k, trace in enumerate(batch):
        junk = with_junk_in_unused_fields(trace, k)
        assert svmpmu.validate(junk) is None
        clean = svmpmu.simulate(trace, preset, timeline=True)
        assert svmpmu.simulate(junk, preset, timeline=True) == clean
        assert svmpmu.simulate(junk, preset) == dataclasses.replace(
            clean, hw_enabled=None, svme=None, guest_mode=None
        )
        if k < 20:
            assert oracle.simulate(junk, preset, timeline=True) == clean


@pytest.mark.parametrize("mix", ["default", "workload", "no_reset"])
def test_one_trace_on_several_threads_agrees(mix):
    # A trace of 8,192 records or more is cut into chunks replayed in parallel, each from a
    # guessed state (README, "One trace on several threads"): the same results as the oracle
    # for any thread count, whether chunks join after a RESET or where every counter has been
    # written.
    chosen = {
        "default": svmpmu.Mix(),
        "workload": svmpmu.Mix.workload(),
        "no_reset": svmpmu.Mix().with_ops(RESET=0),
    }[mix]
    # Long enough that a workload-like trace, which joins after about 7,000 records, is cut.
    trace = svmpmu.generate(1, 80_000, seed=8, mix=chosen).trace(0)
    for preset in ("final", "v4", "arch"):
        ref = oracle.simulate(trace, preset)
        for threads in (1, 2, 3, 8):
            assert svmpmu.simulate(trace, preset, threads=threads) == ref


def test_threads_must_be_a_positive_int():
    trace = svmpmu.generate(1, 10, seed=1).trace(0)
    with pytest.raises(ValueError, match="threads"):
        svmpmu.simulate(trace, threads=0)
    for bad in (True, 2.0, "2"):
        with pytest.raises(TypeError, match="threads"):
            svmpmu.simulate(trace, threads=bad)
        with pytest.raises(TypeError, match="threads"):
            svmpmu.generate(1, 10, seed=1, threads=bad)


# Policy is read from the core: the knob table and the presets are written once, in Rust.


def test_knobs_and_presets_are_the_cores():
    core_knobs = svmpmu._core.KNOBS
    assert [f.name for f in dataclasses.fields(Policy)] == [name for name, _ in core_knobs]
    assert list(KNOB_VALUES) == [name for name, _ in core_knobs]
    default = Policy()
    for name, allowed in core_knobs:
        values = KNOB_VALUES[name]
        assert values[0] == getattr(default, name)  # the default first
        assert {str(v).lower() for v in values} == set(allowed)
        assert all(isinstance(v, bool) for v in values) == (set(allowed) == {"true", "false"})
    assert list(PRESETS) == list(svmpmu._core.PRESETS)
    for name, values in svmpmu._core.PRESETS.items():
        assert PRESETS[name]._core_knobs == values
        assert Policy.preset(name) is PRESETS[name]
    assert default == PRESETS["final"]


def test_an_unknown_knob_or_value_is_a_policy_error():
    with pytest.raises(svmpmu.PolicyError, match="unknown knob 'vmrun_timeing'"):
        Policy(vmrun_timeing="sync")
    with pytest.raises(svmpmu.PolicyError, match="unknown knob 'nope'"):
        dataclasses.replace(Policy(), nope=1)
    with pytest.raises(svmpmu.PolicyError, match="cannot be 'lazy'"):
        Policy(vmrun_timing="lazy")
    with pytest.raises(svmpmu.PolicyError, match="cannot be 1"):
        Policy(emul_mode_aware=1)
    with pytest.raises(svmpmu.PolicyError, match="unknown preset"):
        Policy.preset("v2")


def test_the_import_check_names_every_mismatch():
    from svmpmu import policy

    hints = typing.get_type_hints(Policy)
    fields = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(Policy)}
    knobs, final = svmpmu._core.KNOBS, svmpmu._core.PRESETS["final"]
    assert policy._mismatches(fields, knobs, final) == []
    # Two knobs swapped in the core.
    swapped = (knobs[1], knobs[0], *knobs[2:])
    swapped_final = (final[1], final[0], *final[2:])
    assert policy._mismatches(fields, swapped, swapped_final) == [
        f"the fields are not in the core's order, {[name for name, _ in swapped]}"
    ]
    # A knob renamed in the core.
    renamed = (("mode", knobs[0][1]), *knobs[1:])
    assert policy._mismatches(fields, renamed, final) == [
        "no field for the core's knobs ['mode']",
        "fields ['model'] are not knobs of the core",
    ]
    # A value the Literal does not list.
    names = [name for name, _ in knobs]
    k = names.index("vmrun_timing")
    wider = (*knobs[:k], ("vmrun_timing", (*knobs[k][1], "lazy")), *knobs[k + 1 :])
    expected = f"vmrun_timing: typed {hints['vmrun_timing']!r}, but the core's values are "
    assert policy._mismatches(fields, wider, final) == [expected + str(wider[k][1])]
    # A boolean knob that becomes a string knob.
    b = names.index("filter_on_sync")
    strings = (*knobs[:b], ("filter_on_sync", ("on", "off")), *knobs[b + 1 :])
    assert policy._mismatches(fields, strings, final)
    # Another default.
    other = (*final[:k], "none", *final[k + 1 :])
    assert policy._mismatches(fields, knobs, other) == [
        "vmrun_timing: defaults to 'sync', but the core's final preset has 'none'"
    ]


FAKE_CORE = """
import importlib.machinery, importlib.util, pathlib, sys
spec = importlib.util.find_spec("svmpmu")
here = pathlib.Path(spec.submodule_search_locations[0])
path = next(p for s in importlib.machinery.EXTENSION_SUFFIXES for p in here.glob("_core" + s))
spec = importlib.util.spec_from_file_location("svmpmu._core", path)
core = importlib.util.module_from_spec(spec)
spec.loader.exec_module(core)
sys.modules["svmpmu._core"] = core
names = [name for name, _ in core.KNOBS]
{change}
import svmpmu
print(svmpmu.Policy())
print(svmpmu.Policy().set_nested_state_timing, svmpmu.KNOB_VALUES["set_nested_state_timing"])
"""


def run_with_fake_core(change: str) -> subprocess.CompletedProcess[str]:
    """Import svmpmu in a new interpreter after ``change`` to the core's tables."""
    return subprocess.run(  # noqa: S603 (this interpreter, on a fixed script)
        [sys.executable, "-c", FAKE_CORE.format(change=change)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_defaults_follow_the_cores_final_preset():
    # When the core changes `final` (as model revision 2 made KVM_SET_NESTED_STATE
    # synchronous), Policy's defaults and KNOB_VALUES follow, with no edit in Python.
    run = run_with_fake_core(
        "final = list(core.PRESETS['final'])\n"
        "final[names.index('set_nested_state_timing')] = 'none'\n"
        "core.PRESETS = {**core.PRESETS, 'final': tuple(final)}"
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["final", "none ('none', 'sync', 'deferred')"]


def test_a_core_out_of_step_with_policy_fails_at_import():
    run = run_with_fake_core(
        "knobs = list(core.KNOBS)\n"
        "knobs[0], knobs[1] = knobs[1], knobs[0]\n"
        "core.KNOBS = tuple(knobs)"
    )
    assert run.returncode != 0
    assert "ImportError: svmpmu.Policy (python/svmpmu/policy.py) does not match" in run.stderr
    assert "the fields are not in the core's order" in run.stderr


def test_a_knob_renamed_in_the_core_is_named_at_import():
    run = run_with_fake_core(
        "core.KNOBS = tuple(('vmrun_timeing' if n == 'vmrun_timing' else n, v)"
        " for n, v in core.KNOBS)"
    )
    assert run.returncode != 0
    assert "no field for the core's knobs ['vmrun_timeing']" in run.stderr
    assert "fields ['vmrun_timing'] are not knobs of the core" in run.stderr
