"""Issue 17 (hardening): value objects survive pickling, copying and multiprocessing.

Also: values are checked where they enter (Mix, Policy, TraceBuilder, trace columns), and
Trace.save is atomic.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import functools
import multiprocessing
import pathlib
import pickle

import numpy as np
import pytest

import svmpmu
import svmpmu.files
from svmpmu import Mix, Policy, PolicyError, Trace, TraceBatch, TraceBuilder

FTRACE = pathlib.Path(__file__).parent / "fixtures" / "ftrace" / "trace-cmd-6.13.txt"

EQUAL_BY_VALUE = (
    "trace",
    "empty_trace",
    "batch",
    "result",
    "timeline_result",
    "comparison",
    "policy",
    "custom_policy",
    "mix",
    "signature",
    "ftrace_import",
    "fuzz_run",
    "fuzz_tally",
)
"""The objects whose ``==`` compares values: a copy must equal the original."""
COMPARED_BY_FIELDS = (
    "divergence_class",
    "fuzz_report",
    "automaton_report",
    "verified_class",
    "verdict",
    "explanation",
    "timeline",
)
"""The objects whose ``==`` is identity (Explanation, Timeline) or fails on their array fields
(the others): a copy must have the same fields."""


def pickled(value: object, protocol: int | None = None) -> object:
    """``value`` pickled and unpickled."""
    return pickle.loads(pickle.dumps(value, protocol=protocol))  # noqa: S301 (our own pickle)


COPIES = {
    "pickle": pickled,
    "pickle-protocol-2": functools.partial(pickled, protocol=2),
    "copy": copy.copy,
    "deepcopy": copy.deepcopy,
}


@pytest.fixture(scope="module")
def values() -> dict[str, object]:
    """One of every public value object, made with the public API."""
    batch = svmpmu.generate(50, 24, seed=7)
    trace = batch.trace(3)
    worked = svmpmu.scenario("worked-example")
    report = svmpmu.fuzz(
        "v4", traces=3000, length=24, seed=1, mix=Mix(enable=800).with_ops(RESET=5)
    )
    verdict = svmpmu.verify("v4", n_pmcs=1)
    assert report.classes
    assert verdict.classes
    return {
        "trace": trace,
        "empty_trace": Trace([]),
        "batch": batch,
        "result": svmpmu.simulate(trace, "v4"),
        "timeline_result": svmpmu.simulate(worked, "final", timeline=True),
        "comparison": svmpmu.compare(worked, "v4"),
        "policy": Policy.preset("v4"),
        "custom_policy": dataclasses.replace(Policy(), vmrun_order="before_entry"),
        "mix": report.mix,
        "signature": report.classes[0].signature,
        "divergence_class": report.classes[0],
        "fuzz_report": report,
        "automaton_report": svmpmu.fuzz(
            "v4", traces=3000, length=24, seed=1, engine="automaton", n_pmcs=3
        ),
        "fuzz_run": report.run(),
        "fuzz_tally": report.run().tally(0, 500),
        "verified_class": verdict.classes[0],
        "verdict": verdict,
        "explanation": svmpmu.explain(worked, "v4"),
        "timeline": svmpmu.timeline(worked, "v4"),
        "ftrace_import": svmpmu.read_ftrace(FTRACE),
    }


def same(a: object, b: object) -> bool:
    """Whether ``a`` and ``b`` are of one type and hold the same values, field by field
    (arrays element by element, with their dtype and shape)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray)
        return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b))
    if isinstance(a, (Trace, TraceBatch)):
        return a == b
    if dataclasses.is_dataclass(a):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, (tuple, list)):
        assert isinstance(b, (tuple, list))
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


@pytest.mark.parametrize("how", COPIES)
@pytest.mark.parametrize("name", EQUAL_BY_VALUE + COMPARED_BY_FIELDS)
def test_every_value_object_copies_and_pickles(values, name, how):
    original = values[name]
    clone = COPIES[how](original)
    assert type(clone) is type(original)
    assert same(clone, original)
    if name in EQUAL_BY_VALUE:
        assert clone == original
        assert not clone != original  # noqa: SIM202 (__ne__ is checked too)


def test_the_objects_hold_what_they_should(values):
    # The fixtures are what their names say, so that the round trips cover them.
    assert isinstance(values["fuzz_report"], svmpmu.FuzzReport)
    assert isinstance(values["divergence_class"], svmpmu.DivergenceClass)
    assert isinstance(values["verified_class"], svmpmu.VerifiedClass)
    assert isinstance(values["verdict"], svmpmu.Verdict)
    assert isinstance(values["explanation"], svmpmu.Explanation)
    assert isinstance(values["timeline"], svmpmu.Timeline)
    assert isinstance(values["ftrace_import"], svmpmu.FtraceImport)
    assert values["comparison"].diverges
    assert values["timeline_result"].hw_enabled is not None


