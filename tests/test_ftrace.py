"""Import of KVM's trace events (svmpmu.read_ftrace, docs/ftrace.md): the records of every
fixture per vCPU, what is skipped and what cannot be read, a golden replay, the sources read,
the options and the errors."""

from __future__ import annotations

import io
import math
import pathlib

import pytest

import svmpmu
from svmpmu import EN, GUEST_ONLY, HOST_ONLY, INSTRUCTIONS_RETIRED, OS, USR, Op, Trace
from svmpmu.files import TraceFileError
from svmpmu.ftrace import DEFAULT_RATE, FtraceImport, read_ftrace

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "ftrace"
TRACE_CMD = FIXTURES / "trace-cmd-6.13.txt"
TRACEFS_OLD = FIXTURES / "tracefs-4.19.txt"
WRAPPED = FIXTURES / "tracefs-5.15-wrapped.txt"
MAIL = FIXTURES / "mail-quote-5.13.txt"

L2_EXIT = "kvm_nested_vmexit: an L2 exit that L0 handles (no mode change)"
GP = "kvm_msr: the access faulted (#GP)"


def ops(trace: Trace) -> list[str]:
    return [Op(o).name for o in trace.op.tolist()]


def records(trace: Trace, op: Op) -> list[tuple[int, int, int, int, int, int]]:
    return [r for r in trace.records() if r[0] == op]


# ---------------------------------------------------------------------------------------------
# The fixtures, record by record
# ---------------------------------------------------------------------------------------------


def test_trace_cmd_report_of_a_6_13_kernel():
    imported = read_ftrace(TRACE_CMD)
    assert sorted(imported.traces) == [0, 1]
    # vCPU 0: kvm_exit carries no vCPU in trace-cmd's format: its task's vCPU is used. The
    # first VMRUN shows that L1 had set EFER.SVME before the capture began.
    assert imported.start == {0: "svme", 1: "reset"}
    assert ops(imported.traces[0]) == [
        "WRMSR_EFER",  # inferred: the capture began with SVME set
        *["VMENTRY", "RUN", "WRMSR_EVTSEL"],
        *["VMENTRY", "RUN", "WRMSR_EVTSEL"],
        *["VMENTRY", "RUN", "WRMSR_GLOBAL_CTRL"],
        *["VMENTRY", "RUN", "VMRUN"],
        *["VMENTRY", "RUN"] * 3,  # L2 runs (L2's EFER write is skipped)
        "VMEXIT",
        *["VMENTRY", "RUN", "READ"] * 2,
        *["VMENTRY", "RUN"],  # the faulted selector write is skipped
        *["VMENTRY", "RUN", "VMRUN_FAIL"],  # kvm_nested_vmexit_inject: EXIT_ERR
        *["VMENTRY", "RUN"],
    ]
    assert ops(imported.traces[1]) == ["VMENTRY", "RUN", "VMENTRY", "RUN", "WRMSR_EVTSEL"]
    t0 = imported.traces[0]
    assert [r[5] for r in records(t0, Op.RUN)] == [
        *[10_000, 7_000, 4_000, 3_000],
        *[20_000, 30_000, 12_000],
        *[5_000, 2_000, 6_000, 3_000, 9_000],
    ]
    assert {r[2] for r in records(t0, Op.RUN)} == {3}
    assert {r[4] for r in records(t0, Op.RUN)} == {INSTRUCTIONS_RETIRED}
    g_only = EN | OS | USR | GUEST_ONLY | 0xC0
    h_only = EN | OS | USR | HOST_ONLY | 0xC0
    assert [(r[1], r[5]) for r in records(t0, Op.WRMSR_EVTSEL)] == [(0, g_only), (1, h_only)]
    assert [r[5] for r in records(t0, Op.WRMSR_GLOBAL_CTRL)] == [0x3]
    assert [r[1] for r in records(t0, Op.READ)] == [0, 1]
    assert [r[3] for r in records(t0, Op.WRMSR_EFER)] == [1]
    assert [r[2] for r in records(t0, Op.VMRUN)] == [0]
    assert imported.skipped == {
        L2_EXIT: 3,
        "kvm_fpu": 1,
        "kvm_inj_exception": 1,
        "kvm_msr: EFER write in guest mode (L2's EFER, not L1's)": 1,
        GP: 1,
        "kvm_nested_intercepts": 1,
        "kvm_page_fault": 1,
        "kvm_userspace_exit": 1,
        "kvm_vcpu_wakeup": 1,
        "sched_switch": 1,
    }
    assert imported.unparsed == []
    assert imported.lines == 51
    assert imported.mapped == {
        "WRMSR_EVTSEL": 3,
        "WRMSR_GLOBAL_CTRL": 1,
        "WRMSR_EFER": 1,
        "VMRUN": 1,
        "VMRUN_FAIL": 1,
        "VMEXIT": 1,
        "RUN": 14,
        "VMENTRY": 14,
        "READ": 2,
    }


