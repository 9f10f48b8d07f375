"""Tests of the pure-Python oracle (svmpmu.oracle) against hand-computed cases.

Every expected value here is worked out from shared/spec/model.md (revision 2) and
docs/semantics.md by hand (the reasoning is in the comments), never by running the Rust core.
The policies are built from the oracle's own transcription of the presets
(``svmpmu.oracle.PRESETS``, checked against the core's in tests/spec/test_presets.py). The last
section checks that the core and the oracle agree on random traces.
"""

from __future__ import annotations

import ast
import inspect
import random
import time
from types import SimpleNamespace

import numpy as np
import pytest

import svmpmu
import svmpmu.oracle
from agreement_helpers import assert_same_comparison
from svmpmu import (
    BRANCHES_RETIRED,
    EN,
    GUEST_ONLY,
    INSTRUCTIONS_RETIRED,
    INT,
    Comparison,
    Policy,
    PolicyError,
    Result,
    Trace,
    TraceBuilder,
    TraceError,
    event_key,
    eventsel,
)
from svmpmu.oracle import PRESETS, compare, simulate, validate

TB = TraceBuilder
WRAP = 1 << 48

INSTR = eventsel(INSTRUCTIONS_RETIRED)  # OS | USR | EN, no H/G
BRANCH = eventsel(BRANCHES_RETIRED)
G_SEL = eventsel(INSTRUCTIONS_RETIRED, guest_only=True)
H_SEL = eventsel(INSTRUCTIONS_RETIRED, host_only=True)


def preset(name: str, **knobs: object) -> Policy:
    """The oracle's preset ``name`` (model.md section 7) as a Policy, with knobs overridden."""
    return Policy(**{**PRESETS[name], **knobs})


def final(**knobs: object) -> Policy:
    return preset("final", **knobs)


def arch(**knobs: object) -> Policy:
    return preset("arch", **knobs)


def reads(trace: Trace, policy: object, **kwargs: object) -> list[int]:
    return simulate(trace, policy, **kwargs).reads.tolist()


# --------------------------------------------------------------------------------------------
# The worked example (model.md section 9)
# --------------------------------------------------------------------------------------------


def worked_example() -> Trace:
    return (
        TB()
        .wrmsr_evtsel(0, G_SEL)  # 0
        .wrmsr_efer(1)  # 1
        .vmentry()  # 2
        .vmrun()  # 3
        .run(1000)  # 4
        .vmexit()  # 5
        .read(0)  # 6
        .build()
    )


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("arch", 1001),
        ("final", 1001),
        (final(vmrun_order="before_entry"), 1000),
        ("v4", 1003),
        (arch(vmrun_retire="host"), 1000),  # VMRUN as a host instruction: G does not count it
    ],
)
def test_worked_example(policy: object, expected: int) -> None:
    result = simulate(worked_example(), policy)
    assert result.reads.tolist() == [expected]
    assert result.counters.tolist() == [expected, 0, 0, 0, 0, 0]
    assert result.overflows.tolist() == [0] * 6
    assert result.pmis.tolist() == [0] * 6


def test_worked_example_result_shape_and_dtypes() -> None:
    result = simulate(worked_example(), "final", n_pmcs=2)
    assert isinstance(result, Result)
    for name in ("counters", "eventsel_hw", "overflows", "pmis"):
        array = getattr(result, name)
        assert array.dtype == np.uint64
        assert array.shape == (2,)
    assert result.reads.dtype == np.uint64
    assert result.hw_enabled is None
    assert result.svme is None
    assert result.guest_mode is None


@pytest.mark.parametrize(
    ("policy", "hw"),
    [
        # final: the selector write programs eventsel_hw at once with EN as written (on); the
        # EFER sync re-evaluates it to host mode (G: off); VMRUN's sync turns it on; VMEXIT's
        # sync off.
        ("final", [1, 0, 0, 1, 1, 0, 0]),
        # arch: the ideal value: on exactly while in guest mode.
        ("arch", [0, 0, 0, 1, 1, 0, 0]),
    ],
)
def test_worked_example_timeline_final_and_arch(policy: str, hw: list[int]) -> None:
    result = simulate(worked_example(), policy, timeline=True)
    assert result.hw_enabled.dtype == np.uint8
    assert result.hw_enabled.tolist() == hw
    assert result.svme.dtype == np.bool_
    assert result.svme.tolist() == [False, True, True, True, True, True, True]
    assert result.guest_mode.tolist() == [False, False, False, True, True, False, False]
    # after the final VMEXIT: (eventsel & ~H) | G, EN cleared
    assert int(result.eventsel_hw[0]) == G_SEL & ~EN


def test_worked_example_timeline_v4_is_deferred() -> None:
    # v4: the selector write sets EN as written (on), and nothing is re-evaluated before an
    # entry: the deferred EFER leaves it on, the VMENTRY (record 2) finds svme = 1 in host mode
    # (off), the deferred VMRUN leaves it off, the RUN's implicit entry finds guest mode (on),
    # and the deferred VMEXIT leaves eventsel_hw stale with EN set until the end.
    result = simulate(worked_example(), "v4", timeline=True)
    assert result.hw_enabled.tolist() == [1, 1, 0, 0, 1, 1, 1]
    assert int(result.eventsel_hw[0]) == G_SEL


# --------------------------------------------------------------------------------------------
# Knobs (model.md section 6)
# --------------------------------------------------------------------------------------------


def test_svme0_off_versus_ignore() -> None:
    # An H counter with svme = 0 throughout.
    trace = TB().wrmsr_evtsel(0, H_SEL).run(10).read(0).build()
    # off: emul_ok false at the write, the RUN's entry programs EN off.
    r = simulate(trace, "final")
    assert r.reads.tolist() == [0]
    assert int(r.eventsel_hw[0]) == ((H_SEL & ~(1 << 41)) | GUEST_ONLY) & ~EN
    # ignore: emul_ok true at once, so the WRMSR (retired after the handler) counts 1, + 10.
    assert reads(trace, final(svme0="ignore")) == [11]
    assert reads(trace, "hybrid") == [11]
    # reference: old selector for the WRMSR, and svme = 0 with H does not count.
    assert reads(trace, "arch") == [0]


def test_svme0_does_not_matter_without_hg_bits() -> None:
    trace = TB().wrmsr_evtsel(0, INSTR).run(10).read(0).build()
    assert reads(trace, "final") == [11]  # the enabling WRMSR counts in KVM
    assert reads(trace, final(svme0="ignore")) == [11]
    assert reads(trace, "arch") == [10]  # enabling WRMSR attributed to the old selector


