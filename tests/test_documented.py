"""The documented choices of the merged code, and the main job's summary that uses them."""

from __future__ import annotations

import dataclasses

import pytest

import svmpmu
from svmpmu.cli import main
from svmpmu.documented import DOCUMENTED, documented_choices, explained_by


def test_the_documented_choices_name_presets_and_knobs_that_exist():
    for (p, r), choices in DOCUMENTED.items():
        assert p in svmpmu.PRESETS
        assert r in svmpmu.PRESETS
        for c in choices:
            assert set(c.policy) | set(c.reference) <= set(svmpmu.KNOB_VALUES)


def test_aligning_every_documented_choice_leaves_no_divergence():
    """The README's theorem, on the fuzzer's side: final with both choices aligned."""
    final, arch = svmpmu.PRESETS["final"], svmpmu.PRESETS["arch"]
    choices = documented_choices(final, arch)
    p = dataclasses.replace(final, **{k: v for c in choices for k, v in c.policy.items()})
    q = dataclasses.replace(arch, **{k: v for c in choices for k, v in c.reference.items()})
    assert not svmpmu.fuzz(p, q, traces=50_000, length=64, seed=3).classes


def test_every_class_of_final_is_documented():
    final, arch = svmpmu.PRESETS["final"], svmpmu.PRESETS["arch"]
    report = svmpmu.fuzz(final, arch, traces=100_000, length=64, seed=1)
    assert len(report.classes) >= 25
    for c in report.classes:
        assert explained_by(c, final, arch), c.signature.name


def test_a_new_bug_is_undocumented():
    deferred = dataclasses.replace(svmpmu.PRESETS["final"], vmexit_timing="deferred")
    report = svmpmu.fuzz(deferred, traces=100_000, length=64, seed=1)
    assert any(not explained_by(c, deferred, svmpmu.PRESETS["arch"]) for c in report.classes)


def test_no_choices_apply_to_the_reference_or_another_reference():
    arch = svmpmu.PRESETS["arch"]
    assert documented_choices(arch, arch) == ()
    assert documented_choices(svmpmu.PRESETS["final"], svmpmu.PRESETS["hybrid"]) == ()


def test_the_main_job_prints_a_screen_long_summary(capsys):
    assert main(["fuzz", "--no-progress", "--traces", "100000"]) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) <= 45
    assert "documented as" in lines[3]
    assert "UNDOCUMENTED" not in out
    assert lines[-1].startswith("all ")
    assert "come from the documented choices of the merged code" in lines[-1]
    assert "shrunk to" not in out  # no reproducers without --full


@pytest.mark.parametrize("flag", ["--full"])
def test_full_prints_every_reproducer(flag, capsys):
    assert main(["fuzz", "--no-progress", "--traces", "20000", flag]) == 1
    out = capsys.readouterr().out
    assert out.count("shrunk to") == out.count("\n[")
    assert "documented as" in out
