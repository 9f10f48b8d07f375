"""Exhaustive verification (``svmpmu.verify`` and ``svmpmu verify``): the verdicts the issue
asks for, the witnesses replayed through the core and the oracle, the fuzzer's classes found
among the verifier's, and the command line."""

from __future__ import annotations

import dataclasses
import json
import random
import re

import numpy as np
import pytest

import svmpmu
from svmpmu import PRESETS, Op, Policy, PolicyError, Signature, Trace
from svmpmu.cli import main
from verify_helpers import check_verdict, check_witness, random_policy, verdict

PRESET_NAMES = list(PRESETS)

# The two documented choices of `final` (README, "What `final` does differently"), aligned.
FINAL_SYNC_LEAVE = dataclasses.replace(Policy.preset("final"), forced_leave_timing="sync")
ARCH_NEW_WRMSR = dataclasses.replace(Policy.preset("arch"), enabling_wrmsr="new")


def names(v):
    return {c.signature.name for c in v.classes}


# The verdicts.


def test_arch_against_arch_is_equivalent():
    v = verdict("arch")
    assert v.equivalent
    assert not v.bounded
    assert v.outcome == "equivalent"
    assert v.classes == ()
    assert v.diverging_classes == ()
    assert v.states > 100
    assert v.depth >= 1
    assert v.transitions > v.states
    assert "EQUIVALENT: no trace diverges" in v.format()


def test_v4_shows_the_seed_vmrun_class_in_at_most_three_records():
    v = verdict("v4")
    assert not v.equivalent
    assert v.outcome == "diverges"
    # The class of the thread that started it all (README): VMRUN on a Host-Only counter,
    # counted by v4 (retired before entering L2, bitmap blind to H/G), not by hardware.
    seed = Signature.parse("VMRUN:H:host:guest:policy")
    (c,) = [c for c in v.classes if c.signature == seed]
    assert len(c.witness) <= 3
    check_witness(c, v.policy, v.reference, v.n_pmcs)
    assert Op.VMRUN in c.witness.op.tolist()
    assert "shortest witness, " in c.format()


def test_final_with_the_two_documented_choices_aligned_is_equivalent():
    # Model revision 2 made KVM_SET_NESTED_STATE synchronous in final already.
    assert Policy.preset("final").set_nested_state_timing == "sync"
    v = verdict(FINAL_SYNC_LEAVE, ARCH_NEW_WRMSR)
    assert v.equivalent, sorted(names(v))
    assert v.outcome == "equivalent"
    assert v.classes == ()
    # Either choice alone is not enough.
    assert not verdict(FINAL_SYNC_LEAVE).equivalent
    assert not verdict("final", ARCH_NEW_WRMSR).equivalent


def test_final_s_classes_are_those_of_the_two_documented_choices():
    # README: 30 classes, 19 gone with enabling_wrmsr=new (all WRMSR_EVTSEL), 12 gone with
    # forced_leave_timing=sync (host mode with svme=1, G or H counters), one in both.
    every = {c.signature for c in verdict("final").classes}
    wrmsr = {c.signature for c in verdict(FINAL_SYNC_LEAVE).classes}
    leave = {c.signature for c in verdict("final", ARCH_NEW_WRMSR).classes}
    assert len(every) == 30
    assert (len(wrmsr), len(leave), len(wrmsr & leave)) == (19, 12, 1)
    assert wrmsr | leave == every
    assert {s.op for s in wrmsr} == {Op.WRMSR_EVTSEL}
    assert {Op(s.op).name for s in leave} == {
        "EMULATE",
        "WRMSR_EFER",
        "WRMSR_CTR",
        "WRMSR_GLOBAL_CTRL",
        "VMRUN_FAIL",
        "WRMSR_EVTSEL",
    }
    assert all(s.before == s.after == 1 and s.hg in (1, 2) for s in leave)
    # No RUN class: every deferred re-evaluation happens at the VM-entry before a RUN.
    assert all(s.op != Op.RUN for s in every)


def test_swapping_policy_and_reference_flips_who_counts():
    # Neither model drops H/G bits, so the classes are the same but for who counts.
    def flipped(v):
        return {
            dataclasses.replace(c.signature, policy_counts=not c.signature.policy_counts): len(
                c.witness
            )
            for c in v.classes
        }

    there = {c.signature: len(c.witness) for c in verdict("final").classes}
    assert flipped(verdict("arch", "final")) == there


