"""Trace files: format detection by content, clear errors for foreign or truncated files,
atomic writes, and the file commands of the CLI (convert, scenarios, replay of any format)."""

from __future__ import annotations

import doctest
import io

import pytest

import svmpmu
import svmpmu.files
import svmpmu.trace
from svmpmu import TraceFileError, read_trace, write_trace
from svmpmu.cli import main
from svmpmu.files import detect_format, line_of_record


@pytest.fixture
def trace():
    return svmpmu.generate(1, 300, seed=5).trace(0)


@pytest.mark.parametrize("suffix", [".npz", ".txt", ".trace"])
def test_write_then_read_any_format(trace, tmp_path, suffix):
    path = tmp_path / f"t{suffix}"
    write_trace(trace, path)
    assert read_trace(path) == trace


@pytest.mark.parametrize(("written", "named"), [(".npz", ".txt"), (".txt", ".npz")])
def test_the_format_comes_from_the_content_not_the_name(trace, tmp_path, written, named):
    path = tmp_path / f"t{written}"
    write_trace(trace, path)
    misnamed = path.rename(tmp_path / f"misnamed{named}")
    assert read_trace(misnamed) == trace


def test_detect_format():
    assert detect_format(b"PK\x03\x04rest") == "npz"
    assert detect_format(b"# a comment\n\nVMRUN cpl=0\n") == "text"
    assert detect_format(b"RUN(n=1, key=0xc0, cpl=3)\n") == "text"
    assert detect_format(b"# only comments\n") == "text"
    assert detect_format(b"") == "text"
    assert detect_format(b"cpus=2\n  qemu-1 [000] 1.0: kvm_entry: vcpu 0\n") == "ftrace"
    assert detect_format(b"# tracer: nop\n#\n") == "ftrace"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x17\x08\x44tracing6\0\0", "trace-cmd report"),
        (b"\x7fELF\x02\x01\x01\0\0\0", "binary file"),
        (b"hello world\n", "neither a .npz trace, a text trace"),
    ],
)
def test_foreign_files_get_a_clear_error(tmp_path, data, message):
    path = tmp_path / "foreign.bin"
    path.write_bytes(data)
    with pytest.raises(TraceFileError, match=message) as info:
        read_trace(path)
    assert str(path) in str(info.value)


def test_a_truncated_npz_gets_a_clear_error(trace, tmp_path):
    path = tmp_path / "t.npz"
    write_trace(trace, path)
    data = path.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 10):
        path.write_bytes(data[:cut])
        with pytest.raises(TraceFileError, match="cut short"):
            read_trace(path)


def test_an_npz_of_something_else_gets_a_clear_error(tmp_path):
    import numpy as np

    path = tmp_path / "other.npz"
    np.savez(path, weights=np.zeros(3))
    with pytest.raises(TraceFileError, match="not a svmpmu trace"):
        read_trace(path)