def test_hg_reserved_drops_bits_and_counts_in_both_modes() -> None:
    trace = TB().wrmsr_evtsel(0, G_SEL).wrmsr_efer(1).run(100).read(0).build()
    # honored: G, svme 0 then host mode: nothing counts.
    r = simulate(trace, "final")
    assert r.reads.tolist() == [0]
    assert int(r.eventsel_hw[0]) == G_SEL & ~EN
    # reserved: G is dropped on write, so the counter is a plain one: the WRMSR_EVTSEL (1), the
    # WRMSR_EFER (2), and the run (102); eventsel_hw is eventsel, no G stuffed in.
    for policy in (final(hg="reserved"), "legacy"):
        r = simulate(trace, policy)
        assert r.reads.tolist() == [102]
        assert int(r.eventsel_hw[0]) == INSTR
    assert reads(trace, "arch") == [0]


def test_emul_mode_aware() -> None:
    # svme = 1, host mode, a G counter: it must not count emulated instructions.
    trace = TB().wrmsr_efer(1).wrmsr_evtsel(0, G_SEL).emulate(0).emulate(3).read(0).build()
    assert reads(trace, "final") == [0]
    # not mode-aware: emul_ok follows EN only: the WRMSR and both emulated instructions count.
    assert reads(trace, final(emul_mode_aware=False)) == [3]
    assert reads(trace, "arch") == [0]


def test_emul_mode_aware_counts_host_only_in_host_mode() -> None:
    trace = TB().wrmsr_efer(1).wrmsr_evtsel(0, H_SEL).emulate(0).emulate(3).read(0).build()
    assert reads(trace, "final") == [3]  # the WRMSR counts under the new selector, then 2
    assert reads(trace, "arch") == [2]  # old selector for the WRMSR


def filter_on_sync_trace() -> Trace:
    return (
        TB()
        .set_filter("deny", INSTRUCTIONS_RETIRED)  # 0: every PMC pending
        .wrmsr_efer(1)  # 1: no PMC has H/G yet
        .wrmsr_evtsel(0, G_SEL)  # 2: pending; denied, so not counted
        .vmentry()  # 3: re-evaluated with the filter: off
        .vmrun()  # 4: the sync toggle (with or without the filter)
        .run(100)  # 5: nothing pending: eventsel_hw as the sync left it
        .read(0)  # 6
        .build()
    )


def test_filter_on_sync_false_bypasses_the_filter() -> None:
    # The write (record 2) sets EN as written, before the filter check; the VMENTRY turns it
    # off; v3's VMRUN sync without the filter turns it on again.
    r = simulate(filter_on_sync_trace(), "v3", timeline=True)
    assert r.reads.tolist() == [100]
    assert r.hw_enabled.tolist() == [0, 0, 1, 0, 1, 1, 1]
    v3_filtered = preset("v3", filter_on_sync=True)
    r = simulate(filter_on_sync_trace(), v3_filtered, timeline=True)
    assert r.reads.tolist() == [0]
    assert r.hw_enabled.tolist() == [0, 0, 1, 0, 0, 0, 0]
    assert reads(filter_on_sync_trace(), "final") == [0]
    assert reads(filter_on_sync_trace(), "arch") == [0]


def test_sync_reevaluation_leaves_pending_alone() -> None:
    # The filter change makes every PMC pending; a sync VMRUN without the filter turns PMC 0
    # on, but the RUN's entry still re-evaluates the pending PMCs with the filter: off again.
    trace = (
        TB()
        .set_filter("deny", INSTRUCTIONS_RETIRED)
        .wrmsr_efer(1)
        .wrmsr_evtsel(0, G_SEL)
        .vmrun()
        .run(10)
        .read(0)
        .build()
    )
    r = simulate(trace, final(filter_on_sync=False), timeline=True)
    assert r.reads.tolist() == [0]
    assert r.hw_enabled.tolist() == [0, 0, 1, 1, 0, 0]  # record 2: EN as written
    # With an explicit entry before VMRUN nothing is pending any more: the bypass persists.
    trace = (
        TB()
        .set_filter("deny", INSTRUCTIONS_RETIRED)
        .wrmsr_efer(1)
        .wrmsr_evtsel(0, G_SEL)
        .vmentry()
        .vmrun()
        .run(10)
        .read(0)
        .build()
    )
    assert reads(trace, final(filter_on_sync=False)) == [10]


def efer_trace() -> Trace:
    return (
        TB()
        .wrmsr_evtsel(0, H_SEL)  # svme = 0: H is off (svme0 off)
        .vmentry()  # nothing left pending
        .wrmsr_efer(1)  # host mode, svme = 1: H counts from here in the reference
        .emulate(0)
        .vmentry()
        .emulate(0)
        .read(0)
        .build()
    )


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (final(), 3),  # sync: the WRMSR(EFER) and both emulated instructions
        (final(efer_timing="deferred"), 1),  # stale until the second VMENTRY
        (final(efer_timing="none"), 0),  # never re-evaluated
        (arch(), 3),  # WRMSR(EFER) attributed to the new state
        (arch(efer_retire="old"), 2),  # ... or to the old one (svme = 0: H off)
    ],
)
def test_efer_timing_and_efer_retire(policy: Policy, expected: int) -> None:
    assert reads(efer_trace(), policy) == [expected]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (final(), 1001),
        # deferred: VMRUN retires (after entry) with emul_ok still off; the RUN's entry fixes it
        (final(vmrun_timing="deferred"), 1000),
        # none: nothing pending at the RUN (the VMENTRY emptied it): stays off
        (final(vmrun_timing="none"), 0),
    ],
)
def test_vmrun_timing(policy: Policy, expected: int) -> None:
    assert reads(worked_example(), policy) == [expected]


def leave_trace(leave: str) -> Trace:
    builder = TB().wrmsr_efer(1).wrmsr_evtsel(0, G_SEL).vmentry().vmrun().run(10)
    if leave == "set_nested_state_0":
        builder.set_nested_state(0)  # record 5: through svm_leave_nested (revision 2)
    else:
        getattr(builder, leave)()  # record 5: VMEXIT or FORCED_LEAVE
    return builder.emulate(0).run(5).read(0).build()


@pytest.mark.parametrize(
    ("leave", "knob"),
    [
        ("vmexit", "vmexit_timing"),
        ("forced_leave", "forced_leave_timing"),
        # revision 2: SET_NESTED_STATE(0) is the forced_leave flow
        ("set_nested_state_0", "forced_leave_timing"),
    ],
)
@pytest.mark.parametrize(
    ("timing", "expected"),
    [
        ("sync", 11),  # VMRUN (1) + 10 in L2; nothing in L1
        ("deferred", 12),  # the emulated instruction counts with the stale emul_ok
        ("none", 17),  # stale eventsel_hw: L1's run counts too
    ],
)
def test_leave_timing(leave: str, knob: str, timing: str, expected: int) -> None:
    r = simulate(leave_trace(leave), final(**{knob: timing}), timeline=True)
    assert r.reads.tolist() == [expected]
    assert r.guest_mode.tolist() == [False, False, False, True, True, False, False, False, False]
    assert reads(leave_trace(leave), "arch") == [11]


