"""Spec section 4: records, and invalid records (semantics "Validation").

Revision 2: VMRUN carries a CPL, validated like EMULATE's and RUN's (0..3; §10 change 1), and
VMRUN_FAIL with svme = 0 is invalid like VMRUN (§10 change 3; semantics still calls it valid:
the spec wins).
"""

from __future__ import annotations

import pytest
from spec_helpers import (
    EFER0,
    EFER1,
    ENABLE0,
    IR,
    M48,
    READ0,
    RUN100,
    VMEXIT,
    VMRUN,
    VMRUN_FAIL,
    G,
    H,
    S,
    ints,
    make_trace,
    rec,
)

import svmpmu
from svmpmu import INT, Op

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
    # revision 2, change 1: VMRUN's cpl is 0..3 like EMULATE's and RUN's
    ("vmrun-cpl4", [EFER1, rec(Op.VMRUN, cpl=4)], 6, 1),
    ("vmrun-cpl255", [EFER1, rec(Op.VMRUN, cpl=3), VMEXIT, rec(Op.VMRUN, cpl=255)], 6, 3),
    ("vmrun-cpl4-svme0", [READ0, rec(Op.VMRUN, cpl=4)], 6, 1),  # the CPL rule comes first
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
    ("vmrun-fail-in-guest", [EFER1, VMRUN, VMRUN_FAIL], 6, 2),
    ("vmexit-at-reset", [VMEXIT], 6, 0),
    ("vmexit-twice", [EFER1, VMRUN, VMEXIT, VMEXIT], 6, 3),
    ("vmexit-after-forced-leave", [EFER1, VMRUN, rec(Op.FORCED_LEAVE), VMEXIT], 6, 3),
    ("vmexit-after-nested-state-0", [EFER1, VMRUN, rec(Op.SET_NESTED_STATE, flag=0), VMEXIT], 6, 3),
    ("vmexit-after-vmrun-fail", [EFER1, VMRUN_FAIL, VMEXIT], 6, 2),
    ("vmrun-svme0", [ENABLE0, VMRUN], 6, 1),
    ("vmrun-after-efer0", [EFER1, EFER0, VMRUN], 6, 2),
    ("vmrun-after-reset", [EFER1, rec(Op.RESET), VMRUN], 6, 2),
    # revision 2, change 3: VMRUN_FAIL with svme = 0 is invalid (the CPU raises #UD). Before
    # revision 2 the first of these was a valid edge case (reads arch [1], final [2]).
    ("vmrun-fail-svme0", [ENABLE0, VMRUN_FAIL, READ0], 6, 1),
    ("vmrun-fail-at-reset", [VMRUN_FAIL], 6, 0),
    ("vmrun-fail-after-efer0", [EFER1, VMRUN_FAIL, EFER0, VMRUN_FAIL], 6, 3),
    ("vmrun-fail-after-reset", [EFER1, rec(Op.RESET), VMRUN_FAIL], 6, 2),
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
        impl(trace, policy, n_pmcs=n_pmcs)
    assert isinstance(excinfo.value, ValueError)
    assert excinfo.value.index == index
    assert excinfo.value.reason


@pytest.mark.parametrize("n_pmcs", [0, 7])
def test_n_pmcs_out_of_range(impl, n_pmcs):
    # semantics: n_pmcs must be 1..6 (a ValueError otherwise).
    with pytest.raises(ValueError, match="n_pmcs"):
        impl(make_trace([READ0]), "final", n_pmcs=n_pmcs)


# (id, records, n_pmcs, expected reads under arch, expected reads under final)
VALID_EDGES = [
    # VMRUN_FAIL with svme = 1 in host mode. arch: the enabling WRMSR is attributed to the old
    # selector (0), EFER(1) counts (no H/G) (1), VMRUN_FAIL in host mode (2). final: the
    # selector write recomputes emul_ok at once (EN, no H/G: true) and the WRMSR then retires
    # (1); EFER (2); VMRUN_FAIL with the current emul_ok (3).
    ("vmrun-fail-svme1", [ENABLE0, EFER1, VMRUN_FAIL, READ0], 6, [2], [3]),
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
    # VMRUN at the highest valid CPL, 3; PMC0 has OS and USR, so it counts the VMRUN either way
    # (arch: guest at CPL 3; final: after entry at CPL 3). arch: EFER (1), VMRUN (2); final:
    # the enabling WRMSR too (3).
    ("vmrun-cpl3", [ENABLE0, EFER1, rec(Op.VMRUN, cpl=3), READ0], 6, [2], [3]),
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
    result = impl(trace, policy, n_pmcs=case[2])
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
    rec(Op.VMRUN, cpl=3),
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
# Fields each op uses (semantics, "Record layout", and VMRUN's cpl since revision 2); the others
# are ignored, whatever they hold.
USED = {
    Op.WRMSR_EVTSEL: {"pmc", "value"},
    Op.WRMSR_CTR: {"pmc", "value"},
    Op.WRMSR_GLOBAL_CTRL: {"value"},
    Op.WRMSR_EFER: {"flag"},
    Op.VMRUN: {"cpl"},
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
    # host) 1, PMC2 (-7); VMRUN (guest, L2 at CPL 3: PMC0 and PMC2 have USR): PMC0 1, PMC2 (-6);
    # RUN 100 in guest: PMC0 101, PMC2 wraps to 94 (1 overflow, 1 PMI: INT); EMULATE: PMC0 102,
    # PMC2 95; VMRUN_FAIL (host, svme=1): PMC1 2, PMC2 96. SET_FILTER(none), SET_NESTED_STATE(1)
    # and FORCED_LEAVE retire nothing.
    clean = impl(make_trace(CLEAN), policy)
    dirty = impl(make_trace([garble(r) for r in CLEAN]), policy)
    assert ints(clean.reads) == [102, 2, 96]
    assert ints(clean.counters) == [102, 2, 96, 0, 0, 0]
    assert ints(clean.overflows) == [0, 0, 1, 0, 0, 0]
    assert ints(clean.pmis) == [0, 0, 1, 0, 0, 0]
    for name in ("reads", "counters", "overflows", "pmis", "eventsel_hw"):
        assert ints(getattr(dirty, name)) == ints(getattr(clean, name)), name
