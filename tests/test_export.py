"""Exports of a trace (docs/selftest-export.md): the KVM selftest (golden files, gcc), the
TraceBuilder code (round trips), the files, and every refusal.

The golden files are tests/fixtures/export/*.c, with the svmpmu version written as @VERSION@.
After a deliberate change of the generated C, rewrite them and review the diff:

    SVMPMU_REGEN_GOLDEN=1 python -m pytest tests/test_export.py
"""

from __future__ import annotations

import doctest
import os
import pathlib
import pickle
import re
import shutil
import subprocess

import numpy as np
import pytest

import svmpmu
import svmpmu.export
from svmpmu import EN, GUEST_ONLY, INSTRUCTIONS_RETIRED, OS, USR, Op, Trace, TraceBuilder, eventsel
from svmpmu.export import (
    LOOP_MAX,
    ExportError,
    selftest_trace,
    to_builder_code,
    to_selftest,
    write_export,
)

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "export"
HEADER = FIXTURES / "kvm_selftest.h"
LIBRARY_HEADERS = ("test_util.h", "kvm_util.h", "processor.h", "svm_util.h", "pmu.h")
REGEN = os.environ.get("SVMPMU_REGEN_GOLDEN") == "1"

G_COUNTER = eventsel(INSTRUCTIONS_RETIRED, guest_only=True)


def seed_vmrun_case() -> Trace:
    """Case 1 of the seed-thread scenario: the records before its first RESET."""
    seed = svmpmu.scenario("seed-thread")
    return seed[: seed.op.tolist().index(Op.RESET)]


GOLDEN = {
    "worked_example.c": lambda: to_selftest(
        svmpmu.scenario("worked-example"),
        name="svmpmu_worked_example",
        source="the scenario worked-example",
    ),
    "seed_vmrun.c": lambda: to_selftest(
        seed_vmrun_case(),
        name="svmpmu_seed_vmrun",
        source="the scenario seed-thread, case 1",
    ),
}


def versionless(text: str) -> str:
    return text.replace(f"svmpmu {svmpmu.__version__} ", "svmpmu @VERSION@ ")


# ---------------------------------------------------------------------------------------------
# Golden files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GOLDEN)
def test_the_selftest_matches_its_golden_file(name):
    text = versionless(GOLDEN[name]())
    path = FIXTURES / name
    if REGEN:
        path.write_text(text)
    assert path.read_text() == text, f"{name} changed: SVMPMU_REGEN_GOLDEN=1 rewrites it"


def test_the_worked_example_asserts_arch_counts_of_what_the_test_runs():
    text = GOLDEN["worked_example.c"]()
    # 1001 as written; the test adds two MOVs in L2 (before VMMCALL), which G counts.
    assert "GUEST_ASSERT_EQ(reads[0], 1003);" in text
    assert "reads[0] (record 6, PMC 0): 1001 / 1003" in text
    assert f"svmpmu {svmpmu.__version__} (svmpmu export-selftest)" in text
    assert "Presets that predict the same values: final." in text
    assert "GUEST_ASSERT_EQ(exit_codes[0], (uint32_t)(SVM_EXIT_VMMCALL));" in text


def test_the_header_lists_the_presets_that_differ():
    text = to_selftest(seed_vmrun_case(), model="final")
    assert "against the count of the svmpmu model `final`" in text
    assert "Presets that predict the same values: arch." in text
    v4 = svmpmu.simulate(selftest_trace(seed_vmrun_case()), "v4").reads
    assert f" *   v4: [0] {v4[0]}, [1] {v4[1]}" in text


# ---------------------------------------------------------------------------------------------
# gcc
# ---------------------------------------------------------------------------------------------

MIXED = """
WRMSR_GLOBAL_CTRL value=0xff                    # masked to the 6 PMCs
WRMSR_EVTSEL pmc=0 value=EN|OS|USR|G|event=0xc0
WRMSR_EVTSEL pmc=1 value=EN|USR|event=0xc0
WRMSR_EVTSEL pmc=5 value=EN|OS|H|event=0xc0
WRMSR_CTR pmc=5 value=0x1_ffff_ffff_fff0         # masked to 48 bits
WRMSR_EFER svme=1
EMULATE cpl=0
EMULATE branch=1 cpl=0
VMRUN_FAIL
VMRUN cpl=3
VMENTRY
VMEXIT
SET_FILTER action=allow event=0xc0
VMRUN cpl=0
READ pmc=0
EMULATE cpl=0
SET_FILTER action=none
RUN n=1 event=0xc0 cpl=0
RUN n=0 event=0xc2 cpl=3
VMEXIT
FORCED_LEAVE
SET_NESTED_STATE guest_mode=0
SET_FILTER action=deny event=0x1c2
READ pmc=1
READ pmc=5
VMRUN cpl=0
"""


