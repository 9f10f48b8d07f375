"""Helpers shared by the specification-derived tests of tests/spec/.

Every expected number in tests/spec/ is derived by hand from shared/spec/model.md revision 2
("the spec", quoted "§N"; §10 lists the changes of revision 2) and docs/semantics.md
("semantics"), never from the output of an implementation. Each test runs on both
implementations through the ``impl`` fixture (tests/conftest.py): the Rust core and the
pure-Python oracle. Where the spec and semantics disagree (revision 2 changed VMRUN's CPL,
VMRUN_FAIL with svme = 0 and ``eventsel_hw`` right after a selector write), the spec wins.

Presets are passed by name where the test is about the preset (so that each implementation
resolves the name through its own table of §7); ``with_knobs(name, **knobs)`` overrides knobs of the
preset as :class:`svmpmu.Policy` defines it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

import svmpmu
from svmpmu import (
    BRANCHES_RETIRED,
    GUEST_ONLY,
    HOST_ONLY,
    INSTRUCTIONS_RETIRED,
    Op,
    Policy,
    TraceBuilder,
    eventsel,
)

G = GUEST_ONLY
H = HOST_ONLY
IR = INSTRUCTIONS_RETIRED
BR = BRANCHES_RETIRED
# Instructions retired with OS, USR and EN (the selftest's selector, without H/G).
S = eventsel(IR)
# Branches retired with OS, USR and EN.
B = eventsel(BR)
M48 = 1 << 48
RUN_N = 1000


def with_knobs(name: str, **knobs: object) -> Policy:
    """A preset, with knobs overridden."""
    return dataclasses.replace(Policy.preset(name), **knobs)


def ints(array) -> list[int]:
    return [int(x) for x in array]


def rec(op, pmc=0, cpl=0, flag=0, key=0, value=0):
    """One record as a tuple of its six fields."""
    return (int(op), pmc, cpl, flag, key, value)


def make_trace(records) -> svmpmu.Trace:
    """A trace from record tuples (fields as given, unused ones included)."""
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
VMRUN_FAIL = rec(Op.VMRUN_FAIL)
VMEXIT = rec(Op.VMEXIT)
ENABLE0 = rec(Op.WRMSR_EVTSEL, pmc=0, value=S)
RUN100 = rec(Op.RUN, cpl=3, key=IR, value=100)


# ---------------------------------------------------------------------------------------------
# The mode table of spec section 5 (rule 4), and its variants under the knobs of section 6.
# ---------------------------------------------------------------------------------------------

HG_BITS = {"none": 0, "G": G, "H": H, "HG": H | G}

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
MODE_TABLE_ALL = dict.fromkeys(MODE_TABLE, True)


def table_trace(hg: str, state: str, emulate: bool) -> svmpmu.Trace:
    """PMC0 = S with the given H/G bits, brought to ``state``; READ, then one emulated
    instruction at CPL 3 or a RUN of RUN_N at CPL 3, then READ: the difference of the two
    READs is what the measured record counted."""
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


def mode_table_deltas(impl, policy, table, emulate: bool) -> tuple[dict, dict]:
    """(got, want) of the measured record, for every (H/G bits, state) of ``table``."""
    per_count = 1 if emulate else RUN_N
    got, want = {}, {}
    for key, counts in table.items():
        reads = ints(impl(table_trace(*key, emulate=emulate), policy).reads)
        got[key] = reads[1] - reads[0]
        want[key] = per_count if counts else 0
    return got, want
