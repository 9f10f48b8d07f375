"""Text traces (docs/text-format.md): round trips, every syntax error, the sources read_text
takes, and the shipped scenarios."""

from __future__ import annotations

import io
import pathlib
import pickle
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import svmpmu
from svmpmu import (
    EN,
    GUEST_ONLY,
    HOST_ONLY,
    INT,
    OS,
    USR,
    Mix,
    Op,
    Trace,
    TraceBuilder,
    TraceSyntaxError,
    read_text,
)

# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------

MIXES = {
    "default": Mix(),
    "workload": Mix.workload(),
    # Every op alone with the transitions it needs, and the wide values of every field.
    "selectors": Mix(reserved_junk=500, interrupt=500, zero_selector=100).with_ops(
        WRMSR_EVTSEL=800
    ),
    "counters": Mix(ctr_near_wrap=500, run_huge=500).with_ops(WRMSR_CTR=500, RUN=500),
    "nested": Mix(vmrun_user=500).with_ops(
        VMRUN=300, VMEXIT=300, SET_NESTED_STATE=300, FORCED_LEAVE=200, VMRUN_FAIL=200
    ),
    "filters": Mix(filter=(1, 1, 1)).with_ops(SET_FILTER=500, EMULATE=500),
}


@pytest.mark.parametrize("name", MIXES)
def test_generated_traces_of_every_mix_round_trip(name):
    batch = svmpmu.generate(50, 400, seed=11, mix=MIXES[name])
    for i in range(len(batch)):
        t = batch.trace(i)
        text = t.to_text()
        assert read_text(text) == t
        svmpmu.validate(read_text(text))


def test_a_long_generated_trace_round_trips_through_a_file(tmp_path):
    t = svmpmu.generate(1, 200_000, seed=3).trace(0)
    path = tmp_path / "long.txt"
    svmpmu.write_trace(t, path)
    assert read_text(path) == t
    assert svmpmu.read_trace(path) == t


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 14),
            st.integers(0, 255),
            st.integers(0, 255),
            st.integers(0, 255),
            st.integers(0, 2**32 - 1),
            st.integers(0, 2**64 - 1),
        ),
        max_size=40,
    )
)
def test_any_columns_round_trip(records):
    """Values in fields an op ignores, and the widest values, survive too."""
    cols = list(zip(*records)) if records else [[]] * 6
    t = Trace(*(np.array(c, dtype=d) for c, d in zip(cols, svmpmu.COLUMNS.values())))
    assert read_text(t.to_text()) == t


def test_the_written_text_is_readable():
    t = (
        TraceBuilder()
        .wrmsr_evtsel(0, EN | OS | USR | GUEST_ONLY | 0xC0)
        .wrmsr_evtsel(1, EN | HOST_ONLY | INT | 0xC2 | 0x3 << 8 | 1 << 19)
        .wrmsr_ctr(0, 2**48 - 5)
        .wrmsr_global_ctrl(0x3F)
        .wrmsr_efer(1)
        .vmrun(cpl=3)
        .run(1000)
        .emulate(cpl=3, branch=True)
        .vmexit()
        .set_filter("deny", 0xC0)
        .set_nested_state(1)
        .forced_leave()
        .vmrun_fail()
        .vmentry()
        .read(0)
        .reset()
        .build()
    )
    assert t.to_text().splitlines() == [
        "# svmpmu text trace",
        "WRMSR_EVTSEL pmc=0 value=EN|OS|USR|G|event=0xc0",
        "WRMSR_EVTSEL pmc=1 value=EN|INT|H|event=0xc2|umask=0x3|0x80000",
        "WRMSR_CTR pmc=0 value=0xfffffffffffb",
        "WRMSR_GLOBAL_CTRL value=0x3f",
        "WRMSR_EFER svme=1",
        "VMRUN cpl=3",
        "RUN n=1000 event=0xc0 cpl=3",
        "EMULATE branch=1 cpl=3",
        "VMEXIT",
        "SET_FILTER action=deny event=0xc0",
        "SET_NESTED_STATE guest_mode=1",
        "FORCED_LEAVE",
        "VMRUN_FAIL",
        "VMENTRY",
        "READ pmc=0",
        "RESET",
    ]
    assert read_text(t.to_text()) == t


