"""Spec section 6: the KVM model and its knobs.

``hw`` lists are the timeline's hw_enabled masks (bit i: eventsel_hw[i].EN after the record).
Revision 2 (§10 change 5): a selector write that changes the value programs eventsel_hw at
once, with EN as written, and the re-evaluation at the next VM-entry corrects EN; so a lane is
on right after an enabling write even where the counter must not count. Revision 2 (§10
change 2): SET_NESTED_STATE(1) is the set_nested_state flow, SET_NESTED_STATE(0) the
forced_leave flow.
"""

from __future__ import annotations

import pytest
from spec_helpers import IR, G, H, S, ints, with_knobs

from svmpmu import EN, TraceBuilder


def _efer_timing_trace():
    return (
        TraceBuilder()
        .wrmsr_evtsel(0, S | H)  # 0: svme=0: emul_ok false (off); eventsel_hw on as written
        .vmentry()  # 1: pending {0} re-evaluated: off; pending empty
        .wrmsr_efer(1)  # 2: the transition
        .vmentry()  # 3
        .emulate(cpl=0)  # 4
        .read(0)  # 5
        .build()
    )


@pytest.mark.parametrize(
    ("policy", "read", "hw"),
    [
        # arch: EFER counted in svme=1 host (H: yes), EMULATE too: 2. Ideal hw on from record 2.
        ("arch", 2, [0, 0, 1, 1, 1, 1]),
        # sync: re-evaluated at the WRMSR, before it retires: 2.
        (with_knobs("final", efer_timing="sync"), 2, [1, 0, 1, 1, 1, 1]),
        # deferred: the WRMSR retires with the old emul_ok (0); re-evaluated at VMENTRY: 1.
        (with_knobs("final", efer_timing="deferred"), 1, [1, 0, 0, 1, 1, 1]),
        # none: eventsel_hw and emul_ok stay stale (off): 0.
        (with_knobs("final", efer_timing="none"), 0, [1, 0, 0, 0, 0, 0]),
    ],
    ids=["arch", "sync", "deferred", "none"],
)
def test_efer_timing(impl, policy, read, hw):
    result = impl(_efer_timing_trace(), policy, timeline=True)
    assert ints(result.reads) == [read]
    assert ints(result.hw_enabled) == hw
    assert ints(result.svme) == [0, 0, 1, 1, 1, 1]
    assert ints(result.guest_mode) == [0] * 6


def _vmrun_timing_trace():
    return (
        TraceBuilder()
        .wrmsr_evtsel(0, S | G)  # 0: svme=0: emul_ok off; eventsel_hw on as written
        .wrmsr_efer(1)  # 1: final sync: off (G in host)
        .vmentry()  # 2: pending {0} re-evaluated: off
        .vmrun(cpl=3)  # 3: the transition; after_entry: retired at CPL 3 (S has USR)
        .emulate(cpl=0)  # 4
        .run(100, IR, cpl=3)  # 5
        .read(0)  # 6
        .build()
    )


@pytest.mark.parametrize(
    ("policy", "read", "hw"),
    [
        # arch: VMRUN in guest (1), EMULATE (2), RUN (102).
        ("arch", 102, [0, 0, 0, 1, 1, 1, 1]),
        # sync: re-evaluated before VMRUN retires: 102.
        ("final", 102, [1, 0, 0, 1, 1, 1, 1]),
        # deferred: VMRUN and the EMULATE retire with emul_ok off; the RUN's entry turns it on.
        (with_knobs("final", vmrun_timing="deferred"), 100, [1, 0, 0, 0, 0, 1, 1]),
        # none: nothing pending at the RUN (the VMENTRY emptied it): off for good.
        (with_knobs("final", vmrun_timing="none"), 0, [1, 0, 0, 0, 0, 0, 0]),
    ],
    ids=["arch", "sync", "deferred", "none"],
)
def test_vmrun_timing(impl, policy, read, hw):
    result = impl(_vmrun_timing_trace(), policy, timeline=True)
    assert ints(result.reads) == [read]
    assert ints(result.hw_enabled) == hw
    assert ints(result.guest_mode) == [0, 0, 0, 1, 1, 1, 1]


