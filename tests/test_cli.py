"""The command line: replay, presets, version, and its errors."""

from __future__ import annotations

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