def test_set_nested_state_0_ignores_set_nested_state_timing() -> None:
    # Leaving through SET_NESTED_STATE(0) follows forced_leave_timing (final: deferred), whatever
    # set_nested_state_timing says: 12 as in test_leave_timing's deferred case.
    for timing in ("sync", "deferred", "none"):
        policy = final(set_nested_state_timing=timing)
        assert reads(leave_trace("set_nested_state_0"), policy) == [12]


def test_stale_eventsel_hw_with_timing_none() -> None:
    r = simulate(leave_trace("vmexit"), final(vmexit_timing="none"), timeline=True)
    # The write (record 1) sets EN as written; the VMENTRY clears it (G, host); VMRUN sets it.
    # After the VMEXIT (record 5) eventsel_hw keeps EN although G must not count in L1.
    assert r.hw_enabled.tolist() == [0, 1, 0, 1, 1, 1, 1, 1, 1]
    assert int(r.eventsel_hw[0]) == G_SEL
    # The reference programs it off in host mode.
    ref = simulate(leave_trace("vmexit"), "arch", timeline=True)
    assert ref.hw_enabled.tolist() == [0, 0, 0, 1, 1, 0, 0, 0, 0]
    assert int(ref.eventsel_hw[0]) == G_SEL & ~EN


def test_forced_leave_default_is_deferred() -> None:
    assert reads(leave_trace("forced_leave"), "final") == [12]
    # v3 (before_entry, not mode-aware): the WRMSR_EVTSEL (1), VMRUN retired before entry (2),
    # run 10 (12); the forced leave's sync toggle stops hardware, but emul_ok follows EN only,
    # so the emulated instruction counts (13), and the run in L1 does not: 13.
    assert reads(leave_trace("forced_leave"), "v3") == [13]


def test_forced_leave_in_host_mode_is_a_no_op() -> None:
    trace = TB().wrmsr_efer(1).wrmsr_evtsel(0, H_SEL).forced_leave().emulate(0).read(0).build()
    r = simulate(trace, final(forced_leave_timing="sync"), timeline=True)
    assert r.guest_mode.tolist() == [False] * 5
    assert r.reads.tolist() == [2]  # the WRMSR and the emulated instruction


def sns_trace() -> Trace:
    return (
        TB()
        .wrmsr_efer(1)
        .wrmsr_evtsel(0, G_SEL)
        .vmentry()
        .set_nested_state(1)
        .emulate(0)
        .run(10)
        .read(0)
        .build()
    )


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # final (revision 2: set_nested_state_timing = sync): the emulated instruction (1) and
        # the run (10) in guest mode
        ("final", 11),
        ("hybrid", 11),
        (final(set_nested_state_timing="deferred"), 10),  # the emulated instruction is missed
        (final(set_nested_state_timing="none"), 0),
        # SET_NESTED_STATE(1) is its own flow: vmrun_timing does not matter
        (final(vmrun_timing="none"), 11),
        (arch(), 11),
    ],
)
def test_set_nested_state_timing(policy: Policy, expected: int) -> None:
    assert reads(sns_trace(), policy) == [expected]


def test_set_nested_state_to_the_current_mode_is_no_transition() -> None:
    # Already in guest mode: no transition, nothing pending, nothing re-evaluated.
    trace = (
        TB()
        .wrmsr_efer(1)
        .wrmsr_evtsel(0, G_SEL)
        .vmentry()
        .vmrun()
        .set_nested_state(1)
        .run(4)
        .read(0)
        .build()
    )
    r = simulate(trace, final(set_nested_state_timing="sync"), timeline=True)
    assert r.reads.tolist() == [5]
    assert r.guest_mode.tolist() == [False, False, False, True, True, True, True]


def test_enabling_wrmsr() -> None:
    trace = TB().wrmsr_evtsel(0, INSTR).read(0).wrmsr_evtsel(0, 0).read(0).build()
    # old: the enabling write is not counted, the disabling one is.
    assert reads(trace, "arch") == [0, 1]
    # new: the enabling write is counted, the disabling one is not.
    assert reads(trace, arch(enabling_wrmsr="new")) == [1, 1]
    # KVM: emul_ok follows the new selector at once, and the WRMSR retires after the handler.
    assert reads(trace, "final") == [1, 1]


def test_failed_vmrun_retire() -> None:
    trace = TB().wrmsr_efer(1).wrmsr_evtsel(0, G_SEL).vmrun_fail().read(0).build()
    assert reads(trace, "arch") == [0]  # host mode: G does not count
    r = simulate(trace, arch(failed_vmrun_retire="guest"), timeline=True)
    assert r.reads.tolist() == [1]
    assert r.guest_mode.tolist() == [False] * 4  # VMRUN_FAIL stays in host mode
    assert reads(trace, "final") == [0]  # retired in host mode with emul_ok off
    assert reads(trace, final(emul_mode_aware=False)) == [2]  # WRMSR_EVTSEL + VMRUN_FAIL


def test_failed_vmrun_with_svme0_is_invalid() -> None:
    # Revision 2: VMRUN_FAIL with svme = 0 is invalid, like VMRUN (#UD, nothing retires), under
    # either failed_vmrun_retire (semantics' "svme = 0 column" reading is unreachable now).
    trace = TB().wrmsr_evtsel(0, INSTR).vmrun_fail().read(0).build()
    for policy in (arch(failed_vmrun_retire="guest"), arch(), final()):
        with pytest.raises(TraceError) as info:
            simulate(trace, policy)
        assert info.value.index == 1
        assert "svme = 0" in info.value.reason


def test_sync_reevaluates_only_pmcs_with_hg_bits() -> None:
    trace = (
        TB()
        .wrmsr_evtsel(0, BRANCH)  # 0: EN as written
        .wrmsr_evtsel(1, H_SEL)  # 1: EN as written
        .vmentry()  # 2: PMC 1 off (H, svme = 0)
        .set_filter("deny", BRANCHES_RETIRED)  # 3: every PMC pending
        .wrmsr_efer(1)  # 4: the sync turns PMC 1 on; PMC 0 (no H/G) is not re-evaluated
        .vmentry()  # 5: PMC 0 off (denied)
        .build()
    )
    assert simulate(trace, "final", timeline=True).hw_enabled.tolist() == [1, 3, 1, 1, 3, 2]
    # The reference's ideal value: PMC 0 on until the filter, PMC 1 once svme = 1.
    assert simulate(trace, "arch", timeline=True).hw_enabled.tolist() == [1, 1, 1, 0, 2, 2]