def _vmexit_timing_trace():
    return (
        TraceBuilder()
        .wrmsr_efer(1)  # 0
        .wrmsr_evtsel(0, S | G)  # 1: host: emul_ok off; eventsel_hw on as written
        .vmentry()  # 2: off
        .vmrun()  # 3: sync: on; retired at CPL 0 (1)
        .run(10, IR, cpl=3)  # 4: 11
        .vmexit()  # 5: the transition
        .emulate(cpl=0)  # 6
        .run(5, IR, cpl=3)  # 7
        .read(0)  # 8
        .build()
    )


@pytest.mark.parametrize(
    ("policy", "read", "hw"),
    [
        ("arch", 11, [0, 0, 0, 1, 1, 0, 0, 0, 0]),
        ("final", 11, [0, 1, 0, 1, 1, 0, 0, 0, 0]),
        # deferred: the EMULATE counts with the stale emul_ok (12); the RUN's entry: off.
        (with_knobs("final", vmexit_timing="deferred"), 12, [0, 1, 0, 1, 1, 1, 1, 0, 0]),
        # none: stale for good: EMULATE (12) and RUN 5 in L1 (17).
        (with_knobs("final", vmexit_timing="none"), 17, [0, 1, 0, 1, 1, 1, 1, 1, 1]),
    ],
    ids=["arch", "sync", "deferred", "none"],
)
def test_vmexit_timing(impl, policy, read, hw):
    result = impl(_vmexit_timing_trace(), policy, timeline=True)
    assert ints(result.reads) == [read]
    assert ints(result.hw_enabled) == hw


RESERVED_GARBAGE = (1 << 19) | (1 << 21) | (1 << 36) | (1 << 63)


def _hg_trace():
    return (
        TraceBuilder()
        .wrmsr_evtsel(0, S | H | G)
        .wrmsr_evtsel(1, S | G | RESERVED_GARBAGE)
        .vmentry()
        .wrmsr_efer(1)
        .vmentry()
        .read(0)
        .read(1)
        .run(100, IR, cpl=3)
        .read(0)
        .read(1)
        .build()
    )


@pytest.mark.parametrize(
    ("policy", "hw", "deltas"),
    [
        # honoured (svme=1 host): PMC0 HG on -> (sel & ~H) | G; PMC1 G off -> EN cleared.
        # Bits 19/21/36/63 are dropped on write.
        ("final", [S | G, (S | G) & ~EN], [100, 0]),
        ("arch", [S | G, (S | G) & ~EN], [100, 0]),
        # reserved: bits 40/41 dropped too, eventsel_hw = eventsel with EN (no G stuffed),
        # every counter counts in both modes.
        (with_knobs("final", hg="reserved"), [S, S], [100, 100]),
        ("legacy", [S, S], [100, 100]),
    ],
    ids=["final", "arch", "final-reserved", "legacy"],
)
def test_hg_reserved(impl, policy, hw, deltas):
    result = impl(_hg_trace(), policy)
    assert ints(result.eventsel_hw) == [*hw, 0, 0, 0, 0]
    r = ints(result.reads)
    assert [r[2] - r[0], r[3] - r[1]] == deltas


@pytest.mark.parametrize(
    ("policy", "hw", "deltas"),
    [
        # off: SVME=0 with any H/G bit: no counting (RUN nor emulated); EN cleared in hw.
        ("final", [(S | G) & ~EN] * 3 + [S | G], [0, 0, 0, 101]),
        ("arch", [(S | G) & ~EN] * 3 + [S | G], [0, 0, 0, 101]),
        # ignore: H/G ignored with SVME=0; emul_ok (mode-aware) counts too.
        (with_knobs("final", svme0="ignore"), [S | G] * 4, [101, 101, 101, 101]),
        ("hybrid", [S | G] * 4, [101, 101, 101, 101]),
    ],
    ids=["final-off", "arch", "final-ignore", "hybrid"],
)
def test_svme0(impl, policy, hw, deltas):
    b = (
        TraceBuilder()
        .wrmsr_evtsel(0, S | G)
        .wrmsr_evtsel(1, S | H)
        .wrmsr_evtsel(2, S | H | G)
        .wrmsr_evtsel(3, S)
    )
    for i in range(4):
        b.read(i)
    b.run(100, IR, cpl=3).emulate(cpl=3)
    for i in range(4):
        b.read(i)
    result = impl(b.build(), policy)
    assert ints(result.eventsel_hw) == [*hw, 0, 0]
    r = ints(result.reads)
    assert [r[4 + i] - r[i] for i in range(4)] == deltas


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # PMC0 = G; in host mode nothing counts it under arch.
        ("arch", 0),
        # mode-aware emul_ok: false at svme=0 (off) and at svme=1 host; RUN off too.
        ("final", 0),
        # emul_ok = EN: the enabling WRMSR (1), WRMSR_EFER (2), EMULATE at CPL 3 (3); the RUN
        # is still governed by eventsel_hw (off in host mode after the RUN's VM-entry).
        (with_knobs("final", emul_mode_aware=False), 3),
    ],
    ids=["arch", "final", "final-not-mode-aware"],
)
def test_emul_mode_aware(impl, policy, expected):
    trace = (
        TraceBuilder()
        .wrmsr_evtsel(0, S | G)
        .wrmsr_efer(1)
        .emulate(cpl=3)
        .run(100, IR, cpl=3)
        .read(0)
        .build()
    )
    assert ints(impl(trace, policy).reads) == [expected]


