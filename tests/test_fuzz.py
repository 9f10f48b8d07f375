"""Batches, the generator and the fuzzer: determinism, thread-count invariance, validity,
shrinking, and the divergence classes the issue asks for."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import svmpmu
from svmpmu import Mix, Op, Policy, TraceBatch, TraceError, oracle
from svmpmu.cli import main as cli_main


def batches_equal(a: TraceBatch, b: TraceBatch) -> bool:
    return np.array_equal(a.offsets, b.offsets) and a.records == b.records


def test_generate_is_deterministic_and_thread_invariant():
    a = svmpmu.generate(3000, 50, seed=9, threads=1)
    b = svmpmu.generate(3000, 50, seed=9, threads=2)
    c = svmpmu.generate(3000, 50, seed=9)
    assert batches_equal(a, b)
    assert batches_equal(a, c)
    assert not batches_equal(a, svmpmu.generate(3000, 50, seed=10))
    # Trace i does not depend on how many traces are generated.
    assert svmpmu.generate(10, 50, seed=9).trace(7) == a.trace(7)


@pytest.mark.parametrize(
    "mix",
    [
        Mix(),
        Mix().with_ops(RUN=0, EMULATE=0, VMRUN=1000),
        Mix().with_ops(WRMSR_EFER=0, VMRUN=0),  # never leaves svme = 0 host mode
        dataclasses.replace(Mix(), hg=(0, 0, 0, 1), run_huge=1000),
    ],
)
def test_generated_traces_are_valid(mix):
    for n_pmcs in (1, 3, 6):
        batch = svmpmu.generate(2000, 40, seed=4, mix=mix, n_pmcs=n_pmcs)
        for trace in batch:
            svmpmu.validate(trace, n_pmcs=n_pmcs)  # raises on any invalid record


def test_mix_is_used():
    only_runs = Mix(ops={"RUN": 1})
    batch = svmpmu.generate(10, 100, seed=1, mix=only_runs)
    assert set(batch.records.op.tolist()) == {Op.RUN}
    with pytest.raises(ValueError, match="per-mille"):
        svmpmu.generate(1, 10, seed=1, mix=dataclasses.replace(Mix(), enable=1001))


def test_batch_equals_per_trace_simulation_for_any_thread_count():
    batch = svmpmu.generate(2000, 64, seed=2)
    one = svmpmu.simulate_batch(batch, "final", threads=1)
    two = svmpmu.simulate_batch(batch, "final", threads=2)
    for name in ("counters", "eventsel_hw", "overflows", "pmis", "reads", "read_offsets"):
        assert np.array_equal(getattr(one, name), getattr(two, name))
    assert one.counters.shape == (2000, 6)
    for i in range(0, 2000, 37):
        assert one.result(i) == svmpmu.simulate(batch.trace(i), "final")


def test_batch_from_traces_and_user_arrays_without_copy():
    traces = [svmpmu.generate(1, n, seed=n).trace(0) for n in (5, 0, 12)]
    batch = TraceBatch.from_traces(traces)
    assert [len(t) for t in batch] == [5, 0, 12]
    assert all(a == b for a, b in zip(batch, traces))
    cols = batch.records.columns()
    op = np.ascontiguousarray(cols["op"].copy())
    rebuilt = TraceBatch(batch.offsets.copy(), op, *(cols[k] for k in list(cols)[1:]))
    assert np.shares_memory(rebuilt.records.op, op)
    with pytest.raises(ValueError, match="offsets"):
        TraceBatch(np.array([0, 3], dtype=np.uint64), op)


def test_invalid_trace_in_batch_names_it():
    good = svmpmu.generate(1, 10, seed=1).trace(0)
    bad = svmpmu.TraceBuilder().vmentry().vmexit().build()
    with pytest.raises(TraceError) as info:
        svmpmu.simulate_batch(TraceBatch.from_traces([good, bad, good]))
    assert info.value.index == 11
    assert "trace 1" in str(info.value)


def summary(report):
    return (
        report.traces,
        report.records,
        report.diverging,
        [(c.signature, c.count, c.trace_index, c.reproducer) for c in report.classes],
    )


def test_fuzz_is_deterministic_and_thread_and_block_invariant():
    a = svmpmu.fuzz("v4", traces=20000, length=48, seed=3, threads=1)
    b = svmpmu.fuzz("v4", traces=20000, length=48, seed=3, threads=2, block=3001)
    assert summary(a) == summary(b)
    assert a.diverging > 0
    assert len(a.classes) > 10


def test_v4_vmrun_divergence_is_found_and_shrunk():
    report = svmpmu.fuzz("v4", traces=100_000, length=64, seed=1)
    vmrun = [c for c in report.classes if c.signature.op == Op.VMRUN]
    assert vmrun, report.format(counterexamples=False)
    best = min(len(c.reproducer) for c in vmrun)
    assert best <= 4
    c = min(vmrun, key=lambda c: len(c.reproducer))
    ops = c.reproducer.op.tolist()
    assert Op.VMRUN in ops
    assert Op.WRMSR_EFER in ops
    assert c.comparison.diverges


def test_shrinking_keeps_the_class_and_is_minimal():
    report = svmpmu.fuzz("final", traces=50_000, length=64, seed=8)
    assert report.classes
    for c in report.classes:
        cols = tuple(c.reproducer.columns().values())
        sigs = svmpmu._core.signatures(
            cols, report.policy._core_knobs, report.reference._core_knobs, 6
        )
        assert c.signature.as_tuple() in [tuple(s) for s in sigs]
        assert len(c.reproducer) <= c.original_length
        # 1-minimal: dropping any one record loses the class or the trace's validity.
        for k in range(len(c.reproducer)):
            keep = np.ones(len(c.reproducer), bool)
            keep[k] = False
            t = svmpmu.Trace(*(col[keep] for col in c.reproducer.columns().values()))
            try:
                s = svmpmu._core.signatures(
                    tuple(t.columns().values()),
                    report.policy._core_knobs,
                    report.reference._core_knobs,
                    6,
                )
            except TraceError:
                continue
            assert c.signature.as_tuple() not in [tuple(x) for x in s]


def test_arch_against_itself_finds_nothing():
    report = svmpmu.fuzz("arch", "arch", traces=100_000, length=64, seed=5)
    assert report.diverging == 0
    assert report.classes == ()
    assert report.traces == 100_000
    assert report.records == 6_400_000


def test_final_diverges_only_by_the_documented_knob_choices():
    # README "What fuzzing final finds": with the reference attributing a selector write to
    # the new selector (as KVM does) and the non-architectural flows synchronous, final and
    # arch agree on every trace.
    policy = dataclasses.replace(
        Policy.preset("final"), forced_leave_timing="sync", set_nested_state_timing="sync"
    )
    reference = dataclasses.replace(Policy.preset("arch"), enabling_wrmsr="new")
    report = svmpmu.fuzz(policy, reference, traces=200_000, length=64, seed=1)
    assert report.diverging == 0
    # And each choice alone leaves classes of its own.
    only_wrmsr = svmpmu.fuzz(policy, "arch", traces=50_000, length=64, seed=1)
    assert {Op(c.signature.op).name for c in only_wrmsr.classes} == {"WRMSR_EVTSEL"}
    only_flows = svmpmu.fuzz("final", reference, traces=50_000, length=64, seed=1)
    assert only_flows.classes
    for c in only_flows.classes:
        assert c.signature.hg in (1, 2)  # stale emul_ok only matters for G or H counters
        assert Op.FORCED_LEAVE in c.reproducer.op or Op.SET_NESTED_STATE in c.reproducer.op


def test_report_formats_and_serialises():
    report = svmpmu.fuzz("v4", traces=5000, length=32, seed=1)
    text = report.format()
    assert "diverging traces" in text
    assert "expected" in text
    assert "observed" in text
    data = json.loads(report.to_json())
    assert data["traces"] == 5000
    assert len(data["classes"]) == len(report.classes)
    first = data["classes"][0]
    assert first["count"] == report.classes[0].count
    assert len(first["reproducer"]["op"]) == len(report.classes[0].reproducer)


def test_cli_fuzz_json_and_errors(tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = cli_main(
        [
            "fuzz",
            "--policy",
            "v4",
            "--traces",
            "3000",
            "--length",
            "32",
            "--no-progress",
            "--summary",
            "--json",
            str(out),
            "--check-oracle",
            "50",
        ]
    )
    assert rc == 1  # v4 diverges; the oracle agrees (that would be 3)
    text = capsys.readouterr().out
    assert "oracle cross-check: 50 traces, 0 disagreements" in text
    assert json.loads(out.read_text())["policy"] == "v4"
    assert cli_main(["fuzz", "--policy", "nope", "--traces", "1", "--no-progress"]) == 2
    assert "unknown preset" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["fuzz", "--set", "svme0=maybe"])


def test_oracle_cross_check_on_100k_generated_traces():
    # The core and the oracle agree on 100,000 generated traces (short ones, to keep CI fast).
    batch = svmpmu.generate(100_000, 16, seed=2026)
    for policy in ("final", "arch"):
        core = svmpmu.simulate_batch(batch, policy)
        for i, trace in enumerate(batch):
            ref = oracle.simulate(trace, policy)
            got = core.result(i)
            assert np.array_equal(got.counters, ref.counters), (policy, i)
            assert np.array_equal(got.reads, ref.reads), (policy, i)
            assert np.array_equal(got.eventsel_hw, ref.eventsel_hw), (policy, i)
            assert np.array_equal(got.overflows, ref.overflows), (policy, i)
            assert np.array_equal(got.pmis, ref.pmis), (policy, i)


def test_counterexamples_show_where_the_models_count_differently():
    report = svmpmu.fuzz("v4", traces=20_000, length=64, seed=1)
    for c in report.classes:
        differ = np.flatnonzero(c.policy_counted != c.reference_counted)
        # The class's own record is one where exactly one side counted.
        assert any(int(c.reproducer.op[k]) == c.signature.op for k in differ)
        text = c.format()
        assert "<- policy counts on PMC" in text or "<- reference counts on PMC" in text
        # The per-record masks agree with the core's count masks on the reproducer.
        cols = tuple(c.reproducer.columns().values())
        assert np.array_equal(
            svmpmu._core.count_masks(cols, report.policy._core_knobs, 6), c.policy_counted
        )


def test_impossible_sizes_are_memory_errors_not_crashes(capsys):
    with pytest.raises(MemoryError):
        svmpmu.generate(1, 10**13, seed=1)
    with pytest.raises(MemoryError):
        svmpmu.fuzz("final", traces=2, length=10**13, seed=1)
    assert cli_main(["fuzz", "--traces", "2", "--length", str(10**13), "--no-progress"]) == 2
    assert "cannot allocate" in capsys.readouterr().err
