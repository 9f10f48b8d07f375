"""Every attack of the hardening issue, each in a subprocess of its own.

An attack fails the test if the child dies of a signal, prints a Rust panic, hangs (a
timeout), prints a traceback where a one-line error is promised (the CLI), or does not end
the way the table says: with the named exception, or with a result. The table is the
closing note's table of attack classes; ``python -m pytest tests/test_attacks.py -v`` lists
them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass

import pytest

PRELUDE = """
import copy, pickle, resource, sys
import numpy as np
import svmpmu
from svmpmu import TraceBuilder, TraceBatch, Trace, Mix, Policy
def limit_memory(extra_mib):
    # the address space: what the process maps now and extra_mib more
    with open("/proc/self/status") as f:
        size = [int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:")][0]
    limit = size + int(extra_mib * 2**20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
def long_trace(n):
    return svmpmu.generate(1, n, seed=1).trace(0)
"""


@dataclass(frozen=True)
class Attack:
    """``code`` run after PRELUDE in a fresh interpreter; it ends with ``expect`` on the last
    line of stderr (an exception's name, or part of its message), or prints ``OK`` when
    ``expect`` is None."""

    name: str
    code: str
    expect: str | None
    timeout: float = 60.0


API = [
    Attack("generate: 2**61 traces", "svmpmu.generate(2**61, 0, seed=1)", "MemoryError"),
    Attack("generate: 2**40 traces", "svmpmu.generate(2**40, 0, seed=1)", "MemoryError"),
    Attack("generate: 25.6 GB", "svmpmu.generate(25_000_000, 64, seed=1)", "MemoryError"),
    Attack(
        "simulate_batch: 600,000,001 empty traces",
        "b = TraceBatch(np.zeros(600_000_002, np.uint64), np.zeros(0, np.uint8))\n"
        "svmpmu.simulate_batch(b)",
        "MemoryError",
    ),
    Attack(
        "simulate(timeline=True) under an address-space limit",
        "t = long_trace(30_000_000)\nlimit_memory(20)\nsvmpmu.simulate(t, timeline=True)",
        "MemoryError",
    ),
    Attack(
        "simulate of 20 M READs under an address-space limit",
        "t = Trace(np.full(20_000_000, 13, np.uint8))\nlimit_memory(20)\nsvmpmu.simulate(t)",
        "MemoryError",
    ),
    Attack(
        "simulate_batch under an address-space limit",
        "b = svmpmu.generate(2_000_000, 8, seed=1)\nlimit_memory(20)\nsvmpmu.simulate_batch(b)",
        "MemoryError",
    ),
    Attack(
        "simulate of a long trace when no thread can start",
        "t = long_trace(2_000_000)\nresource.setrlimit(resource.RLIMIT_NPROC, (0, 0))\n"
        "r = svmpmu.simulate(t)\nassert r == svmpmu.simulate(t, threads=1)\nprint('OK')",
        None,
    ),
    Attack(
        "fuzz: block=0", "svmpmu.fuzz('final', traces=10, length=8, seed=1, block=0)", "ValueError"
    ),
    Attack(
        "multiprocessing Pool.map(simulate, [trace]), spawn",
        "import multiprocessing as mp\nt = long_trace(1000)\n"
        "with mp.get_context('spawn').Pool(1) as pool:\n"
        "    r = pool.map(svmpmu.simulate, [t])[0]\n"
        "assert r == svmpmu.simulate(t)\nprint('OK')",
        None,
    ),
    Attack(
        "copy, deepcopy and pickle of every value object",
        "b = svmpmu.generate(3, 50, seed=1)\nt = b.trace(0)\n"
        "objs = [t, b, svmpmu.simulate(t), svmpmu.simulate_batch(b), svmpmu.compare(t, 'v4'),"
        " Policy.preset('v4'), Mix(), svmpmu.fuzz('v4', traces=300, length=16, seed=1)]\n"
        "for o in objs:\n"
        "    for c in (copy.copy(o), copy.deepcopy(o), pickle.loads(pickle.dumps(o))):\n"
        "        assert type(c) is type(o)\n"
        "print('OK')",
        None,
    ),
    Attack(
        "BatchResult.result(-1) and (-2)",
        "b = svmpmu.generate(3, 200, seed=1)\nr = svmpmu.simulate_batch(b)\n"
        "for k in (-1, -2):\n"
        "    assert r.result(k) == svmpmu.simulate(b.trace(3 + k))\n"
        "try:\n    r.result(3)\nexcept IndexError:\n    print('OK')",
        None,
    ),
    Attack("TraceBuilder().run(1.5)", "TraceBuilder().run(1.5)", "TypeError"),
    Attack("Policy with an unknown knob", "Policy(bogus=1)", "PolicyError"),
    Attack("Mix with a negative weight", "Mix(kernel=-1)", "kernel"),
    Attack("Mix with an unknown op", "Mix(ops={'NOPE': 1})", "NOPE"),
    Attack(
        "numpy integers for threads and n_pmcs",
        "t = long_trace(100)\n"
        "r = svmpmu.simulate(t, n_pmcs=np.int64(6), threads=np.int32(1))\n"
        "assert r == svmpmu.simulate(t)\nprint('OK')",
        None,
    ),
    Attack("a bool for n_pmcs", "svmpmu.simulate(long_trace(10), n_pmcs=True)", "TypeError"),
    Attack(
        "a value column from a list of large integers",
        "t = Trace(np.array([1], np.uint8), value=[2**64 - 1])\n"
        "assert int(t.value[0]) == 2**64 - 1\n"
        "print('OK')",
        None,
    ),
    Attack("a value above 2**64 - 1", "Trace(np.array([1], np.uint8), value=[2**64])", "value"),
    Attack("float columns", "Trace(np.array([1.5]))", "op"),
]

CLI = [
    ("replay an empty file", ["replay", "{empty}"]),
    ("replay /dev/null", ["replay", "/dev/null"]),
    ("replay a truncated .npz", ["replay", "{truncated}"]),
    ("replay a corrupted .npz", ["replay", "{corrupted}"]),
    ("replay an .npz without the columns", ["replay", "{nocolumns}"]),
    ("replay an .npz with float columns", ["replay", "{floats}"]),
    ("replay an .npz with object columns", ["replay", "{objects}"]),
    ("replay a .npy", ["replay", "{npy}"]),
    ("replay prose", ["replay", "{prose}"]),
    ("replay a missing file", ["replay", "{missing}"]),
    ("fuzz --length 99999999999999999999999", ["fuzz", "--length", "99999999999999999999999"]),
    ("fuzz --n-pmcs -1", ["fuzz", "--n-pmcs", "-1"]),
    ("fuzz --traces -5", ["fuzz", "--traces", "-5"]),
    ("fuzz --json ''", ["fuzz", "--traces", "10", "--json", ""]),
    ("fuzz --set svme0=maybe", ["fuzz", "--set", "svme0=maybe"]),
    ("verify --max-states -1", ["verify", "--max-states", "-1"]),
    ("import of a text trace", ["import", "{text}", "-o", "{out}"]),
    ("plot to a .gif", ["plot", "worked-example", "-o", "{gif}"]),
    ("diff of a non-report", ["diff", "{prose}", "{prose}"]),
    ("import of /dev/zero", ["import", "/dev/zero", "-o", "{out}"]),
    ("replay of /dev/zero", ["replay", "/dev/zero"]),
]


def run_python(code: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 (this interpreter, code of this file)
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_no_crash(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode >= 0, f"killed by signal {-proc.returncode}\n{proc.stderr[-2000:]}"
    assert "panicked" not in proc.stderr, proc.stderr[-2000:]
    assert "PanicException" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("attack", API, ids=[a.name for a in API])
def test_api_attack(attack: Attack) -> None:
    proc = run_python(attack.code, attack.timeout)
    assert_no_crash(proc)
    if attack.expect is None:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip().endswith("OK")
    else:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
        assert proc.returncode == 1, proc.stdout + proc.stderr[-2000:]
        assert attack.expect in last, last


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    import numpy as np

    import svmpmu

    d = tmp_path_factory.mktemp("attacks")
    t = svmpmu.generate(1, 500, seed=1).trace(0)
    good = d / "good.npz"
    t.save(good)
    data = good.read_bytes()
    paths = {
        "empty": d / "empty.npz",
        "truncated": d / "truncated.npz",
        "corrupted": d / "corrupted.npz",
        "nocolumns": d / "nocolumns.npz",
        "floats": d / "floats.npz",
        "objects": d / "objects.npz",
        "npy": d / "trace.npy",
        "prose": d / "prose.txt",
        "text": d / "scenario.txt",
    }
    paths["empty"].write_bytes(b"")
    paths["truncated"].write_bytes(data[: len(data) // 2])
    paths["corrupted"].write_bytes(data[:200] + bytes(255 - b for b in data[200:400]) + data[400:])
    np.savez(paths["nocolumns"], weights=np.zeros(3))
    np.savez(paths["floats"], op=np.zeros(3), value=np.zeros(3))
    np.savez(paths["objects"], op=np.array([{"a": 1}], dtype=object))
    np.save(paths["npy"], t.op)
    paths["prose"].write_text("Dear KVM maintainers,\nplease count my instructions.\n")
    paths["text"].write_text(t.to_text())
    out = {k: str(v) for k, v in paths.items()}
    out.update(missing=str(d / "missing.txt"), out=str(d / "out.npz"), gif=str(d / "x.gif"))
    return out


@pytest.mark.parametrize(("name", "args"), CLI, ids=[c[0] for c in CLI])
def test_cli_attack(name: str, args: list[str], files: dict[str, str]) -> None:
    argv = [a.format(**files) for a in args]
    proc = subprocess.run(  # noqa: S603 (this interpreter)
        [sys.executable, "-m", "svmpmu", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert_no_crash(proc)
    assert proc.returncode == 2, f"{name}: exit {proc.returncode}\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines, "no error message"
    assert "allow_pickle" not in proc.stderr
    assert lines[-1].startswith(("svmpmu: error:", "usage:", "svmpmu ")), lines[-1]


def interrupt(argv: list[str], sig: int, after: float) -> tuple[subprocess.Popen[str], float]:
    proc = subprocess.Popen(  # noqa: S603 (this interpreter)
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    time.sleep(after)
    start = time.monotonic()
    proc.send_signal(sig)
    try:
        proc.wait(timeout=10)
    finally:
        proc.kill()
    return proc, time.monotonic() - start


@pytest.mark.parametrize(
    ("name", "args", "sig"),
    [
        ("SIGINT, fuzz of long traces", ["--traces", "100", "--length", "10000000"], signal.SIGINT),
        ("SIGINT, fuzz of many traces", ["--traces", "100000000"], signal.SIGINT),
        ("SIGTERM, fuzz", ["--traces", "100000000"], signal.SIGTERM),
        ("SIGINT, oracle check", ["--traces", "50000", "--check-oracle", "50000"], signal.SIGINT),
    ],
)
def test_cli_interrupted(name: str, args: list[str], sig: int) -> None:
    argv = [sys.executable, "-m", "svmpmu", "fuzz", "--no-progress", *args]
    proc, took = interrupt(argv, sig, after=3.0)
    stdout, stderr = proc.communicate()
    assert took < 2.5, f"{name}: {took:.1f} s to stop"
    assert proc.returncode == 130, f"{name}: exit {proc.returncode}\n{stderr[-2000:]}"
    assert "Traceback" not in stderr, stderr[-2000:]
    assert "svmpmu fuzz:" in stdout  # the report of the traces done


def test_api_simulate_interrupted() -> None:
    code = PRELUDE + "t = long_trace(60_000_000)\nprint('ready', flush=True)\n"
    code += "while True:\n    svmpmu.simulate(t, 'final', timeline=True)\n"
    proc = subprocess.Popen(  # noqa: S603 (this interpreter)
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(1.0)
    start = time.monotonic()
    os.kill(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=10)
    finally:
        proc.kill()
    took = time.monotonic() - start
    _, stderr = proc.communicate()
    assert took < 1.5, f"{took:.1f} s to stop"
    assert "KeyboardInterrupt" in stderr
    # An uncaught KeyboardInterrupt ends Python with SIGINT (-2) after the traceback.
    assert proc.returncode in (1, -signal.SIGINT)
