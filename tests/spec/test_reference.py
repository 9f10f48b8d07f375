"""Spec section 5: the architectural reference, its attribution knobs, and counter arithmetic.

KVM policies appear where a test contrasts them with the reference on the same trace (the
reference knobs are ignored by a KVM policy: semantics, "Which knobs apply").
"""

from __future__ import annotations

import pytest
from spec_helpers import (
    IR,
    M48,
    MODE_TABLE,
    G,
    H,
    S,
    ints,
    mode_table_deltas,
    with_knobs,
)

from svmpmu import BRANCHES_RETIRED, EN, INT, TraceBuilder, eventsel


@pytest.mark.parametrize("emulate", [False, True], ids=["run", "emulate"])
def test_mode_table(impl, emulate):
    # Rule 4 (APM Table 13-4 with SVME = 0 off), for a RUN and for an emulated instruction.
    got, want = mode_table_deltas(impl, "arch", MODE_TABLE, emulate)
    assert got == want


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # enabling_wrmsr=old: the enabling WRMSR sees EN=0 (not counted), the disabling one
        # sees EN=1 (counted).
        ("arch", [0, 1]),
        # new: the enabling WRMSR counts, the disabling one does not.
        (with_knobs("arch", enabling_wrmsr="new"), [1, 1]),
        # KVM: WRMSR_EVTSEL recomputes emul_ok at once, then retires: counts the enabling write,
        # not the disabling one; enabling_wrmsr is a reference knob, ignored here.
        ("final", [1, 1]),
        (with_knobs("final", enabling_wrmsr="old"), [1, 1]),
    ],
    ids=["arch-old", "arch-new", "final", "final-old-ignored"],
)
def test_enabling_wrmsr(impl, policy, expected):
    trace = TraceBuilder().wrmsr_evtsel(0, S).read(0).wrmsr_evtsel(0, S & ~EN).read(0).build()
    assert ints(impl(trace, policy).reads) == expected


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # PMC0 = H. efer_retire=new: EFER(1) counts (svme=1 host), EFER(0) does not (svme=0).
        ("arch", [1, 1]),
        # old: EFER(1) attributed to svme=0 (no), EFER(0) to svme=1 host (yes).
        (with_knobs("arch", efer_retire="old"), [0, 1]),
        # final: EFER sync, so emul_ok is the new state's when the WRMSR retires.
        ("final", [1, 1]),
        # deferred: emul_ok stays the old one (false since the selector write at svme=0).
        (with_knobs("final", efer_timing="deferred"), [0, 0]),
    ],
    ids=["arch-new", "arch-old", "final-sync", "final-deferred"],
)
def test_efer_retire(impl, policy, expected):
    trace = (
        TraceBuilder().wrmsr_evtsel(0, S | H).wrmsr_efer(1).read(0).wrmsr_efer(0).read(0).build()
    )
    assert ints(impl(trace, policy).reads) == expected


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # PMC0 = G, PMC1 = H, svme=1. Default: VMRUN_FAIL is a host instruction: PMC1 (EFER 1 +
        # VMRUN_FAIL 1) = 2, PMC0 0.
        ("arch", [0, 2]),
        # guest: VMRUN_FAIL attributed to guest mode: PMC0 1, PMC1 only its EFER: 1.
        (with_knobs("arch", failed_vmrun_retire="guest"), [1, 1]),
        # KVM: VMRUN_FAIL retires in host mode with the current emul_ok; the knob is ignored.
        ("final", [0, 2]),
        (with_knobs("final", failed_vmrun_retire="guest"), [0, 2]),
    ],
    ids=["arch-host", "arch-guest", "final", "final-knob-ignored"],
)
def test_failed_vmrun_retire(impl, policy, expected):
    trace = (
        TraceBuilder()
        .wrmsr_evtsel(0, S | G)
        .wrmsr_evtsel(1, S | H)
        .wrmsr_efer(1)
        .vmrun_fail()
        .read(0)
        .read(1)
        .build()
    )
    assert ints(impl(trace, policy).reads) == expected


# Four counters on instructions retired: PMC0 USR only, PMC1 OS only, PMC2 USR only with G,
# PMC3 OS only with G. svme = 1 before they are written, so no write counts in the reference
# (old selectors) except on PMC1, which counts the writes to PMC2 and PMC3 (CPL 0, no H/G).
USR_ONLY = eventsel(IR, os=False)
OS_ONLY = eventsel(IR, usr=False)