@pytest.mark.parametrize("name", ["fuzz_report", "verdict"])
def test_reports_say_the_same_after_a_round_trip(values, name):
    report = values[name]
    clone = pickled(report)
    assert clone.to_dict() == report.to_dict()
    assert clone.format() == report.format()


def test_explanation_and_timeline_say_the_same_after_a_round_trip(values):
    explanation = pickled(values["explanation"])
    assert explanation.format() == values["explanation"].format()
    timeline = copy.deepcopy(values["timeline"])
    assert np.array_equal(timeline.mode, values["timeline"].mode)


@pytest.mark.parametrize("how", COPIES)
def test_a_copied_trace_stays_immutable(values, how):
    trace = COPIES[how](values["trace"])
    for name in svmpmu.COLUMNS:
        column = getattr(trace, name)
        assert not column.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            column[:1] = 0
    with pytest.raises(AttributeError, match="immutable"):
        trace.op = np.zeros(0, np.uint8)
    batch = COPIES[how](values["batch"])
    assert not batch.offsets.flags.writeable
    assert not batch.records.value.flags.writeable
    with pytest.raises(AttributeError, match="immutable"):
        batch.offsets = np.zeros(1, np.uint64)


def test_copy_shares_the_columns_and_deepcopy_does_not(values):
    trace, batch = values["trace"], values["batch"]
    assert np.shares_memory(copy.copy(trace).value, trace.value)
    assert not np.shares_memory(copy.deepcopy(trace).value, trace.value)
    assert np.shares_memory(copy.copy(batch).records.op, batch.records.op)
    deep = copy.deepcopy(batch)
    assert not np.shares_memory(deep.records.op, batch.records.op)
    assert not np.shares_memory(deep.offsets, batch.offsets)
    # deepcopy keeps sharing within the copied structure
    pair = copy.deepcopy([trace, trace])
    assert pair[0] is pair[1]


def test_a_pickled_mix_generates_the_same_traces(values):
    mix = values["mix"]
    clone = pickled(mix)
    assert clone == mix
    assert isinstance(clone.ops, type(Mix().ops))
    assert svmpmu.generate(20, 30, seed=5, mix=clone) == svmpmu.generate(20, 30, seed=5, mix=mix)
    with pytest.raises(TypeError):
        clone.ops["RUN"] = 1  # type: ignore[index]


def test_batches_compare_by_value(values):
    batch = values["batch"]
    assert batch == TraceBatch.from_traces(list(batch))
    assert batch != svmpmu.generate(50, 24, seed=8)
    assert batch != TraceBatch.from_traces(list(batch)[:-1])
    assert batch.__eq__(object()) is NotImplemented
    with pytest.raises(TypeError, match="unhashable"):
        hash(batch)


def test_comparisons_compare_by_value(values):
    worked = svmpmu.scenario("worked-example")
    assert svmpmu.compare(worked, "v4") == values["comparison"]
    assert svmpmu.compare(worked, "final") != values["comparison"]
    with pytest.raises(TypeError, match="unhashable"):
        hash(values["comparison"])


START_METHODS = [
    method
    for method in ("fork", "spawn", "forkserver")
    if method in multiprocessing.get_all_start_methods()
]


# Python 3.12 warns that forking a process with threads (the core's workers) may deadlock;
# the core is written to survive it (tests/test_fork.py).
@pytest.mark.filterwarnings("ignore:.*fork:DeprecationWarning")
@pytest.mark.parametrize("method", START_METHODS)
def test_multiprocessing_pools_take_and_return_the_objects(values, method):
    trace = values["trace"]
    mix = values["mix"]
    sent = [values[name] for name in EQUAL_BY_VALUE + COMPARED_BY_FIELDS]
    with multiprocessing.get_context(method).Pool(1) as pool:
        results = pool.map_async(svmpmu.simulate, [trace]).get(timeout=120)
        assert results == [svmpmu.simulate(trace)]
        compared = pool.apply_async(svmpmu.compare, (trace, values["policy"])).get(timeout=120)
        assert compared == svmpmu.compare(trace, values["policy"])
        generate = functools.partial(svmpmu.generate, 20, 16, seed=3, mix=mix)
        assert pool.apply_async(generate).get(timeout=120) == generate()
        returned = pool.apply_async(copy.deepcopy, (sent,)).get(timeout=120)
    assert same(returned, sent)


