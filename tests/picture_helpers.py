"""Traces the picture tests share (tests/test_plot.py, tests/test_perfetto.py)."""

from __future__ import annotations

import svmpmu
from svmpmu import INSTRUCTIONS_RETIRED, TraceBuilder, eventsel


def worked_example():
    """model.md section 9: a Guest-Only counter, SVME set, VMRUN, 1000 instructions in L2."""
    return svmpmu.scenario("worked-example")


def nested_trace():
    """A Host-Only counter on PMC 1 and a Guest-Only one on PMC 0, across a VMRUN and a VMEXIT."""
    return (
        TraceBuilder()
        .wrmsr_efer(1)  # 0
        .wrmsr_evtsel(1, eventsel(INSTRUCTIONS_RETIRED, host_only=True))  # 1
        .wrmsr_evtsel(0, eventsel(INSTRUCTIONS_RETIRED, guest_only=True))  # 2
        .vmentry()  # 3
        .run(100)  # 4: L1 at CPL 3
        .vmrun(cpl=3)  # 5
        .run(10)  # 6: L2 at CPL 3
        .emulate(cpl=0)  # 7
        .vmexit()  # 8
        .read(1)  # 9
        .build()
    )