def test_tracefs_of_a_4_19_kernel_assigns_kvm_msr_to_the_vcpu_of_its_task():
    imported = read_ftrace(TRACEFS_OLD)
    assert imported.start == {0: "reset", 1: "reset"}
    assert ops(imported.traces[0]) == [
        *["VMENTRY", "RUN", "WRMSR_EFER"],
        *["VMENTRY", "RUN", "WRMSR_EVTSEL"],
        *["VMENTRY", "RUN", "VMRUN"],
        *["VMENTRY", "RUN"] * 2,
        "VMEXIT",
        *["VMENTRY", "RUN", "READ"],
    ]
    # Task 2302 printed two kvm_msr lines before its first kvm_entry (vcpu 1): they wait for
    # it. The legacy MSRs: PerfEvtSel1 (0xc0010001) and PerfCtr1 (0xc0010005).
    t1 = imported.traces[1]
    assert ops(t1) == ["WRMSR_EVTSEL", "WRMSR_CTR", "VMENTRY", "RUN", "VMENTRY", "RUN", "READ"]
    assert [r[1] for r in t1.records() if r[0] in (Op.WRMSR_EVTSEL, Op.WRMSR_CTR, Op.READ)] == [
        1,
        1,
        1,
    ]
    assert [r[3] for r in records(imported.traces[0], Op.WRMSR_EFER)] == [1]
    assert [r[5] for r in records(imported.traces[0], Op.RUN)] == [
        *[16_000, 12_000, 4_000, 50_000, 26_000, 34_000],
    ]
    assert imported.skipped == {
        L2_EXIT: 2,
        "LOST EVENTS": 1,
        "kvm_fpu": 1,
        "kvm_nested_intercepts": 1,
        "kvm_page_fault": 1,
        "kvm_pio": 1,
        "kvm_userspace_exit": 1,
    }
    # A line cut short, garbage, and a kvm_msr without its value.
    assert [number for number, _ in imported.unparsed] == [32, 38, 44]
    assert imported.unparsed[1] == (38, "this line is not a trace event")


def test_wrapped_events_of_two_interleaved_vcpus():
    imported = read_ftrace(WRAPPED)
    assert ops(imported.traces[0]) == [
        *["VMENTRY", "RUN", "WRMSR_EFER"],
        *["VMENTRY", "RUN"],  # the selector write wrapped before its " (#GP)" faulted
        *["VMENTRY", "RUN"],
    ]
    assert ops(imported.traces[1]) == [
        *["VMENTRY", "RUN", "WRMSR_EFER"],
        *["VMENTRY", "RUN", "WRMSR_EVTSEL"],
        *["VMENTRY", "RUN", "VMRUN"],
        *["VMENTRY", "RUN", "VMEXIT"],
        *["VMENTRY", "RUN", "READ"],
    ]
    assert [r[1] for r in records(imported.traces[1], Op.READ)] == [2]  # 0xc0010205
    assert [r[5] for r in records(imported.traces[1], Op.RUN)] == [5000, 8000, 3000, 40000, 2000]
    assert imported.skipped == {"kvm_halt_poll_ns": 1, GP: 1, L2_EXIT: 1}
    assert imported.unparsed == []
    assert imported.lines == 60


def test_events_without_prefix_or_timestamps():
    imported = read_ftrace(MAIL)
    assert ops(imported.traces[0]) == [
        *["VMENTRY", "WRMSR_EFER", "VMENTRY", "WRMSR_EVTSEL", "VMENTRY", "VMRUN"],
        *["VMENTRY", "VMEXIT", "VMENTRY", "READ"],
    ]
    assert imported.skipped == {
        "kvm_exit: no timestamp (the run's length is unknown)": 5,
        "kvm_nested_intercepts": 1,
        L2_EXIT: 1,
        "kvm_page_fault": 1,
    }
    assert "RUN" not in imported.mapped