MIX_ERRORS = [
    ({"ops": {"RUN": -1}}, r"ops\['RUN'\] must be a weight.*got -1"),
    ({"ops": {"RUN": 1.5}}, r"ops\['RUN'\].*float"),
    ({"ops": {"RUN": "10"}}, r"ops\['RUN'\].*str"),
    ({"ops": {"RUN": True}}, r"ops\['RUN'\].*bool"),
    ({"ops": {"RUN": 2**32}}, r"ops\['RUN'\]"),
    ({"ops": {"RUN": 2**31, "EMULATE": 2**31}}, "ops: the op weights must add up"),
    ({"ops": {"NOPE": 1}}, r"unknown ops \['NOPE'\]"),
    ({"ops": [("RUN", 1)]}, "ops must map op names to weights, got list"),
    ({"ops": {"VMRUN": 1}}, "op valid in every mode"),
    ({"hg": (1, 2, 3)}, "hg must be a tuple of 4 weights"),
    ({"hg": (1, 2, 3, -1)}, r"hg\[3\] must be a weight"),
    ({"hg": (0, 0, 0, 0)}, "hg weights are all zero"),
    ({"events": (1, 2.5, 3)}, r"events\[1\].*float"),
    ({"events": 3}, "events must be a tuple of 3 weights"),
    ({"cpl_bits": "abcd"}, "cpl_bits must be a tuple of 4 weights"),
    ({"filter": (0, 0, 0)}, "filter weights are all zero"),
    ({"filter": (1, 1, 2**32)}, r"filter\[2\]"),
    ({"enable": 1001}, "enable must be a per-mille value.*0..1000"),
    ({"kernel": -1}, "kernel must be a per-mille value"),
    ({"branch": 0.5}, "branch must be a per-mille value.*float"),
    ({"interrupt": None}, "interrupt must be a per-mille value.*NoneType"),
    ({"global_all": False}, "global_all.*bool"),
    ({"run_max": 0}, "run_max must be a count"),
    ({"run_max": 2**64}, "run_max"),
    ({"run_max": 10.0}, "run_max.*float"),
]


@pytest.mark.parametrize(("fields", "match"), MIX_ERRORS)
def test_mix_checks_every_field_at_construction(fields, match):
    with pytest.raises(ValueError, match=match):
        Mix(**fields)
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(Mix(), **fields)


def test_mix_changes_are_checked_and_normalized():
    with pytest.raises(ValueError, match=r"ops\['RESET'\]"):
        Mix().with_ops(RESET=-1)
    mix = Mix(
        hg=[1, 2, 3, 4],
        enable=np.int64(5),
        run_max=np.uint64(2**64 - 1),
        ops={"RUN": np.uint32(3), "EMULATE": 1},
    )
    assert mix.hg == (1, 2, 3, 4)
    assert type(mix.enable) is int
    assert mix.run_max == 2**64 - 1
    assert type(mix.ops["RUN"]) is int
    assert list(mix.ops) == list(Mix().ops)  # the core's op order, whatever the given order
    assert mix.ops["VMRUN"] == 0
    assert mix == Mix(**mix.to_dict())
    assert Mix.workload() == pickled(Mix.workload())


POLICY_ERRORS = [
    ((), {"vmrun_timeing": "sync"}, "unknown knob 'vmrun_timeing'"),
    (("kvm",) * 16, {}, "16 knob values given by position, but there are 15 knobs"),
    (("kvm",), {"model": "arch"}, "knob 'model' given both by position and by name"),
    ((), {"model": 1}, r"knob 'model' cannot be 1 \(type int, not str\)"),
    ((), {"emul_mode_aware": 1}, r"knob 'emul_mode_aware' cannot be 1 \(type int, not bool\)"),
    ((), {"filter_on_sync": "true"}, r"'filter_on_sync' cannot be 'true' \(type str"),
    ((), {"vmrun_order": None}, r"'vmrun_order' cannot be None \(type NoneType"),
    ((), {"efer_timing": "lazy"}, "knob 'efer_timing' cannot be 'lazy'; allowed"),
    (("kvm", "off", "sometimes"), {}, "knob 'hg' cannot be 'sometimes'"),
]


@pytest.mark.parametrize(("args", "knobs", "match"), POLICY_ERRORS)
def test_policy_errors_are_policy_errors(args, knobs, match):
    with pytest.raises(PolicyError, match=match):
        Policy(*args, **knobs)