def test_the_spec_notation_of_trace_format_reads_back():
    """Trace.format() prints the spec's notation; each of its lines is a text record."""
    t = svmpmu.scenario("kvm-selftest")
    lines = [line.split(None, 1)[1] for line in t.format(limit=None).splitlines()]
    assert read_text("\n".join(lines) + "\n") == t


def test_selectors_are_written_symbolically_or_as_numbers():
    a = read_text("WRMSR_EVTSEL pmc=0 value=EN|OS|USR|G|event=0xc0\n")
    b = read_text(f"WRMSR_EVTSEL pmc=0 value={svmpmu.eventsel(0xC0, guest_only=True):#x}\n")
    c = read_text("wrmsr_evtsel pmc=0 value=g|usr|os|en|event=192\n")
    assert a == b == c


def test_an_unknown_op_has_no_text_form():
    t = Trace(op=np.array([3, 99], dtype=np.uint8))
    with pytest.raises(svmpmu.TraceError, match="record 1: unknown op 99"):
        t.to_text()


# ---------------------------------------------------------------------------------------------
# Syntax errors: the line, the column and what was expected
# ---------------------------------------------------------------------------------------------

SYNTAX_ERRORS = [
    # text, line, column, part of the message
    ("VMEXIT\nFOO\n", 2, 1, "expected an op (WRMSR_EVTSEL, "),
    ("READ pmc=x", 1, 10, "expected a number for pmc (decimal or 0x hex), found 'x'"),
    ("READ pmc=", 1, 10, "expected a number for pmc"),
    ("READ pmc=0x", 1, 10, "expected a number for pmc"),
    ("READ pmc=12a", 1, 10, "expected a number for pmc"),
    ("READ pmc=256", 1, 6, "does not fit in the pmc column (at most 255)"),
    ("SET_FILTER action=allow event=0x100000000", 1, 25, "does not fit in the key column"),
    ("WRMSR_CTR pmc=0 value=0x1_0000_0000_0000_0000", 1, 23, "does not fit in 64 bits"),
    ("RUN n=1 cpl=3", 1, 14, "RUN needs event= (n= event= cpl=)"),
    ("WRMSR_EVTSEL value=0", 1, 21, "WRMSR_EVTSEL needs pmc="),
    ("WRMSR_EFER", 1, 11, "WRMSR_EFER needs svme="),
    ("READ pmc=1 pmc=2", 1, 12, "'pmc' sets the pmc field twice"),
    ("EMULATE branch flag=1", 1, 16, "sets the flag field twice"),
    ("READ counter=1", 1, 6, "unknown field 'counter': READ takes pmc"),
    ("RESET now=1", 1, 7, "unknown field 'now': RESET takes no fields"),
    ("READ 1", 1, 6, "expected name=value after READ, found '1'"),
    ("WRMSR_EVTSEL pmc=0 value=EN|BOGUS", 1, 29, "expected a selector term"),
    ("WRMSR_EVTSEL pmc=0 value=EN|event=0x1000", 1, 35, "does not fit in 12 bits"),
    ("WRMSR_EVTSEL pmc=0 value=umask=0x100", 1, 32, "does not fit in 8 bits"),
    ("WRMSR_EVTSEL pmc=0 value=cmask=1", 1, 26, "expected event= or umask="),
    ("WRMSR_EVTSEL pmc=0 value=EN|", 1, 29, "expected a selector term"),
    ("SET_FILTER action=block", 1, 19, "expected a filter action (none, allow, deny)"),
    ("# header\n\n  VMRUN cpl=three", 3, 13, "expected a number for cpl"),
    ("\u00e9t\u00e9", 1, 1, "expected an op"),
]


@pytest.mark.parametrize(("text", "line", "column", "message"), SYNTAX_ERRORS)
def test_every_syntax_error_names_its_line_column_and_expectation(text, line, column, message):
    with pytest.raises(TraceSyntaxError) as info:
        read_text(text + "\n" if "\n" not in text else text)
    e = info.value
    assert (e.line, e.column) == (line, column), str(e)
    assert message in e.reason
    assert str(e).startswith(f"line {line}, column {column}: ")
    assert isinstance(e, svmpmu.TraceError)
    assert isinstance(e, ValueError)