def test_an_unknown_suffix_is_refused_before_anything_is_written(trace, tmp_path):
    with pytest.raises(ValueError, match=r"use \.npz, \.txt or \.trace"):
        write_trace(trace, tmp_path / "t.csv")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_the_old_file_and_no_temporary(trace, tmp_path, monkeypatch):
    path = tmp_path / "t.txt"
    path.write_text("VMENTRY\n")

    def full_disk(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(svmpmu.files.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_trace(trace, path)
    assert path.read_text() == "VMENTRY\n"
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def test_line_of_record():
    text = b"# header\nVMENTRY\n\n  # note\nRESET # x\nREAD pmc=0\n"
    assert [line_of_record(text, i) for i in range(4)] == [2, 5, 6, None]


def test_a_scenario_name_is_a_trace_source():
    assert read_trace("worked-example") == svmpmu.scenario("worked-example")
    with pytest.raises(ValueError, match="no scenario 'nope'"):
        svmpmu.scenario("nope")


@pytest.mark.parametrize("module", [svmpmu.files, svmpmu.trace])
def test_the_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


# ---------------------------------------------------------------------------------------------
# The CLI
# ---------------------------------------------------------------------------------------------


def test_cli_convert_between_text_and_npz(trace, tmp_path, capsys):
    txt, npz, back = tmp_path / "a.txt", tmp_path / "a.npz", tmp_path / "b.txt"
    write_trace(trace, txt)
    assert main(["convert", str(txt), "-o", str(npz)]) == 0
    assert main(["convert", str(npz), "-o", str(back)]) == 0
    assert back.read_text() == txt.read_text()
    assert "300 records written to" in capsys.readouterr().out


def test_cli_convert_refuses_an_unknown_suffix(tmp_path, capsys):
    assert main(["convert", "worked-example", "-o", str(tmp_path / "x.json")]) == 2
    assert "use .npz, .txt or .trace" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_scenarios_lists_names_and_paths(capsys):
    assert main(["scenarios", "--paths"]) == 0
    out = capsys.readouterr().out
    assert "worked-example" in out
    assert "kvm-selftest.txt" in out


def test_cli_replays_a_scenario_by_name(capsys):
    assert main(["replay", "worked-example", "--policy", "v4"]) == 1
    out = capsys.readouterr().out
    assert "reads: 1003" in out
    assert "reads: 1001" in out


def test_cli_replay_takes_set_reference(capsys):
    assert main(["replay", "worked-example", "--set-reference", "vmrun_retire=host"]) == 1
    out = capsys.readouterr().out
    assert "reads: 1000" in out  # arch with VMRUN retired in the host: G does not count it


def test_cli_replay_points_a_record_error_at_its_line(tmp_path, capsys):
    path = tmp_path / "bad.txt"
    path.write_text("# header\nWRMSR_EFER svme=1\n\nVMEXIT\n")
    assert main(["replay", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"record 1: VMEXIT in host mode (line 4 of {path})" in err


def test_cli_replay_reports_a_syntax_error_without_a_traceback(tmp_path, capsys):
    path = tmp_path / "bad.txt"
    path.write_text("VMENTRY\nREAD pmc=one\n")
    assert main(["replay", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2:10: expected a number for pmc" in err
    assert "Traceback" not in err


def test_cli_replay_of_a_missing_file(tmp_path, capsys):
    assert main(["replay", str(tmp_path / "missing.txt")]) == 2
    assert "No such file" in capsys.readouterr().err


def test_read_trace_of_bytes(trace):
    buf = io.BytesIO()
    trace.save(buf)
    assert read_trace(buf.getvalue()) == trace
    assert read_trace(trace.to_text().encode()) == trace


def test_cli_plot_writes_a_png_and_an_svg(tmp_path, capsys):
    png, svg = tmp_path / "seed.png", tmp_path / "seed.svg"
    assert main(["plot", "seed-thread", "-o", str(png), "--policy", "v4"]) == 0
    assert main(["plot", "worked-example", "-o", str(svg), "--vs", "final"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in svg.read_bytes()[:2000]
    assert "v4 against arch" in capsys.readouterr().out


def test_cli_plot_refuses_an_unknown_suffix(tmp_path, capsys):
    assert main(["plot", "worked-example", "-o", str(tmp_path / "x.gif")]) == 2
    assert ".png" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_plot_without_matplotlib_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["plot", "worked-example", "-o", str(tmp_path / "x.png")]) == 2
    assert "pip install 'svmpmu[plot]'" in capsys.readouterr().err


def test_cli_export_perfetto(tmp_path, capsys):
    import json

    out = tmp_path / "we.json"
    assert main(["export", "worked-example", "--perfetto", str(out), "--policy", "v4"]) == 0
    events = json.loads(out.read_text())["traceEvents"]
    assert {e["ph"] for e in events} >= {"M", "X", "C", "i"}
    assert "ui.perfetto.dev" in capsys.readouterr().out