def stale_then_write(selector: int) -> Trace:
    return (
        TB()
        .wrmsr_efer(1)
        .wrmsr_evtsel(0, G_SEL)
        .vmentry()
        .vmrun()  # counted: 1
        .vmexit()  # not hooked: eventsel_hw and emul_ok stay on
        .wrmsr_evtsel(0, selector)
        .run(5)
        .read(0)
        .build()
    )


def test_same_value_selector_write_changes_nothing() -> None:
    policy = final(vmexit_timing="none")
    # Bit 19 is reserved and dropped: the same value, so nothing is recomputed or pending; the
    # WRMSR counts with the stale emul_ok (2) and the run with the stale eventsel_hw (7).
    assert reads(stale_then_write(G_SEL | 1 << 19), policy) == [7]
    # A different value: emul_ok recomputed at once (host, G: off) and the PMC pending, so the
    # WRMSR and the run do not count.
    assert reads(stale_then_write(G_SEL | INT), policy) == [1]


# --------------------------------------------------------------------------------------------
# Counters: wrap, overflows, PMIs (model.md section 5)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["arch", "final"])
@pytest.mark.parametrize(("interrupt", "pmis"), [(True, 1), (False, 0)])
def test_counter_wraps_at_2_48(policy: str, interrupt: bool, pmis: int) -> None:
    trace = (
        TB()
        .wrmsr_evtsel(0, eventsel(INSTRUCTIONS_RETIRED, interrupt=interrupt))
        .wrmsr_ctr(0, WRAP - 5)  # the WRMSR counts on top: 2^48 - 4
        .run(10)  # 2^48 + 6: one wrap
        .read(0)
        .build()
    )
    r = simulate(trace, policy)
    assert r.reads.tolist() == [6]
    assert r.counters.tolist()[0] == 6
    assert r.overflows.tolist() == [1, 0, 0, 0, 0, 0]
    assert r.pmis.tolist() == [pmis, 0, 0, 0, 0, 0]


def test_many_wraps_in_one_run() -> None:
    sel = eventsel(INSTRUCTIONS_RETIRED, interrupt=True)
    r = simulate(TB().wrmsr_evtsel(0, sel).run(3 * WRAP + 7).build(), "arch")
    assert (int(r.counters[0]), int(r.overflows[0]), int(r.pmis[0])) == (7, 3, 3)
    r = simulate(TB().wrmsr_evtsel(0, sel).run((1 << 64) - 1).build(), "arch")
    assert (int(r.counters[0]), int(r.overflows[0]), int(r.pmis[0])) == (WRAP - 1, 65535, 65535)


def test_wrmsr_ctr_masks_and_its_own_retirement_can_wrap() -> None:
    sel = eventsel(INSTRUCTIONS_RETIRED, interrupt=True)
    trace = TB().wrmsr_evtsel(0, sel).wrmsr_ctr(0, WRAP - 1).wrmsr_ctr(1, (1 << 50) + 3).build()
    for policy in ("arch", "final"):
        r = simulate(trace, policy)
        # PMC 0: 2^48 - 1, then the first WRMSR_CTR counts 1 (wrap) and the second one 1 more;
        # PMC 1 is disabled: its value is masked to 48 bits, no overflow.
        assert r.counters.tolist()[:2] == [1, 3]
        assert r.overflows.tolist()[:2] == [1, 0]
        assert r.pmis.tolist()[:2] == [1, 0]


def test_pmi_needs_int_at_the_moment_of_the_wrap() -> None:
    trace = (
        TB()
        .wrmsr_evtsel(0, eventsel(INSTRUCTIONS_RETIRED, interrupt=True))
        .run(WRAP)  # wrap with INT: overflow and PMI
        .wrmsr_evtsel(0, INSTR)  # attributed to the old selector: counts 1
        .run(WRAP)  # wrap without INT: overflow only
        .build()
    )
    r = simulate(trace, "arch")
    assert (int(r.counters[0]), int(r.overflows[0]), int(r.pmis[0])) == (1, 2, 1)


def test_run_of_zero_counts_nothing() -> None:
    r = simulate(TB().wrmsr_evtsel(0, INSTR).wrmsr_ctr(0, 41).run(0).read(0).build(), "arch")
    assert r.reads.tolist() == [42]  # 41 plus the WRMSR_CTR itself, nothing from the run


# --------------------------------------------------------------------------------------------
# Matching, global control, filter
# --------------------------------------------------------------------------------------------


def test_cpl_matching() -> None:
    os_only = eventsel(INSTRUCTIONS_RETIRED, usr=False)
    usr_only = eventsel(INSTRUCTIONS_RETIRED, os=False)
    trace = (
        TB()
        .wrmsr_evtsel(0, os_only)
        .wrmsr_evtsel(1, usr_only)
        .emulate(0)
        .emulate(1)
        .emulate(2)
        .emulate(3)
        .run(10, cpl=0)
        .run(100, cpl=3)
        .build()
    )
    r = simulate(trace, "arch")
    # PMC 0: the WRMSR to PMC 1 (CPL 0, its selector set) + EMULATE(0) + RUN at CPL 0.
    # PMC 1: EMULATE at CPL 1, 2, 3 + the RUN at CPL 3.
    assert r.counters.tolist()[:2] == [1 + 1 + 10, 3 + 100]


def test_key_matching_ignores_edge_inv_cnt_mask_but_not_unit_mask_or_high_event_bits() -> None:
    edge_inv_cmask = INSTR | 1 << 18 | 1 << 23 | 5 << 24
    with_unit_mask = eventsel(INSTRUCTIONS_RETIRED, unit_mask=1)
    high_event = eventsel(0x1C0)
    trace = (
        TB()
        .wrmsr_evtsel(0, edge_inv_cmask)
        .wrmsr_evtsel(1, with_unit_mask)
        .wrmsr_evtsel(2, high_event)
        .run(10)  # instructions retired, unit mask 0
        .run(20, event=event_key(0xC0, 1))
        .run(30, event=0x1C0)
        .build()
    )
    r = simulate(trace, "arch")
    # PMC 0 also counts the two later WRMSR_EVTSELs (instructions retired, CPL 0).
    assert r.counters.tolist()[:3] == [2 + 10, 20, 30]


def test_branch_emulation_counts_both_events() -> None:
    trace = (
        TB()
        .wrmsr_evtsel(0, INSTR)
        .wrmsr_evtsel(1, BRANCH)
        .emulate(0, branch=True)
        .emulate(0)
        .build()
    )
    # arch: PMC 0 counts the second WRMSR and both emulated instructions; PMC 1 the branch.
    assert simulate(trace, "arch").counters.tolist()[:2] == [3, 1]
    # final: PMC 0 also counts its own enabling WRMSR.
    assert simulate(trace, "final").counters.tolist()[:2] == [4, 1]