def exported_tests():
    """Selftests covering every op the export emits (the golden ones, the kernel's selftest
    scenario with its filters, and MIXED)."""
    yield from ((name, make()) for name, make in GOLDEN.items())
    yield "kvm_selftest.c", to_selftest(svmpmu.scenario("kvm-selftest"), name="kvm_selftest")
    yield "mixed.c", to_selftest(svmpmu.read_text(MIXED), name="mixed", model="v4")


@pytest.fixture(scope="module")
def gcc(tmp_path_factory):
    """A compile function: gcc with the selftest library's headers replaced by HEADER."""
    compiler = shutil.which("gcc")
    if compiler is None:
        pytest.skip("gcc is not installed")
    include = tmp_path_factory.mktemp("include")
    for name in LIBRARY_HEADERS:
        (include / name).write_text(f'#include "{HEADER.name}"\n')

    def compile_c(path, *flags):
        command = [
            compiler,
            "-std=gnu99",
            "-Wall",
            "-Wstrict-prototypes",
            "-Werror",
            f"-I{include}",
            f"-I{HEADER.parent}",
            *flags,
            str(path),
        ]
        return subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603 (gcc on files this test wrote)

    return compile_c


def test_every_exported_test_passes_gcc_syntax_only(gcc, tmp_path):
    for name, text in exported_tests():
        path = tmp_path / name
        path.write_text(text)
        result = gcc(path, "-fsyntax-only")
        assert result.returncode == 0, f"{name}:\n{result.stderr}"


def test_every_exported_test_assembles(gcc, tmp_path):
    # -fsyntax-only does not look into the asm; assembling does (mnemonics, operands, labels).
    if shutil.which("as") is None:
        pytest.skip("no assembler")
    for name, text in exported_tests():
        path = tmp_path / name
        path.write_text(text)
        result = gcc(path, "-O2", "-fno-PIE", "-c", "-o", str(tmp_path / "out.o"))
        assert result.returncode == 0, f"{name}:\n{result.stderr}"


# ---------------------------------------------------------------------------------------------
# What the test executes
# ---------------------------------------------------------------------------------------------


def run(n):
    return (int(Op.RUN), 0, 0, 0, INSTRUCTIONS_RETIRED, n)


def rec(op, pmc=0, cpl=0, flag=0, key=0, value=0):
    return (int(op), pmc, cpl, flag, key, value)


VMENTRY = rec(Op.VMENTRY)


def test_the_executed_trace_adds_the_tests_own_instructions():
    trace = (
        TraceBuilder()
        .wrmsr_evtsel(0, G_COUNTER)
        .wrmsr_efer(1)
        .vmentry()
        .vmrun()
        .run(1000, cpl=3)
        .emulate(cpl=3, branch=True)
        .vmexit()
        .vmrun_fail()
        .set_filter("deny", INSTRUCTIONS_RETIRED)
        .read(0)
        .build()
    )
    assert list(selftest_trace(trace).records()) == [
        run(3), rec(Op.WRMSR_EVTSEL, value=G_COUNTER), VMENTRY,
        run(3), rec(Op.WRMSR_EFER, flag=1), VMENTRY,
        # VMENTRY: nothing
        run(4), rec(Op.VMRUN), VMENTRY,
        run(1000),                                  # at CPL 0: OS = USR on PMC 0
        rec(Op.EMULATE, flag=1), VMENTRY,           # at CPL 0 too
        run(2), rec(Op.VMEXIT), VMENTRY, run(3),
        run(2), rec(Op.VMRUN_FAIL), VMENTRY, run(3),
        run(2), rec(Op.SET_FILTER, flag=2, key=INSTRUCTIONS_RETIRED),
        rec(Op.EMULATE), VMENTRY,                   # the OUT, retired after the step
        run(1), rec(Op.READ), run(3),
    ]  # fmt: skip


def test_a_user_l2_faults_at_once_and_a_trace_ending_in_l2_leaves_it():
    trace = TraceBuilder().wrmsr_efer(1).vmrun(cpl=3).vmexit().vmrun().build()
    assert list(selftest_trace(trace).records())[3:] == [
        run(4), rec(Op.VMRUN, cpl=3), VMENTRY, rec(Op.VMEXIT), VMENTRY, run(3),
        run(4), rec(Op.VMRUN), VMENTRY, run(2), rec(Op.VMEXIT), VMENTRY, run(3),
    ]  # fmt: skip


