"""Hardening (issue 17): every bad input is one line on standard error and exit status 2,
without a traceback unless --debug; truncated, foreign and wrong-version files say what they
are; SIGINT and SIGTERM stop the command with status 130 after printing what was finished."""

from __future__ import annotations

import importlib
import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

import svmpmu
import svmpmu.cli
from svmpmu import TraceFileError, read_trace
from svmpmu.cli import main
from svmpmu.files import read_npz
from svmpmu.fuzz import signatures
from svmpmu.reports import load_report

fuzz_module = importlib.import_module("svmpmu.fuzz")  # svmpmu.fuzz is the function


def run(argv):
    """``main(argv)``'s exit status, whether it returns it or argparse raises SystemExit."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def one_error_line(capsys):
    """The single line the command printed on standard error (asserted to be one line, an
    ``svmpmu: error:`` without a traceback)."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("svmpmu: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def trace():
    """A short generated trace."""
    return svmpmu.generate(1, 40, seed=7).trace(0)


def npz_bytes(**arrays):
    """The bytes of an ``.npz`` of ``arrays``."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


class Unpickled:
    """An object whose unpickling would create a file: proof that nothing is unpickled."""

    marker = ""

    def __reduce__(self):
        """Unpickling opens (creates) the marker file."""
        return (open, (self.marker, "w"))


def bad_files(trace, tmp):
    """Each bad input of the issue: its name, its bytes, and what the error must say."""
    good = io.BytesIO()
    trace.save(good)
    data = good.getvalue()
    corrupted = bytearray(data)
    corrupted[len(data) // 3 : len(data) // 3 + 16] = b"\xff" * 16
    columns = trace.columns()
    Unpickled.marker = str(tmp / "UNPICKLED")
    pickled = dict(columns, pmc=np.array([Unpickled()] * len(trace), dtype=object))
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=True, **pickled)  # savez pickles object arrays
    short = io.BytesIO()
    with zipfile.ZipFile(short, "w") as z:
        for name, column in columns.items():
            member = io.BytesIO()
            np.save(member, column)
            raw = member.getvalue()
            z.writestr(f"{name}.npy", raw[:-5] if name == "op" else raw)
    npy = io.BytesIO()
    np.save(npy, trace.op)
    return [
        ("empty", b"", "empty file: no records"),
        ("truncated", data[: len(data) // 2], "cut short"),
        ("corrupted", bytes(corrupted), "cannot be read (cut short or corrupted?)"),
        ("short-member", short.getvalue(), "column 'op': a .npz member that cannot be read"),
        ("no-columns", npz_bytes(weights=np.zeros(3)), "it holds weights, where a trace"),
        ("float", npz_bytes(**dict(columns, op=columns["op"].astype(float))), "float64"),
        ("object", buf.getvalue(), "column 'pmc' has dtype object"),
        ("2-d", npz_bytes(**dict(columns, key=np.zeros((2, 20), np.uint32))), "shape (2, 20)"),
        ("npy", npy.getvalue(), "a single numpy array (.npy), not a trace archive"),
        ("text", b"hello world\n", "neither a .npz trace, a text trace"),
    ]


def test_every_bad_file_is_one_line_and_exit_2(trace, tmp_path, capsys):
    for name, data, message in bad_files(trace, tmp_path):
        path = tmp_path / f"{name}.npz"
        path.write_bytes(data)
        assert main(["replay", str(path)]) == 2, name
        line = one_error_line(capsys)
        assert message in line, (name, line)
        assert str(path) in line, (name, line)
        assert "allow_pickle" not in line, (name, line)
        with pytest.raises(TraceFileError, match=r"^[^\n]*$"):
            read_trace(path)
    assert not (tmp_path / "UNPICKLED").exists()  # the object column was never unpickled


def test_dev_null_and_a_comment_only_trace(tmp_path, capsys):
    if pathlib.Path("/dev/null").exists():
        assert main(["replay", "/dev/null"]) == 2
        assert "/dev/null: empty file: no records" in one_error_line(capsys)
    if pathlib.Path("/dev/zero").exists():  # a device would be read forever: refused at once
        assert main(["replay", "/dev/zero"]) == 2
        assert "a device, not a trace file" in one_error_line(capsys)
    path = tmp_path / "comments.txt"
    path.write_text("# only a comment\n\n")
    assert len(svmpmu.read_text(path)) == 0  # an empty text trace is fine for read_text
    assert main(["replay", str(path)]) == 2
    assert "no records" in one_error_line(capsys)


def test_read_npz_reads_what_save_writes_and_integer_columns_of_other_widths(trace, tmp_path):
    path = tmp_path / "t.npz"
    trace.save(path)
    assert read_npz(path) == trace
    assert read_npz(path.read_bytes()) == trace
    with path.open("rb") as f:
        assert read_npz(f) == trace
    wide = {name: column.astype(np.int64) for name, column in trace.columns().items()}
    assert read_npz(npz_bytes(**wide)) == trace
    assert read_npz(npz_bytes(op=trace.op)) == svmpmu.Trace(trace.op)  # omitted columns: zeros


def test_a_truncated_or_foreign_report_is_one_line(tmp_path, capsys):
    good = tmp_path / "good.json"
    assert (
        main(["fuzz", "--no-progress", "--traces", "300", "--length", "16", "--json", str(good)])
        == 1
    )
    capsys.readouterr()
    text = good.read_text()
    cases = {
        "cut.json": (text[: len(text) // 2], "JSON cut short"),
        "empty.json": ("", "empty file"),
        "binary.json": (None, "not text"),
        "class.json": ('{"policy": "x", "classes": [3]}', "class #0 is not a class"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if content is None:
            path.write_bytes(b"\xff\xfe\0\0")
        else:
            path.write_text(content)
        with pytest.raises(ValueError, match=message):
            load_report(path)
        assert main(["diff", str(good), str(path)]) == 2
        assert message in one_error_line(capsys)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fuzz", "--length", "99999999999999999999999"], "argument --length: must be 0 to"),
        (["fuzz", "--n-pmcs", "-1"], "argument --n-pmcs: must be 1..6, got -1"),
        (["fuzz", "--json", ""], "argument --json: expected a file name or '-'"),
        (["fuzz", "--traces", "-1"], "argument --traces: must be 0 to"),
        (["fuzz", "--seed", str(2**64)], "argument --seed: must be 0 to 18446744073709551615"),
        (["fuzz", "--threads", "0"], "argument --threads: must be 1..1024"),
        (["fuzz", "--check-oracle", "x"], "argument --check-oracle: expected a whole number"),
        (["fuzz", "--json", "/nonexistent-dir/r.json"], "no directory /nonexistent-dir"),
        (["verify", "--max-states", "-1"], "argument --max-states: must be 1 to"),
        (["replay", "worked-example", "--n-pmcs", "7"], "argument --n-pmcs: must be 1..6"),
        (["replay", "worked-example", "--rate", "nan"], "argument --rate: must be a finite"),
        (["replay", "worked-example", "--event", "0x100000"], "argument --event: must be 0.."),
        (["explain", "worked-example", "--limit", "-1"], "argument --limit: must be 0 to"),
        (["plot", "worked-example", "-o", "x.png", "--n-pmcs", "0"], "argument --n-pmcs"),
        (["fuzz", "--set", "svme0=maybe"], "knob 'svme0' cannot be 'maybe'"),
        (["fuzz", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run([*argv, "--no-progress"] if argv[0] in ("fuzz", "verify") else argv) == 2
    assert message in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []  # nothing was run, nothing written


def test_an_unexpected_exception_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    def boom(_out):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(svmpmu.cli, "_presets", boom)
    assert main(["presets"]) == 2
    line = one_error_line(capsys)
    assert "internal error: RuntimeError: boom; second line" in line
    assert "--debug" in line
    for argv in (["--debug", "presets"], ["presets", "--debug"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" in err
        assert err.strip().splitlines()[-1].startswith("svmpmu: error: internal error")


def test_main_puts_the_sigterm_handler_back():
    before = signal.getsignal(signal.SIGTERM)
    assert main(["presets"]) == 0
    assert signal.getsignal(signal.SIGTERM) is before


# ---------------------------------------------------------------------------------------------
# fuzz: blocks, interrupts
# ---------------------------------------------------------------------------------------------


def test_fuzz_block_must_be_a_positive_int():
    for block in (0, -3):
        with pytest.raises(ValueError, match="block must be a positive"):
            svmpmu.fuzz("v4", traces=10, length=8, seed=1, block=block)
    with pytest.raises(TypeError, match="block must be an int"):
        svmpmu.fuzz("v4", traces=10, length=8, seed=1, block=2.5)
    with pytest.raises(ValueError, match=r"n_pmcs must be 1\.\.6"):
        svmpmu.fuzz("v4", traces=10, length=8, seed=1, n_pmcs=-1)


def test_fuzz_blocks_are_sized_by_records_and_results_do_not_depend_on_them():
    block_traces = fuzz_module._block_traces
    assert block_traces(200_000, 64, 2) == fuzz_module.BLOCK_RECORDS // 64
    assert block_traces(200_000, 10_000_000, 2) == 2  # one trace a worker thread
    assert block_traces(5, 64, 2) == 5
    assert block_traces(1, 0, 4) == 1

    def summary(r):
        return [(c.signature, c.count, c.trace_index, c.reproducer) for c in r.classes]

    a = svmpmu.fuzz("v4", traces=400, length=24, seed=4)
    b = svmpmu.fuzz("v4", traces=400, length=24, seed=4, block=7, threads=1)
    assert summary(a) == summary(b)
    assert (a.diverging, a.records) == (b.diverging, b.records)


def test_an_interrupt_between_blocks_keeps_the_finished_blocks():
    calls = []

    def progress(done, _total):
        calls.append(done)
        if len(calls) == 3:
            raise KeyboardInterrupt

    report = svmpmu.fuzz("v4", traces=10_000, length=16, seed=2, block=1000, progress=progress)
    assert not report.complete
    assert report.interrupted
    assert report.traces == 3000 == calls[-1]
    assert "(interrupted: 3000 of 10000)" in report.format(counterexamples=False)
    full = svmpmu.fuzz("v4", traces=3000, length=16, seed=2)
    assert [(c.signature, c.count) for c in report.classes] == [
        (c.signature, c.count) for c in full.classes
    ]


def test_a_sigint_while_shrinking_keeps_what_was_shrunk(monkeypatch):
    shrink = fuzz_module._core.shrink
    calls = []

    def shrink_then_interrupt(*args):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)  # deferred: acted on once this shrink is done
        return shrink(*args)

    monkeypatch.setattr(fuzz_module._core, "shrink", shrink_then_interrupt)
    report = svmpmu.fuzz("v4", traces=2000, length=32, seed=1)
    assert report.complete
    assert report.interrupted
    assert [c.shrunk for c in report.classes[:4]] == [True, True, True, False]
    assert report.unshrunk == len(report.classes) - 3
    c = report.classes[3]
    assert len(c.reproducer) == c.original_length == 32
    assert c.reproducer == report.trace(c.trace_index)
    assert c.signature in signatures(c.reproducer, "v4")
    text = report.format(counterexamples=True, documented=True)
    assert f"interrupted: {report.unshrunk} classes marked * are not shrunk" in text
    assert "NOT SHRUNK (the run was interrupted)" in text
    data = json.loads(report.to_json())
    assert data["interrupted"] is True
    assert [k["shrunk"] for k in data["classes"][:4]] == [True, True, True, False]


def test_a_sigint_during_the_oracle_check_still_prints_the_report(monkeypatch, capsys):
    import svmpmu.oracle

    real = svmpmu.oracle.simulate
    calls = []

    def oracle_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(svmpmu.oracle, "simulate", oracle_then_interrupt)
    argv = ["fuzz", "--no-progress", "--traces", "500", "--length", "16", "--check-oracle", "50"]
    assert main(argv) == 130
    captured = capsys.readouterr()
    assert "svmpmu fuzz: policy final vs reference arch" in captured.out
    assert "oracle cross-check interrupted: 3 of 50 traces, 0 disagreements" in captured.out
    assert "Traceback" not in captured.err


# ---------------------------------------------------------------------------------------------
# The command in a process of its own: --debug, SIGINT, SIGTERM
# ---------------------------------------------------------------------------------------------


def _default_signals():
    """In the child: SIGINT and SIGTERM as a fresh process has them, even if the test runner
    ignores them (a child inherits an ignored signal)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def svmpmu_process(*argv):
    """``python -m svmpmu ARGV`` started, its output piped."""
    env = {k: v for k, v in os.environ.items() if k != "RAYON_NUM_THREADS"}
    return subprocess.Popen(  # noqa: S603 (the tests' own arguments)
        [sys.executable, "-m", "svmpmu", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=_default_signals,  # noqa: PLW1509 (no threads of the test need it)
    )


def test_debug_shows_the_traceback_in_a_process(tmp_path):
    empty = pathlib.Path(tmp_path / "empty.npz")
    empty.write_bytes(b"")
    for debug in (False, True):
        argv = ["--debug"] if debug else []
        p = svmpmu_process(*argv, "replay", str(empty))
        _out, err = p.communicate(timeout=30)
        assert p.returncode == 2
        assert err.strip().splitlines()[-1] == f"svmpmu: error: {empty}: empty file: no records"
        assert ("Traceback" in err) is debug


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize(
    ("traces", "length"), [(100_000_000, 64), (100, 10_000_000)], ids=["many", "long"]
)
def test_a_signal_stops_fuzz_with_a_partial_report(signum, traces, length):
    p = svmpmu_process("fuzz", "--no-progress", "--traces", str(traces), "--length", str(length))
    time.sleep(1.5)
    p.send_signal(signum)
    sent = time.monotonic()
    out, err = p.communicate(timeout=30)
    took = time.monotonic() - sent
    assert p.returncode == 130, err
    assert took < 3, took
    assert "records (interrupted: " in out
    assert f"of {traces})" in out
    assert "svmpmu: interrupted" in err
    assert "Traceback" not in err


def test_a_sigint_stops_verify_at_once():
    # Two PMCs take minutes, and the core does not look at signals while it expands a layer.
    p = svmpmu_process("verify", "--no-progress", "--n-pmcs", "2")
    time.sleep(1.5)
    p.send_signal(signal.SIGINT)
    sent = time.monotonic()
    _out, err = p.communicate(timeout=30)
    assert p.returncode == 130
    assert time.monotonic() - sent < 3
    assert err.strip() == "svmpmu: interrupted"