# The fuzzer finds nothing the verifier does not.


@pytest.mark.parametrize("n_pmcs", [6, 1])
@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_every_fuzz_class_is_a_verify_class_with_a_witness_no_longer(preset, n_pmcs):
    report = svmpmu.fuzz(preset, "arch", traces=20_000, length=64, seed=1, n_pmcs=n_pmcs)
    v = verdict(preset)
    witnesses = {c.signature: c.witness for c in v.classes}
    missing = [c.signature.name for c in report.classes if c.signature not in witnesses]
    assert not missing, f"fuzz finds classes verify does not: {missing}"
    longer = [
        (c.signature.name, len(witnesses[c.signature]), len(c.reproducer))
        for c in report.classes
        if len(witnesses[c.signature]) > len(c.reproducer)
    ]
    assert not longer, f"(class, witness, reproducer) lengths: {longer}"
    if preset == "arch":
        assert report.classes == ()
    else:
        assert report.diverging > 0
        assert report.classes


# Every witness replays with its class.


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_every_witness_of_a_preset_replays_with_its_class(preset):
    v = verdict(preset)
    assert v.equivalent == (preset == "arch")
    check_verdict(v)


@pytest.mark.parametrize("k", range(6))
def test_every_witness_of_random_knobs_replays_with_its_class(k):
    rng = random.Random(k)
    policy, reference = random_policy(rng), random_policy(rng)
    v = svmpmu.verify(policy, reference)
    assert (v.policy, v.reference) == (policy, reference)
    check_verdict(v)
    # What the fuzzer finds for the same pair is among the verifier's classes.
    report = svmpmu.fuzz(policy, reference, traces=10_000, length=64, seed=k + 1, n_pmcs=6)
    witnesses = {c.signature: c.witness for c in v.classes}
    for c in report.classes:
        assert c.signature in witnesses, c.signature.name
        assert len(witnesses[c.signature]) <= len(c.reproducer), c.signature.name
    if v.equivalent:
        assert report.diverging == 0


# Threads, ignore, bounds and bad arguments.


@pytest.mark.parametrize("preset", ["final", "v1"])
def test_the_same_verdict_for_any_thread_count(preset):
    one = svmpmu.verify(preset, threads=1)
    two = svmpmu.verify(preset, threads=2)
    assert one.states == two.states
    assert (one.depth, one.transitions) == (two.depth, two.transitions)
    assert [c.signature for c in one.classes] == [c.signature for c in two.classes]
    assert [c.witness for c in one.classes] == [c.witness for c in two.classes]
    assert [c.transitions for c in one.classes] == [c.transitions for c in two.classes]
    assert one.states == verdict(preset).states


def test_ignoring_every_class_of_final_makes_it_equivalent():
    every = verdict("final")
    assert not every.equivalent
    v = svmpmu.verify("final", ignore=[c.signature.name for c in every.classes])
    assert v.equivalent
    assert v.outcome == "equivalent"
    assert v.diverging_classes == ()
    assert [c.signature for c in v.classes] == [c.signature for c in every.classes]
    assert all(c.ignored for c in v.classes)
    assert f"EQUIVALENT: no trace diverges but in the {len(every.classes)} ignored" in v.format()
    # All but one: that one is left, and Signature objects work as names do.
    kept, *rest = every.classes
    v = svmpmu.verify("final", ignore=[c.signature for c in rest])
    assert not v.equivalent
    assert [c.signature for c in v.diverging_classes] == [kept.signature]