def test_the_asserted_values_are_the_models_reads_of_the_executed_trace():
    for name, policy in [("worked-example", "arch"), ("kvm-selftest", "final")]:
        trace = svmpmu.scenario(name)
        text = to_selftest(trace, model=policy)
        reads = svmpmu.simulate(selftest_trace(trace), policy).reads
        asserted = [int(v) for v in re.findall(r"GUEST_ASSERT_EQ\(reads\[\d+\], (\d+)\);", text)]
        assert asserted == [int(v) for v in reads]
        assert len(asserted) == int(np.count_nonzero(trace.op == Op.READ))


def test_a_custom_policy_is_named_and_compared():
    policy = svmpmu.Policy.preset("final")
    import dataclasses

    before = dataclasses.replace(policy, vmrun_order="before_entry")
    text = to_selftest(seed_vmrun_case(), model=before)
    assert "`custom(vmrun_order=before_entry)`" in text
    assert '"custom(vmrun_order=before_entry)"' in text
    # the bug of the seed thread: VMRUN retired before entering L2 is not counted by G
    assert "Presets that predict the same values: none." in text


def test_long_runs_are_loops_and_small_ones_nops():
    trace = TraceBuilder().run(1, cpl=0).run(2, cpl=0).run(LOOP_MAX, cpl=0).read(0).build()
    text = to_selftest(trace)
    assert '/* 1 instruction */\n\t\t"nop\\n\\t"' in text
    assert "1 MOV and 1 LOOP */\n\t\tLOOP_INSNS(1)" in text
    assert f"LOOP_INSNS({LOOP_MAX - 1})" in text


# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------


def refused(trace, index, op, match):
    with pytest.raises(ExportError, match=match) as info:
        to_selftest(trace)
    assert (info.value.index, info.value.op) == (index, op)
    assert str(info.value).startswith(f"cannot export record {index} ({op}) as a KVM selftest")
    with pytest.raises(ExportError):
        selftest_trace(trace)
    return info.value


def test_reset_is_refused_except_at_the_start():
    refused(svmpmu.scenario("seed-thread"), 7, "RESET", "no faithful selftest step")
    to_selftest(TraceBuilder().reset().reset().read(0).build())


def test_nested_state_changes_are_refused():
    guest = TraceBuilder().wrmsr_efer(1).vmrun()
    refused(guest.forced_leave().read(0).build(), 2, "FORCED_LEAVE", "KVM_SET_NESTED_STATE")
    guest = TraceBuilder().wrmsr_efer(1).vmrun()
    refused(guest.set_nested_state(0).read(0).build(), 2, "SET_NESTED_STATE", "userspace")
    host = TraceBuilder().wrmsr_efer(1).set_nested_state(1).read(0).build()
    refused(host, 1, "SET_NESTED_STATE", "vmcb01")
    # in host mode, leaving changes nothing: nothing to emit
    to_selftest(TraceBuilder().forced_leave().set_nested_state(0).read(0).build())


def test_runs_of_other_events_and_huge_runs_are_refused():
    refused(TraceBuilder().run(5, event=0xC2).read(0).build(), 0, "RUN", "event 0x0c2")
    refused(TraceBuilder().run(LOOP_MAX + 1, cpl=0).read(0).build(), 0, "RUN", "at most 2")
    to_selftest(TraceBuilder().run(0, event=0xC2).read(0).build())


@pytest.mark.parametrize("bits", [USR, OS])
def test_a_user_run_or_emulate_is_refused_where_a_counter_tells_the_cpls_apart(bits):
    sel = eventsel(INSTRUCTIONS_RETIRED, usr=bool(bits & USR), os=bool(bits & OS))
    base = TraceBuilder().wrmsr_evtsel(2, sel)
    refused(base.run(10, cpl=3).read(2).build(), 1, "RUN", "PMC 2 counts only at CPL")
    base = TraceBuilder().wrmsr_evtsel(2, sel)
    refused(base.emulate(cpl=3).read(2).build(), 1, "EMULATE", "would differ")
    # at CPL 0 there is nothing to substitute
    to_selftest(TraceBuilder().wrmsr_evtsel(2, sel).run(10, cpl=0).emulate().read(2).build())