def test_global_ctrl() -> None:
    trace = (
        TB()
        .wrmsr_evtsel(0, INSTR)
        .wrmsr_evtsel(1, INSTR)
        .wrmsr_global_ctrl(0b10)  # PMC 0 off; attributed to the state after the write
        .run(10)
        .emulate(0)
        .build()
    )
    # arch: PMC 0 counts only the WRMSR to PMC 1; PMC 1: the global WRMSR, the run, EMULATE.
    assert simulate(trace, "arch").counters.tolist()[:2] == [1, 12]
    # final: both enabling WRMSR_EVTSELs count too (PMC 0: 2, PMC 1: 1 + 1 + 10 + 1).
    assert simulate(trace, "final").counters.tolist()[:2] == [2, 13]


def test_enabling_global_ctrl_write_counts_itself() -> None:
    trace = TB().wrmsr_evtsel(0, INSTR).wrmsr_global_ctrl(0).wrmsr_global_ctrl(1).read(0).build()
    assert reads(trace, "arch") == [1]
    assert reads(trace, "final") == [2]  # + the enabling WRMSR_EVTSEL


def filter_trace(action: str, event: int | None) -> Trace:
    return (
        TB()
        .wrmsr_evtsel(0, INSTR)
        .wrmsr_evtsel(1, BRANCH)
        .set_filter(action, event)
        .emulate(0, branch=True)
        .run(10, event=INSTRUCTIONS_RETIRED)
        .run(20, event=BRANCHES_RETIRED)
        .read(0)
        .read(1)
        .build()
    )


@pytest.mark.parametrize(
    ("action", "event", "arch_reads", "final_reads"),
    [
        ("none", None, [12, 21], [13, 21]),
        ("allow", INSTRUCTIONS_RETIRED, [12, 0], [13, 0]),
        ("deny", INSTRUCTIONS_RETIRED, [1, 21], [2, 21]),
        ("allow", 0x0C1, [1, 0], [2, 0]),
        ("deny", 0x0C1, [12, 21], [13, 21]),
    ],
)
def test_filter_allow_deny(
    action: str, event: int | None, arch_reads: list[int], final_reads: list[int]
) -> None:
    # Before the filter is installed, PMC 0 counts the WRMSR_EVTSEL to PMC 1 (arch: +1) and
    # in final also its own enabling WRMSR (+2); the emulated branch counts 1 on each PMC.
    assert reads(filter_trace(action, event), "arch") == arch_reads
    assert reads(filter_trace(action, event), "final") == final_reads


def test_filter_none_ignores_its_key() -> None:
    trace = (
        TB().wrmsr_evtsel(0, INSTR).set_filter("none", INSTRUCTIONS_RETIRED).run(5).read(0).build()
    )
    assert reads(trace, "arch") == [5]


def test_filter_judges_the_selector_key_with_unit_mask() -> None:
    sel = eventsel(INSTRUCTIONS_RETIRED, unit_mask=1)
    trace = (
        TB()
        .wrmsr_evtsel(0, sel)
        .set_filter("deny", INSTRUCTIONS_RETIRED)
        .run(5, event=event_key(0xC0, 1))
        .read(0)
        .build()
    )
    assert reads(trace, "arch") == [5]
    assert reads(trace, "final") == [5]


def test_filter_is_checked_on_emulation_but_deferred_for_hardware() -> None:
    trace = (
        TB()
        .wrmsr_evtsel(0, INSTR)  # final: counts 1
        .vmentry()
        .set_filter("deny", INSTRUCTIONS_RETIRED)  # eventsel_hw stays on until the next entry
        .emulate(0)  # denied at once
        .vmentry()
        .read(0)
        .build()
    )
    r = simulate(trace, "final", timeline=True)
    assert r.hw_enabled.tolist() == [1, 1, 1, 1, 0, 0]  # record 0: EN as written
    assert r.reads.tolist() == [1]
    assert simulate(trace, "arch", timeline=True).hw_enabled.tolist() == [1, 1, 0, 0, 0, 0]


def test_reserved_selector_bits_are_dropped() -> None:
    trace = TB().wrmsr_evtsel(0, INSTR | 1 << 19 | 1 << 21 | 1 << 50).vmentry().build()
    assert int(simulate(trace, "arch").eventsel_hw[0]) == INSTR | GUEST_ONLY
    assert int(simulate(trace, "final").eventsel_hw[0]) == INSTR | GUEST_ONLY
    assert int(simulate(trace, "legacy").eventsel_hw[0]) == INSTR


# --------------------------------------------------------------------------------------------
# RESET
# --------------------------------------------------------------------------------------------


def reset_trace() -> Trace:
    return (
        TB()
        .wrmsr_efer(1)  # 0
        .wrmsr_evtsel(0, G_SEL | INT)  # 1
        .vmentry()  # 2
        .vmrun()  # 3: counted in both (1)
        .run(WRAP + 3)  # 4: 4, one overflow with PMI
        .read(0)  # 5
        .wrmsr_global_ctrl(0)  # 6
        .set_filter("deny", INSTRUCTIONS_RETIRED)  # 7
        .reset()  # 8: from guest mode, back to the reset state; the filter stays (revision 2)
        .read(0)  # 9
        .wrmsr_evtsel(0, INSTR)  # 10: denied by the filter that survived the reset
        .wrmsr_evtsel(1, BRANCH)  # 11: global control is back to all PMCs
        .run(7)  # 12: denied on PMC 0
        .run(5, event=BRANCHES_RETIRED)  # 13: PMC 1: 5
        .emulate(0, branch=True)  # 14: PMC 1: 6; the instruction is denied on PMC 0
        .read(0)  # 15
        .read(1)  # 16
        .build()
    )


@pytest.mark.parametrize("policy", ["final", "arch"])
def test_reset(policy: str) -> None:
    r = simulate(reset_trace(), policy, timeline=True)
    assert r.reads.tolist() == [4, 0, 0, 6]
    assert r.counters.tolist() == [0, 6, 0, 0, 0, 0]
    assert r.overflows.tolist() == [0] * 6
    assert r.pmis.tolist() == [0] * 6
    # PMC 0 programmed off under the kept deny filter; PMC 1 on.
    assert r.eventsel_hw.tolist()[:2] == [(INSTR | GUEST_ONLY) & ~EN, BRANCH | GUEST_ONLY]
    assert r.svme.tolist()[8] == False  # noqa: E712
    assert r.guest_mode.tolist()[7:9] == [True, False]
    assert int(r.hw_enabled[8]) == 0


