"""Export a trace: as a KVM selftest (C), as TraceBuilder code (Python), or as text.

:func:`to_selftest` writes a selftest in the style of the kernel's
``tools/testing/selftests/kvm/x86/svm_pmu_host_guest_test.c`` that replays the trace on an AMD
host (L1 is the selftest's guest, L2 a nested guest it enters with VMRUN) and checks every READ
with ``GUEST_ASSERT_EQ`` against the count of a chosen model (``arch`` by default): a reviewer
runs it to see which model the CPU and the kernel agree with. Every instruction the guest
retires while the trace runs is written out in assembly, so the counts are exact; the
instructions the test adds of its own (the MOVs that load a WRMSR's operands, the RDMSR of a
READ, ...) are part of the prediction: :func:`selftest_trace` is the trace the test really
executes, and the asserted values are the model's READs of that trace. docs/selftest-export.md
has the mapping of every op, the instruction counts and what is refused.

:func:`to_builder_code` writes Python that rebuilds the trace with
:class:`~svmpmu.TraceBuilder`; the text format is :meth:`Trace.to_text` (docs/text-format.md).
:func:`write_export` writes any of the three to a file, atomically.

The code is split by what it makes: :mod:`.replay` (the executed trace and the refusals),
:mod:`.selftest` (the C source), :mod:`.builder` (the TraceBuilder code) and :mod:`.write`
(the files).
"""

from __future__ import annotations

from .builder import to_builder_code
from .replay import LOOP_MAX, ExportError, selftest_trace
from .selftest import STEP_PORT, to_selftest
from .write import ExportFormat, write_export

__all__ = [
    "ExportFormat",
    "ExportError",
    "LOOP_MAX",
    "STEP_PORT",
    "selftest_trace",
    "to_builder_code",
    "to_selftest",
    "write_export",
]

__test__ = {"to_builder_code": to_builder_code}
"""The docstring examples of the submodules, for ``doctest.testmod(svmpmu.export)``."""