def test_a_user_emulated_branch_is_refused_on_a_branch_counter():
    sel = eventsel(svmpmu.BRANCHES_RETIRED, os=False)
    trace = TraceBuilder().wrmsr_evtsel(1, sel).emulate(cpl=3, branch=True).read(0).build()
    refused(trace, 1, "EMULATE", "PMC 1")
    to_selftest(TraceBuilder().wrmsr_evtsel(1, sel).emulate(cpl=3).read(0).build())


@pytest.mark.parametrize(
    ("op", "add"),
    [
        ("WRMSR_EVTSEL", lambda b: b.wrmsr_evtsel(0, 0)),
        ("WRMSR_CTR", lambda b: b.wrmsr_ctr(0, 0)),
        ("WRMSR_GLOBAL_CTRL", lambda b: b.wrmsr_global_ctrl(1)),
        ("READ", lambda b: b.read(0)),
        ("RUN", lambda b: b.run(1)),
        ("EMULATE", lambda b: b.emulate(cpl=3)),
        ("SET_FILTER", lambda b: b.set_filter("none")),
    ],
)
def test_nothing_runs_in_an_l2_at_cpl_3(op, add):
    trace = add(TraceBuilder().wrmsr_efer(1).vmrun(cpl=3)).vmexit().read(0).build()
    refused(trace, 2, op, "supervisor-only")


def test_a_trace_may_end_in_a_user_l2():
    text = to_selftest(TraceBuilder().read(0).wrmsr_efer(1).vmrun(cpl=3).vmentry().build())
    assert "GUEST_ASSERT_EQ(exit_codes[0], (uint32_t)(SVM_EXIT_EXCP_BASE + PF_VECTOR));" in text
    assert "intercept_exceptions |= 1U << PF_VECTOR;" in text


def test_a_read_of_a_counter_of_unpredictable_events_is_refused():
    cycles = eventsel(0x076)
    trace = TraceBuilder().wrmsr_evtsel(3, cycles).wrmsr_evtsel(3, G_COUNTER).read(3).build()
    refused(trace, 2, "READ", "PMC 3 has counted")
    edge = G_COUNTER | 1 << 18
    refused(TraceBuilder().wrmsr_evtsel(3, edge).read(3).build(), 1, "READ", "EDGE")
    # writing the counter under a predictable selector makes it known again
    known = TraceBuilder().wrmsr_evtsel(3, cycles).wrmsr_evtsel(3, G_COUNTER).wrmsr_ctr(3, 5)
    to_selftest(known.read(3).build())
    # a disabled selector counts nothing, whatever its event
    to_selftest(TraceBuilder().wrmsr_evtsel(3, eventsel(0x076, enable=False)).read(3).build())
    # another counter is not affected
    to_selftest(TraceBuilder().wrmsr_evtsel(3, cycles).read(2).build())


def test_a_trace_without_reads_is_refused():
    with pytest.raises(ExportError, match="no READ record") as info:
        to_selftest(TraceBuilder().wrmsr_efer(1).build())
    assert (info.value.index, info.value.op) == (None, None)
    assert str(info.value).startswith("cannot export the trace as a KVM selftest")


def test_bad_arguments():
    with pytest.raises(svmpmu.TraceError, match="VMEXIT in host mode"):
        to_selftest(TraceBuilder().vmexit().read(0).build())
    with pytest.raises(svmpmu.TraceError):
        to_selftest(TraceBuilder().read(5).build(), n_pmcs=4)
    with pytest.raises(ValueError, match="C identifier"):
        to_selftest(svmpmu.scenario("worked-example"), name="my-test")
    with pytest.raises(svmpmu.PolicyError):
        to_selftest(svmpmu.scenario("worked-example"), model="nope")
    with pytest.raises(TypeError):
        to_selftest("worked-example")
    with pytest.raises(TypeError):
        to_builder_code(None)


def test_export_errors_pickle():
    error = ExportError(3, "RUN", "why")
    again = pickle.loads(pickle.dumps(error))  # noqa: S301 (our own bytes)
    assert (again.index, again.op, again.reason, str(again)) == (3, "RUN", "why", str(error))
    assert isinstance(error, ValueError)


# ---------------------------------------------------------------------------------------------
# TraceBuilder code
# ---------------------------------------------------------------------------------------------


def rebuilt(code):
    namespace = {}
    exec(compile(code, "<builder code>", "exec"), namespace)  # noqa: S102 (the point of the test)
    return namespace["trace"]