@pytest.mark.parametrize(
    ("policy", "delta", "hw"),
    [
        ("arch", 0, [0] * 8),
        # filter_on_sync=True: the write turns the lane on (EN as written); the EFER sync
        # (host, G) turns it off; the VMRUN sync re-evaluation keeps the deny filter: off.
        ("final", 0, [1, 0, 0, 0, 0, 0, 0, 0]),
        # False: the VMRUN sync re-evaluation ignores the filter and enables PMC0 (G, guest);
        # nothing is pending at the RUN's VM-entry, so the denied event counts.
        (with_knobs("final", filter_on_sync=False), 100, [1, 0, 0, 0, 1, 1, 1, 1]),
    ],
    ids=["arch", "final", "final-filter_on_sync-false"],
)
def test_filter_on_sync(impl, policy, delta, hw):
    trace = (
        TraceBuilder()
        .wrmsr_evtsel(0, S | G)
        .wrmsr_efer(1)
        .set_filter("deny", IR)
        .vmentry()
        .vmrun()
        .read(0)
        .run(100, IR, cpl=3)
        .read(0)
        .build()
    )
    result = impl(trace, policy, timeline=True)
    r = ints(result.reads)
    assert r[1] - r[0] == delta
    assert ints(result.hw_enabled) == hw


def test_sync_reevaluation_leaves_pending_alone(impl):
    # SET_FILTER makes every PMC pending; a sync VMRUN without the filter turns PMC0 on, but
    # the RUN's entry still re-evaluates the pending PMCs with the filter: off again (semantics,
    # "Synchronous re-evaluation").
    trace = (
        TraceBuilder()
        .set_filter("deny", IR)  # 0: all pending
        .wrmsr_efer(1)  # 1
        .wrmsr_evtsel(0, S | G)  # 2: on as written; emul_ok off (G, host)
        .vmrun()  # 3: sync without the filter: on; the VMRUN is denied (filter at retirement)
        .run(10, IR, cpl=3)  # 4: the entry re-evaluates PMC0 with the filter: off
        .read(0)  # 5
        .build()
    )
    result = impl(trace, with_knobs("final", filter_on_sync=False), timeline=True)
    assert ints(result.reads) == [0]
    assert ints(result.hw_enabled) == [0, 0, 1, 1, 0, 0]


def test_global_ctrl_changes_become_pending(impl):
    # semantics: the affected PMCs are those whose global-control bit changed. Global control
    # is not folded into eventsel_hw, so the lanes follow EN only; a RUN needs both.
    trace = (
        TraceBuilder()
        .wrmsr_evtsel(0, S)  # 0: on (as written)
        .wrmsr_evtsel(1, S)  # 1: on
        .vmentry()  # 2: both re-evaluated: on
        .wrmsr_global_ctrl(0b10)  # 3: PMC0 disabled; the WRMSR counts on PMC1 only
        .run(10, IR, cpl=3)  # 4: PMC1 only
        .read(0)
        .read(1)
        .build()
    )
    for policy in ("arch", "final"):
        result = impl(trace, policy, timeline=True)
        assert ints(result.hw_enabled) == [0b01] + [0b11] * 6
    # arch: PMC0 counts the write to PMC1 (1); PMC1 the global WRMSR and the RUN (11).
    assert ints(impl(trace, "arch").reads) == [1, 11]
    # final: both enabling writes count too: PMC0 2, PMC1 12.
    assert ints(impl(trace, "final").reads) == [2, 12]