def test_a_syntax_error_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "scenario.txt"
    path.write_text("VMENTRY\nVMENTRY\nREAD pmc=one\n")
    with pytest.raises(TraceSyntaxError) as info:
        read_text(path)
    assert str(info.value).startswith(f"{path}:3:10: expected a number for pmc")
    assert info.value.source == str(path)
    assert info.value.index == 2


def test_a_syntax_error_pickles():
    e = TraceSyntaxError(3, 9, 2, "expected x", "a.txt")
    back = pickle.loads(pickle.dumps(e))  # noqa: S301 (our own bytes)
    assert (back.line, back.column, back.index, back.reason, back.source) == (
        3,
        9,
        2,
        "expected x",
        "a.txt",
    )
    assert str(back) == str(e)


# ---------------------------------------------------------------------------------------------
# Sources, comments, blank lines
# ---------------------------------------------------------------------------------------------

SCENARIO = "# comment\n\nWRMSR_EFER svme=1   # enable SVM\r\n  VMRUN cpl=3\n\t\nVMEXIT\n"


@pytest.mark.parametrize(
    "source",
    ["str", "bytes", "path", "str-path", "text-file", "binary-file"],
)
def test_read_text_takes_text_paths_and_files(source, tmp_path):
    path = tmp_path / "s.txt"
    path.write_text(SCENARIO)
    arg = {
        "str": SCENARIO,
        "bytes": SCENARIO.encode(),
        "path": path,
        "str-path": str(path),
        "text-file": io.StringIO(SCENARIO),
        "binary-file": io.BytesIO(SCENARIO.encode()),
    }[source]
    t = read_text(arg)
    assert [Op(o) for o in t.op] == [Op.WRMSR_EFER, Op.VMRUN, Op.VMEXIT]
    assert (t.flag[0], t.cpl[1]) == (1, 3)


def test_an_empty_or_comment_only_text_is_an_empty_trace():
    assert len(read_text("\n")) == 0
    assert len(read_text(b"")) == 0
    assert len(read_text("# nothing\n# here\n")) == 0


def test_a_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_text(tmp_path / "missing.txt")


# ---------------------------------------------------------------------------------------------
# Shipped scenarios
# ---------------------------------------------------------------------------------------------


def test_the_shipped_scenarios_are_listed_with_titles():
    names = svmpmu.scenarios()
    assert set(names) >= {"worked-example", "kvm-selftest", "seed-thread"}
    assert all(title for title in names.values())


@pytest.mark.parametrize("name", ["worked-example", "kvm-selftest", "seed-thread"])
def test_every_scenario_is_valid_and_its_text_is_its_file(name):
    t = svmpmu.scenario(name)
    svmpmu.validate(t)
    assert len(t) > 0
    assert svmpmu.read_trace(name) == t


@pytest.mark.parametrize(("policy", "expected"), [("arch", 1001), ("final", 1001), ("v4", 1003)])
def test_the_worked_example_scenario_reads_as_model_md_section_9(policy, expected):
    assert svmpmu.simulate(svmpmu.scenario("worked-example"), policy).reads.tolist() == [expected]


def test_the_selftest_scenario_is_the_spec_tests_trace():
    sys.path.insert(0, str(pathlib.Path(__file__).parent / "spec"))
    try:
        from test_presets import selftest_trace
    finally:
        sys.path.pop(0)
    assert svmpmu.scenario("kvm-selftest") == selftest_trace()


def test_the_seed_thread_scenario_reads_as_its_comments_say():
    t = svmpmu.scenario("seed-thread")
    # Four cases, each reading PMC 0 (G) then PMC 1 (H).
    assert svmpmu.simulate(t, "arch", n_pmcs=2).reads.tolist() == [1, 1, 0, 1, 0, 2, 0, 0]
    assert svmpmu.simulate(t, "final", n_pmcs=2).reads.tolist()[6:] == [0, 1]
