"""Spec section 10: the six changes of revision 2, one hand-computed case (at least) each.

Presets are passed by name where the case is about the preset (each implementation resolves
the name through its own table); the overrides of ``with_knobs(...)`` spell out every knob the
case depends on.
"""

from __future__ import annotations

import pytest
from spec_helpers import (
    BR,
    EFER0,
    EFER1,
    IR,
    READ0,
    VMRUN_FAIL,
    B,
    G,
    H,
    S,
    ints,
    make_trace,
    rec,
    with_knobs,
)

import svmpmu
from svmpmu import EN, INT, Op, TraceBuilder, eventsel

USR_ONLY = eventsel(IR, os=False)
OS_ONLY = eventsel(IR, usr=False)


# ---------------------------------------------------------------------------------------------
# Change 1: VMRUN carries the CPL at which L2 resumes. KVM retires it at CPL 0 before the entry
# (before_entry) or at L2's CPL after the entry and the vmrun flow (after_entry); the reference
# attributes it to the guest at L2's CPL (vmrun_retire=guest) or to the host at CPL 0 (host).
# ---------------------------------------------------------------------------------------------


def vmrun_cpl_trace(cpl: int):
    """PMC0 USR only, PMC1 OS only, PMC2 USR only + G, PMC3 OS only + G, all on instructions
    retired, written with global control off (so that no write counts, in either model) and
    enabled by one WRMSR_GLOBAL_CTRL, which both models attribute to the state after it: it
    counts on PMC1 only (CPL 0; PMC3 is G in host mode; v4 is not mode-aware: PMC3 too)."""
    b = TraceBuilder().wrmsr_efer(1).wrmsr_global_ctrl(0)  # 0, 1
    for i, sel in enumerate((USR_ONLY, OS_ONLY, USR_ONLY | G, OS_ONLY | G)):
        b.wrmsr_evtsel(i, sel)  # 2..5
    b.wrmsr_global_ctrl(0b1111)  # 6
    b.vmentry()  # 7
    b.vmrun(cpl=cpl)  # 8
    for i in range(4):
        b.read(i)  # 9..12
    return b.build()


VMRUN_CPL_CASES = [
    # after_entry, sync: emul_ok of PMC2/3 is on (guest, G) when VMRUN retires at CPL 3: the
    # USR counters count it: PMC0 1, PMC2 1; PMC1 only the global WRMSR.
    ("final", 3, [1, 1, 1, 0]),
    # before_entry: retired at CPL 0 in host mode: PMC1 (2); PMC3's emul_ok is off (G, host).
    (with_knobs("final", vmrun_order="before_entry"), 3, [0, 2, 0, 0]),
    # the reference: guest mode at CPL 3.
    ("arch", 3, [1, 1, 1, 0]),
    # the reference with vmrun_retire=host: host mode at CPL 0 (G does not count).
    (with_knobs("arch", vmrun_retire="host"), 3, [0, 2, 0, 0]),
    ("hybrid", 3, [1, 1, 1, 0]),
    # v4: before_entry, emul_ok = EN: PMC3 counted the global WRMSR and counts VMRUN (CPL 0).
    ("v4", 3, [0, 2, 0, 2]),
    # L2 resuming at CPL 0: the OS counters count it, in guest mode PMC3 too.
    ("final", 0, [0, 2, 0, 1]),
    (with_knobs("final", vmrun_order="before_entry"), 0, [0, 2, 0, 0]),
    ("arch", 0, [0, 2, 0, 1]),
    (with_knobs("arch", vmrun_retire="host"), 0, [0, 2, 0, 0]),
]


@pytest.mark.parametrize(
    ("policy", "cpl", "expected"),
    VMRUN_CPL_CASES,
    ids=[
        "final-3",
        "final-before_entry-3",
        "arch-3",
        "arch-host-3",
        "hybrid-3",
        "v4-3",
        "final-0",
        "final-before_entry-0",
        "arch-0",
        "arch-host-0",
    ],
)
def test_1_vmrun_retires_at_l2_cpl(impl, policy, cpl, expected):
    result = impl(vmrun_cpl_trace(cpl), policy)
    assert ints(result.reads) == expected
    assert ints(result.counters) == [*expected, 0, 0]


