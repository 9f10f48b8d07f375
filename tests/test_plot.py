"""svmpmu.timeline and svmpmu.plot: the per-record state the pictures share, and the picture
(docs/pictures.md)."""

from __future__ import annotations

import dataclasses
import importlib
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import svmpmu
from picture_helpers import nested_trace, worked_example
from svmpmu import INSTRUCTIONS_RETIRED, Op, Policy, Trace, TraceBuilder, TraceError, eventsel
from svmpmu.plot import PIXEL_SIZE, SUFFIXES, plot, plot_figure
from svmpmu.timeline import MAX_TIMELINE_RECORDS, MODE_NAMES, timeline, trace_pmcs

# The modules themselves: svmpmu's package attributes of the same names may be the functions.
timeline_module = importlib.import_module("svmpmu.timeline")


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (bytes 16 to 24)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# --- the timeline ---------------------------------------------------------------------------


def test_timeline_of_the_worked_example_under_final():
    tl = timeline(worked_example())
    assert tl.n_pmcs == 1
    assert len(tl) == 7
    assert tl.svme.tolist() == [False, True, True, True, True, True, True]
    assert tl.guest_mode.tolist() == [False, False, False, True, True, False, False]
    assert tl.mode.tolist() == [0, 1, 1, 2, 2, 1, 1]
    # The selector write sets eventsel_hw.EN at once; the synchronous EFER flow clears it.
    assert tl.hw_enabled.tolist() == [1, 0, 0, 1, 1, 0, 0]
    assert tl.reference_hw_enabled.tolist() == [0, 0, 0, 1, 1, 0, 0]
    assert tl.counts[:, 0].tolist() == [0, 0, 0, 1, 1001, 1001, 1001]
    assert tl.reference_counts[:, 0].tolist() == [0, 0, 0, 1, 1001, 1001, 1001]
    assert tl.first_divergence is None
    assert str(tl.policy) == "final"
    assert str(tl.reference) == "arch"


def test_timeline_of_the_worked_example_under_v4():
    tl = timeline(worked_example(), "v4")
    assert tl.counts[:, 0].tolist() == [1, 2, 2, 3, 1003, 1003, 1003]
    assert tl.reference_counts[:, 0].tolist() == [0, 0, 0, 1, 1001, 1001, 1001]
    assert tl.hw_enabled.tolist() == [1, 1, 0, 0, 1, 1, 1]
    assert tl.first_divergence == 0
    assert tl.first_divergence == svmpmu.compare(worked_example(), "v4").first_divergence


def test_timeline_of_a_nested_trace_by_hand():
    tl = timeline(nested_trace(), "final", "arch")
    assert tl.n_pmcs == 2
    assert tl.mode.tolist() == [1, 1, 1, 1, 1, 2, 2, 2, 1, 1]
    assert tl.counts.T.tolist() == [
        [0, 0, 0, 0, 0, 1, 11, 12, 12, 12],
        [0, 1, 2, 2, 102, 102, 102, 102, 102, 102],
    ]
    # arch attributes a selector write to the old selector: PMC 1 misses its enabling WRMSR.
    assert tl.reference_counts.T.tolist() == [
        [0, 0, 0, 0, 0, 1, 11, 12, 12, 12],
        [0, 0, 1, 1, 101, 101, 101, 101, 101, 101],
    ]
    assert tl.first_divergence == 1
    # PMC 0's EN (bit 0) is set by its selector write and cleared at the VM-entry in L1.
    assert tl.hw_enabled.tolist() == [0, 2, 3, 2, 2, 1, 1, 1, 2, 2]
    assert tl.reference_hw_enabled.tolist() == [0, 2, 2, 2, 2, 1, 1, 1, 2, 2]
    assert tl.enabled(0).tolist() == [
        False,
        False,
        True,
        False,
        False,
        True,
        True,
        True,
        False,
        False,
    ]
    assert tl.enabled(1, reference=True).tolist() == [False] + [True] * 4 + [False] * 3 + [True] * 2
    with pytest.raises(ValueError, match="pmc"):
        tl.enabled(2)


def test_timeline_takes_policies_and_finds_no_divergence_when_none():
    new = dataclasses.replace(Policy.preset("arch"), enabling_wrmsr="new")
    tl = timeline(nested_trace(), "final", new)
    assert np.array_equal(tl.counts, tl.reference_counts)
    assert tl.first_divergence is None
    assert tl.reference == new


def test_timeline_reports_a_divergence_that_heals():
    # v4 counts the enabling WRMSR; the WRMSR_CTR then sets both counters to 5 again.
    trace = (
        TraceBuilder()
        .wrmsr_evtsel(0, eventsel(INSTRUCTIONS_RETIRED))
        .run(3)
        .wrmsr_ctr(0, 5)
        .read(0)
        .build()
    )
    tl = timeline(trace, "v4")
    assert tl.counts[:, 0].tolist() == [1, 4, 6, 6]
    assert tl.reference_counts[:, 0].tolist() == [0, 3, 6, 6]
    assert tl.first_divergence == 0


