"""Spec section 7: the presets; the kernel selftest (background.md) under every preset.

Presets are passed by name, so that the core resolves them through its own table and the
oracle through its own transcription of section 7 (svmpmu.oracle.PRESETS), which
test_oracle_preset_table checks against the core's.
"""

from __future__ import annotations

import pytest
from spec_helpers import (
    IR,
    M48,
    MODE_TABLE,
    MODE_TABLE_ALL,
    MODE_TABLE_IGNORE,
    RUN_N,
    G,
    H,
    S,
    ints,
    mode_table_deltas,
)

import svmpmu
import svmpmu.oracle
from svmpmu import TraceBuilder

PRESET_NAMES = ["final", "v4", "v3", "v1", "hybrid", "legacy", "arch"]

# The reference knobs of section 5, with their defaults: a KVM preset ignores them, and a
# Policy of a KVM preset holds the defaults.
REFERENCE_DEFAULTS = {
    "enabling_wrmsr": "old",
    "efer_retire": "new",
    "vmrun_retire": "guest",
    "failed_vmrun_retire": "host",
}


def test_oracle_preset_names():
    assert set(svmpmu.oracle.PRESETS) == set(PRESET_NAMES)
    assert set(svmpmu.PRESETS) == set(PRESET_NAMES)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_oracle_preset_table(name):
    # The oracle's own transcription of section 7 against the presets of svmpmu (the core's),
    # knob by knob.
    theirs = svmpmu.PRESETS[name]
    ours = svmpmu.oracle.PRESETS[name]
    expected_knobs = {"model"} | (
        set(REFERENCE_DEFAULTS)
        if name == "arch"
        else {
            "svme0",
            "hg",
            "emul_mode_aware",
            "filter_on_sync",
            "efer_timing",
            "vmrun_timing",
            "vmexit_timing",
            "forced_leave_timing",
            "set_nested_state_timing",
            "vmrun_order",
        }
    )
    assert set(ours) == expected_knobs
    got = {knob: getattr(theirs, knob) for knob in ours}
    assert got == ours
    for knob, value in ours.items():  # True is not 1, nor "yes"
        assert type(getattr(theirs, knob)) is type(value), knob
    if name != "arch":
        assert {knob: getattr(theirs, knob) for knob in REFERENCE_DEFAULTS} == REFERENCE_DEFAULTS


@pytest.mark.parametrize(
    ("name", "knobs"),
    [
        # Revision 2 (section 10, change 2): final and hybrid enter through the VMRUN hook.
        ("final", {"set_nested_state_timing": "sync", "forced_leave_timing": "deferred"}),
        ("hybrid", {"set_nested_state_timing": "sync", "forced_leave_timing": "deferred"}),
        ("v4", {"set_nested_state_timing": "deferred", "forced_leave_timing": "deferred"}),
        ("v3", {"set_nested_state_timing": "sync", "forced_leave_timing": "sync"}),
        ("v1", {"set_nested_state_timing": "none", "forced_leave_timing": "none"}),
        ("legacy", {"set_nested_state_timing": "none", "forced_leave_timing": "none"}),
    ],
)
def test_nested_state_timings_of_revision_2(name, knobs):
    assert {knob: svmpmu.oracle.PRESETS[name][knob] for knob in knobs} == knobs, "oracle"
    assert {knob: getattr(svmpmu.PRESETS[name], knob) for knob in knobs} == knobs, "svmpmu"


# ---------------------------------------------------------------------------------------------
# The KVM selftest (background.md, "The KVM selftest").
#
# Four counters on instructions retired with OS, USR and EN: PMC0 no H/G, PMC1 G, PMC2 H,
# PMC3 H+G. Each step "runs a loop": modelled as RUN(n=1000, instructions retired, CPL 3) (a
# user-mode loop; every selector has USR). Only the RUN is measured: READ of PMCs 0..3 just
# before and just after it, so the emulated WRMSR/VMRUN records of the step do not enter the
# deltas. The RUN itself includes its implicit VM-entry (spec section 6), which services
# `pending` with the filter. Revision 2 changes none of these expectations: the steps have no
# SET_NESTED_STATE, RESET or failed VMRUN, the VMRUNs are not measured, and eventsel_hw right
# after a selector write (EN as written) is corrected by the RUN's VM-entry before it counts.
#
# Deny-filter step: besides measuring in L1 as the selftest does, it also VMRUNs into L2 and
# back while the deny filter is in force, to exercise synchronous re-evaluations under the
# filter (v1/v3 bypass it: filter_on_sync=False).
# ---------------------------------------------------------------------------------------------

