"""The speed gate's load detection (benches/gate.py), on made-up timings: nothing is timed."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

import pytest

BENCHES = pathlib.Path(__file__).resolve().parent.parent / "benches"


def _load(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCHES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


measure = _load("measure")
gate = _load("gate")

QUIET_SAMPLES = [0.00190, 0.00195, 0.00188, 0.00201, 0.00192, 0.00190, 0.00197]
BASELINE = {"replay/random/final": 14.0, "replay/random/final/1-thread": 27.0, "generate": 31.0}


# The pure functions.


def test_spread_is_slowest_over_fastest():
    assert gate.spread([2.0, 3.0, 2.5]) == 1.5
    assert gate.spread([0.002]) == 1.0
    assert gate.spread([]) == 1.0


def test_quiet_run():
    load = gate.load_verdict(QUIET_SAMPLES, one_thread=0.108, all_threads=0.057, cpus=2)
    assert not load.loaded
    assert load.spread == pytest.approx(0.00201 / 0.00188)
    assert load.speedup == pytest.approx(0.108 / 0.057)
    assert load.line().startswith("machine quiet:")


def test_spread_at_the_bound_is_quiet_and_above_it_loaded():
    assert not gate.load_verdict([1.0, 1.25], 2.0, 1.0, cpus=2).loaded
    load = gate.load_verdict([1.0, 1.26, 1.1], 2.0, 1.0, cpus=2)
    assert load.loaded
    assert load.spread_over
    assert not load.speedup_under


def test_low_speedup_on_two_cpus_is_loaded():
    load = gate.load_verdict(QUIET_SAMPLES, one_thread=0.070, all_threads=0.066, cpus=2)
    assert load.loaded
    assert load.speedup_under
    assert not load.spread_over
    assert not gate.load_verdict(QUIET_SAMPLES, 0.13, 0.1, cpus=2).loaded  # 1.3x: the bound


def test_speedup_not_checked_on_one_cpu_or_when_not_measured():
    assert not gate.load_verdict(QUIET_SAMPLES, 0.070, 0.070, cpus=1).loaded
    assert not gate.load_verdict(QUIET_SAMPLES, None, 0.070, cpus=2).loaded
    assert "not checked: 1 CPU" in gate.load_verdict(QUIET_SAMPLES, 0.07, 0.07, 1).line()
    assert "not measured" in gate.load_verdict(QUIET_SAMPLES, None, None, 2).line()


def test_loaded_line_is_one_line_with_the_figures():
    line = gate.load_verdict([1.0, 1.5], 0.07, 0.066, cpus=2).line()
    assert "\n" not in line
    assert line.startswith("machine LOADED:")
    for figure in ("1.50x", "1.25x", "1.06x", "1.30x", "OVER", "UNDER", "2 threads"):
        assert figure in line


def test_over_limit_keeps_the_tolerance():
    figures = {
        "replay/random/final": {"ratio": 14.0 * 1.2},  # at the limit: passes
        "replay/random/final/1-thread": {"ratio": 27.0 * 1.21},
        "generate": {"ratio": 20.0},
    }
    (failure,) = gate.over_limit(figures, BASELINE)
    assert failure.startswith("replay/random/final/1-thread:")
    assert "+21%" in failure


def test_missing_cases():
    failures = gate.missing({"new": {"ratio": 1.0}, "generate": {"ratio": 1.0}}, BASELINE)
    assert "new: no baseline (run with --update)" in failures
    assert "replay/random/final: in the baseline but not measured" in failures


# main(), with the measurements replaced.


def _measurement(*, loaded: bool, slow: bool):
    factor = 1.5 if slow else 1.0
    figures = {
        name: {"ratio": r * factor, "records_per_second": 1e8} for name, r in BASELINE.items()
    }
    samples = [*QUIET_SAMPLES, 0.004] if loaded else QUIET_SAMPLES
    return gate.Measurement(figures, samples, one_thread=0.108, all_threads=0.057)


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """Replaces the measurements by a queue of made-up ones; returns the queue and the
    baseline file."""
    queue = []
    calls = []

    def run(scale, repeat):
        calls.append((scale, repeat))
        return queue.pop(0)

    monkeypatch.setattr(gate, "run", run)
    monkeypatch.setattr(gate, "cpu_count", lambda: 2)
    monkeypatch.setattr(measure, "peak_memory_ratio", lambda: {"peak_bytes": 1.7e9, "ratio": 1.063})
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps({"ratios": BASELINE}))
    return queue, calls, path


def test_update_refuses_on_a_loaded_machine(fake, capsys):
    queue, _, path = fake
    before = path.read_text()
    queue.append(_measurement(loaded=True, slow=True))
    assert gate.main(["--update", "--baseline", str(path)]) == gate.INCONCLUSIVE
    assert path.read_text() == before
    out = capsys.readouterr().out
    assert "machine LOADED:" in out
    assert "baseline NOT written" in out
    assert "--force" in out


def test_update_force_writes_on_a_loaded_machine(fake, capsys):
    queue, _, path = fake
    queue.append(_measurement(loaded=True, slow=True))
    assert gate.main(["--update", "--force", "--baseline", str(path)]) == gate.PASSED
    written = json.loads(path.read_text())["ratios"]
    assert written["generate"] == pytest.approx(31.0 * 1.5)
    assert "warning" in capsys.readouterr().out


def test_update_writes_on_a_quiet_machine(fake):
    queue, _, path = fake
    queue.append(_measurement(loaded=False, slow=True))
    assert gate.main(["--update", "--baseline", str(path)]) == gate.PASSED
    assert json.loads(path.read_text())["ratios"]["generate"] == pytest.approx(31.0 * 1.5)


def test_force_needs_update(fake):
    _, _, path = fake
    with pytest.raises(SystemExit) as exc:
        gate.main(["--force", "--baseline", str(path)])
    assert exc.value.code == 2


def test_slow_on_a_quiet_machine_every_time_fails(fake, capsys):
    queue, calls, path = fake
    queue.extend(_measurement(loaded=False, slow=True) for _ in range(gate.RETRIES + 1))
    assert gate.main(["--baseline", str(path)]) == gate.FAILED
    assert len(calls) == gate.RETRIES + 1
    assert "speed gate FAILED" in capsys.readouterr().out


def test_a_slow_spell_on_a_quiet_machine_is_measured_again(fake, capsys):
    queue, calls, path = fake
    queue.extend([_measurement(loaded=False, slow=True), _measurement(loaded=False, slow=False)])
    assert gate.main(["--baseline", str(path)]) == gate.PASSED
    assert len(calls) == 2
    assert "measurement 2" in capsys.readouterr().out


def test_loaded_but_within_the_limit_passes(fake):
    queue, calls, path = fake
    queue.append(_measurement(loaded=True, slow=False))
    assert gate.main(["--baseline", str(path)]) == gate.PASSED
    assert len(calls) == 1


def test_slow_and_loaded_every_time_is_inconclusive(fake, capsys):
    queue, calls, path = fake
    queue.extend(_measurement(loaded=True, slow=True) for _ in range(gate.RETRIES + 1))
    assert gate.main(["--baseline", str(path)]) == gate.INCONCLUSIVE
    assert len(calls) == gate.RETRIES + 1
    out = capsys.readouterr().out
    assert "inconclusive: machine loaded" in out
    assert "FAILED" not in out


def test_a_quieter_retry_that_passes_passes(fake, capsys):
    queue, calls, path = fake
    queue.extend([_measurement(loaded=True, slow=True), _measurement(loaded=False, slow=False)])
    assert gate.main(["--baseline", str(path)]) == gate.PASSED
    assert len(calls) == 2
    assert "measurement 2" in capsys.readouterr().out


def test_a_quieter_retry_that_is_slow_fails(fake):
    queue, calls, path = fake
    queue.append(_measurement(loaded=True, slow=True))
    queue.extend(_measurement(loaded=False, slow=True) for _ in range(gate.RETRIES))
    assert gate.main(["--baseline", str(path)]) == gate.FAILED
    assert len(calls) == gate.RETRIES + 1


def test_memory_over_the_limit_fails_even_when_inconclusive(fake, monkeypatch):
    queue, _, path = fake
    monkeypatch.setattr(measure, "peak_memory_ratio", lambda: {"peak_bytes": 2e9, "ratio": 1.3})
    queue.extend(_measurement(loaded=True, slow=True) for _ in range(gate.RETRIES + 1))
    assert gate.main(["--baseline", str(path)]) == gate.FAILED


def test_missing_case_fails_even_when_loaded(fake):
    queue, _, path = fake
    measured = _measurement(loaded=True, slow=False)
    del measured.figures["generate"]
    queue.append(measured)
    assert gate.main(["--baseline", str(path)]) == gate.FAILED


def test_each_case_keeps_its_best_ratio_over_the_measurements(fake):
    # Half the cases slow in one measurement, the other half in the next: every case has a
    # measurement within the limit, so the gate passes.
    queue, calls, path = fake
    names = sorted(BASELINE)
    first, second = _measurement(loaded=False, slow=False), _measurement(loaded=False, slow=False)
    for k, name in enumerate(names):
        slow_one = first if k % 2 else second
        slow_one.figures[name]["ratio"] *= 1.5
    queue.extend([first, second])
    assert gate.main(["--baseline", str(path)]) == gate.PASSED
    assert len(calls) == 2
    best = gate.best_of(first, second)
    assert all(best.figures[n]["ratio"] == pytest.approx(BASELINE[n]) for n in names)