def _forced_leave_trace():
    return (
        TraceBuilder()
        .wrmsr_evtsel(0, S | G)  # 0: on as written
        .wrmsr_evtsel(1, S | H)  # 1: on as written
        .wrmsr_efer(1)  # 2: sync (final): PMC0 off, PMC1 on; EFER retires on PMC1
        .vmrun()  # 3: sync, after_entry: PMC0 on, PMC1 off; VMRUN retires on PMC0
        .vmentry()  # 4: pending {0,1} from the writes: re-evaluated, guest
        .forced_leave()  # 5: the transition under test (guest -> host, svme=1)
        .emulate(cpl=0)  # 6: before any VM-entry: uses emul_ok as it is now
        .vmentry()  # 7
        .run(100, IR, cpl=3)  # 8: in host mode
        .read(0)  # 9
        .read(1)  # 10
        .build()
    )


@pytest.mark.parametrize(
    ("policy", "reads", "hw"),
    [
        # arch: EFER -> PMC1 (H, host); VMRUN -> PMC0 (G, guest); EMULATE and RUN in host ->
        # PMC1: [1, 102]. Ideal hw: host {1} from record 2, guest {0} at 3-4, host from 5.
        ("arch", [1, 102], [0, 0, 2, 1, 1, 2, 2, 2, 2, 2, 2]),
        # sync: re-evaluated at the leave: same counts as arch; lanes on as written at 0-1.
        (
            with_knobs("final", forced_leave_timing="sync"),
            [1, 102],
            [1, 3, 2, 1, 1, 2, 2, 2, 2, 2, 2],
        ),
        # deferred: stale guest-mode emul_ok/hw until the VMENTRY: EMULATE counts on PMC0;
        # the RUN (after the VM-entry) counts on PMC1.
        ("final", [2, 101], [1, 3, 2, 1, 1, 1, 1, 2, 2, 2, 2]),
        # none: stale for good: EMULATE and RUN count on PMC0 (G) in host mode.
        (
            with_knobs("final", forced_leave_timing="none"),
            [102, 1],
            [1, 3, 2, 1, 1, 1, 1, 1, 1, 1, 1],
        ),
    ],
    ids=["arch", "sync", "deferred", "none"],
)
def test_forced_leave_timing(impl, policy, reads, hw):
    result = impl(_forced_leave_trace(), policy, timeline=True)
    assert ints(result.reads) == reads
    assert ints(result.hw_enabled) == hw
    assert ints(result.svme) == [0, 0] + [1] * 9
    assert ints(result.guest_mode) == [0, 0, 0, 1, 1] + [0] * 6


def _set_nested_state_trace():
    b = TraceBuilder()
    b.wrmsr_evtsel(0, S | G)  # 0: on as written
    b.wrmsr_evtsel(1, S | H)  # 1: on as written
    b.wrmsr_efer(1)  # 2: sync: PMC0 off, PMC1 on; EFER retires on PMC1
    b.vmentry()  # 3: pending {0,1} re-evaluated, host
    b.set_nested_state(1)  # 4: enter guest mode: the set_nested_state flow
    b.emulate(cpl=0)  # 5
    b.read(0).read(1)  # 6, 7
    b.vmentry()  # 8
    b.run(100, IR, cpl=3)  # 9: in guest mode
    b.read(0).read(1)  # 10, 11
    b.set_nested_state(0)  # 12: back to host mode: the forced_leave flow (revision 2)
    b.emulate(cpl=0)  # 13
    b.read(0).read(1)  # 14, 15
    b.vmentry()  # 16
    b.run(1000, IR, cpl=3)  # 17: in host mode
    b.read(0).read(1)  # 18, 19
    return b.build()


_HOST = [2]  # PMC1 (H) on
_GUEST = [1]  # PMC0 (G) on
_START = [1, 3, 2, 2]  # both on as written, then host mode


