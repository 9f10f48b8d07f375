"""Every record explained: what each model counted on it, and why not where it did not.

:func:`explain` replays a trace through a policy and a reference side by side in the Rust core
(``rust/explain``), which keeps the factors of every counting decision as they were at the
moment of attribution (EN, the event, the CPL, the global control, the filter, and what the
model itself allowed). A PMC that a model did not count gets the first factor that ruled it
out; for KVM's own bookkeeping it also says why the bit was clear or set: the H/G rule of the
mode, a re-evaluation deferred to the next VM-entry, or a bit left stale since some record.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _core
from ._api import _columns, _n_pmcs
from ._values import dataclass_eq
from .model import Op
from .policy import Policy, PolicyLike, resolve_policy
from .trace import Trace, format_record, selector_text

__all__ = ["REASONS", "Explanation", "explain"]

REASONS: dict[int, str] = {
    0: "none",
    1: "counted",
    2: "counted-mode-blind",
    3: "counted-stale",
    4: "counted-filter-bypassed",
    5: "not-enabled",
    6: "other-event",
    7: "cpl",
    8: "global-ctrl",
    9: "filter",
    10: "mode-rule",
    11: "stale",
    12: "pending",
    13: "no-events",
}
"""The reason codes of :attr:`Explanation.reasons`, by name (``rust/explain/mod.rs``)."""

_PHRASES = {
    1: "counted",
    2: "counted, although the H/G rule of the mode says no: emul_ok ignores the mode,"
    " emul_mode_aware = false",
    3: "counted, although the H/G rule of the mode says no: not re-evaluated {origin}",
    4: "counted, although the filter denies the event: eventsel_hw was re-evaluated without"
    " the filter, filter_on_sync = false",
    5: "not enabled",
    6: "counts another event",
    7: "its OS/USR bits exclude the CPL it retired at",
    8: "disabled in PerfCntGlobalCtl",
    9: "the event filter denies its event",
    10: "the H/G rule of the mode (Host-Only/Guest-Only, APM Table 13-4)",
    11: "not re-evaluated {origin}: a re-evaluation now would count it",
    12: "its re-evaluation is deferred to the next VM-entry ({origin})",
    13: "a RUN of 0 events",
}
_NOT_ENABLED = 5
_COUNTED = (1, 2, 3, 4)
_QUIET = (0, 5, 6, 13)  # not shown unless the two models differ on the PMC
_NEVER = 2**32 - 1
MODE_NAMES = ("L1 SVME=0", "L1 SVME=1", "?", "L2")
"""The modes by their code (bit 0 SVME, bit 1 guest mode)."""


@dataclass(frozen=True)
class Explanation:
    """Per record and per model (0: the policy, 1: the reference), what was counted and why.

    ``mode_before``, ``mode_after``: the mode code of each record (:data:`MODE_NAMES`).
    ``counted`` (records x 2, uint8): the PMCs each model counted on, as a bit mask.
    ``reasons`` (records x 2 x n_pmcs, uint8): a :data:`REASONS` code per PMC. ``since``:
    for a reason that rests on KVM's out-of-date bookkeeping, the record since which it was
    (else 2**32 - 1). ``eventsel_hw`` (records x 2 x n_pmcs, uint64): after each record.
    ``reads``: each model's READ values. ``parting``: the records where the two models counted
    differently or READ different values; ``first_divergence`` the first of them (or None).
    """

    __eq__ = dataclass_eq
    __hash__ = None  # type: ignore[assignment]  # mutable arrays: not hashable

    trace: Trace
    policy: Policy
    reference: Policy
    n_pmcs: int
    mode_before: np.ndarray
    mode_after: np.ndarray
    counted: np.ndarray
    reasons: np.ndarray
    since: np.ndarray
    eventsel_hw: np.ndarray
    reads: tuple[np.ndarray, np.ndarray]
    parting: tuple[int, ...]

    @property
    def diverges(self) -> bool:
        """True when the models counted differently on some record, or READ differently."""
        return bool(self.parting)

    @property
    def first_divergence(self) -> int | None:
        """The first record where the models part, or None."""
        return self.parting[0] if self.parting else None

    def reason(self, record: int, model: int, pmc: int) -> str:
        """The name of the reason of ``pmc`` on ``record`` under ``model`` (0 or 1)."""
        return REASONS[int(self.reasons[record, model, pmc])]

    def _phrase(self, record: int, model: int, pmc: int) -> str:
        code = int(self.reasons[record, model, pmc])
        since = int(self.since[record, model, pmc])
        op = int(self.trace.op[record])
        policy = (self.policy, self.reference)[model]
        origin = ""
        if since != _NEVER:
            what = Op(int(self.trace.op[since])).name
            origin = f"since record {since} ({what})" if since != record else "by this record"
        old_selector = policy.model == "arch" and policy.enabling_wrmsr == "old"
        if code == _NOT_ENABLED and op == Op.WRMSR_EVTSEL and old_selector:
            return "not enabled: the WRMSR is attributed to the old selector, enabling_wrmsr = old"
        return _PHRASES.get(code, "retires nothing").format(origin=origin)

    def _shown(self, record: int, pmc: int, every_pmc: bool) -> bool:
        a, b = (int(self.reasons[record, m, pmc]) for m in (0, 1))
        if every_pmc:
            return a != 0 or b != 0
        counted = (a in _COUNTED) != (b in _COUNTED)
        return counted or a != b or a not in _QUIET or b not in _QUIET

    def format(
        self, limit: int | None = 200, *, every_pmc: bool = False, parting_only: bool = False
    ) -> str:
        """The records, each with its mode change, the PMCs each model counted on or why not,
        the ``eventsel_hw`` changes and READ values; ``>>`` marks the first divergence and
        ``<>`` every other record where the models part. At most ``limit`` records (None:
        all); PMCs neither model counts and that no rule of interest ruled out are left out
        unless ``every_pmc``; with ``parting_only``, only the records where the models part."""
        names = (str(self.policy), str(self.reference))
        width = max(len(n) for n in names)
        lines = [
            f"{names[0]} against {names[1]}: {len(self.trace)} records, {self.n_pmcs} PMCs; "
            + (
                f"first divergence at record {self.first_divergence}"
                f" ({len(self.parting)} records part)"
                if self.diverges
                else "no divergence"
            )
        ]
        parting = set(self.parting)
        read_index = 0
        previous = np.zeros((2, self.n_pmcs), dtype=np.uint64)
        for k, record in enumerate(self.trace.records()):
            if limit is not None and k >= limit:
                lines.append(f"... {len(self.trace) - limit} more records")
                break
            if parting_only and k not in parting:
                read_index += record[0] == Op.READ
                previous = self.eventsel_hw[k]
                continue
            mark = (">>" if k == self.first_divergence else "<>") if k in parting else "  "
            before, after = int(self.mode_before[k]), int(self.mode_after[k])
            mode = MODE_NAMES[before] + (f" -> {MODE_NAMES[after]}" if after != before else "")
            lines.append(f"{mark} {k:5d}  {format_record(*record):<56} {mode}")
            if record[0] == Op.READ:
                values = [int(self.reads[m][read_index]) for m in (0, 1)]
                read_index += 1
                lines.extend(f"{'':10}{names[m]:<{width}}  read {values[m]}" for m in (0, 1))
            amount = int(record[5]) if record[0] == Op.RUN else 1
            for i in range(self.n_pmcs):
                if not self._shown(k, i, every_pmc):
                    continue
                for m in (0, 1):
                    phrase = self._phrase(k, m, i)
                    if int(self.counted[k, m]) >> i & 1:
                        rest = phrase.removeprefix("counted")
                        text = f"+{amount}" + (f" ({rest.lstrip(', ')})" if rest else "")
                    else:
                        text = f"not counted: {phrase}"
                    lines.append(f"{'':10}{names[m]:<{width}}  PMC {i} {text}")
            hw = self.eventsel_hw[k]
            lines.extend(
                f"{'':10}{names[m]:<{width}}  eventsel_hw[{i}] = {selector_text(int(hw[m][i]))}"
                for m in (0, 1)
                for i in np.flatnonzero(hw[m] != previous[m])
            )
            previous = hw
        return "\n".join(lines)


def explain(
    trace: Trace,
    policy: PolicyLike = "final",
    reference: PolicyLike = "arch",
    *,
    n_pmcs: int = 6,
) -> Explanation:
    """Explain every record of ``trace`` under ``policy`` and ``reference`` (see
    :class:`Explanation`); the trace is validated first (:class:`TraceError`).

    >>> import svmpmu
    >>> e = svmpmu.explain(svmpmu.scenario("worked-example"), "v4")
    >>> e.parting, e.reason(0, 1, 0), e.reason(1, 1, 0)
    ((0, 1, 6), 'not-enabled', 'mode-rule')
    """
    p, q = resolve_policy(policy), resolve_policy(reference)
    n = _n_pmcs(n_pmcs)
    d = _core.explain(_columns(trace), p._core_knobs, q._core_knobs, n)
    counted = d["counted"]
    reads = d["reads"]
    differ = counted[:, 0] != counted[:, 1]
    # A READ whose values differ parts the models too (after a WRMSR_CTR of one counter, say).
    read_records = np.flatnonzero(trace.op == Op.READ)
    if len(read_records):
        differ[read_records[reads[0] != reads[1]]] = True
    return Explanation(
        trace=trace,
        policy=p,
        reference=q,
        n_pmcs=n,
        mode_before=d["mode_before"],
        mode_after=d["mode_after"],
        counted=counted,
        reasons=d["reasons"],
        since=d["since"],
        eventsel_hw=d["eventsel_hw"],
        reads=(reads[0], reads[1]),
        parting=tuple(int(i) for i in np.flatnonzero(differ)),
    )