@pytest.mark.parametrize(
    ("policy", "cpl", "diverges", "pmcs"),
    [
        ("final", 3, False, ()),
        ("final", 0, False, ()),
        # before_entry misses the VMRUN on the USR counters and counts it on PMC1 instead.
        (with_knobs("final", vmrun_order="before_entry"), 3, True, (0, 1, 2)),
        (with_knobs("final", vmrun_order="before_entry"), 0, True, (3,)),
    ],
)
def test_1_compare_at_the_vmrun(impl_compare, policy, cpl, diverges, pmcs):
    c = impl_compare(vmrun_cpl_trace(cpl), policy, "arch")
    assert c.diverges == diverges
    assert c.first_divergence == (8 if diverges else None)
    assert c.differing_pmcs == pmcs
    assert c.differing_reads == pmcs


@pytest.mark.parametrize("cpl", [4, 255])
def test_1_vmrun_cpl_is_validated(impl, cpl):
    trace = make_trace([EFER1, READ0, rec(Op.VMRUN, cpl=cpl), READ0])
    with pytest.raises(svmpmu.TraceError) as excinfo:
        impl(trace, "final")
    assert excinfo.value.index == 2


# ---------------------------------------------------------------------------------------------
# Change 2: SET_NESTED_STATE(1) is the set_nested_state flow (final and hybrid: sync),
# SET_NESTED_STATE(0) the forced_leave flow (final and hybrid: deferred).
# ---------------------------------------------------------------------------------------------


def nested_state_trace():
    return (
        TraceBuilder()
        .wrmsr_efer(1)  # 0
        .wrmsr_evtsel(0, S | G)  # 1: emul_ok off (G, host); on as written
        .wrmsr_evtsel(1, S | H)  # 2: emul_ok on (H, host); counts its own WRMSR (mode-aware)
        .vmentry()  # 3: both re-evaluated in host mode: PMC1 on
        .set_nested_state(1)  # 4: enter guest mode
        .emulate(cpl=0)  # 5
        .set_nested_state(0)  # 6: leave guest mode
        .emulate(cpl=0)  # 7
        .read(0)  # 8
        .read(1)  # 9
        .build()
    )


@pytest.mark.parametrize(
    ("policy", "reads", "hw"),
    [
        # arch: EMULATE in guest -> PMC0, in host -> PMC1; the writes go to the old selectors.
        ("arch", [1, 1], [0, 0, 2, 2, 1, 1, 2, 2, 2, 2]),
        # final: entering sync (PMC0's emul_ok on: the first EMULATE counts on PMC0); leaving
        # deferred (still on: the second EMULATE counts on PMC0 too). PMC1: its own WRMSR.
        ("final", [2, 1], [0, 1, 3, 2, 1, 1, 1, 1, 1, 1]),
        ("hybrid", [2, 1], [0, 1, 3, 2, 1, 1, 1, 1, 1, 1]),
        # forced_leave sync: SET_NESTED_STATE(0) re-evaluates at once: the second EMULATE counts
        # on PMC1 (2).
        (
            with_knobs("final", set_nested_state_timing="sync", forced_leave_timing="sync"),
            [1, 2],
            [0, 1, 3, 2, 1, 1, 2, 2, 2, 2],
        ),
        # set_nested_state deferred: both EMULATEs use host mode's emul_ok: PMC1 3.
        (
            with_knobs("final", set_nested_state_timing="deferred", forced_leave_timing="deferred"),
            [0, 3],
            [0, 1, 3, 2, 2, 2, 2, 2, 2, 2],
        ),
        # SET_NESTED_STATE(1) follows set_nested_state_timing, not vmrun_timing.
        (
            with_knobs(
                "final",
                set_nested_state_timing="sync",
                forced_leave_timing="deferred",
                vmrun_timing="none",
            ),
            [2, 1],
            [0, 1, 3, 2, 1, 1, 1, 1, 1, 1],
        ),
        # v3: both flows sync, emul_ok = EN (every emulated instruction counts on both, the
        # writes too: PMC0 1 + 1 + 1 + 1, PMC1 1 + 1 + 1); lanes follow the sync toggles.
        ("v3", [4, 3], [0, 1, 3, 2, 1, 1, 2, 2, 2, 2]),
        # v4: both deferred: the lanes stay those of host mode.
        ("v4", [4, 3], [0, 1, 3, 2, 2, 2, 2, 2, 2, 2]),
    ],
    ids=[
        "arch",
        "final",
        "hybrid",
        "final-leave-sync",
        "final-enter-deferred",
        "final-vmrun-none",
        "v3",
        "v4",
    ],
)
def test_2_set_nested_state_flows(impl, policy, reads, hw):
    result = impl(nested_state_trace(), policy, timeline=True)
    assert ints(result.reads) == reads
    assert ints(result.hw_enabled) == hw
    assert ints(result.guest_mode) == [0, 0, 0, 0, 1, 1, 0, 0, 0, 0]