SELFTEST_STEPS = [
    "1 SVME cleared",
    "2 SVME set in L1",
    "3 in L2 after VMRUN",
    "4 back in L1 after #VMEXIT",
    "5a deny filter, in L1",
    "5b deny filter, in L2 after VMRUN",
    "5c deny filter, in L1 after #VMEXIT",
    "6 allow filter (the event), in L1",
    "7 Host-Only cleared on the 'both' counter",
    "8 Host-Only restored",
    "9 SVME cleared again",
]

ALL = {0, 1, 2, 3}
NONE: set[int] = set()

# Which of PMC0 (none), PMC1 (G), PMC2 (H), PMC3 (HG) count the step's RUN.
SELFTEST_EXPECTED = {
    # arch: section 5 rules 1-4 on the current state; the filter is honoured (rule 3).
    "arch": [
        {0},  # 1: svme=0 and any H/G bit: no (table, svme=0 column)
        {0, 2, 3},  # 2: svme=1 host: none, H, HG count
        {0, 1, 3},  # 3: guest mode: none, G, HG count
        {0, 2, 3},  # 4: host again
        NONE,  # 5a: deny on the counters' own key stops all four (rule 3)
        NONE,  # 5b: idem in guest mode
        NONE,  # 5c: idem in host mode
        {0, 2, 3},  # 6: allow on their key lets all through; host mode table
        {0, 2},  # 7: PMC3 is now G only: no in host mode
        {0, 2, 3},  # 8: PMC3 HG again
        {0},  # 9: svme=0 column again
    ],
    # final: svme0=off, filter_on_sync=True, efer/vmrun/vmexit sync (section 7).
    "final": [
        {0},  # 1: the four WRMSR_EVTSEL made PMCs 0-3 pending; the RUN's VM-entry
        #          re-evaluates them at svme=0 (off): only PMC0. (WRMSR_EFER(0) at svme=0 is
        #          no transition.)
        {0, 2, 3},  # 2: EFER flow sync re-evaluates PMCs 1-3 for svme=1 host
        {0, 1, 3},  # 3: VMRUN flow sync, guest mode
        {0, 2, 3},  # 4: VMEXIT flow sync, host mode
        NONE,  # 5a: SET_FILTER makes every PMC pending; VM-entry re-evaluates with the filter
        NONE,  # 5b: VMRUN sync re-evaluation honours the filter (filter_on_sync); PMC0 stale off
        NONE,  # 5c: VMEXIT idem
        {0, 2, 3},  # 6: SET_FILTER -> all pending -> re-evaluated, host mode
        {0, 2},  # 7: the selector write makes PMC3 pending; G only: off in host mode
        {0, 2, 3},  # 8: pending again, HG: on
        {0},  # 9: EFER sync re-evaluates PMCs 1-3 at svme=0: off (svme0=off)
    ],
    # v3: svme0=ignore, filter_on_sync=False, every flow sync.
    "v3": [
        ALL,  # 1: pending re-evaluation at svme=0 with svme0=ignore: H/G ignored, all count
        {0, 2, 3},  # 2: EFER sync, host
        {0, 1, 3},  # 3: VMRUN sync, guest
        {0, 2, 3},  # 4: VMEXIT sync, host
        NONE,  # 5a: SET_FILTER -> all pending; a pending re-evaluation always honours the filter
        {1, 3},  # 5b: VMRUN sync ignores the filter: PMCs with G are re-enabled in guest mode;
        #            PMC0 (no H/G) is not re-evaluated by a sync flow and stays off; nothing
        #            is pending at the RUN's VM-entry
        {2, 3},  # 5c: VMEXIT sync ignores the filter: PMCs with H re-enabled in host mode
        {0, 2, 3},  # 6: SET_FILTER(allow) -> all pending -> re-evaluated with the filter
        {0, 2},  # 7: PMC3 pending, G only, host: off
        {0, 2, 3},  # 8: PMC3 HG: on
        ALL,  # 9: EFER sync at svme=0, svme0=ignore: all count
    ],
}
# v1 differs from v3 only in the forced-leave / set-nested-state flows, unused here.
SELFTEST_EXPECTED["v1"] = SELFTEST_EXPECTED["v3"]
# v4 (all deferred, filter honoured at every VM-entry) and hybrid (sync, filter_on_sync=True):
# every RUN sees a re-evaluation of the current state with the filter, so they count as arch
# does except that svme0=ignore makes every counter count with SVME=0 (steps 1 and 9).
SELFTEST_EXPECTED["v4"] = [ALL, *SELFTEST_EXPECTED["arch"][1:-1], ALL]
SELFTEST_EXPECTED["hybrid"] = SELFTEST_EXPECTED["v4"]
# legacy: hg=reserved drops bits 40/41 on write, so all four selectors are S and count in every
# mode; the filter still applies through pending re-evaluations (SET_FILTER); the writes of
# steps 7/8 store the same value S (bits dropped), so nothing changes.
SELFTEST_EXPECTED["legacy"] = [ALL, ALL, ALL, ALL, NONE, NONE, NONE, ALL, ALL, ALL, ALL]