def _vmrun_cpl_trace(cpl: int):
    b = TraceBuilder().wrmsr_efer(1)
    for i, sel in enumerate((USR_ONLY, OS_ONLY, USR_ONLY | G, OS_ONLY | G)):
        b.wrmsr_evtsel(i, sel)
    b.vmrun(cpl=cpl)
    for i in range(4):
        b.read(i)
    return b.build()


@pytest.mark.parametrize(
    ("knob", "cpl", "expected"),
    [
        # guest: VMRUN counts in guest mode at L2's CPL (the record's cpl, revision 2 change 1).
        # CPL 3: the USR counters, with and without G: PMC0 1, PMC2 1; PMC1 only the two writes.
        ("guest", 3, [1, 2, 1, 0]),
        # CPL 0: the OS counters, with and without G: PMC1 2 + 1, PMC3 1.
        ("guest", 0, [0, 3, 0, 1]),
        # host: host mode at CPL 0 whatever the record's cpl: only PMC1 (G does not count).
        ("host", 3, [0, 3, 0, 0]),
        ("host", 0, [0, 3, 0, 0]),
    ],
)
def test_vmrun_retire_at_l2_cpl(impl, knob, cpl, expected):
    result = impl(_vmrun_cpl_trace(cpl), with_knobs("arch", vmrun_retire=knob))
    assert ints(result.reads) == expected


def test_wrmsr_ctr_and_global_ctrl_count_after_the_write(impl):
    # PMC0 = S | INT. WRMSR_CTR(0, 2^48 - 1) and then the WRMSR itself counts on top of the
    # written value: a wrap to 0 (overflow, PMI). WRMSR_GLOBAL_CTRL(0): PMC0 disabled by the
    # write, so the WRMSR does not count; WRMSR_GLOBAL_CTRL(1): enabled, it counts (1).
    trace = (
        TraceBuilder()
        .wrmsr_evtsel(0, S | INT)
        .wrmsr_ctr(0, M48 - 1)
        .read(0)
        .wrmsr_global_ctrl(0)
        .read(0)
        .wrmsr_global_ctrl(1)
        .read(0)
        .build()
    )
    for policy in ("arch", "final"):
        result = impl(trace, policy)
        assert ints(result.reads) == [0, 0, 1]
        assert ints(result.overflows) == [1, 0, 0, 0, 0, 0]
        assert ints(result.pmis) == [1, 0, 0, 0, 0, 0]


def test_counter_arithmetic(impl):
    # RUN n adds n modulo 2^48; each wrap is an overflow, and a PMI while INT is set
    # (semantics: several wraps for n >= 2^48). PMC0 = S | INT, PMC1 = branches with INT off.
    # RUN 3 * 2^48 + 5: PMC0 5, 3 overflows, 3 PMIs. Then the selector loses INT (the WRMSR
    # counts on the old selector: 6) and RUN 2^48: PMC0 6, 4 overflows, still 3 PMIs. PMC1
    # counts the branch RUN of 2^48 + 1: 1, one overflow, no PMI.
    trace = (
        TraceBuilder()
        .wrmsr_evtsel(0, S | INT)
        .wrmsr_evtsel(1, eventsel(BRANCHES_RETIRED))
        .run(3 * M48 + 4, IR, cpl=3)
        .wrmsr_evtsel(0, S)
        .run(M48, IR, cpl=3)
        .run(M48 + 1, BRANCHES_RETIRED, cpl=0)
        .build()
    )
    result = impl(trace, "arch")
    # PMC0: the WRMSR to PMC1 (1), RUN (3 * 2^48 + 5: 5, 3 wraps with INT), the WRMSR to PMC0
    # (old selector: 6), RUN 2^48 (6, one wrap without INT).
    assert ints(result.counters)[:2] == [6, 1]
    assert ints(result.overflows)[:2] == [4, 1]
    assert ints(result.pmis)[:2] == [3, 0]


def test_reference_programmed_value(impl):
    # Spec section 8: arch's eventsel_hw is the formula of a re-evaluation in the current
    # state: (eventsel & ~H) | G, EN = EN && mode rule && filter. H counter in host mode, svme=1:
    # on; a deny filter on its key turns it off; 0 for a selector of 0.
    trace = TraceBuilder().wrmsr_efer(1).wrmsr_evtsel(0, S | H).set_filter("deny", IR).build()
    result = impl(trace, "arch", timeline=True)
    assert ints(result.hw_enabled) == [0, 1, 0]
    assert ints(result.eventsel_hw) == [(S | G) & ~EN, 0, 0, 0, 0, 0]
