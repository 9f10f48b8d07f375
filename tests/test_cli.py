"""The command line: replay, presets, version, and its errors."""

from __future__ import annotations

import re

import pytest

import svmpmu
from svmpmu import INSTRUCTIONS_RETIRED, PRESETS, TraceBuilder, eventsel
from svmpmu.cli import main


def seed_trace():
    return (
        TraceBuilder()
        .wrmsr_evtsel(0, eventsel(INSTRUCTIONS_RETIRED, guest_only=True))
        .wrmsr_efer(1)
        .vmentry()
        .vmrun()
        .run(1000)
        .vmexit()
        .read(0)
        .build()
    )


def test_replay_prints_both_models_and_the_divergence(tmp_path, capsys):
    path = tmp_path / "seed.npz"
    seed_trace().save(path)
    assert main(["replay", str(path), "--policy", "v4"]) == 1  # 1: the models diverge
    out = capsys.readouterr().out
    assert "reads: 1003" in out
    assert "reads: 1001" in out
    assert "diverges after record 0" in out


def test_replay_with_a_knob_override(tmp_path, capsys):
    path = tmp_path / "seed.npz"
    seed_trace().save(path)
    assert main(["replay", str(path), "--set", "vmrun_order=before_entry"]) == 1
    assert "reads: 1000" in capsys.readouterr().out


def test_replay_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["replay", str(tmp_path / "missing.npz")]) == 2
    assert "svmpmu: error:" in capsys.readouterr().err
    bad = svmpmu.TraceBuilder().vmexit().build()
    path = tmp_path / "bad.npz"
    bad.save(path)
    assert main(["replay", str(path)]) == 2
    assert "record 0: VMEXIT in host mode" in capsys.readouterr().err


def test_presets_lists_every_preset_and_knob(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in PRESETS:
        assert name in out
    assert "vmrun_order" in out
    assert "before_entry" in out


def test_the_first_value_of_each_knob_is_its_default(capsys):
    # `svmpmu presets` says so, and KNOB_VALUES documents it.
    default = svmpmu.Policy()
    for knob, values in svmpmu.KNOB_VALUES.items():
        assert values[0] == getattr(default, knob), knob
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "(the first is the default)" in out
    assert "vmrun_order              after_entry | before_entry" in out


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert svmpmu.__version__ in capsys.readouterr().out
    assert main([]) == 2
    assert "fuzz" in capsys.readouterr().out


def test_replay_exits_0_when_the_models_agree(tmp_path):
    path = tmp_path / "seed.npz"
    seed_trace().save(path)
    assert main(["replay", str(path), "--policy", "final"]) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "enabling_wrmsr=new"], "final is a KVM policy and does not read enabling_wrmsr"),
        (["--set-reference", "vmexit_timing=deferred"], "arch is the reference"),
        (["--policy", "arch", "--set", "svme0=ignore"], "go to --set-reference"),
    ],
)
def test_a_knob_of_the_other_model_is_refused(args, message, capsys):
    assert main(["replay", "worked-example", *args]) == 2
    assert message in capsys.readouterr().err


def test_a_model_override_makes_the_other_knobs_valid(capsys):
    args = ["--policy", "final", "--set", "model=arch", "--set", "vmrun_retire=host"]
    assert main(["replay", "worked-example", *args]) == 1  # VMRUN leaves the G counter
    assert "reads: 1000" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Two designs diffed: fuzz --baseline, verify --baseline, diff of two reports
# ---------------------------------------------------------------------------------------------

FUZZ = ["fuzz", "--no-progress", "--summary", "--traces", "30000", "--length", "48"]


def test_fuzz_baseline_finds_the_new_class_of_a_deferred_vmexit(capsys):
    args = [*FUZZ, "--set", "vmexit_timing=deferred", "--baseline", "final"]
    assert main(args) == 1
    out = capsys.readouterr().out
    added = out.split("classes custom(vmexit_timing=deferred) shows where final does not")[1]
    added = added.split("classes final shows where")[0]
    # An emulated instruction in the host after a #VMEXIT, counted under the stale L2 setting.
    assert "EMULATE on a G counter, host (svme=1): policy counts, reference does not" in added


