"""svmpmu.explain and svmpmu explain: every record, what each model counted and why not."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

import svmpmu
from svmpmu import Op, TraceBuilder, eventsel, explain
from svmpmu.cli import main
from svmpmu.explain import REASONS


def readme_first_example():
    return (
        TraceBuilder()
        .wrmsr_evtsel(0, eventsel(svmpmu.INSTRUCTIONS_RETIRED, guest_only=True))
        .wrmsr_efer(1)
        .vmentry()
        .vmrun()
        .run(1000)
        .vmexit()
        .read(0)
        .build()
    )


def test_the_readme_example_names_the_wrmsr_evtsel_and_the_efer_write_for_v4():
    e = explain(readme_first_example(), "v4")
    assert e.parting == (0, 1, 6)
    assert e.first_divergence == 0
    assert [Op(int(e.trace.op[k])).name for k in e.parting[:2]] == ["WRMSR_EVTSEL", "WRMSR_EFER"]
    # The reference's reasons: the enabling WRMSR belongs to the old selector, and a
    # Guest-Only counter does not count the host's WRMSR(EFER).
    assert (e.reason(0, 1, 0), e.reason(1, 1, 0)) == ("not-enabled", "mode-rule")
    assert (e.reason(0, 0, 0), e.reason(1, 0, 0)) == ("counted", "counted-mode-blind")
    text = e.format()
    marked = [line for line in text.splitlines() if line[:2] in (">>", "<>")]
    assert "WRMSR_EVTSEL" in marked[0]
    assert marked[0].startswith(">>")
    assert "WRMSR_EFER" in marked[1]
    assert "READ" in marked[2]
    assert "enabling_wrmsr = old" in text
    assert "emul_mode_aware = false" in text
    assert "read 1003" in text
    assert "read 1001" in text


def test_the_old_vmrun_order_is_explained_by_the_mode_rule():
    old = dataclasses.replace(svmpmu.Policy.preset("final"), vmrun_order="before_entry")
    e = explain(readme_first_example(), old)
    assert e.parting == (3, 6)
    assert e.reason(3, 0, 0) == "mode-rule"
    assert e.reason(3, 1, 0) == "counted"


def test_a_deferred_exit_points_at_the_record_that_left_the_pmc_pending():
    deferred = dataclasses.replace(svmpmu.Policy.preset("final"), vmexit_timing="deferred")
    t = (
        TraceBuilder()
        .wrmsr_evtsel(0, eventsel(svmpmu.INSTRUCTIONS_RETIRED, host_only=True))
        .wrmsr_efer(1)
        .vmrun()
        .vmexit()
        .emulate()
        .build()
    )
    e = explain(t, deferred)
    assert e.reason(4, 0, 0) == "pending"
    assert int(e.since[4, 0, 0]) == 3
    assert "deferred to the next VM-entry (since record 3 (VMEXIT))" in e.format()


def test_no_divergence_means_no_marks():
    e = explain(svmpmu.scenario("worked-example"), "final")
    assert not e.diverges
    assert e.first_divergence is None
    assert ">>" not in e.format(limit=None)


def test_the_arrays_have_their_documented_shapes():
    t = svmpmu.generate(1, 500, seed=2, n_pmcs=4).trace(0)
    e = explain(t, "hybrid", n_pmcs=4)
    assert e.counted.shape == (500, 2)
    assert e.reasons.shape == e.since.shape == e.eventsel_hw.shape == (500, 2, 4)
    assert set(np.unique(e.reasons)) <= set(REASONS)


@pytest.mark.parametrize("preset", ["final", "hybrid", "v4", "v3", "v1", "legacy"])
def test_the_explanation_agrees_with_compare_and_simulate(preset):
    batch = svmpmu.generate(40, 120, seed=9)
    for i in range(len(batch)):
        t = batch.trace(i)
        e = explain(t, preset)
        c = svmpmu.compare(t, preset)
        assert np.array_equal(e.reads[0], c.policy.reads)
        assert np.array_equal(e.reads[1], c.reference.reads)
        if c.diverges:
            assert e.diverges
        # Counted exactly where the reason says so.
        counted_bits = (e.counted[:, :, None] >> np.arange(6)) & 1
        says = np.isin(e.reasons, [1, 2, 3, 4])
        assert np.array_equal(counted_bits.astype(bool), says)


def record_marks(text):
    """The mark of each record's line in a formatted explanation, by record index."""
    marks = {}
    for line in text.splitlines()[1:]:
        m = re.match(r"^(>>|<>|  ) +(\d+)  ", line)
        if m:
            marks[int(m.group(2))] = m.group(1)
    return marks


def test_every_fuzz_reproducer_s_explanation_marks_the_records_of_its_class():
    report = svmpmu.fuzz("v4", traces=3000, length=48, seed=4)
    assert report.classes
    for cls in report.classes:
        e = explain(cls.reproducer, "v4")
        differ = np.flatnonzero(cls.policy_counted != cls.reference_counted)
        assert np.array_equal(e.counted[:, 0], cls.policy_counted)
        assert np.array_equal(e.counted[:, 1], cls.reference_counted)
        counted_parting = [k for k in e.parting if e.counted[k, 0] != e.counted[k, 1]]
        assert counted_parting == differ.tolist()
        # The class's own record is one of the marked ones, with the model that counts on it.
        sig = cls.signature
        ops = cls.reproducer.op[differ]
        who = (e.counted[differ, 0] & ~e.counted[differ, 1]) != 0
        assert any(int(o) == sig.op and w == sig.policy_counts for o, w in zip(ops, who))
        marks = record_marks(e.format(limit=None))
        assert marks[e.parting[0]] == ">>"
        assert {k for k, m in marks.items() if m != "  "} == set(e.parting)


def test_an_invalid_trace_is_refused():
    bad = TraceBuilder().vmexit().build()
    with pytest.raises(svmpmu.TraceError, match="record 0"):
        explain(bad, "final")


# ---------------------------------------------------------------------------------------------
# The command and its exit status
# ---------------------------------------------------------------------------------------------


def test_cli_explain_exits_1_when_the_models_part(capsys):
    assert main(["explain", "worked-example", "--policy", "v4"]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith(">>")
    assert "enabling_wrmsr = old" in out


def test_cli_explain_exits_0_when_they_agree(capsys):
    assert main(["explain", "worked-example", "--policy", "final"]) == 0
    assert "no divergence" in capsys.readouterr().out


def test_cli_explain_takes_knobs_of_both_models():
    args = ["explain", "worked-example", "--set", "vmrun_order=before_entry"]
    assert main(args) == 1
    assert main([*args, "--set-reference", "vmrun_retire=host"]) == 0


def test_cli_explain_points_a_bad_record_at_its_line(tmp_path, capsys):
    path = tmp_path / "bad.txt"
    path.write_text("READ pmc=0\nVMEXIT\n")
    assert main(["explain", str(path)]) == 2
    assert f"(line 2 of {path})" in capsys.readouterr().err