@pytest.mark.parametrize("path", [TRACE_CMD, TRACEFS_OLD, WRAPPED, MAIL], ids=lambda p: p.stem)
@pytest.mark.parametrize("infer_start", [True, False])
def test_every_imported_trace_is_valid(path, infer_start):
    imported = read_ftrace(path, infer_start=infer_start)
    for trace in imported.traces.values():
        svmpmu.validate(trace)
        assert not svmpmu.compare(trace, "arch").diverges
    assert sum(imported.mapped.values()) == sum(len(t) for t in imported.traces.values())


# ---------------------------------------------------------------------------------------------
# Golden replay
# ---------------------------------------------------------------------------------------------


def test_golden_replay_of_the_trace_cmd_fixture():
    # PMC 0 counts Guest-Only, PMC 1 Host-Only. The reference: L2's runs and the VMRUN (at
    # L2's CPL) count on PMC 0; L1's runs after the enabling write, the PerfCntGlobalCtl
    # write and the failed VMRUN on PMC 1.
    trace = read_ftrace(TRACE_CMD).traces[0]
    arch = svmpmu.simulate(trace, "arch")
    assert arch.counters[:2].tolist() == [62_001, 32_002]
    assert arch.reads.tolist() == [62_001, 14_001]
    final = svmpmu.simulate(trace, "final")
    assert final.counters[:2].tolist() == [62_001, 32_003]
    assert final.reads.tolist() == [62_001, 14_002]
    # final counts the WRMSR that enables the Host-Only counter (eventsel_hw is set at once);
    # v4 also miscounts around the VMRUN.
    comparison = svmpmu.compare(trace, "final")
    assert (comparison.diverges, comparison.first_divergence) == (True, 6)
    v4 = svmpmu.compare(trace, "v4")
    assert (v4.diverges, v4.first_divergence) == (True, 3)
    assert v4.policy.counters[:2].tolist() == [62_005, 32_004]


# ---------------------------------------------------------------------------------------------
# Sources and options
# ---------------------------------------------------------------------------------------------


def _same(a: FtraceImport, b: FtraceImport) -> bool:
    return a.traces == b.traces and (a.skipped, a.unparsed, a.mapped, a.start) == (
        b.skipped,
        b.unparsed,
        b.mapped,
        b.start,
    )


def test_every_kind_of_source_reads_the_same():
    reference = read_ftrace(TRACEFS_OLD)
    data = TRACEFS_OLD.read_bytes()
    text = data.decode()
    for source in [
        str(TRACEFS_OLD),
        data,
        bytearray(data),
        io.BytesIO(data),
        io.StringIO(text),
        text,
        text.splitlines(),
        text.splitlines(keepends=True),
        [line.encode() for line in text.splitlines()],
        (line for line in text.splitlines()),
    ]:
        assert _same(read_ftrace(source), reference), type(source)
    with TRACEFS_OLD.open() as f:
        assert _same(read_ftrace(f), reference)


def test_options():
    base = read_ftrace(TRACE_CMD)
    runs = [r[5] for r in records(base.traces[0], Op.RUN)]
    half = read_ftrace(TRACE_CMD, rate=0.5)
    # n = guest nanoseconds * rate / 1000, rounded half away from zero.
    assert [r[5] for r in records(half.traces[0], Op.RUN)] == [
        math.floor(n / 2000 + 0.5) for n in runs
    ]
    assert half.rate == 0.5
    assert base.rate == DEFAULT_RATE
    # A rate so low that runs are shorter than one event: they are skipped.
    slow = read_ftrace(TRACE_CMD, rate=0.01)
    assert slow.skipped["kvm_exit: a run too short for one event"] == base.mapped["RUN"] == 14
    other = read_ftrace(TRACE_CMD, event=0xC2, run_cpl=0, vmrun_cpl=3)
    assert {(r[2], r[4]) for r in records(other.traces[0], Op.RUN)} == {(0, 0xC2)}
    assert [r[2] for r in records(other.traces[0], Op.VMRUN)] == [3]
    no_reads = read_ftrace(TRACE_CMD, reads=False)
    assert "READ" not in no_reads.mapped
    assert no_reads.skipped["kvm_msr: a counter read (reads=False)"] == 2
    # Without inference, vCPU 0 starts from reset: its VMRUNs have SVME = 0 and are skipped.
    reset = read_ftrace(TRACE_CMD, infer_start=False)
    assert reset.start == {0: "reset", 1: "reset"}
    assert "VMRUN" not in reset.mapped
    assert reset.skipped["kvm_nested_vmenter: VMRUN with EFER.SVME = 0 (#UD)"] == 2
    assert reset.skipped["kvm_nested_vmexit_inject: in host mode (events lost?)"] == 2


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"rate": 0}, ValueError),
        ({"rate": -1.0}, ValueError),
        ({"rate": float("nan")}, ValueError),
        ({"rate": float("inf")}, ValueError),
        ({"rate": "1"}, TypeError),
        ({"rate": True}, TypeError),
        ({"event": 1 << 20}, ValueError),
        ({"event": -1}, ValueError),
        ({"event": 1.0}, TypeError),
        ({"run_cpl": 4}, ValueError),
        ({"vmrun_cpl": -1}, ValueError),
        ({"run_cpl": True}, TypeError),
    ],
)
def test_bad_options(options, error):
    with pytest.raises(error):
        read_ftrace(MAIL, **options)