# ---------------------------------------------------------------------------------------------
# Change 3: VMRUN_FAIL with svme = 0 is invalid (the CPU raises #UD: nothing retires).
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "policy",
    ["arch", with_knobs("arch", failed_vmrun_retire="guest"), "final", "v4"],
    ids=["arch", "arch-guest", "final", "v4"],
)
@pytest.mark.parametrize(
    ("records", "index"),
    [
        ([VMRUN_FAIL], 0),
        ([rec(Op.WRMSR_EVTSEL, pmc=0, value=S), VMRUN_FAIL, READ0], 1),
        ([EFER1, VMRUN_FAIL, EFER0, VMRUN_FAIL], 3),
        ([EFER1, rec(Op.RESET), VMRUN_FAIL], 2),
    ],
    ids=["at-reset", "after-a-write", "after-efer0", "after-reset"],
)
def test_3_vmrun_fail_with_svme0_is_invalid(impl, policy, records, index):
    with pytest.raises(svmpmu.TraceError) as excinfo:
        impl(make_trace(records), policy)
    assert excinfo.value.index == index


# ---------------------------------------------------------------------------------------------
# Change 4: RESET keeps the event filter (everything else back to the reset state).
# ---------------------------------------------------------------------------------------------


def reset_filter_trace():
    return (
        TraceBuilder()
        .wrmsr_evtsel(0, S)  # 0: final counts it (1); arch does not (old selector)
        .set_filter("deny", IR)  # 1
        .reset()  # 2: counters, selectors, eventsel_hw to 0; the deny filter stays
        .wrmsr_evtsel(0, S)  # 3: denied
        .wrmsr_evtsel(1, B)  # 4: an instruction: denied on PMC0; PMC1 counts branches
        .run(100, IR, cpl=3)  # 5: denied
        .run(10, BR, cpl=3)  # 6: PMC1 10 (global control is back to all PMCs)
        .emulate(cpl=0, branch=True)  # 7: PMC1 11; the instruction is denied on PMC0
        .read(0)  # 8
        .read(1)  # 9
        .build()
    )


@pytest.mark.parametrize(
    ("policy", "hw", "eventsel_hw"),
    [
        # the ideal value: PMC0 off under the deny filter from record 1, PMC1 on from 4.
        ("arch", [1, 0, 0, 0, 2, 2, 2, 2, 2, 2], [(S | G) & ~EN, B | G]),
        # final: on as written at 0, 3 and 4; SET_FILTER only makes PMCs pending; RESET clears
        # eventsel_hw; the RUN's entry (5) turns PMC0 off under the kept filter.
        ("final", [1, 1, 0, 1, 3, 2, 2, 2, 2, 2], [(S | G) & ~EN, B | G]),
        # legacy (hg reserved): no G stuffed in; the filter applies at the entry all the same.
        ("legacy", [1, 1, 0, 1, 3, 2, 2, 2, 2, 2], [S & ~EN, B]),
    ],
)
def test_4_reset_keeps_the_filter(impl, policy, hw, eventsel_hw):
    # Were the filter cleared by RESET, PMC0 would read 100 + 1 (arch) or 1 + 1 + 100 + 1.
    result = impl(reset_filter_trace(), policy, timeline=True)
    assert ints(result.reads) == [0, 11]
    assert ints(result.counters) == [0, 11, 0, 0, 0, 0]
    assert ints(result.hw_enabled) == hw
    assert ints(result.eventsel_hw) == [*eventsel_hw, 0, 0, 0, 0]


