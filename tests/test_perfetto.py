"""svmpmu.perfetto: the timeline as Chrome trace-event JSON (docs/pictures.md)."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest

import svmpmu
from picture_helpers import nested_trace, worked_example
from svmpmu import Trace, TraceBuilder
from svmpmu.perfetto import (
    COUNTER_ARG,
    DIVERGENCE_EVENT,
    EN_EVENT,
    MODE_TRACK,
    perfetto,
    write_perfetto,
)
from svmpmu.timeline import MODE_NAMES, timeline


def thread_names(data):
    return {
        e["tid"]: e["args"]["name"]
        for e in data["traceEvents"]
        if e["ph"] == "M" and e["name"] == "thread_name"
    }


def by_track(data, ph):
    """{track name: [event, ...]} of the events of phase ``ph`` (counters by their name)."""
    names = thread_names(data)
    tracks = defaultdict(list)
    for e in data["traceEvents"]:
        if e["ph"] == ph:
            tracks[e["name"] if ph == "C" else names[e["tid"]]].append(e)
    return tracks


def test_the_worked_example_as_written_and_loaded(tmp_path):
    path = tmp_path / "v4.json"
    write_perfetto(worked_example(), path, policy="v4")
    data = json.loads(path.read_text())
    assert set(data) == {"traceEvents", "displayTimeUnit", "otherData"}
    assert data["displayTimeUnit"] == "ns"
    assert data["otherData"]["policy"] == "v4"
    assert data["otherData"]["records"] == 7
    events = data["traceEvents"]
    assert {e["ph"] for e in events} == {"M", "X", "C", "i"}
    assert all(e["pid"] == 1 for e in events)

    process = [e for e in events if e["ph"] == "M" and e["name"] == "process_name"]
    assert [e["args"]["name"] for e in process] == ["svmpmu: v4 vs arch"]
    assert sorted(thread_names(data).values()) == [
        "PMC 0 EN (policy v4)",
        "PMC 0 EN (reference arch)",
        MODE_TRACK,
    ]

    spans = by_track(data, "X")
    assert [(e["name"], e["ts"], e["dur"]) for e in spans[MODE_TRACK]] == [
        ("L1 (SVME=0)", 0, 1),
        ("L1 (SVME=1)", 1, 2),
        ("L2", 3, 2),
        ("L1 (SVME=1)", 5, 2),
    ]
    assert spans[MODE_TRACK][2]["args"] == {"first_record": 3, "last_record": 4}
    assert [(e["name"], e["ts"], e["dur"]) for e in spans["PMC 0 EN (policy v4)"]] == [
        (EN_EVENT, 0, 2),
        (EN_EVENT, 4, 3),
    ]
    assert [(e["ts"], e["dur"]) for e in spans["PMC 0 EN (reference arch)"]] == [(3, 2)]

    counters = by_track(data, "C")
    assert set(counters) == {"PMC 0 policy", "PMC 0 reference"}
    assert [(e["ts"], e["args"][COUNTER_ARG]) for e in counters["PMC 0 policy"]] == [
        (0, 1),
        (1, 2),
        (3, 3),
        (4, 1003),
    ]
    assert [(e["ts"], e["args"][COUNTER_ARG]) for e in counters["PMC 0 reference"]] == [
        (0, 0),
        (3, 1),
        (4, 1001),
    ]

    (instant,) = [e for e in events if e["ph"] == "i"]
    assert instant["name"] == DIVERGENCE_EVENT
    assert instant["s"] == "p"
    assert instant["ts"] == 0
    assert instant["args"]["record"] == 0
    assert instant["args"]["op"].startswith("WRMSR_EVTSEL(pmc=0")
    assert instant["args"]["policy"] == [1]
    assert instant["args"]["reference"] == [0]
    assert [p.name for p in tmp_path.iterdir()] == ["v4.json"]


def test_no_divergence_no_instant_event():
    data = perfetto(worked_example())  # final agrees with arch here
    assert not [e for e in data["traceEvents"] if e["ph"] == "i"]
    assert data["otherData"]["first_divergence"] is None


def test_a_nested_trace_with_two_pmcs_and_a_time_scale():
    data = perfetto(nested_trace(), us_per_record=2.5, start_us=100)
    names = set(thread_names(data).values())
    assert names == {
        MODE_TRACK,
        "PMC 0 EN (policy final)",
        "PMC 0 EN (reference arch)",
        "PMC 1 EN (policy final)",
        "PMC 1 EN (reference arch)",
    }
    spans = by_track(data, "X")
    assert [(e["name"], e["ts"], e["dur"]) for e in spans[MODE_TRACK]] == [
        ("L1 (SVME=1)", 100.0, 12.5),
        ("L2", 112.5, 7.5),
        ("L1 (SVME=1)", 120.0, 5.0),
    ]
    # PMC 0's EN: set by its selector write (record 2), cleared at the VM-entry, set in L2.
    assert [(e["ts"], e["dur"]) for e in spans["PMC 0 EN (policy final)"]] == [
        (105.0, 2.5),
        (112.5, 7.5),
    ]
    counters = by_track(data, "C")
    assert [(e["ts"], e["args"][COUNTER_ARG]) for e in counters["PMC 1 reference"]] == [
        (100.0, 0),
        (105.0, 1),
        (110.0, 101),
    ]
    (instant,) = [e for e in data["traceEvents"] if e["ph"] == "i"]
    assert instant["ts"] == 102.5
    assert instant["args"]["record"] == 1


def test_every_event_has_the_fields_of_its_phase():
    data = perfetto(nested_trace(), policy="v4", pid=42)
    for e in data["traceEvents"]:
        assert e["pid"] == 42
        assert isinstance(e["tid"], int)
        assert isinstance(e["name"], str)
        if e["ph"] == "X":
            assert e["dur"] > 0
            assert e["name"] in (*MODE_NAMES, EN_EVENT)
        if e["ph"] != "M":
            assert e["ts"] >= 0
        if e["ph"] == "C":
            assert set(e["args"]) == {COUNTER_ARG}


def assert_merged(data):
    """No two spans of a track touch with the same name; no counter event repeats a value."""
    for events in by_track(data, "X").values():
        for a, b in zip(events, events[1:]):
            assert a["ts"] + a["dur"] <= b["ts"]
            assert a["ts"] + a["dur"] < b["ts"] or a["name"] != b["name"]
    for events in by_track(data, "C").values():
        values = [e["args"][COUNTER_ARG] for e in events]
        assert all(a != b for a, b in zip(values, values[1:]))


def test_spans_and_counters_are_merged_on_a_random_trace():
    trace = svmpmu.generate(1, 2_000, seed=7).trace(0)
    data = perfetto(trace, policy="v4")
    assert_merged(data)
    tl = timeline(trace, "v4")
    # the mode spans cover the trace exactly once
    modes = by_track(data, "X")[MODE_TRACK]
    assert sum(e["dur"] for e in modes) == len(trace)
    changes = int((np.diff(tl.mode) != 0).sum())
    assert len(modes) == changes + 1
    counters = by_track(data, "C")
    changes = int((np.diff(tl.counts[:, 0]) != 0).sum())
    assert len(counters["PMC 0 policy"]) == changes + 1


def test_a_long_quiet_trace_stays_small():
    quiet = TraceBuilder().extend(nested_trace())
    for _ in range(100_000 - len(quiet) - 1):
        quiet.vmentry()
    trace = quiet.read(0).build()
    assert len(trace) == 100_000
    data = perfetto(trace)
    assert len(data["traceEvents"]) < 60
    assert len(json.dumps(data)) < 10_000
    assert_merged(data)


def test_an_empty_trace_has_only_metadata():
    data = perfetto(Trace(np.zeros(0, dtype=np.uint8)))
    assert {e["ph"] for e in data["traceEvents"]} == {"M"}


@pytest.mark.parametrize(
    ("option", "value"),
    [("us_per_record", 0), ("us_per_record", float("nan")), ("start_us", -1)],
)
def test_bad_time_scales_are_refused(option, value):
    with pytest.raises(ValueError, match=option):
        perfetto(worked_example(), **{option: value})


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "trace.json"
    path.write_text("old")

    def fail(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(type(path), "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_perfetto(worked_example(), path)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["trace.json"]
