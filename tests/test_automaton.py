"""The automaton fuzzing engine: the same report as the concrete engine, every class confirmed
on a concrete trace, agreement with the concrete engine and with verify."""

from __future__ import annotations

import json

import pytest

import svmpmu
from svmpmu import Policy
from svmpmu.cli import main as cli_main
from svmpmu.fuzz import FuzzRun, FuzzTally, signatures

PRESETS = ["final", "hybrid", "v4", "v3", "v1", "legacy", "arch"]


def _comparable(report):
    """A report's data without what depends on the clock or on the cache."""
    d = report.to_dict()
    d.pop("seconds")
    d["table"] = {k: v for k, v in d["table"].items() if k not in ("build_seconds", "cached")}
    return d


def test_automaton_report_has_the_fuzz_format_and_confirmed_classes():
    r = svmpmu.fuzz("v4", traces=20_000, length=64, seed=3, engine="automaton")
    c = svmpmu.fuzz("v4", traces=2_000, length=64, seed=3)
    assert r.engine == "automaton"
    assert c.engine == "concrete"
    assert set(r.to_dict()) == set(c.to_dict())
    assert r.unconfirmed == ()
    assert r.classes
    assert r.diverging > 0
    assert r.table is not None
    assert r.table["states"] <= r.table["explored_states"]
    for cls in r.classes:
        # The shrunk reproducer shows its class under the concrete models.
        assert cls.signature in signatures(cls.reproducer, "v4"), cls.signature
        # The first walk, made concrete, is the trace of the report.
        assert cls.signature in signatures(r.trace(cls.trace_index), "v4")
    text = r.format(counterexamples=True, documented=True)
    assert "engine automaton" in text
    data = json.loads(r.to_json())
    assert data["engine"] == "automaton"
    assert data["unconfirmed"] == []


def test_automaton_runs_are_the_same_for_any_threads_blocks_and_splits():
    one = svmpmu.fuzz("final", traces=9_000, length=48, seed=5, engine="automaton", threads=1)
    two = svmpmu.fuzz(
        "final", traces=9_000, length=48, seed=5, engine="automaton", threads=2, block=1_234
    )
    assert _comparable(one) == _comparable(two)
    run = FuzzRun(
        Policy.preset("final"), Policy.preset("arch"), seed=5, length=48, engine="automaton"
    )
    whole = run.tally(0, 9_000)
    parts = FuzzTally()
    for start, end in [(7_000, 9_000), (0, 17), (17, 7_000)]:
        parts = parts.merge(run.tally(start, end))
    assert parts == whole
    assert whole.diverging == one.diverging


@pytest.mark.parametrize("preset", PRESETS)
def test_automaton_finds_the_concrete_classes_and_nothing_verify_calls_unreachable(preset):
    walks = svmpmu.fuzz(preset, traces=20_000, length=64, seed=1, engine="automaton")
    concrete = svmpmu.fuzz(preset, traces=20_000, length=64, seed=1)
    reachable = {c.signature for c in svmpmu.verify(preset).classes}
    found = {c.signature for c in walks.classes}
    assert walks.unconfirmed == ()
    assert found <= reachable, found - reachable
    frequent = {c.signature for c in concrete.classes if c.count >= 10}
    assert frequent <= found, frequent - found
    if preset == "arch":
        assert walks.diverging == 0
        assert not found


def test_automaton_refuses_a_baseline_and_unknown_engines():
    with pytest.raises(ValueError, match="baseline"):
        svmpmu.fuzz("final", traces=10, length=8, seed=1, engine="automaton", baseline="v4")
    with pytest.raises(ValueError, match="engine must be one of"):
        svmpmu.fuzz("final", traces=10, length=8, seed=1, engine="symbolic")


def test_automaton_checks_its_inputs_like_the_concrete_engine():
    with pytest.raises(ValueError, match="n_pmcs"):
        svmpmu.fuzz("final", traces=10, length=8, seed=1, engine="automaton", n_pmcs=7)
    with pytest.raises(ValueError, match="traces"):
        svmpmu.fuzz("final", traces=-1, length=8, seed=1, engine="automaton")


def test_automaton_follows_the_mix():
    """A mix without selector writes never enables a counter: nothing can diverge."""
    ops = dict(svmpmu.Mix().ops)
    ops["WRMSR_EVTSEL"] = 0
    quiet = svmpmu.Mix(ops=ops)
    r = svmpmu.fuzz("final", traces=5_000, length=64, seed=1, engine="automaton", mix=quiet)
    assert r.diverging == 0
    assert not r.classes


def test_cli_fuzz_engine_automaton(capsys, tmp_path):
    out = tmp_path / "r.json"
    status = cli_main(
        [
            "fuzz",
            "--engine",
            "automaton",
            "--traces",
            "5000",
            "--no-progress",
            "--json",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert status == 1
    assert "engine automaton" in text
    assert "classes" in text
    assert json.loads(out.read_text())["engine"] == "automaton"
    status = cli_main(["fuzz", "--engine", "automaton", "--baseline", "v4", "--traces", "5"])
    assert status == 2
    assert "baseline" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["fuzz", "--engine", "nope"])
    assert "invalid choice" in capsys.readouterr().err


def test_an_unconfirmed_walk_is_reported_as_a_bug_and_its_class_left_out(monkeypatch, capsys):
    """A walk whose concrete trace shows other classes (a bug that should never happen, made
    here by hiding the concrete classes) is listed, never dropped in silence, and the CLI
    exits 3."""
    real = FuzzRun._walk
    first = {}

    def broken(self, index):
        columns, walk, concrete, diverged = real(self, index)
        if walk and first.setdefault("index", index) == index:
            return columns, walk, [], diverged
        return columns, walk, concrete, diverged

    monkeypatch.setattr(FuzzRun, "_walk", broken)
    r = svmpmu.fuzz("v4", traces=2_000, length=64, seed=1, engine="automaton")
    assert len(r.unconfirmed) == 1
    bug = r.unconfirmed[0]
    assert bug.trace_index == first["index"]
    assert bug.walk_classes
    assert bug.concrete_classes == ()
    # The classes whose first walk it is are left out; the others are reported.
    assert r.classes
    assert all(c.trace_index != bug.trace_index for c in r.classes)
    assert "BUG: walk" in r.format(counterexamples=False)
    assert json.loads(r.to_json())["unconfirmed"][0]["trace_index"] == first["index"]
    first.clear()
    status = cli_main(
        ["fuzz", "--policy", "v4", "--engine", "automaton", "--traces", "2000", "--no-progress"]
    )
    assert status == 3
    assert "BUG: walk" in capsys.readouterr().err