# ---------------------------------------------------------------------------------------------
# Change 5: a selector write (a changed value) sets eventsel_hw at once: (value & ~H) | G with
# EN as written (the value itself with hg = reserved; 0 for 0), before any mode or filter
# check; the re-evaluation at the next VM-entry corrects EN. A same-value write changes nothing.
# ---------------------------------------------------------------------------------------------

SVME1_GUEST = [EFER1, rec(Op.VMRUN)]


def _evtsel(value):
    return rec(Op.WRMSR_EVTSEL, pmc=0, value=value)


# (id, policy, records before the write, value written, eventsel_hw[0] right after the write,
#  eventsel_hw[0] after a following VMENTRY)
SELECTOR_WRITES = [
    # G with svme = 0 (off): on as written, then off.
    ("G-svme0", "final", [], S | G, S | G, (S | G) & ~EN),
    # svme0 = ignore: on, and on after the entry too.
    ("G-svme0-hybrid", "hybrid", [], S | G, S | G, S | G),
    # H is cleared and G stuffed in; in guest mode H does not count.
    ("H-guest", "final", SVME1_GUEST, S | H, S | G, (S | G) & ~EN),
    ("HG-svme0", "final", [], S | H | G, S | G, (S | G) & ~EN),
    # a disabled selector: EN clear as written.
    ("disabled", "final", SVME1_GUEST, (S & ~EN) | G, (S & ~EN) | G, (S & ~EN) | G),
    # reserved bits dropped first (19 and 63 here).
    ("reserved-bits", "final", [], S | G | 1 << 19 | 1 << 63, S | G, (S | G) & ~EN),
    # hg = reserved: G dropped on write, eventsel_hw = the value.
    ("legacy", "legacy", [], S | G, S, S),
    # 0 programs 0 at once (the counter was stale-off before).
    ("zero", "final", [EFER1, _evtsel(S | G), rec(Op.VMENTRY)], 0, 0, 0),
    # before the filter check: on as written although the filter denies the key.
    (
        "deny-filter",
        "final",
        [rec(Op.SET_FILTER, flag=2, key=IR), rec(Op.VMENTRY)],
        S,
        S | G,
        (S | G) & ~EN,
    ),
    # the reference's ideal value does not depend on the write's moment.
    ("arch", "arch", [], S | G, (S | G) & ~EN, (S | G) & ~EN),
]


@pytest.mark.parametrize(
    ("policy", "before", "value", "after_write", "after_entry"),
    [c[1:] for c in SELECTOR_WRITES],
    ids=[c[0] for c in SELECTOR_WRITES],
)
def test_5_selector_write_programs_eventsel_hw(
    impl, policy, before, value, after_write, after_entry
):
    written = impl(make_trace([*before, _evtsel(value)]), policy, timeline=True)
    assert int(written.eventsel_hw[0]) == after_write
    assert int(written.hw_enabled[-1]) == (1 if after_write & EN else 0)
    entered = impl(make_trace([*before, _evtsel(value), rec(Op.VMENTRY)]), policy)
    assert int(entered.eventsel_hw[0]) == after_entry


def same_value_trace():
    return (
        TraceBuilder()
        .wrmsr_efer(1)  # 0
        .wrmsr_evtsel(0, S | G)  # 1: on as written; emul_ok off (host)
        .vmentry()  # 2: off (G, host)
        .vmrun()  # 3: vmrun_timing none: stays off, emul_ok off: not counted
        .wrmsr_evtsel(0, S | G | 1 << 19)  # 4: the same value once bit 19 is dropped: nothing
        .wrmsr_evtsel(0, S | G | INT)  # 5: changed: on as written, emul_ok on (guest): 1
        .vmentry()  # 6: re-evaluated in guest mode: on
        .vmexit()  # 7: sync: off
        .read(0)  # 8
        .build()
    )