def test_policy_takes_knobs_by_position_and_replace_checks_them():
    assert Policy("arch") == Policy(model="arch")
    assert Policy(*dataclasses.astuple(Policy.preset("v4"))) == Policy.preset("v4")
    with pytest.raises(PolicyError, match="unknown knob 'nope'"):
        dataclasses.replace(Policy(), nope="sync")
    with pytest.raises(PolicyError, match="cannot be 0"):
        dataclasses.replace(Policy(), filter_on_sync=0)


BUILDER_ERRORS = [
    (lambda b: b.run(1.5), TypeError, r"run\(\): n must be an integer, got float 1.5"),
    (lambda b: b.run(True), TypeError, r"run\(\): n must be an integer, got bool"),
    (lambda b: b.run("5"), TypeError, r"run\(\): n must be an integer, got str"),
    (lambda b: b.run(np.float64(2)), TypeError, r"run\(\): n must be an integer"),
    (lambda b: b.run(-1), ValueError, r"run\(\): n -1 does not fit"),
    (lambda b: b.run(2**64), ValueError, r"run\(\): n 18446744073709551616 does not fit"),
    (lambda b: b.run(10, event=2**32), ValueError, r"run\(\): event"),
    (lambda b: b.run(10, cpl=1.0), TypeError, r"run\(\): cpl"),
    (lambda b: b.wrmsr_evtsel(0.0, 1), TypeError, r"wrmsr_evtsel\(\): pmc"),
    (lambda b: b.wrmsr_evtsel(0, -1), ValueError, r"wrmsr_evtsel\(\): value -1"),
    (lambda b: b.wrmsr_evtsel(0, 1.0), TypeError, r"wrmsr_evtsel\(\): value"),
    (lambda b: b.wrmsr_ctr(256, 0), ValueError, r"wrmsr_ctr\(\): pmc 256"),
    (lambda b: b.wrmsr_ctr(False, 0), TypeError, r"wrmsr_ctr\(\): pmc.*bool"),
    (lambda b: b.wrmsr_global_ctrl(None), TypeError, r"wrmsr_global_ctrl\(\): value"),
    (lambda b: b.wrmsr_global_ctrl(2**64), ValueError, r"wrmsr_global_ctrl\(\): value"),
    (lambda b: b.wrmsr_efer(1.0), TypeError, r"wrmsr_efer\(\): svme must be a bool or an"),
    (lambda b: b.wrmsr_efer("1"), TypeError, r"wrmsr_efer\(\): svme"),
    (lambda b: b.wrmsr_efer(-1), ValueError, r"wrmsr_efer\(\): svme -1"),
    (lambda b: b.set_nested_state(256), ValueError, r"set_nested_state\(\): guest_mode"),
    (lambda b: b.set_filter("allow", 1.5), TypeError, r"set_filter\(\): event"),
    (lambda b: b.set_filter("deny", -3), ValueError, r"set_filter\(\): event -3"),
    (lambda b: b.set_filter(1, 0xC0), ValueError, "filter action"),
    (lambda b: b.emulate(cpl=True), TypeError, r"emulate\(\): cpl"),
    (lambda b: b.emulate(branch=0.5), TypeError, r"emulate\(\): branch"),
    (lambda b: b.vmrun(cpl=-1), ValueError, r"vmrun\(\): cpl -1"),
    (lambda b: b.vmrun(cpl="3"), TypeError, r"vmrun\(\): cpl"),
    (lambda b: b.read(np.float64(0)), TypeError, r"read\(\): pmc"),
    (lambda b: b.read(300), ValueError, r"read\(\): pmc 300"),
    (lambda b: b.extend([]), TypeError, r"extend\(\): trace must be a svmpmu.Trace"),
]


@pytest.mark.parametrize(("call", "error", "match"), BUILDER_ERRORS)
def test_builder_rejects_bad_arguments(call, error, match):
    builder = TraceBuilder().wrmsr_efer(1)
    with pytest.raises(error, match=match):
        call(builder)
    assert len(builder) == 1  # nothing half-added