def test_class_names_round_trip():
    for preset in PRESET_NAMES:
        for c in verdict(preset).classes:
            sig = c.signature
            assert Signature.parse(sig.name) == sig
            assert Signature.parse(sig.name.lower()) == sig
            assert Signature.parse(f" {sig.name.upper()} ") == sig


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("VMRUN:G:host", "expected OP:HG:BEFORE:AFTER:WHO"),
        ("VMRUN:G:host:guest:policy:extra", "expected OP:HG:BEFORE:AFTER:WHO"),
        ("", "expected OP:HG:BEFORE:AFTER:WHO"),
        ("VMLOAD:G:host:guest:policy", "op 'VMLOAD' is not one of WRMSR_EVTSEL"),
        ("VMRUN:GH:host:guest:policy", "H/G 'GH' is not one of none, G, H, HG"),
        ("VMRUN:G:l2:guest:policy", "mode 'l2' is not one of svme0, host, guest"),
        ("VMRUN:G:host:l1:policy", "mode 'l1' is not one of svme0, host, guest"),
        ("VMRUN:G:host:guest:kvm", "who 'kvm' is not one of policy, reference"),
    ],
)
def test_a_bad_class_name_raises_value_error_naming_the_problem(name, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        Signature.parse(name)
    with pytest.raises(ValueError, match=re.escape(problem)):
        svmpmu.verify("final", ignore=[name])


def test_a_class_that_is_neither_a_name_nor_a_signature_is_a_type_error():
    with pytest.raises(TypeError, match="expected a Signature or a class name, got int"):
        svmpmu.verify("final", ignore=[5])


@pytest.mark.parametrize("preset", ["arch", "final"])
def test_a_state_bound_gives_a_bounded_verdict(preset):
    v = svmpmu.verify(preset, max_states=10)
    assert v.bounded
    assert not v.equivalent
    assert v.outcome == "bounded"
    assert v.states < verdict(preset).states
    assert "BOUNDED" in v.format()


def test_a_large_state_bound_stops_near_it():
    v = svmpmu.verify("final", max_states=5_000)
    assert v.bounded
    assert 5_000 <= v.states <= 5_000 + 300
    assert v.to_dict()["outcome"] == "bounded"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"n_pmcs": 0}, ValueError, "n_pmcs must be 1..6, got 0"),
        ({"n_pmcs": 7}, ValueError, "n_pmcs must be 1..6, got 7"),
        ({"n_pmcs": True}, TypeError, "n_pmcs must be an int"),
        ({"max_states": 0}, ValueError, "max_states must be at least 1, got 0"),
        ({"max_states": -5}, ValueError, "max_states must be at least 1, got -5"),
        ({"max_states": False}, TypeError, "max_states must be an integer, got bool"),
        ({"max_states": 1.5}, TypeError, "max_states must be an integer, got float"),
        ({"max_states": "10"}, TypeError, "max_states must be an integer, got str"),
        ({"threads": 0}, ValueError, "threads"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        svmpmu.verify("final", **kwargs)


def test_a_bad_policy_is_a_policy_error():
    with pytest.raises(PolicyError, match="unknown preset 'nope'"):
        svmpmu.verify("nope")
    with pytest.raises(PolicyError, match="unknown preset 'nope'"):
        svmpmu.verify("final", "nope")


# The command line.


def test_cli_verify_arch_prints_equivalent(capsys):
    assert main(["verify", "--policy", "arch", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "EQUIVALENT: no trace diverges" in out
    assert f"{verdict('arch').states} product states" in out


def test_cli_verify_with_the_documented_choices_aligned_prints_equivalent(capsys):
    args = ["verify", "--set", "forced_leave_timing=sync"]
    args += ["--set-reference", "enabling_wrmsr=new", "--no-progress"]
    assert main(args) == 0
    assert "EQUIVALENT: no trace diverges" in capsys.readouterr().out


def test_cli_verify_v4_summary_lists_a_vmrun_class(capsys):
    assert main(["verify", "--policy", "v4", "--summary", "--no-progress"]) == 1  # diverges
    out = capsys.readouterr().out
    assert f"DIVERGES: {len(verdict('v4').classes)} classes" in out
    assert "VMRUN:H:host:guest:policy" in out
    assert re.search(r"^\s*\d+\s+[1-3]\s+VMRUN:H:host:guest:policy\s", out, re.MULTILINE)
    assert "shortest witness" not in out  # --summary: the table only


def test_cli_verify_prints_witnesses_without_summary(capsys):
    assert main(["verify", "--policy", "final", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert out.count("shortest witness, ") == len(verdict("final").classes)
    assert "<- policy counts on PMC 0" in out


def test_cli_verify_ignore_of_a_bad_name_exits_2_with_one_line(capsys):
    assert main(["verify", "--ignore", "VMRUN:G:nowhere:guest:policy", "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("svmpmu: error: class 'VMRUN:G:nowhere:guest:policy': mode")


def test_cli_verify_ignore_every_class_of_final(capsys):
    args = ["verify", "--no-progress", "--summary"]
    for c in verdict("final").classes:
        args += ["--ignore", c.signature.name]
    assert main(args) == 0
    assert "EQUIVALENT: no trace diverges but in the 30 ignored classes" in capsys.readouterr().out


def test_cli_verify_max_states_prints_bounded(capsys):
    # final's first classes are within 10 states: it diverges (1), bounded or not.
    assert main(["verify", "--max-states", "10", "--no-progress", "--summary"]) == 1
    assert "BOUNDED" in capsys.readouterr().out


def test_cli_verify_bounded_without_a_divergence_is_inconclusive(capsys):
    args = ["verify", "--policy", "arch", "--max-states", "10", "--no-progress", "--summary"]
    assert main(args) == 3
    assert "BOUNDED" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args",
    [["--n-pmcs", "0"], ["--max-states", "0"], ["--policy", "nope"]],
)
def test_cli_verify_bad_arguments_exit_2_with_one_line(args, capsys):
    assert main(["verify", "--no-progress", *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("svmpmu: error: ")


def test_cli_verify_json_to_stdout(capsys):
    assert main(["verify", "--policy", "v4", "--json", "-", "--no-progress"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {
        "policy",
        "policy_knobs",
        "reference",
        "reference_knobs",
        "n_pmcs",
        "outcome",
        "equivalent",
        "bounded",
        "states",
        "depth",
        "transitions",
        "seconds",
        "classes",
    }
    v = verdict("v4")
    assert (data["policy"], data["reference"], data["n_pmcs"]) == ("v4", "arch", 1)
    assert data["policy_knobs"] == dataclasses.asdict(Policy.preset("v4"))
    assert (data["outcome"], data["equivalent"], data["bounded"]) == ("diverges", False, False)
    assert (data["states"], data["depth"]) == (v.states, v.depth)
    assert [c["class"] for c in data["classes"]] == [c.signature.name for c in v.classes]
    for c, mine in zip(data["classes"], v.classes):
        assert set(c) == {
            "class",
            "description",
            "ignored",
            "transitions",
            "witness",
            "witness_text",
            "expected",
            "observed",
        }
        assert c["description"] == mine.signature.describe()
        assert c["ignored"] is False
        witness = Trace(**{k: np.asarray(x) for k, x in c["witness"].items()})
        assert witness == mine.witness
        assert len(c["witness_text"]) == len(witness)
        comparison = svmpmu.compare(witness, "v4", "arch", n_pmcs=1)
        assert comparison.diverges
        assert c["expected"]["counters"] == comparison.reference.counters.tolist()
        assert c["observed"]["counters"] == comparison.policy.counters.tolist()


def test_cli_verify_json_to_a_file_and_text_to_stdout(tmp_path, capsys):
    path = tmp_path / "verdict.json"
    assert main(["verify", "--policy", "arch", "--json", str(path), "--no-progress"]) == 0
    assert "EQUIVALENT" in capsys.readouterr().out
    data = json.loads(path.read_text())
    assert (data["outcome"], data["equivalent"], data["classes"]) == ("equivalent", True, [])


def test_cli_verify_matrix(capsys):
    # About 50 s on a 2-core machine: 49 explorations.
    assert main(["verify", "--matrix", "--no-progress"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("svmpmu verify --matrix:")
    assert lines[1].split() == PRESET_NAMES
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines[2:]]
    assert len(rows) == len(PRESET_NAMES)
    for i, (name, row) in enumerate(zip(PRESET_NAMES, rows)):
        assert row[0] == name
        cells = row[1:]
        assert len(cells) == len(PRESET_NAMES), row
        assert cells[i] == "equivalent", (name, cells)
        for cell in cells:
            assert cell == "equivalent" or re.fullmatch(r"\d+ classes", cell), cell
        # The column of arch: the verdicts of every preset against the reference.
        expected = verdict(name)
        arch = cells[PRESET_NAMES.index("arch")]
        if expected.equivalent:
            assert arch == "equivalent"
        else:
            assert arch == f"{len(expected.diverging_classes)} classes"