@pytest.mark.parametrize(
    ("policy", "read", "hw", "hw_4", "hw_5"),
    [
        # final with the vmrun flow not hooked, so that eventsel_hw is stale-off in guest mode.
        (
            with_knobs("final", vmrun_timing="none"),
            1,
            [0, 1, 0, 0, 0, 1, 1, 0, 0],
            (S | G) & ~EN,
            S | G | INT,
        ),
        # arch: VMRUN (1) and both writes (old selector S | G, in guest mode: 3).
        ("arch", 3, [0, 0, 0, 1, 1, 1, 1, 0, 0], S | G, S | G | INT),
    ],
    ids=["final-vmrun-none", "arch"],
)
def test_5_same_value_write_changes_nothing(impl, policy, read, hw, hw_4, hw_5):
    trace = same_value_trace()
    result = impl(trace, policy, timeline=True)
    assert ints(result.reads) == [read]
    assert ints(result.hw_enabled) == hw
    assert int(impl(trace[:5], policy).eventsel_hw[0]) == hw_4
    assert int(impl(trace[:6], policy).eventsel_hw[0]) == hw_5


# ---------------------------------------------------------------------------------------------
# Change 6: SMM. An SMI taken in L2 is a synchronous nested #VMEXIT (modelled as VMEXIT); the
# RSM into L2 re-enters guest mode synchronously and retires afterwards (modelled as VMRUN with
# vmrun_order = after_entry, at L2's CPL). Neither is a FORCED_LEAVE.
# ---------------------------------------------------------------------------------------------


def smm_trace(smi: str = "vmexit"):
    b = TraceBuilder()
    b.wrmsr_evtsel(0, S | G)  # 0: svme=0: nothing counts the writes
    b.wrmsr_evtsel(1, S | H)  # 1
    b.wrmsr_efer(1)  # 2: host mode: PMC1 (1)
    b.vmentry()  # 3
    b.vmrun(cpl=3)  # 4: into L2 at CPL 3: PMC0 (1)
    b.run(100, IR, cpl=3)  # 5: L2 runs: PMC0 (101)
    getattr(b, smi)()  # 6: SMI in L2
    b.emulate(cpl=0)  # 7: an instruction of the SMI handler that KVM emulates
    b.run(50, IR, cpl=0)  # 8: the SMI handler runs
    b.vmrun(cpl=3)  # 9: RSM into L2, which resumes at CPL 3
    b.run(10, IR, cpl=3)  # 10: L2 runs
    b.read(0)  # 11
    b.read(1)  # 12
    return b.build()


@pytest.mark.parametrize(
    ("policy", "smi", "reads", "hw"),
    [
        # arch: PMC0 = VMRUN + 100 + RSM + 10 = 112; PMC1 = EFER + EMULATE + 50 = 52.
        ("arch", "vmexit", [112, 52], [0, 0, 2, 2, 1, 1, 2, 2, 2, 1, 1, 1, 1]),
        # final: the synchronous flows give the reference's counts.
        ("final", "vmexit", [112, 52], [1, 3, 2, 2, 1, 1, 2, 2, 2, 1, 1, 1, 1]),
        # RSM modelled with before_entry instead: VMRUN and RSM retire at CPL 0 in host mode,
        # on PMC1 (PMC0 100 + 10; PMC1 1 + 1 + 1 + 50 + 1).
        (
            with_knobs("final", vmrun_order="before_entry"),
            "vmexit",
            [110, 54],
            [1, 3, 2, 2, 1, 1, 2, 2, 2, 1, 1, 1, 1],
        ),
        # SMI modelled as a FORCED_LEAVE instead (wrong: deferred under final): the handler's
        # emulated instruction counts on PMC0 with the stale emul_ok (113), not on PMC1 (51).
        ("final", "forced_leave", [113, 51], [1, 3, 2, 2, 1, 1, 1, 1, 2, 1, 1, 1, 1]),
        # the reference does not care how guest mode was left.
        ("arch", "forced_leave", [112, 52], [0, 0, 2, 2, 1, 1, 2, 2, 2, 1, 1, 1, 1]),
    ],
    ids=["arch", "final", "final-before_entry", "final-as-forced-leave", "arch-as-forced-leave"],
)
def test_6_smm_round_trip(impl, policy, smi, reads, hw):
    result = impl(smm_trace(smi), policy, timeline=True)
    assert ints(result.reads) == reads
    assert ints(result.hw_enabled) == hw
    assert ints(result.guest_mode) == [0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 1, 1]