def test_fuzz_baseline_of_a_design_against_itself_finds_nothing(capsys):
    assert main([*FUZZ, "--baseline", "final"]) == 0
    out = capsys.readouterr().out
    assert "0 classes final shows where final does not" in out


def test_fuzz_api_baseline_keeps_the_difference_in_each_reproducer():
    import dataclasses

    from svmpmu.fuzz import signatures

    deferred = dataclasses.replace(svmpmu.Policy.preset("final"), vmexit_timing="deferred")
    report = svmpmu.fuzz(deferred, traces=20000, length=48, seed=2, baseline="final")
    assert report.baseline == svmpmu.Policy.preset("final")
    assert report.classes
    for c in report.classes:
        assert c.signature in signatures(c.reproducer, deferred)
        assert c.signature not in signatures(c.reproducer, "final")
    for c in report.gone:
        assert c.signature in signatures(c.reproducer, "final")
        assert c.signature not in signatures(c.reproducer, deferred)
    assert report.to_dict()["baseline"] == "final"


def test_verify_baseline_explores_the_two_designs_against_each_other(capsys):
    args = ["verify", "--no-progress", "--summary", "--set", "vmexit_timing=deferred"]
    assert main([*args, "--baseline", "final"]) == 1
    out = capsys.readouterr().out
    assert "EMULATE:G:host:host:policy" in out
    assert re.search(r"EMULATE:G:host:host:policy +the baseline final", out)
    assert main(["verify", "--no-progress", "--summary", "--baseline", "final"]) == 0


def test_set_baseline_needs_baseline(capsys):
    assert main([*FUZZ, "--set-baseline", "vmexit_timing=deferred"]) == 2
    assert "--set-baseline needs --baseline" in capsys.readouterr().err


def test_diff_of_two_reports(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert main([*FUZZ, "--json", str(a)]) == 1
    assert main([*FUZZ, "--policy", "v4", "--json", str(b)]) == 1
    capsys.readouterr()
    assert main(["diff", str(a), str(a)]) == 0
    assert "the same classes" in capsys.readouterr().out
    assert main(["diff", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "setting policy: 'final' -> 'v4'" in out
    assert "\n+ VMRUN:" in out  # v4 retires VMRUN in the host: classes final does not have


def test_diff_refuses_what_is_not_a_report(tmp_path, capsys):
    path = tmp_path / "x.json"
    path.write_text('{"a": 1}')
    assert main(["diff", str(path), str(path)]) == 2
    assert "not a svmpmu report" in capsys.readouterr().err


def test_diff_reads_a_0_2_report_without_class_names():
    import json

    from svmpmu.reports import diff_reports

    report = svmpmu.fuzz("v4", traces=2000, length=32, seed=1).to_dict()
    old = json.loads(json.dumps(report))
    for c in old["classes"]:
        del c["name"]
    d = diff_reports(report, old)
    assert not d.differ


def test_export_selftest_writes_c_and_refuses_what_it_cannot_replay(tmp_path, capsys):
    out = tmp_path / "case.c"
    assert main(["export-selftest", "worked-example", "-o", str(out)]) == 0
    text = out.read_text()
    assert "GUEST_ASSERT_EQ" in text
    assert "case" in text
    assert main(["export-selftest", "seed-thread", "-o", str(tmp_path / "x.c")]) == 2
    assert "RESET" in capsys.readouterr().err
    assert not (tmp_path / "x.c").exists()
    py = tmp_path / "case.py"
    assert main(["export-selftest", "worked-example", "-o", str(py), "--format", "python"]) == 0
    assert "TraceBuilder" in py.read_text()