def test_reset_clears_stale_eventsel_hw() -> None:
    trace = TB().wrmsr_efer(1).wrmsr_evtsel(0, G_SEL).vmentry().vmrun().vmexit().reset().build()
    r = simulate(trace, final(vmexit_timing="none"), timeline=True)
    assert r.hw_enabled.tolist() == [0, 1, 0, 1, 1, 0]  # record 1: EN as written
    assert r.eventsel_hw.tolist() == [0] * 6


# --------------------------------------------------------------------------------------------
# Validation (model.md section 4, docs/semantics.md)
# --------------------------------------------------------------------------------------------


def raw(**columns: list[int]) -> Trace:
    return Trace(**{name: np.array(values) for name, values in columns.items()})


INVALID = [
    ("unknown op", raw(op=[12, 15, 13]), 1, "unknown op"),
    ("pmc", TB().vmentry().read(6).build(), 1, "pmc"),
    ("pmc ctr", TB().wrmsr_ctr(6, 0).build(), 0, "pmc"),
    ("cpl emulate", TB().emulate(cpl=4).build(), 0, "cpl"),
    ("cpl run", TB().run(1, cpl=7).build(), 0, "cpl"),
    ("efer flag", TB().wrmsr_efer(2).build(), 0, "flag"),
    ("sns flag", TB().set_nested_state(2).build(), 0, "flag"),
    ("filter flag", raw(op=[9], flag=[3]), 0, "flag"),
    ("emulate flag", TB().emulate(0, branch=2).build(), 0, "flag"),
    ("run key", TB().run(1, event=1 << 20).build(), 0, "20 bits"),
    ("filter key", TB().set_filter("deny", 1 << 20).build(), 0, "20 bits"),
    ("filter none key", TB().set_filter("none", 1 << 20).build(), 0, "20 bits"),
    ("vmrun svme0", TB().vmrun().build(), 0, "svme = 0"),
    # revision 2: VMRUN_FAIL with svme = 0 is invalid like VMRUN
    ("vmrun_fail svme0", TB().vmrun_fail().build(), 0, "svme = 0"),
    (
        "vmrun_fail after efer 0",
        TB().wrmsr_efer(1).vmrun_fail().wrmsr_efer(0).vmrun_fail().build(),
        3,
        "svme = 0",
    ),
    ("vmrun_fail after reset", TB().wrmsr_efer(1).reset().vmrun_fail().build(), 2, "svme = 0"),
    # revision 2: VMRUN's cpl is 0..3
    ("vmrun cpl", TB().wrmsr_efer(1).vmrun(cpl=4).build(), 1, "cpl"),
    ("vmexit host", TB().wrmsr_efer(1).vmexit().build(), 1, "host mode"),
    ("efer guest", TB().wrmsr_efer(1).vmrun().wrmsr_efer(0).build(), 2, "guest mode"),
    ("vmrun guest", TB().wrmsr_efer(1).vmrun().vmrun().build(), 2, "guest mode"),
    ("vmrun_fail guest", TB().wrmsr_efer(1).vmrun().vmrun_fail().build(), 2, "guest mode"),
    ("sns svme0", TB().set_nested_state(1).build(), 0, "svme = 0"),
    # the mode follows the records
    ("after reset", TB().wrmsr_efer(1).vmrun().reset().vmexit().build(), 3, "host mode"),
    (
        "after forced leave",
        TB().wrmsr_efer(1).vmrun().forced_leave().vmexit().build(),
        3,
        "host mode",
    ),
    (
        "after sns 0",
        TB().wrmsr_efer(1).set_nested_state(1).set_nested_state(0).vmexit().build(),
        3,
        "host mode",
    ),
    ("efer cleared", TB().wrmsr_efer(1).wrmsr_efer(0).vmrun().build(), 2, "svme = 0"),
    # the first invalid record is reported
    ("first", TB().vmentry().read(9).vmexit().build(), 1, "pmc"),
    # rule order within one record
    ("cpl before key", raw(op=[11], cpl=[4], key=[1 << 20]), 0, "cpl"),
    ("flag before mode", TB().set_nested_state(2).build(), 0, "flag"),
    ("cpl before mode", TB().vmrun(cpl=4).build(), 0, "cpl"),
    ("op before pmc", raw(op=[200], pmc=[200]), 0, "unknown op"),
]


