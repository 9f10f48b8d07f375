"""svmpmu: replay, compare and fuzz KVM's virtualization of AMD Host-Only/Guest-Only counters.

The model is specified in ``shared/spec/model.md``; the record layout and the choices the
specification leaves open are in ``docs/semantics.md``. Quick start::

    import svmpmu
    from svmpmu import TraceBuilder, eventsel, INSTRUCTIONS_RETIRED

    trace = (TraceBuilder()
             .wrmsr_evtsel(0, eventsel(INSTRUCTIONS_RETIRED, guest_only=True))
             .wrmsr_efer(1).vmentry().vmrun().run(1000).vmexit().read(0)
             .build())
    svmpmu.simulate(trace, "final").reads      # array([1001], dtype=uint64)
    svmpmu.compare(trace, "v4").diverges       # True
"""

from ._api import BatchResult, compare, generate, simulate, simulate_batch, validate
from ._core import __version__
from .batch import TraceBatch
from .campaign import campaign
from .errors import PolicyError, TraceError, TraceSyntaxError
from .explain import Explanation, explain
from .files import (
    TraceFileError,
    read_text,
    read_trace,
    scenario,
    scenarios,
    write_trace,
)
from .ftrace import FtraceImport, read_ftrace
from .fuzz import DivergenceClass, FuzzReport, Signature, fuzz
from .mix import Mix
from .model import (
    BRANCHES_RETIRED,
    EN,
    GUEST_ONLY,
    HOST_ONLY,
    INSTRUCTIONS_RETIRED,
    INT,
    OS,
    USR,
    FilterAction,
    Op,
    event_key,
    eventsel,
    selector_key,
)
from .perfetto import perfetto, write_perfetto
from .plot import plot, plot_figure
from .policy import KNOB_VALUES, PRESETS, Policy
from .result import Comparison, Result
from .timeline import Timeline, timeline
from .trace import COLUMNS, Trace, TraceBuilder, selector_text
from .verify import Verdict, VerifiedClass, verify

__all__ = [
    "BRANCHES_RETIRED",
    "COLUMNS",
    "EN",
    "GUEST_ONLY",
    "HOST_ONLY",
    "INSTRUCTIONS_RETIRED",
    "INT",
    "KNOB_VALUES",
    "OS",
    "PRESETS",
    "USR",
    "BatchResult",
    "Comparison",
    "DivergenceClass",
    "Explanation",
    "FtraceImport",
    "FuzzReport",
    "FilterAction",
    "Mix",
    "Op",
    "Policy",
    "PolicyError",
    "Result",
    "Signature",
    "Trace",
    "TraceBatch",
    "TraceBuilder",
    "TraceError",
    "TraceFileError",
    "TraceSyntaxError",
    "Timeline",
    "Verdict",
    "VerifiedClass",
    "__version__",
    "campaign",
    "compare",
    "event_key",
    "explain",
    "fuzz",
    "generate",
    "perfetto",
    "plot",
    "plot_figure",
    "read_ftrace",
    "read_text",
    "read_trace",
    "scenario",
    "scenarios",
    "eventsel",
    "selector_key",
    "selector_text",
    "simulate",
    "simulate_batch",
    "timeline",
    "validate",
    "verify",
    "write_perfetto",
    "write_trace",
]