def test_the_pmcs_a_trace_touches():
    assert trace_pmcs(TraceBuilder().vmentry().build()) == 1
    assert trace_pmcs(Trace(np.zeros(0, dtype=np.uint8))) == 1
    assert trace_pmcs(TraceBuilder().read(3).build()) == 4
    # A RUN's pmc column is not a PMC.
    assert trace_pmcs(Trace([Op.RUN], pmc=[5])) == 1
    tl = timeline(nested_trace(), n_pmcs=6)
    assert tl.counts.shape == (10, 6)
    assert not tl.counts[:, 2:].any()


def test_timeline_arrays_are_read_only():
    tl = timeline(worked_example())
    for array in (tl.svme, tl.guest_mode, tl.hw_enabled, tl.counts, tl.reference_counts):
        assert not array.flags.writeable
    with pytest.raises(dataclasses.FrozenInstanceError):
        tl.n_pmcs = 2


def test_an_invalid_record_is_named_by_its_index_in_the_trace():
    trace = TraceBuilder().vmentry().read(0).vmexit().build()
    with pytest.raises(TraceError) as caught:
        timeline(trace)
    assert caught.value.index == 2


def test_an_empty_trace_has_an_empty_timeline():
    tl = timeline(Trace(np.zeros(0, dtype=np.uint8)))
    assert len(tl) == 0
    assert tl.counts.shape == (0, 1)
    assert tl.first_divergence is None


def test_a_trace_too_long_to_draw_is_refused_before_any_work():
    trace = Trace(np.full(MAX_TIMELINE_RECORDS + 1, Op.VMENTRY, dtype=np.uint8))
    with pytest.raises(ValueError, match="at most 2,000,000"):
        timeline(trace)


def test_the_limit_is_read_when_called(monkeypatch):
    monkeypatch.setattr(timeline_module, "MAX_TIMELINE_RECORDS", 5)
    with pytest.raises(ValueError, match="7 records"):
        timeline(worked_example())


# --- the picture ----------------------------------------------------------------------------


def test_png_has_the_documented_size(tmp_path):
    path = tmp_path / "example.png"
    plot(worked_example(), path, policy="v4")
    assert png_size(path.read_bytes()) == PIXEL_SIZE == (1200, 800)
    assert [p.name for p in tmp_path.iterdir()] == ["example.png"]  # no temporary file left


def test_png_size_does_not_depend_on_the_pmcs(tmp_path):
    path = tmp_path / "six.PNG"
    plot(nested_trace(), str(path), n_pmcs=6, title="six PMCs")
    assert png_size(path.read_bytes()) == PIXEL_SIZE


def test_svg_parses_as_xml(tmp_path):
    path = tmp_path / "nested.svg"
    plot(nested_trace(), path, policy="final", reference="arch")
    root = ET.parse(path).getroot()  # noqa: S314 (the file this test wrote)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.get("width") == "864pt"  # 12 inches
    assert root.get("height") == "576pt"  # 8 inches


def test_the_figure_has_a_mode_band_a_lane_axis_and_a_count_axis_per_pmc():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = plot_figure(nested_trace(), policy="v4")
    assert isinstance(figure.canvas, FigureCanvasAgg)
    assert len(figure.axes) == 2 + 2
    assert tuple(figure.get_size_inches() * figure.dpi) == PIXEL_SIZE
    lanes = figure.axes[1]
    assert [t.get_text() for t in lanes.get_yticklabels()] == ["PMC 0", "PMC 1"]
    # the first divergence is marked on every axis
    assert "first divergence" in figure.get_suptitle()
    for ax in figure.axes:
        assert any(tuple(line.get_xdata()) == (1.5, 1.5) for line in ax.get_lines())


def test_an_empty_trace_still_draws(tmp_path):
    path = tmp_path / "empty.png"
    plot(Trace(np.zeros(0, dtype=np.uint8)), path)
    assert png_size(path.read_bytes()) == PIXEL_SIZE


def test_an_unknown_suffix_is_refused_before_any_work(tmp_path):
    path = tmp_path / "picture.pdf"
    with pytest.raises(ValueError, match=r"\.png, \.svg") as caught:
        plot(worked_example(), path)
    assert "picture.pdf" in str(caught.value)
    assert set(SUFFIXES) == {".png", ".svg"}
    with pytest.raises(ValueError, match="format"):
        plot(worked_example(), tmp_path / "no_suffix")
    assert not list(tmp_path.iterdir())


def test_without_matplotlib_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    # None in sys.modules makes `import matplotlib` raise ImportError, as if it were missing.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'svmpmu\[plot\]'"):
        plot(worked_example(), tmp_path / "x.png")
    with pytest.raises(ImportError, match=r"svmpmu\[plot\]"):
        plot_figure(worked_example())
    assert not list(tmp_path.iterdir())


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "old.png"
    path.write_bytes(b"old")

    def fail(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(type(path), "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        plot(worked_example(), path)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["old.png"]


def test_importing_svmpmu_does_not_import_matplotlib():
    code = (
        "import sys, svmpmu, svmpmu.timeline, svmpmu.plot, svmpmu.perfetto; "
        "print('matplotlib' in sys.modules)"
    )
    out = subprocess.run(  # noqa: S603 (this interpreter, on a fixed script)
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


def test_mode_names():
    assert MODE_NAMES == ("L1 (SVME=0)", "L1 (SVME=1)", "L2")