@pytest.mark.parametrize(
    ("trace", "index", "word"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_traces(trace: Trace, index: int, word: str) -> None:
    for check in (
        lambda: validate(trace),
        lambda: simulate(trace, "final"),
        lambda: simulate(trace, "arch"),
        lambda: compare(trace, "v4"),
    ):
        with pytest.raises(TraceError) as info:
            check()
        assert info.value.index == index
        assert word in info.value.reason


def test_pmc_limit_follows_n_pmcs() -> None:
    trace = TB().wrmsr_evtsel(1, INSTR).read(1).build()
    validate(trace, n_pmcs=2)
    with pytest.raises(TraceError) as info:
        validate(trace, n_pmcs=1)
    assert info.value.index == 0


VALID = [
    ("vmrun_fail with svme 1", TB().wrmsr_efer(1).vmrun_fail().build()),
    ("vmrun at cpl 3", TB().wrmsr_efer(1).vmrun(cpl=3).build()),
    ("forced leave in host mode", TB().forced_leave().build()),
    ("sns 0 in host mode", TB().set_nested_state(0).build()),
    ("sns 1 in guest mode", TB().wrmsr_efer(1).vmrun().set_nested_state(1).build()),
    (
        "unused fields",
        raw(
            op=[13, 12, 0, 11],
            pmc=[0, 99, 1, 200],
            cpl=[200, 9, 9, 3],
            flag=[9, 9, 7, 5],
            key=[1 << 31, 1 << 25, 1 << 25, 0xC0],
        ),
    ),
    ("empty", TB().build()),
]


@pytest.mark.parametrize("trace", [c[1] for c in VALID], ids=[c[0] for c in VALID])
def test_valid_traces(trace: Trace) -> None:
    assert validate(trace) is None
    for policy in ("final", "arch"):
        assert simulate(trace, policy).counters.tolist() == [0] * 6


def test_unused_fields_are_ignored() -> None:
    # READ(pmc 0), VMENTRY, WRMSR_EVTSEL(pmc 1, value 0), RUN(n=0): nothing counts; a RUN's pmc
    # and flag are not looked at, nor a READ's cpl or key.
    trace = raw(
        op=[0, 11, 13],
        pmc=[0, 200, 0],
        cpl=[9, 3, 200],
        flag=[7, 5, 9],
        key=[1 << 25, 0xC0, 1 << 31],
        value=[INSTR, 10, 0],
    )
    assert reads(trace, "arch") == [10]


@pytest.mark.parametrize("n_pmcs", [0, 7, -1])
def test_n_pmcs_out_of_range(n_pmcs: int) -> None:
    trace = worked_example()
    with pytest.raises(ValueError, match="n_pmcs"):
        simulate(trace, "final", n_pmcs=n_pmcs)
    with pytest.raises(ValueError, match="n_pmcs"):
        validate(trace, n_pmcs=n_pmcs)
    with pytest.raises(ValueError, match="n_pmcs"):
        compare(trace, "final", n_pmcs=n_pmcs)


def test_unknown_preset() -> None:
    with pytest.raises(PolicyError):
        simulate(worked_example(), "v2")


# --------------------------------------------------------------------------------------------
# Policies: the oracle's own preset table, and knobs read by attribute name
# --------------------------------------------------------------------------------------------


def test_presets_are_plain_knob_tables() -> None:
    # Section 7, transcribed: a few cells of the table, including revision 2's
    # set_nested_state_timing = sync of final and hybrid.
    assert PRESETS["final"]["set_nested_state_timing"] == "sync"
    assert PRESETS["hybrid"]["set_nested_state_timing"] == "sync"
    assert PRESETS["final"]["forced_leave_timing"] == "deferred"
    assert PRESETS["v1"]["forced_leave_timing"] == "none"
    assert PRESETS["legacy"]["hg"] == "reserved"
    assert PRESETS["v4"]["emul_mode_aware"] is False
    assert PRESETS["arch"] == {
        "model": "arch",
        "enabling_wrmsr": "old",
        "efer_retire": "new",
        "vmrun_retire": "guest",
        "failed_vmrun_retire": "host",
    }


def test_the_oracle_does_not_use_svmpmu_policy_or_the_core_at_run_time() -> None:
    # Imports of svmpmu.policy only under `if TYPE_CHECKING:`; no import of the core at all.
    tree = ast.parse(inspect.getsource(svmpmu.oracle))
    type_checking_only = {
        id(node)
        for top in tree.body
        if isinstance(top, ast.If) and ast.unparse(top.test) == "TYPE_CHECKING"
        for node in ast.walk(top)
    }
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [alias.name for alias in node.names]
            assert not any("_core" in name for name in names), ast.unparse(node)
            if any("policy" in name for name in names):
                assert id(node) in type_checking_only, ast.unparse(node)
    assert not hasattr(svmpmu.oracle, "resolve_policy")
    assert not hasattr(svmpmu.oracle, "Policy")


def test_a_policy_is_read_by_attribute_name() -> None:
    # Any object with the knobs as attributes will do; only the knobs of its model are read.
    kvm = SimpleNamespace(**{**PRESETS["final"], "vmrun_order": "before_entry"})
    assert reads(worked_example(), kvm) == [1000]
    ref = SimpleNamespace(**{**PRESETS["arch"], "vmrun_retire": "host"})
    assert reads(worked_example(), ref) == [1000]
    # The same knobs through a Policy.
    assert reads(worked_example(), final(vmrun_order="before_entry")) == [1000]


@pytest.mark.parametrize(
    "policy",
    [
        SimpleNamespace(**{k: v for k, v in PRESETS["final"].items() if k != "hg"}),
        SimpleNamespace(**{**PRESETS["final"], "vmrun_timing": "later"}),
        SimpleNamespace(**{**PRESETS["final"], "emul_mode_aware": 1}),
        SimpleNamespace(**{**PRESETS["final"], "model": "kvm2"}),
        SimpleNamespace(**{**PRESETS["arch"], "vmrun_retire": "guest mode"}),
        42,
        None,
    ],
    ids=["missing", "bad-value", "int-for-bool", "bad-model", "bad-reference-knob", "int", "none"],
)
def test_bad_policies(policy: object) -> None:
    with pytest.raises(PolicyError):
        simulate(worked_example(), policy)


# --------------------------------------------------------------------------------------------
# compare (model.md section 8)
# --------------------------------------------------------------------------------------------


def test_compare_final_matches_arch_on_the_worked_example() -> None:
    c = compare(worked_example(), "final")
    assert isinstance(c, Comparison)
    assert not c.diverges
    assert not c
    assert c.first_divergence is None
    assert c.differing_pmcs == ()
    assert c.differing_reads == ()
    assert c.reference.reads.tolist() == [1001]


def test_compare_before_entry_diverges_at_vmrun() -> None:
    c = compare(worked_example(), final(vmrun_order="before_entry"))
    assert c.diverges
    assert c.first_divergence == 3  # the VMRUN record
    assert c.differing_pmcs == (0,)
    assert c.differing_reads == (0,)
    assert c.policy.reads.tolist() == [1000]


def test_compare_v4_diverges_at_the_enabling_wrmsr() -> None:
    c = compare(worked_example(), "v4")
    assert c.first_divergence == 0
    assert (c.policy.reads.tolist(), c.reference.reads.tolist()) == ([1003], [1001])


def test_compare_with_another_reference() -> None:
    assert not compare(worked_example(), "v4", reference="v4").diverges
    c = compare(worked_example(), final(vmrun_order="before_entry"), reference="v4")
    assert c.first_divergence == 0
    assert c.differing_reads == (0,)


def test_compare_overflow_only_divergence_has_a_location() -> None:
    trace = (
        TB()
        .wrmsr_efer(1)
        .wrmsr_evtsel(0, G_SEL)
        .vmentry()
        .vmrun()  # both: 1
        .vmexit()  # not hooked: stays on in KVM
        .run(WRAP)  # KVM counts 2^48 in L1: same counter value, one more overflow
        .read(0)
        .build()
    )
    c = compare(trace, final(vmexit_timing="none"))
    assert c.diverges
    assert c.first_divergence == 5
    assert c.differing_pmcs == (0,)
    assert c.differing_reads == ()
    assert c.policy.counters.tolist() == c.reference.counters.tolist()
    assert (int(c.policy.overflows[0]), int(c.reference.overflows[0])) == (1, 0)


def test_compare_temporary_difference_is_no_divergence() -> None:
    trace = (
        TB()
        .wrmsr_efer(1)
        .wrmsr_evtsel(0, G_SEL)
        .vmentry()
        .vmrun()  # policy (before_entry) misses it: 0 vs 1
        .run(1000)
        .wrmsr_ctr(0, 0)  # both: 0 + its own WRMSR in guest mode = 1
        .vmexit()
        .build()
    )
    c = compare(trace, final(vmrun_order="before_entry"))
    assert not c.diverges
    assert c.first_divergence is None
    assert c.policy.counters.tolist() == c.reference.counters.tolist() == [1, 0, 0, 0, 0, 0]


def test_compare_differing_reads_positions() -> None:
    trace = (
        TB()
        .wrmsr_evtsel(0, G_SEL)
        .wrmsr_efer(1)
        .read(0)
        .vmentry()
        .vmrun()
        .read(0)
        .run(10)
        .read(0)
        .build()
    )
    c = compare(trace, final(vmrun_order="before_entry"))
    assert c.differing_reads == (1, 2)
    assert c.first_divergence == 4
    assert c.policy.reads.tolist() == [0, 0, 10]
    assert c.reference.reads.tolist() == [0, 1, 11]


# --------------------------------------------------------------------------------------------
# Random traces: properties that hold whatever the trace, and speed
# --------------------------------------------------------------------------------------------


def random_trace(seed: int, length: int) -> Trace:
    """A valid random trace: selectors with any H/G, OS/USR, INT and EN bits; VMRUN into L2 at
    CPL 0 or 3; every op, RESET included."""
    rng = random.Random(seed)
    builder = TB()
    svme = guest = False
    keys = [INSTRUCTIONS_RETIRED, BRANCHES_RETIRED]
    while len(builder) < length:
        choice = rng.randrange(14)
        if choice == 0:
            builder.wrmsr_evtsel(
                rng.randrange(6),
                eventsel(
                    rng.choice(keys),
                    usr=rng.random() < 0.8,
                    os=rng.random() < 0.8,
                    host_only=rng.random() < 0.4,
                    guest_only=rng.random() < 0.4,
                    interrupt=rng.random() < 0.5,
                    enable=rng.random() < 0.9,
                ),
            )
        elif choice == 1 and not guest:
            svme = rng.random() < 0.7
            builder.wrmsr_efer(svme)
        elif choice == 2 and svme and not guest:
            builder.vmrun(cpl=rng.choice((0, 3)))
            guest = True
        elif choice == 3 and guest:
            builder.vmexit()
            guest = False
        elif choice == 4:
            builder.run(rng.randrange(1 << 47), rng.choice(keys), rng.randrange(4))
        elif choice == 5:
            builder.emulate(rng.randrange(4), rng.random() < 0.5)
        elif choice == 6:
            builder.read(rng.randrange(6))
        elif choice == 7:
            builder.set_filter(rng.choice(["none", "allow", "deny"]), rng.choice(keys))
        elif choice == 8:
            builder.vmentry()
        elif choice == 9:
            builder.wrmsr_global_ctrl(rng.randrange(64))
        elif choice == 10:
            builder.forced_leave()
            guest = False
        elif choice == 11 and svme and not guest:
            builder.vmrun_fail()
        elif choice == 12 and svme:
            guest = rng.random() < 0.5
            builder.set_nested_state(guest)
        elif choice == 13 and rng.random() < 0.1:
            builder.reset()
            svme = guest = False
    return builder.build()


@pytest.mark.parametrize("seed", range(5))
def test_knobs_of_the_other_model_are_ignored(seed: int) -> None:
    trace = random_trace(seed, 400)
    kvm_only = {
        "svme0": "ignore",
        "hg": "reserved",
        "emul_mode_aware": False,
        "filter_on_sync": False,
        "efer_timing": "none",
        "vmrun_timing": "deferred",
        "vmrun_order": "before_entry",
    }
    arch_only = {
        "enabling_wrmsr": "new",
        "efer_retire": "old",
        "vmrun_retire": "host",
        "failed_vmrun_retire": "guest",
    }
    assert simulate(trace, arch(**kvm_only), timeline=True) == simulate(
        trace, "arch", timeline=True
    )
    assert simulate(trace, final(**arch_only), timeline=True) == simulate(
        trace, "final", timeline=True
    )


@pytest.mark.parametrize("seed", range(5))
def test_random_traces_are_self_consistent(seed: int) -> None:
    trace = random_trace(seed, 400)
    n_reads = int(np.count_nonzero(trace.op == 13))
    for policy in ("arch", "final", "v4", "v3", "v1", "hybrid", "legacy"):
        r = simulate(trace, policy, timeline=True)
        assert len(r.reads) == n_reads
        assert len(r.hw_enabled) == len(trace)
        assert int(r.counters.max()) < WRAP
        assert np.all(r.pmis <= r.overflows)
        assert not compare(trace, policy, reference=policy).diverges


def test_a_few_thousand_records_well_under_a_second() -> None:
    trace = random_trace(42, 5000)
    start = time.perf_counter()
    simulate(trace, "final", timeline=True)
    simulate(trace, "arch", timeline=True)
    assert time.perf_counter() - start < 1.0


# --------------------------------------------------------------------------------------------
# The core and the oracle agree on random traces (VMRUN into L2 at CPL 0 and 3)
# --------------------------------------------------------------------------------------------


def assert_core_agrees(trace: Trace, policy: object, n_pmcs: int = 6) -> None:
    core = svmpmu.simulate(trace, policy, n_pmcs=n_pmcs, timeline=True)
    ours = simulate(trace, policy, n_pmcs=n_pmcs, timeline=True)
    if core != ours:
        pytest.fail(
            f"core and oracle disagree under {policy}:\n{trace.format(None)}\n"
            f"core:\n{core.format()}\noracle:\n{ours.format()}"
        )


def test_random_traces_have_vmruns_at_both_cpls() -> None:
    cpls = set()
    for seed in range(5):
        trace = random_trace(seed, 400)
        cpls |= set(trace.cpl[trace.op == 4].tolist())
    assert cpls == {0, 3}


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("seed", range(3))
def test_core_and_oracle_agree_on_random_traces(name: str, seed: int) -> None:
    # By name: each implementation resolves the preset through its own table.
    assert_core_agrees(random_trace(100 + seed, 400), name)


@pytest.mark.parametrize("seed", range(20))
def test_core_and_oracle_agree_under_random_knobs(seed: int) -> None:
    rng = random.Random(seed)
    policy = Policy(**{knob: rng.choice(values) for knob, values in svmpmu.KNOB_VALUES.items()})
    n_pmcs = rng.randint(1, 6)
    trace = random_trace(200 + seed, 300)
    # keep the PMC indices below n_pmcs
    columns = trace.columns()
    columns["pmc"] = columns["pmc"] % n_pmcs
    assert_core_agrees(Trace.from_columns(columns), policy, n_pmcs=n_pmcs)


@pytest.mark.parametrize("name", [n for n in PRESETS if n != "arch"])
def test_core_and_oracle_compare_alike(name: str) -> None:
    for seed in range(3):
        trace = random_trace(300 + seed, 200)
        a = svmpmu.compare(trace, name, "arch")
        b = compare(trace, name, "arch")
        assert_same_comparison(a, b)
