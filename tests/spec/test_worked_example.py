"""Spec section 9: the worked example (the seed's VMRUN case), unchanged by revision 2.

From reset, in L1 at CPL 0: WRMSR_EVTSEL(0, instructions retired | OS | USR | EN | G);
WRMSR_EFER(svme = 1); VMENTRY; VMRUN; RUN(1000 instructions retired, CPL 3); VMEXIT; READ(0).
The section does not say at which CPL L2 resumes (the VMRUN record's ``cpl``, §4 since revision
2); the selector has both OS and USR, so every expectation holds for CPL 0 and for CPL 3.
"""

from __future__ import annotations

import pytest
from spec_helpers import IR, ints, with_knobs

from svmpmu import TraceBuilder, eventsel


def worked_example(vmrun_cpl: int = 0):
    return (
        TraceBuilder()
        .wrmsr_evtsel(0, eventsel(IR, guest_only=True))
        .wrmsr_efer(1)
        .vmentry()
        .vmrun(cpl=vmrun_cpl)
        .run(1000, IR, cpl=3)
        .vmexit()
        .read(0)
        .build()
    )


@pytest.mark.parametrize("vmrun_cpl", [0, 3])
@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # arch: enabling WRMSR -> old selector (0); WRMSR_EFER -> svme=1 host (G: no);
        # VMRUN -> guest at the record's CPL (OS and USR: 1); RUN 1000.
        ("arch", 1001),
        # final: emul_ok recomputed at svme=0 (off); EFER sync to host (G: no); VMRUN retired
        # after entry with a sync re-evaluation, at L2's CPL (1); RUN 1000.
        ("final", 1001),
        # vmrun_order=before_entry: VMRUN retires in host mode at CPL 0, where G does not count.
        (with_knobs("final", vmrun_order="before_entry"), 1000),
        # v4: emul_ok follows EN only: WRMSR_EVTSEL, WRMSR_EFER and VMRUN count (3); RUN 1000.
        ("v4", 1003),
    ],
    ids=["arch", "final", "final-before_entry", "v4"],
)
def test_worked_example(impl, policy, expected, vmrun_cpl):
    result = impl(worked_example(vmrun_cpl), policy, n_pmcs=6)
    assert ints(result.reads) == [expected]
    assert ints(result.counters) == [expected, 0, 0, 0, 0, 0]
    assert ints(result.overflows) == [0] * 6
    assert ints(result.pmis) == [0] * 6


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # arch with vmrun_retire=host: VMRUN is a host instruction, G does not count (section 5).
        (with_knobs("arch", vmrun_retire="host"), 1000),
        # A policy with model="arch" ignores the KVM knobs (semantics, "Which knobs apply").
        (
            with_knobs(
                "arch",
                svme0="ignore",
                emul_mode_aware=False,
                vmrun_order="before_entry",
                efer_timing="none",
                vmrun_timing="none",
            ),
            1001,
        ),
        # A KVM policy ignores the four reference knobs.
        (
            with_knobs(
                "final",
                enabling_wrmsr="new",
                efer_retire="old",
                vmrun_retire="host",
                failed_vmrun_retire="guest",
            ),
            1001,
        ),
        (with_knobs("v4", enabling_wrmsr="new", efer_retire="old", vmrun_retire="host"), 1003),
    ],
    ids=[
        "arch-vmrun_retire_host",
        "arch-ignores-kvm-knobs",
        "final-ignores-ref-knobs",
        "v4-ignores-ref-knobs",
    ],
)
def test_worked_example_knob_scope(impl, policy, expected):
    assert ints(impl(worked_example(), policy, n_pmcs=6).reads) == [expected]


@pytest.mark.parametrize(
    ("policy", "hw"),
    [
        # arch programs the ideal value after every record: on exactly in guest mode.
        ("arch", [0, 0, 0, 1, 1, 0, 0]),
        # final: the selector write programs eventsel_hw at once with EN as written (§10 change
        # 5): on; the EFER sync re-evaluates PMC0 (G) for svme=1 host: off; the VMENTRY keeps it
        # off (pending serviced); VMRUN's sync: on; RUN: on; VMEXIT's sync: off.
        ("final", [1, 0, 0, 1, 1, 0, 0]),
        # v4: on at the write; EFER deferred (PMC0 already pending): still on; the VMENTRY
        # re-evaluates it in host mode: off; VMRUN deferred: off; the RUN's entry: on; VMEXIT
        # deferred: stays on to the end.
        ("v4", [1, 1, 0, 0, 1, 1, 1]),
    ],
)
def test_worked_example_timeline(impl, policy, hw):
    result = impl(worked_example(), policy, timeline=True)
    assert ints(result.hw_enabled) == hw
    assert ints(result.svme) == [0, 1, 1, 1, 1, 1, 1]
    assert ints(result.guest_mode) == [0, 0, 0, 1, 1, 0, 0]