def test_generated_traces_round_trip_as_builder_code():
    batch = svmpmu.generate(20, 200, seed=1)
    for trace in batch:
        code = to_builder_code(trace)
        assert ".extend(" not in code  # every generated record is a builder call
        assert rebuilt(code) == trace


def test_builder_code_reads_like_the_readme():
    code = to_builder_code(svmpmu.scenario("worked-example"))
    assert code == (
        "from svmpmu import INSTRUCTIONS_RETIRED, TraceBuilder, eventsel\n"
        "\n"
        "trace = (\n"
        "    TraceBuilder()\n"
        "    .wrmsr_evtsel(0, eventsel(INSTRUCTIONS_RETIRED, guest_only=True))\n"
        "    .wrmsr_efer(1)\n"
        "    .vmentry()\n"
        "    .vmrun()\n"
        "    .run(1000, cpl=3)\n"
        "    .vmexit()\n"
        "    .read(0)\n"
        "    .build()\n"
        ")\n"
    )


def test_builder_code_of_odd_records_and_values():
    trace = Trace(
        np.array([0, 0, 200, 9, 11, 6, 9, 0, 10, 3, 9], dtype=np.uint8),
        pmc=[1, 2, 2, 0, 0, 3, 0, 0, 0, 0, 0],
        cpl=[0, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0],
        flag=[0, 0, 0, 7, 0, 0, 2, 0, 2, 5, 0],
        key=[0, 0, 0, 5, 0x12C0, 0, 0x112C2, 0, 0, 0, 0x0C0],
        value=np.array(
            [
                0x3F00_0001_FF00_C2,
                EN | OS | GUEST_ONLY | 1 << 19,
                0,
                0,
                2**64 - 1,
                0,
                0,
                0xFF_0000_0000,
                0,
                0,
                0,
            ],
            dtype=np.uint64,
        ),
    )
    code = to_builder_code(trace)
    assert "eventsel(BRANCHES_RETIRED, interrupt=True) | 0x3f000001ac0000" in code
    assert "EN | OS | GUEST_ONLY | 0x80000" in code
    assert ".extend(Trace([200], pmc=[0x2]))" in code
    assert ".extend(Trace([9], flag=[0x7], key=[0x5]))" in code  # no such filter action
    assert "event_key(0x2c0, 0x01)" in code
    assert ".emulate(cpl=3, branch=2)" in code
    assert ".wrmsr_efer(5)" in code
    assert '.set_filter("none", INSTRUCTIONS_RETIRED)' in code
    assert rebuilt(code) == trace


def test_long_traces_are_built_statement_by_statement():
    trace = svmpmu.generate(1, 500, seed=3).trace(0)
    code = to_builder_code(trace)
    assert code.count("\nbuilder.") == 500
    assert rebuilt(code) == trace
    assert rebuilt(to_builder_code(Trace([]))) == Trace([])


def test_the_docstring_examples_run():
    result = doctest.testmod(svmpmu.export, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def test_write_export_writes_each_format(tmp_path):
    trace = svmpmu.scenario("worked-example")
    write_export(trace, tmp_path / "t.c", name="t", source="worked-example")
    assert (tmp_path / "t.c").read_text() == to_selftest(trace, name="t", source="worked-example")
    write_export(trace, tmp_path / "t.py", format="python")
    assert rebuilt((tmp_path / "t.py").read_text()) == trace
    write_export(trace, tmp_path / "t.txt", format="text")
    assert svmpmu.read_text(tmp_path / "t.txt") == trace
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.c", "t.py", "t.txt"]


def test_a_refused_export_writes_nothing(tmp_path):
    path = tmp_path / "t.c"
    with pytest.raises(ExportError):
        write_export(svmpmu.scenario("seed-thread"), path)
    assert list(tmp_path.iterdir()) == []
    path.write_text("old")
    with pytest.raises(ExportError):
        write_export(svmpmu.scenario("seed-thread"), path)
    assert path.read_text() == "old"
    assert list(tmp_path.iterdir()) == [path]


def test_write_export_checks_its_options(tmp_path):
    trace = svmpmu.scenario("worked-example")
    with pytest.raises(TypeError, match="takes no options"):
        write_export(trace, tmp_path / "t.py", format="python", name="x")
    with pytest.raises(ValueError, match="format must be"):
        write_export(trace, tmp_path / "t.x", format="perfetto")
    with pytest.raises(TypeError):
        write_export(trace, tmp_path / "t.c", nope=1)
    assert list(tmp_path.iterdir()) == []