@pytest.mark.parametrize(
    ("policy", "reads", "hw"),
    [
        # arch: EFER -> PMC1; EMULATE in guest -> PMC0; RUN 100 in guest -> PMC0; EMULATE in
        # host -> PMC1; RUN 1000 in host -> PMC1.
        ("arch", [1, 1, 101, 1, 101, 2, 101, 1002], [0, 0, 2, 2] + _GUEST * 8 + _HOST * 8),
        # Both flows sync: counts as arch.
        (
            with_knobs("final", set_nested_state_timing="sync", forced_leave_timing="sync"),
            [1, 1, 101, 1, 101, 2, 101, 1002],
            _START + _GUEST * 8 + _HOST * 8,
        ),
        # final as section 7 has it (revision 2): entering sync, leaving through the deferred
        # forced_leave flow: the EMULATE after SET_NESTED_STATE(0) still counts on PMC0 (102),
        # and the RUN after the VMENTRY on PMC1 (1001).
        (
            with_knobs("final", set_nested_state_timing="sync", forced_leave_timing="deferred"),
            [1, 1, 101, 1, 102, 1, 102, 1001],
            _START + _GUEST * 12 + _HOST * 4,
        ),
        # Both deferred: each EMULATE right after the change still uses the old emul_ok (PMC1,
        # then PMC0); the RUNs follow a VM-entry and count right.
        (
            with_knobs("final", set_nested_state_timing="deferred", forced_leave_timing="deferred"),
            [0, 2, 100, 2, 101, 2, 101, 1002],
            _START + _HOST * 4 + _GUEST * 8 + _HOST * 4,
        ),
        # Entering deferred, leaving sync: SET_NESTED_STATE(0) follows forced_leave_timing, not
        # set_nested_state_timing: the EMULATE after it counts on PMC1 (3).
        (
            with_knobs("final", set_nested_state_timing="deferred", forced_leave_timing="sync"),
            [0, 2, 100, 2, 100, 3, 100, 1003],
            _START + _HOST * 4 + _GUEST * 4 + _HOST * 8,
        ),
        # Both none: emul_ok and eventsel_hw stay those of host mode for good: everything
        # counts on PMC1 (H), including the RUN in guest mode.
        (
            with_knobs("final", set_nested_state_timing="none", forced_leave_timing="none"),
            [0, 2, 0, 102, 0, 103, 0, 1103],
            _START + _HOST * 16,
        ),
    ],
    ids=["arch", "sync-sync", "sync-deferred", "deferred-deferred", "deferred-sync", "none-none"],
)
def test_set_nested_state_timing(impl, policy, reads, hw):
    result = impl(_set_nested_state_trace(), policy, timeline=True)
    assert ints(result.reads) == reads
    assert ints(result.hw_enabled) == hw
    assert ints(result.svme) == [0, 0] + [1] * 18
    assert ints(result.guest_mode) == [0] * 4 + [1] * 8 + [0] * 8


def test_set_nested_state_to_the_current_mode_is_no_transition(impl):
    # Already in guest mode: SET_NESTED_STATE(1) changes nothing; already in host mode,
    # SET_NESTED_STATE(0) neither. PMC0 = G: the VMRUN (1) and the RUN in guest mode (5).
    trace = (
        TraceBuilder()
        .wrmsr_efer(1)
        .wrmsr_evtsel(0, S | G)
        .set_nested_state(0)
        .vmentry()
        .vmrun()
        .set_nested_state(1)
        .run(4, IR, cpl=3)
        .read(0)
        .build()
    )
    for policy in ("arch", with_knobs("final", set_nested_state_timing="sync")):
        result = impl(trace, policy, timeline=True)
        assert ints(result.reads) == [5]
        assert ints(result.guest_mode) == [0, 0, 0, 0, 1, 1, 1, 1]


def test_filter_is_checked_on_emulation_but_deferred_for_hardware(impl):
    trace = (
        TraceBuilder()
        .wrmsr_evtsel(0, S)  # 0: final: counts 1; on as written
        .vmentry()  # 1
        .set_filter("deny", IR)  # 2: eventsel_hw stays on until the next entry
        .emulate(cpl=0)  # 3: denied at once
        .vmentry()  # 4
        .read(0)  # 5
        .build()
    )
    result = impl(trace, "final", timeline=True)
    assert ints(result.hw_enabled) == [1, 1, 1, 1, 0, 0]
    assert ints(result.reads) == [1]
    result = impl(trace, "arch", timeline=True)
    assert ints(result.hw_enabled) == [1, 1, 0, 0, 0, 0]
    assert ints(result.reads) == [0]