def _measure(b: TraceBuilder) -> TraceBuilder:
    for i in range(4):
        b.read(i)
    b.run(RUN_N, IR, cpl=3)
    for i in range(4):
        b.read(i)
    return b


def selftest_trace():
    b = TraceBuilder()
    b.wrmsr_evtsel(0, S)
    b.wrmsr_evtsel(1, S | G)
    b.wrmsr_evtsel(2, S | H)
    b.wrmsr_evtsel(3, S | H | G)
    b.wrmsr_efer(0)  # 1: SVME cleared (already 0 at reset: valid, no transition)
    _measure(b)
    b.wrmsr_efer(1)  # 2
    _measure(b)
    b.vmrun()  # 3
    _measure(b)
    b.vmexit()  # 4
    _measure(b)
    b.set_filter("deny", IR)  # 5a
    _measure(b)
    b.vmrun()  # 5b
    _measure(b)
    b.vmexit()  # 5c
    _measure(b)
    b.set_filter("allow", IR)  # 6
    _measure(b)
    b.wrmsr_evtsel(3, S | G)  # 7
    _measure(b)
    b.wrmsr_evtsel(3, S | H | G)  # 8
    _measure(b)
    b.wrmsr_efer(0)  # 9
    _measure(b)
    return b.build()


@pytest.mark.parametrize("preset", list(SELFTEST_EXPECTED))
def test_kvm_selftest(impl, preset):
    result = impl(selftest_trace(), preset, n_pmcs=6)
    reads = ints(result.reads)
    assert len(reads) == 8 * len(SELFTEST_STEPS)
    got = {}
    want = {}
    for k, step in enumerate(SELFTEST_STEPS):
        before, after = reads[8 * k : 8 * k + 4], reads[8 * k + 4 : 8 * k + 8]
        got[step] = [(a - b) % M48 for a, b in zip(after, before)]
        want[step] = [RUN_N if i in SELFTEST_EXPECTED[preset][k] else 0 for i in range(4)]
    assert got == want


# ---------------------------------------------------------------------------------------------
# The mode table of section 5 under each preset (its svme0 and hg knobs, section 6).
# ---------------------------------------------------------------------------------------------

RUN_TABLES = {
    "arch": MODE_TABLE,
    "final": MODE_TABLE,  # sync flows + pending re-evaluation at the RUN's VM-entry
    "hybrid": MODE_TABLE_IGNORE,
    "v4": MODE_TABLE_IGNORE,
    "v3": MODE_TABLE_IGNORE,
    "v1": MODE_TABLE_IGNORE,
    "legacy": MODE_TABLE_ALL,
}

# Emulated instructions (EMULATE): arch uses the current state (section 5); a KVM policy uses
# emul_ok = EN && (counts_in_mode if emul_mode_aware else true), recomputed at the selector
# write and by the sync EFER / VMRUN flows of these presets.
EMULATE_TABLES = {
    "arch": MODE_TABLE,
    "final": MODE_TABLE,
    "hybrid": MODE_TABLE_IGNORE,
    "v4": MODE_TABLE_ALL,  # emul_mode_aware = False: emul_ok follows EN only
    "v3": MODE_TABLE_ALL,
    "v1": MODE_TABLE_ALL,
    "legacy": MODE_TABLE_ALL,
}


@pytest.mark.parametrize("preset", list(RUN_TABLES))
def test_mode_table_run(impl, preset):
    got, want = mode_table_deltas(impl, preset, RUN_TABLES[preset], emulate=False)
    assert got == want


@pytest.mark.parametrize("preset", list(EMULATE_TABLES))
def test_mode_table_emulate(impl, preset):
    got, want = mode_table_deltas(impl, preset, EMULATE_TABLES[preset], emulate=True)
    assert got == want
