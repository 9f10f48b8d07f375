"""Specification-derived tests.

Every expected number below is derived by hand from shared/spec/model.md ("the spec") and
docs/semantics.md ("semantics"), never from the output of an implementation. Each test runs on
both implementations through the ``impl`` fixture (conftest.py): the Rust core and the
pure-Python oracle.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import svmpmu
from svmpmu import (
    EN,
    GUEST_ONLY,
    HOST_ONLY,
    INSTRUCTIONS_RETIRED,
    INT,
    Op,
    Policy,
    TraceBuilder,
    eventsel,
)

G = GUEST_ONLY
H = HOST_ONLY
IR = INSTRUCTIONS_RETIRED
# Instructions retired with OS, USR and EN (the selftest's selector, without H/G).
S = eventsel(IR)
M48 = 1 << 48


def P(name: str, **knobs) -> Policy:
    """A preset, with knobs overridden."""
    return dataclasses.replace(Policy.preset(name), **knobs)


def bits(*pmcs: int) -> int:
    """The hw_enabled mask of a set of PMCs."""
    mask = 0
    for i in pmcs:
        mask |= 1 << i
    return mask


def ints(array) -> list[int]:
    return [int(x) for x in array]


# ---------------------------------------------------------------------------------------------
# 1. The worked example of spec section 9.
# ---------------------------------------------------------------------------------------------


def worked_example():
    return (
        TraceBuilder()
        .wrmsr_evtsel(0, eventsel(IR, guest_only=True))
        .wrmsr_efer(1)
        .vmentry()
        .vmrun()
        .run(1000, IR, cpl=3)
        .vmexit()
        .read(0)
        .build()
    )


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # arch: enabling WRMSR -> old selector (0); WRMSR_EFER -> svme=1 host (G: no);
        # VMRUN -> guest (1); RUN 1000.
        (P("arch"), 1001),
        # final: emul_ok recomputed at svme=0 (off); EFER sync to host (G: no); VMRUN retired
        # after entry with a sync re-evaluation (1); RUN 1000.
        (P("final"), 1001),
        # vmrun_order=before_entry: VMRUN retires in host mode, where G does not count.
        (P("final", vmrun_order="before_entry"), 1000),
        # v4: emul_ok follows EN only: WRMSR_EVTSEL, WRMSR_EFER and VMRUN count (3); RUN 1000.
        (P("v4"), 1003),
    ],
    ids=["arch", "final", "final-before_entry", "v4"],
)
def test_worked_example(impl, policy, expected):
    result = impl(worked_example(), policy, n_pmcs=6)
    assert ints(result.reads) == [expected]
    assert ints(result.counters) == [expected, 0, 0, 0, 0, 0]
    assert ints(result.overflows) == [0] * 6
    assert ints(result.pmis) == [0] * 6


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # arch with vmrun_retire=host: VMRUN is a host instruction, G does not count (section 5).
        (P("arch", vmrun_retire="host"), 1000),
        # A policy with model="arch" ignores the KVM knobs (semantics, "Which knobs apply").
        (
            P(
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
            P(
                "final",
                enabling_wrmsr="new",
                efer_retire="old",
                vmrun_retire="host",
                failed_vmrun_retire="guest",
            ),
            1001,
        ),
        (P("v4", enabling_wrmsr="new", efer_retire="old", vmrun_retire="host"), 1003),
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


# ---------------------------------------------------------------------------------------------
# 2. The KVM selftest (background.md, "The KVM selftest").
#
# Four counters on instructions retired with OS, USR and EN: PMC0 no H/G, PMC1 G, PMC2 H,
# PMC3 H+G. Each step "runs a loop": modelled as RUN(n=1000, instructions retired, CPL 3) (a
# user-mode loop; every selector has USR). Only the RUN is measured: READ of PMCs 0..3 just
# before and just after it, so the emulated WRMSR/VMRUN records of the step do not enter the
# deltas. The RUN itself includes its implicit VM-entry (spec section 6), which services
# `pending` with the filter.
#
# Deny-filter step: besides measuring in L1 as the selftest does, it also VMRUNs into L2 and
# back while the deny filter is in force, to exercise synchronous re-evaluations under the
# filter (v1/v3 bypass it: filter_on_sync=False).
# ---------------------------------------------------------------------------------------------

RUN_N = 1000

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
    result = impl(selftest_trace(), Policy.preset(preset), n_pmcs=6)
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
# 3. The mode table of spec section 5.
# ---------------------------------------------------------------------------------------------

HG_BITS = {"none": 0, "G": G, "H": H, "HG": H | G}
STATES = ("svme0_host", "svme1_host", "guest")

# Spec section 5, rule 4 (APM Table 13-4 with hardware's behaviour for SVME = 0).
# fmt: off
MODE_TABLE = {
    ("none", "svme0_host"): True, ("none", "svme1_host"): True, ("none", "guest"): True,
    ("G", "svme0_host"): False, ("G", "svme1_host"): False, ("G", "guest"): True,
    ("H", "svme0_host"): False, ("H", "svme1_host"): True, ("H", "guest"): False,
    ("HG", "svme0_host"): False, ("HG", "svme1_host"): True, ("HG", "guest"): True,
}
# fmt: on
# svme0 = "ignore" (section 6): with SVME = 0 the H/G bits are ignored: everything counts.
MODE_TABLE_IGNORE = {
    (hg, state): True if state == "svme0_host" else MODE_TABLE[hg, state]
    for hg, state in MODE_TABLE
}
# hg = "reserved": bits 40/41 are dropped, every counter counts in both modes.
MODE_TABLE_ALL = {key: True for key in MODE_TABLE}


def _table_trace(hg: str, state: str, emulate: bool):
    b = TraceBuilder().wrmsr_evtsel(0, S | HG_BITS[hg])
    if state in ("svme1_host", "guest"):
        b.wrmsr_efer(1)
    if state == "guest":
        b.vmrun()
    b.read(0)
    if emulate:
        b.emulate(cpl=3)
    else:
        b.run(RUN_N, IR, cpl=3)
    return b.read(0).build()


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
    got, want = {}, {}
    for key, counts in RUN_TABLES[preset].items():
        reads = ints(impl(_table_trace(*key, emulate=False), Policy.preset(preset)).reads)
        got[key] = reads[1] - reads[0]
        want[key] = RUN_N if counts else 0
    assert got == want


@pytest.mark.parametrize("preset", list(EMULATE_TABLES))
def test_mode_table_emulate(impl, preset):
    got, want = {}, {}
    for key, counts in EMULATE_TABLES[preset].items():
        reads = ints(impl(_table_trace(*key, emulate=True), Policy.preset(preset)).reads)
        got[key] = reads[1] - reads[0]
        want[key] = 1 if counts else 0
    assert got == want


# ---------------------------------------------------------------------------------------------
# 4. Invalid records (spec section 4, semantics "Validation").
# ---------------------------------------------------------------------------------------------


def rec(op, pmc=0, cpl=0, flag=0, key=0, value=0):
    return (int(op), pmc, cpl, flag, key, value)


def make_trace(records) -> svmpmu.Trace:
    cols = list(zip(*records))
    return svmpmu.Trace(
        op=np.array(cols[0], dtype=np.uint8),
        pmc=np.array(cols[1], dtype=np.uint8),
        cpl=np.array(cols[2], dtype=np.uint8),
        flag=np.array(cols[3], dtype=np.uint8),
        key=np.array(cols[4], dtype=np.uint32),
        value=np.array(cols[5], dtype=np.uint64),
    )


READ0 = rec(Op.READ, pmc=0)
EFER1 = rec(Op.WRMSR_EFER, flag=1)
EFER0 = rec(Op.WRMSR_EFER, flag=0)
VMRUN = rec(Op.VMRUN)
VMEXIT = rec(Op.VMEXIT)
ENABLE0 = rec(Op.WRMSR_EVTSEL, pmc=0, value=S)
RUN100 = rec(Op.RUN, cpl=3, key=IR, value=100)

# (id, records, n_pmcs, index of the first invalid record)
INVALID = [
    ("unknown-op-15", [READ0, rec(Op.EMULATE), (15, 0, 0, 0, 0, 0)], 6, 2),
    ("unknown-op-255", [(255, 0, 0, 0, 0, 0)], 6, 0),
    ("evtsel-pmc6", [READ0, rec(Op.WRMSR_EVTSEL, pmc=6, value=S)], 6, 1),
    ("ctr-pmc6", [READ0, rec(Op.WRMSR_CTR, pmc=6, value=1)], 6, 1),
    ("read-pmc6", [READ0, rec(Op.READ, pmc=6)], 6, 1),
    ("evtsel-pmc1-of-1", [READ0, rec(Op.WRMSR_EVTSEL, pmc=1, value=S)], 1, 1),
    ("ctr-pmc3-of-3", [rec(Op.WRMSR_CTR, pmc=2), rec(Op.WRMSR_CTR, pmc=3)], 3, 1),
    ("read-pmc2-of-2", [rec(Op.READ, pmc=1), rec(Op.READ, pmc=2)], 2, 1),
    ("read-pmc255", [rec(Op.READ, pmc=255)], 6, 0),
    ("emulate-cpl4", [rec(Op.EMULATE, cpl=3), rec(Op.EMULATE, cpl=4)], 6, 1),
    ("run-cpl4", [READ0, rec(Op.RUN, cpl=4, key=IR, value=1)], 6, 1),
    ("run-cpl255", [rec(Op.RUN, cpl=255, key=IR, value=1)], 6, 0),
    ("efer-flag2", [READ0, rec(Op.WRMSR_EFER, flag=2)], 6, 1),
    ("nested-state-flag2", [EFER1, rec(Op.SET_NESTED_STATE, flag=2)], 6, 1),
    (
        "filter-flag3",
        [rec(Op.SET_FILTER, flag=2, key=IR), rec(Op.SET_FILTER, flag=3, key=IR)],
        6,
        1,
    ),
    ("emulate-flag2", [rec(Op.EMULATE, flag=1), rec(Op.EMULATE, flag=2)], 6, 1),
    ("run-key-2^20", [rec(Op.RUN, key=(1 << 20) - 1, value=1), rec(Op.RUN, key=1 << 20)], 6, 1),
    ("run-key-max", [READ0, rec(Op.RUN, key=0xFFFF_FFFF, value=1)], 6, 1),
    ("filter-none-key-2^20", [READ0, rec(Op.SET_FILTER, flag=0, key=1 << 20)], 6, 1),
    ("filter-allow-key-2^20", [READ0, rec(Op.SET_FILTER, flag=1, key=1 << 20)], 6, 1),
    ("filter-deny-key-2^20", [READ0, rec(Op.SET_FILTER, flag=2, key=1 << 20)], 6, 1),
    ("efer1-in-guest", [EFER1, VMRUN, EFER1], 6, 2),
    ("efer0-in-guest", [EFER1, VMRUN, RUN100, EFER0], 6, 3),
    ("efer-in-guest-after-nested-state", [EFER1, rec(Op.SET_NESTED_STATE, flag=1), EFER0], 6, 2),
    ("vmrun-in-guest", [EFER1, VMRUN, VMRUN], 6, 2),
    ("vmrun-fail-in-guest", [EFER1, VMRUN, rec(Op.VMRUN_FAIL)], 6, 2),
    ("vmexit-at-reset", [VMEXIT], 6, 0),
    ("vmexit-twice", [EFER1, VMRUN, VMEXIT, VMEXIT], 6, 3),
    ("vmexit-after-forced-leave", [EFER1, VMRUN, rec(Op.FORCED_LEAVE), VMEXIT], 6, 3),
    ("vmexit-after-nested-state-0", [EFER1, VMRUN, rec(Op.SET_NESTED_STATE, flag=0), VMEXIT], 6, 3),
    ("vmexit-after-vmrun-fail", [EFER1, rec(Op.VMRUN_FAIL), VMEXIT], 6, 2),
    ("vmrun-svme0", [ENABLE0, VMRUN], 6, 1),
    ("vmrun-after-efer0", [EFER1, EFER0, VMRUN], 6, 2),
    ("vmrun-after-reset", [EFER1, rec(Op.RESET), VMRUN], 6, 2),
    ("nested-state-1-svme0", [rec(Op.SET_NESTED_STATE, flag=1)], 6, 0),
    ("first-invalid-wins", [READ0, rec(Op.READ, pmc=9), VMEXIT, (99, 0, 0, 0, 0, 0)], 6, 1),
    ("invalid-after-counting-records", [ENABLE0, RUN100, READ0, (99, 0, 0, 0, 0, 0)], 6, 3),
]


@pytest.mark.parametrize("policy", ["arch", "final", "v3"])
@pytest.mark.parametrize(
    ("records", "n_pmcs", "index"),
    [pytest.param(r, n, i, id=name) for name, r, n, i in INVALID],
)
def test_invalid_record(impl, policy, records, n_pmcs, index):
    trace = make_trace(records)
    with pytest.raises(svmpmu.TraceError) as excinfo:
        impl(trace, Policy.preset(policy), n_pmcs=n_pmcs)
    assert isinstance(excinfo.value, ValueError)
    assert excinfo.value.index == index
    assert excinfo.value.reason


@pytest.mark.parametrize("n_pmcs", [0, 7])
def test_n_pmcs_out_of_range(impl, n_pmcs):
    # semantics: n_pmcs must be 1..6 (a ValueError otherwise).
    with pytest.raises(ValueError):
        impl(make_trace([READ0]), Policy.preset("final"), n_pmcs=n_pmcs)


# (id, records, n_pmcs, expected reads under arch, expected reads under final)
VALID_EDGES = [
    # VMRUN_FAIL with svme = 0 is valid (only VMRUN is forbidden there). arch: the enabling
    # WRMSR is attributed to the old selector (0), VMRUN_FAIL to host mode (no H/G: counts) = 1.
    # final: the selector write recomputes emul_ok at once (EN, no H/G: true) and then the
    # WRMSR retires (1); VMRUN_FAIL retires with the current emul_ok (1) = 2.
    ("vmrun-fail-svme0", [ENABLE0, rec(Op.VMRUN_FAIL), READ0], 6, [1], [2]),
    # FORCED_LEAVE in host mode: a valid no-op (no retirement).
    ("forced-leave-host", [ENABLE0, rec(Op.FORCED_LEAVE), RUN100, READ0], 6, [100], [101]),
    # SET_NESTED_STATE to the mode already in force: valid, no transition, no retirement.
    (
        "nested-state-same-mode",
        [
            ENABLE0,
            rec(Op.SET_NESTED_STATE, flag=0),
            EFER1,
            rec(Op.SET_NESTED_STATE, flag=1),
            rec(Op.SET_NESTED_STATE, flag=1),
            VMEXIT,
            READ0,
        ],
        6,
        [1],
        [2],
    ),
    # Highest valid key, CPL and flags. RUN at key 2^20-1 does not match PMC0 (key 0x0C0).
    (
        "max-valid-fields",
        [
            ENABLE0,
            rec(Op.RUN, cpl=3, key=(1 << 20) - 1, value=5),
            rec(Op.EMULATE, cpl=3, flag=1),
            rec(Op.SET_FILTER, flag=0, key=(1 << 20) - 1),
            READ0,
        ],
        6,
        [1],
        [2],
    ),
    # pmc = n_pmcs - 1 is the highest valid index.
    (
        "pmc-last",
        [
            rec(Op.WRMSR_EVTSEL, pmc=2, value=S),
            rec(Op.RUN, cpl=0, key=IR, value=7),
            rec(Op.READ, pmc=2),
        ],
        3,
        [7],
        [8],
    ),
]


@pytest.mark.parametrize(("policy", "column"), [("arch", 3), ("final", 4)])
@pytest.mark.parametrize("case", VALID_EDGES, ids=[c[0] for c in VALID_EDGES])
def test_valid_edge_case(impl, case, policy, column):
    trace = make_trace(case[1])
    result = impl(trace, Policy.preset(policy), n_pmcs=case[2])
    assert ints(result.reads) == case[column]


# A trace exercising every op; then the same with garbage in every field its op does not use.
CLEAN = [
    rec(Op.RESET),
    rec(Op.WRMSR_EVTSEL, pmc=0, value=S | G),
    rec(Op.WRMSR_EVTSEL, pmc=1, value=S | H),
    rec(Op.WRMSR_EVTSEL, pmc=2, value=S | INT),
    rec(Op.WRMSR_CTR, pmc=2, value=M48 - 10),
    rec(Op.WRMSR_GLOBAL_CTRL, value=0b111),
    rec(Op.WRMSR_EFER, flag=1),
    rec(Op.VMENTRY),
    rec(Op.VMRUN),
    rec(Op.RUN, cpl=3, key=IR, value=100),
    rec(Op.EMULATE, cpl=3, flag=0),
    rec(Op.VMEXIT),
    rec(Op.VMRUN_FAIL),
    rec(Op.SET_FILTER, flag=0, key=0),
    rec(Op.SET_NESTED_STATE, flag=1),
    rec(Op.FORCED_LEAVE),
    rec(Op.READ, pmc=0),
    rec(Op.READ, pmc=1),
    rec(Op.READ, pmc=2),
]
# Fields each op uses (semantics, "Record layout"); the others are ignored, whatever they hold.
USED = {
    Op.WRMSR_EVTSEL: {"pmc", "value"},
    Op.WRMSR_CTR: {"pmc", "value"},
    Op.WRMSR_GLOBAL_CTRL: {"value"},
    Op.WRMSR_EFER: {"flag"},
    Op.VMRUN: set(),
    Op.VMRUN_FAIL: set(),
    Op.VMEXIT: set(),
    Op.FORCED_LEAVE: set(),
    Op.SET_NESTED_STATE: {"flag"},
    Op.SET_FILTER: {"flag", "key"},
    Op.EMULATE: {"cpl", "flag"},
    Op.RUN: {"cpl", "key", "value"},
    Op.VMENTRY: set(),
    Op.READ: {"pmc"},
    Op.RESET: set(),
}
GARBAGE = {"pmc": 255, "cpl": 200, "flag": 77, "key": 0xFFFF_FFFF, "value": 0xDEAD_BEEF_0BAD_F00D}
FIELDS = ("pmc", "cpl", "flag", "key", "value")


def garble(record):
    op = Op(record[0])
    fields = dict(zip(FIELDS, record[1:]))
    for name in FIELDS:
        if name not in USED[op]:
            fields[name] = GARBAGE[name]
    return (record[0], *(fields[name] for name in FIELDS))


@pytest.mark.parametrize("policy", ["arch", "final"])
def test_unused_fields_hold_garbage(impl, policy):
    # Derivation (arch and final agree on this trace): WRMSR_EVTSEL x3: PMC2 counts its own
    # enabling WRMSR only under final (emul_ok at once), arch uses the old selector (0); then
    # WRMSR_CTR sets PMC2 = 2^48-10 and counts itself (-9); GLOBAL_CTRL (-8); EFER(1): PMC1 (H,
    # host) 1, PMC2 (-7); VMRUN (guest): PMC0 1, PMC2 (-6); RUN 100 in guest: PMC0 101, PMC2
    # wraps to 94 (1 overflow, 1 PMI: INT); EMULATE: PMC0 102, PMC2 95; VMRUN_FAIL (host):
    # PMC1 2, PMC2 96.
    clean = impl(make_trace(CLEAN), Policy.preset(policy))
    dirty = impl(make_trace([garble(r) for r in CLEAN]), Policy.preset(policy))
    assert ints(clean.reads) == [102, 2, 96]
    assert ints(clean.counters) == [102, 2, 96, 0, 0, 0]
    assert ints(clean.overflows) == [0, 0, 1, 0, 0, 0]
    assert ints(clean.pmis) == [0, 0, 1, 0, 0, 0]
    for name in ("reads", "counters", "overflows", "pmis", "eventsel_hw"):
        assert ints(getattr(dirty, name)) == ints(getattr(clean, name)), name


# ---------------------------------------------------------------------------------------------
# 5. Knobs.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # enabling_wrmsr=old: the enabling WRMSR sees EN=0 (not counted), the disabling one
        # sees EN=1 (counted).
        (P("arch"), [0, 1]),
        # new: the enabling WRMSR counts, the disabling one does not.
        (P("arch", enabling_wrmsr="new"), [1, 1]),
        # KVM: WRMSR_EVTSEL recomputes emul_ok at once, then retires: counts the enabling write,
        # not the disabling one; enabling_wrmsr is a reference knob, ignored here.
        (P("final"), [1, 1]),
        (P("final", enabling_wrmsr="old"), [1, 1]),
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
        (P("arch"), [1, 1]),
        # old: EFER(1) attributed to svme=0 (no), EFER(0) to svme=1 host (yes).
        (P("arch", efer_retire="old"), [0, 1]),
        # final: EFER sync, so emul_ok is the new state's when the WRMSR retires.
        (P("final"), [1, 1]),
        # deferred: emul_ok stays the old one (false since the selector write at svme=0).
        (P("final", efer_timing="deferred"), [0, 0]),
    ],
    ids=["arch-new", "arch-old", "final-sync", "final-deferred"],
)
def test_efer_retire(impl, policy, expected):
    trace = (
        TraceBuilder().wrmsr_evtsel(0, S | H).wrmsr_efer(1).read(0).wrmsr_efer(0).read(0).build()
    )
    assert ints(impl(trace, policy).reads) == expected


def _efer_timing_trace():
    return (
        TraceBuilder()
        .wrmsr_evtsel(0, S | H)  # 0: svme=0: emul_ok false (off); pending {0}
        .vmentry()  # 1: re-evaluated: off; pending empty
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
        (P("arch"), 2, [0, 0, 1, 1, 1, 1]),
        # sync: re-evaluated at the WRMSR, before it retires: 2.
        (P("final", efer_timing="sync"), 2, [0, 0, 1, 1, 1, 1]),
        # deferred: the WRMSR retires with the old emul_ok (0); re-evaluated at VMENTRY: 1.
        (P("final", efer_timing="deferred"), 1, [0, 0, 0, 1, 1, 1]),
        # none: eventsel_hw and emul_ok stay stale (off): 0.
        (P("final", efer_timing="none"), 0, [0, 0, 0, 0, 0, 0]),
    ],
    ids=["arch", "sync", "deferred", "none"],
)
def test_efer_timing(impl, policy, read, hw):
    result = impl(_efer_timing_trace(), policy, timeline=True)
    assert ints(result.reads) == [read]
    assert ints(result.hw_enabled) == hw
    assert ints(result.svme) == [0, 0, 1, 1, 1, 1]
    assert ints(result.guest_mode) == [0] * 6


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # PMC0 = G, PMC1 = H, svme=1. Default: VMRUN_FAIL is a host instruction: PMC1 (EFER 1 +
        # VMRUN_FAIL 1) = 2, PMC0 0.
        (P("arch"), [0, 2]),
        # guest: VMRUN_FAIL attributed to guest mode: PMC0 1, PMC1 only its EFER: 1.
        (P("arch", failed_vmrun_retire="guest"), [1, 1]),
        # KVM: VMRUN_FAIL retires in host mode with the current emul_ok; the knob is ignored.
        (P("final"), [0, 2]),
        (P("final", failed_vmrun_retire="guest"), [0, 2]),
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


@pytest.mark.parametrize("knob", ["host", "guest"])
def test_failed_vmrun_retire_svme0(impl, knob):
    # semantics: with failed_vmrun_retire=guest and svme=0, the svme=0 column applies: the G
    # and H counters do not count, the plain one does (either way).
    trace = (
        TraceBuilder()
        .wrmsr_evtsel(0, S | G)
        .wrmsr_evtsel(1, S | H)
        .wrmsr_evtsel(2, S)
        .vmrun_fail()
        .read(0)
        .read(1)
        .read(2)
        .build()
    )
    result = impl(trace, P("arch", failed_vmrun_retire=knob))
    assert ints(result.reads) == [0, 0, 1]


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
        (P("final"), [S | G, (S | G) & ~EN], [100, 0]),
        (P("arch"), [S | G, (S | G) & ~EN], [100, 0]),
        # reserved: bits 40/41 dropped too, eventsel_hw = eventsel with EN (no G stuffed),
        # every counter counts in both modes.
        (P("final", hg="reserved"), [S, S], [100, 100]),
        (P("legacy"), [S, S], [100, 100]),
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
        (P("final"), [(S | G) & ~EN] * 3 + [S | G], [0, 0, 0, 101]),
        (P("arch"), [(S | G) & ~EN] * 3 + [S | G], [0, 0, 0, 101]),
        # ignore: H/G ignored with SVME=0; emul_ok (mode-aware) counts too.
        (P("final", svme0="ignore"), [S | G] * 4, [101, 101, 101, 101]),
        (P("hybrid"), [S | G] * 4, [101, 101, 101, 101]),
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
        (P("arch"), 0),
        # mode-aware emul_ok: false at svme=0 (off) and at svme=1 host; RUN off too.
        (P("final"), 0),
        # emul_ok = EN: the enabling WRMSR (1), WRMSR_EFER (2), EMULATE at CPL 3 (3); the RUN
        # is still governed by eventsel_hw (off in host mode).
        (P("final", emul_mode_aware=False), 3),
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
    ("policy", "delta", "hw_after_vmrun"),
    [
        (P("arch"), 0, 0),
        # filter_on_sync=True: the VMRUN sync re-evaluation keeps the deny filter.
        (P("final"), 0, 0),
        # False: the VMRUN sync re-evaluation ignores the filter and enables PMC0 (G, guest);
        # nothing is pending at the RUN's VM-entry, so the denied event counts.
        (P("final", filter_on_sync=False), 100, 1),
    ],
    ids=["arch", "final", "final-filter_on_sync-false"],
)
def test_filter_on_sync(impl, policy, delta, hw_after_vmrun):
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
    assert int(result.hw_enabled[4]) == hw_after_vmrun


def _forced_leave_trace():
    return (
        TraceBuilder()
        .wrmsr_evtsel(0, S | G)  # 0
        .wrmsr_evtsel(1, S | H)  # 1
        .wrmsr_efer(1)  # 2: sync (final): PMC1 on, emul_ok[1]; EFER retires on PMC1
        .vmrun()  # 3: sync, after_entry: PMC0 on; VMRUN retires on PMC0
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
        (P("arch"), [1, 102], [0, 0, 2, 1, 1, 2, 2, 2, 2, 2, 2]),
        # sync: re-evaluated at the leave: same as arch.
        (P("final", forced_leave_timing="sync"), [1, 102], [0, 0, 2, 1, 1, 2, 2, 2, 2, 2, 2]),
        # deferred: stale guest-mode emul_ok/hw until the VMENTRY: EMULATE counts on PMC0;
        # the RUN (after the VM-entry) counts on PMC1.
        (P("final", forced_leave_timing="deferred"), [2, 101], [0, 0, 2, 1, 1, 1, 1, 2, 2, 2, 2]),
        # none: stale for good: EMULATE and RUN count on PMC0 (G) in host mode.
        (P("final", forced_leave_timing="none"), [102, 1], [0, 0, 2, 1, 1, 1, 1, 1, 1, 1, 1]),
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
    b.wrmsr_evtsel(0, S | G)  # 0
    b.wrmsr_evtsel(1, S | H)  # 1
    b.wrmsr_efer(1)  # 2: sync: PMC1 on; EFER retires on PMC1
    b.vmentry()  # 3: pending {0,1} re-evaluated, host
    b.set_nested_state(1)  # 4: enter guest mode
    b.emulate(cpl=0)  # 5
    b.read(0).read(1)  # 6, 7
    b.vmentry()  # 8
    b.run(100, IR, cpl=3)  # 9: in guest mode
    b.read(0).read(1)  # 10, 11
    b.set_nested_state(0)  # 12: back to host mode
    b.emulate(cpl=0)  # 13
    b.read(0).read(1)  # 14, 15
    b.vmentry()  # 16
    b.run(1000, IR, cpl=3)  # 17: in host mode
    b.read(0).read(1)  # 18, 19
    return b.build()


_SNS_SYNC_HW = [0, 0, 2, 2] + [1] * 8 + [2] * 8
_SNS_DEFERRED_HW = [0, 0, 2, 2] + [2] * 4 + [1] * 8 + [2] * 4
_SNS_NONE_HW = [0, 0, 2, 2] + [2] * 16


@pytest.mark.parametrize(
    ("policy", "reads", "hw"),
    [
        # arch: EFER -> PMC1; EMULATE in guest -> PMC0; RUN 100 in guest -> PMC0; EMULATE in
        # host -> PMC1; RUN 1000 in host -> PMC1.
        (P("arch"), [1, 1, 101, 1, 101, 2, 101, 1002], _SNS_SYNC_HW),
        (
            P("final", set_nested_state_timing="sync"),
            [1, 1, 101, 1, 101, 2, 101, 1002],
            _SNS_SYNC_HW,
        ),
        # deferred: each EMULATE right after the change still uses the old emul_ok (PMC1, then
        # PMC0); the RUNs follow a VM-entry and count right.
        (
            P("final", set_nested_state_timing="deferred"),
            [0, 2, 100, 2, 101, 2, 101, 1002],
            _SNS_DEFERRED_HW,
        ),
        # none: emul_ok and eventsel_hw stay those of host mode for good: everything counts on
        # PMC1 (H), including the RUN in guest mode.
        (P("final", set_nested_state_timing="none"), [0, 2, 0, 102, 0, 103, 0, 1103], _SNS_NONE_HW),
    ],
    ids=["arch", "sync", "deferred", "none"],
)
def test_set_nested_state_timing(impl, policy, reads, hw):
    result = impl(_set_nested_state_trace(), policy, timeline=True)
    assert ints(result.reads) == reads
    assert ints(result.hw_enabled) == hw
    assert ints(result.svme) == [0, 0] + [1] * 18
    assert ints(result.guest_mode) == [0] * 4 + [1] * 8 + [0] * 8
