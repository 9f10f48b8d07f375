"""The per-record state of a policy and of a reference, shared by the pictures (docs/pictures.md).

:func:`timeline` replays a trace through a policy and a reference and keeps, after every
record, the vCPU's mode, which PMCs have ``eventsel_hw``.EN set under each model, and every
PMC's counter under each model. It uses only the public API: the mode and the EN bits come from
``simulate(..., timeline=True)``; the counters from :func:`~svmpmu.compare` on a copy of the
trace with a READ of every PMC after each record (a READ has no side effect, model.md section 4),
whose READ values are reshaped into one row a record.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._api import compare, simulate, validate
from ._values import dataclass_eq
from .model import MAX_PMCS, Op
from .policy import Policy, PolicyLike, resolve_policy
from .trace import COLUMNS, Trace

__all__ = ["MAX_TIMELINE_RECORDS", "MODE_NAMES", "Timeline", "timeline", "trace_pmcs"]

MAX_TIMELINE_RECORDS = 2_000_000
"""The longest trace :func:`timeline` (and so a picture) takes; a longer one is a ValueError.

The counters are read after every record, so the work and the memory grow with the records
times the PMCs (about 16 bytes a record a PMC for the replayed copy, 16 more for the values)."""

MODE_NAMES: tuple[str, str, str] = ("L1 (SVME=0)", "L1 (SVME=1)", "L2")
"""The name of each value of :attr:`Timeline.mode`: 0 is host mode with EFER.SVME = 0, 1 host
mode (L1 runs) with SVME = 1, 2 guest mode (L2 runs)."""

_PMC_OPS = np.array([Op.WRMSR_EVTSEL, Op.WRMSR_CTR, Op.READ], dtype=np.uint8)


def trace_pmcs(trace: Trace) -> int:
    """The PMCs a trace touches: 1 + the highest ``pmc`` of its WRMSR_EVTSEL, WRMSR_CTR and
    READ records, at least 1 and at most :data:`~svmpmu.model.MAX_PMCS` (a record naming a PMC
    beyond that is left for validation to report)."""
    used = trace.pmc[np.isin(trace.op, _PMC_OPS)]
    highest = int(used.max()) if used.size else 0
    return min(highest + 1, MAX_PMCS)


def _frozen(array: np.ndarray | None) -> np.ndarray:
    """A read-only view of a per-record array (which ``timeline=True`` always gives)."""
    if array is None:
        raise RuntimeError("simulate(timeline=True) returned no per-record state")
    view = array.view()
    view.flags.writeable = False
    return view


@dataclass(frozen=True)
class Timeline:
    """The state after each record of a trace under a policy and a reference.

    Every array has one entry (or row) a record; entry ``i`` is the state *after* record ``i``.
    ``svme`` and ``guest_mode`` (bool) are the vCPU's mode, the same under both models.
    ``hw_enabled`` and ``reference_hw_enabled`` (uint8) have bit ``p`` set when
    ``eventsel_hw[p]``.EN is set under the policy, or under the reference (for ``arch``, what
    an ideal hypervisor would program, model.md section 8). ``counts`` and
    ``reference_counts`` (uint64, shape ``(records, n_pmcs)``) hold every PMC's counter.
    ``first_divergence`` is the first record after which the two models' counters (or
    overflow or PMI counts) differ, even if they agree again later (after a WRMSR_CTR or a
    RESET); None when they never do. The arrays are read-only.
    """

    __eq__ = dataclass_eq
    __hash__ = None  # type: ignore[assignment]  # mutable arrays: not hashable

    policy: Policy
    reference: Policy
    n_pmcs: int
    svme: np.ndarray
    guest_mode: np.ndarray
    hw_enabled: np.ndarray
    reference_hw_enabled: np.ndarray
    counts: np.ndarray
    reference_counts: np.ndarray
    first_divergence: int | None

    def __len__(self) -> int:
        """The number of records."""
        return len(self.svme)

    @property
    def mode(self) -> np.ndarray:
        """The mode after each record as uint8: an index into :data:`MODE_NAMES` (0: L1 with
        SVME = 0, 1: L1 with SVME = 1, 2: L2)."""
        mode = self.svme.astype(np.uint8)
        mode[self.guest_mode] = 2
        return mode

    def enabled(self, pmc: int, *, reference: bool = False) -> np.ndarray:
        """Whether ``eventsel_hw[pmc]``.EN is set after each record (bool), under the policy or,
        with ``reference=True``, under the reference."""
        if not 0 <= pmc < self.n_pmcs:
            raise ValueError(f"pmc must be 0..{self.n_pmcs - 1}, got {pmc}")
        bits = self.reference_hw_enabled if reference else self.hw_enabled
        enabled: np.ndarray = (bits >> np.uint8(pmc)) & np.uint8(1) != 0
        return enabled


def timeline(
    trace: Trace,
    policy: PolicyLike = "final",
    reference: PolicyLike = "arch",
    *,
    n_pmcs: int | None = None,
) -> Timeline:
    """Replay ``trace`` through ``policy`` and ``reference`` and keep the state after each
    record (see :class:`Timeline`).

    ``n_pmcs`` is the number of PMCs simulated; None means the PMCs the trace touches
    (:func:`trace_pmcs`). An invalid trace raises :class:`~svmpmu.TraceError` naming its own
    record index; a trace longer than :data:`MAX_TIMELINE_RECORDS` raises ValueError.
    """
    if not isinstance(trace, Trace):
        raise TypeError(f"expected a svmpmu.Trace, got {type(trace).__name__}")
    if len(trace) > MAX_TIMELINE_RECORDS:
        raise ValueError(
            f"the trace has {len(trace):,} records; a timeline or a picture takes at most "
            f"{MAX_TIMELINE_RECORDS:,} (slice the trace, e.g. trace[start:stop])"
        )
    p, q = resolve_policy(policy), resolve_policy(reference)
    pmcs = trace_pmcs(trace) if n_pmcs is None else n_pmcs
    validate(trace, n_pmcs=pmcs)  # errors name the record of this trace, not of the copy
    own = simulate(trace, p, n_pmcs=pmcs, timeline=True)
    ref = simulate(trace, q, n_pmcs=pmcs, timeline=True)

    n, width = len(trace), 1 + pmcs
    # Record i of the trace becomes row i of the copy: the record, then READ(0..pmcs-1).
    columns = {}
    for name, dtype in COLUMNS.items():
        rows = np.zeros((n, width), dtype=dtype)
        rows[:, 0] = getattr(trace, name)
        columns[name] = rows
    columns["op"][:, 1:] = Op.READ
    columns["pmc"][:, 1:] = np.arange(pmcs, dtype=np.uint8)
    copy = Trace(**{name: rows.reshape(-1) for name, rows in columns.items()})
    both = compare(copy, p, q, n_pmcs=pmcs)
    # The READ values in order: those of the trace's own READs and those of the inserted ones.
    inserted = np.zeros((n, width), dtype=bool)
    inserted[:, 1:] = True
    inserted = inserted.reshape(-1)[copy.op == Op.READ]
    first = both.first_divergence
    return Timeline(
        policy=p,
        reference=q,
        n_pmcs=pmcs,
        svme=_frozen(own.svme),
        guest_mode=_frozen(own.guest_mode),
        hw_enabled=_frozen(own.hw_enabled),
        reference_hw_enabled=_frozen(ref.hw_enabled),
        counts=_frozen(both.policy.reads[inserted].reshape(n, pmcs)),
        reference_counts=_frozen(both.reference.reads[inserted].reshape(n, pmcs)),
        # An inserted READ counts nothing, so the copy's first divergence is a record of the trace.
        first_divergence=None if first is None else first // width,
    )