# ---------------------------------------------------------------------------------------------
# Errors and the summary
# ---------------------------------------------------------------------------------------------


def test_a_trace_cmd_binary_file_asks_for_trace_cmd_report(tmp_path):
    path = tmp_path / "trace.dat"
    path.write_bytes(b"\x17\x08\x44tracing6\x00\x00\x00\x00\x00\x00")
    with pytest.raises(TraceFileError, match=r"trace-cmd report") as info:
        read_ftrace(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_a_binary_file_is_refused():
    with pytest.raises(TraceFileError, match="binary"):
        read_ftrace(b"kvm_entry: vcpu 0\n\x00\x01")


@pytest.mark.parametrize(
    "text", ["", "# tracer: nop\n#\n", "  bash-1 [000] .... 1.0: sched_switch: a ==> b\n"]
)
def test_a_file_without_kvm_events_is_refused(text):
    with pytest.raises(TraceFileError, match=r"no KVM trace event"):
        read_ftrace(text.encode())


def test_a_source_of_another_type_is_refused():
    with pytest.raises(TypeError, match="read_ftrace reads"):
        read_ftrace(42)  # type: ignore[arg-type]


def test_malformed_lines_are_data():
    lines = [
        "kvm_entry: vcpu 0",
        "kvm_entry: vcpu zero",
        "kvm_msr: msr_write 12345678901234567890 = 0x1",
        "kvm_nested_vmexit_inject: ext_inf1: 0x0 (no reason)",
        "\udcff\udcfe garbage",
        "kvm_exit: reason hlt",
    ]
    imported = read_ftrace(lines)
    assert ops(imported.traces[0]) == ["VMENTRY"]
    assert [number for number, _ in imported.unparsed] == [2, 3, 4, 5]


def test_format_summarises_the_import():
    text = read_ftrace(TRACEFS_OLD).format()
    assert text.startswith("46 lines, 2 vCPU(s)")
    assert "vCPU 1: 7 records (from the reset state)" in text
    assert "RUN 8" in text
    assert "estimate 1000 events per microsecond" in text
    assert "line 38: this line is not a trace event" in text
    assert "... 4 more kinds" in read_ftrace(TRACE_CMD).format(limit=6)
    assert "L1 had EFER.SVME set" in read_ftrace(TRACE_CMD).format()


def test_read_trace_and_the_import_command(tmp_path):
    assert svmpmu.read_trace(MAIL) == read_ftrace(MAIL).traces[0]
    one = svmpmu.read_trace(TRACE_CMD, vcpu=1, rate=2.0)
    assert one == read_ftrace(TRACE_CMD, rate=2.0).traces[1]
    with pytest.raises(svmpmu.TraceFileError, match="2 vCPUs"):
        svmpmu.read_trace(TRACE_CMD)
    from svmpmu.cli import main

    out = tmp_path / "out.npz"
    assert main(["import", str(WRAPPED), "-o", str(out)]) == 0
    imported = read_ftrace(WRAPPED)
    for vcpu in (0, 1):
        assert Trace.load(tmp_path / f"out.vcpu{vcpu}.npz") == imported.traces[vcpu]