def test_builder_takes_numpy_integers():
    with_numpy = (
        TraceBuilder()
        .wrmsr_evtsel(np.uint8(0), np.uint64(svmpmu.eventsel(0xC0, guest_only=True)))
        .wrmsr_efer(np.bool_(True))
        .vmrun(cpl=np.int64(3))
        .run(np.uint64(2**64 - 1), event=np.uint32(0xC0), cpl=np.int8(3))
        .emulate(cpl=np.int16(0), branch=np.int32(1))
        .set_filter("allow", np.int64(0xC0))
        .set_nested_state(np.uint8(1))
        .read(np.int64(0))
        .build()
    )
    plain = (
        TraceBuilder()
        .wrmsr_evtsel(0, svmpmu.eventsel(0xC0, guest_only=True))
        .wrmsr_efer(True)
        .vmrun(cpl=3)
        .run(2**64 - 1, event=0xC0, cpl=3)
        .emulate(cpl=0, branch=True)
        .set_filter("allow", 0xC0)
        .set_nested_state(1)
        .read(0)
        .build()
    )
    assert with_numpy == plain
    assert int(plain.value[3]) == 2**64 - 1
    # Flags still take any value their column holds, to build invalid traces on purpose.
    assert int(TraceBuilder().wrmsr_efer(2).build().flag[0]) == 2


@pytest.mark.parametrize(
    "values",
    [
        [2**64 - 1],
        [0, 2**64 - 1],
        [2**63 + 1, 1],  # float64 would round 2**63 + 1
        [1, 2**63, 2**64 - 1, 12345678901234567891],
        [np.uint64(2**64 - 1), 1],
        np.array([2**64 - 1, 2**63 + 3], dtype=object),
        (True, 2**63 + 5),
    ],
)
def test_columns_take_large_integers_exactly(values):
    expected = [int(v) for v in values]
    trace = Trace(op=[0] * len(expected), value=values)
    assert trace.value.dtype == np.uint64
    assert trace.value.tolist() == expected
    batch = TraceBatch([0, len(expected)], op=[0] * len(expected), value=values)
    assert batch.records.value.tolist() == expected


@pytest.mark.parametrize(
    ("column", "values", "error", "match"),
    [
        ("value", [-1, 2**63], ValueError, "column 'value' holds a negative value"),
        ("value", [2**64], ValueError, "column 'value' holds a value wider than its dtype"),
        ("value", [1, 2**64 + 1], ValueError, "column 'value' holds a value wider"),
        ("value", [-(2**70), 1], ValueError, "column 'value' holds a negative value"),
        ("key", [2**32], ValueError, "column 'key' holds a value wider than its dtype uint32"),
        ("pmc", [2**63], ValueError, "column 'pmc' holds a value wider than its dtype uint8"),
        ("value", [1.5], TypeError, "column 'value' must hold integers, got dtype float64"),
        ("value", [1.0, 2], TypeError, "column 'value' must hold integers, got dtype float64"),
        ("value", [2.0, 2**63], TypeError, "column 'value' must hold integers, got dtype float"),
        ("value", [1, 2**64 - 1, 0.5], TypeError, "column 'value' must hold integers"),
        ("cpl", np.array([3.0]), TypeError, "column 'cpl' must hold integers, got dtype float64"),
        ("value", np.array([1, 2.5], dtype=object), TypeError, "column 'value' must hold"),
        ("flag", ["1"], TypeError, "column 'flag' must hold integers, got dtype <U1"),
    ],
)
def test_columns_refuse_what_they_cannot_hold_exactly(column, values, error, match):
    with pytest.raises(error, match=match):
        Trace(op=[0] * len(values), **{column: values})


def test_offsets_take_large_integers_and_refuse_floats():
    with pytest.raises(TypeError, match="offsets must hold integers, got dtype float64"):
        TraceBatch([0.0, 1.0], op=[0])
    with pytest.raises(ValueError, match="offsets holds a negative value"):
        TraceBatch([-1, 2**63], op=[0])


def test_save_writes_npz_as_before(tmp_path, values):
    trace = values["trace"]
    trace.save(tmp_path / "a.npz")
    trace.save(str(tmp_path / "b"))  # numpy's rule: .npz is appended
    with (tmp_path / "c.npz").open("wb") as f:
        trace.save(f)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.npz", "c.npz"]
    for name in ("a.npz", "b.npz", "c.npz"):
        assert Trace.load(tmp_path / name) == trace


def _full_disk(_fd: int) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_save_leaves_the_old_file(tmp_path, monkeypatch, values):
    path = tmp_path / "trace.npz"
    old = TraceBuilder().wrmsr_efer(1).vmrun(cpl=3).build()
    old.save(path)
    monkeypatch.setattr(svmpmu.files.os, "fsync", _full_disk)
    with pytest.raises(OSError, match="No space left"):
        values["trace"].save(path)
    with pytest.raises(OSError, match="No space left"):
        values["trace"].save(tmp_path / "new.npz")
    assert list(tmp_path.iterdir()) == [path]  # no temporary file, no half-written new file
    assert Trace.load(path) == old
