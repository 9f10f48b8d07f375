"""Results of simulating and comparing traces (model.md section 8)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Comparison", "Result"]


@dataclass(frozen=True, eq=False)
class Result:
    """What one model computed for one trace.

    ``counters``, ``eventsel_hw``, ``overflows`` and ``pmis`` are uint64 arrays with one entry
    per PMC (their final values); ``reads`` holds the counter value of every READ record, in
    order. With ``timeline=True``, ``hw_enabled`` (uint8, bit i set when ``eventsel_hw[i]``.EN
    is set), ``svme`` and ``guest_mode`` (bool) give the state after each record; otherwise
    they are None.
    """

    counters: np.ndarray
    eventsel_hw: np.ndarray
    overflows: np.ndarray
    pmis: np.ndarray
    reads: np.ndarray
    hw_enabled: np.ndarray | None = None
    svme: np.ndarray | None = None
    guest_mode: np.ndarray | None = None

    @property
    def n_pmcs(self) -> int:
        """The number of PMCs simulated."""
        return len(self.counters)

    def __eq__(self, other: object) -> bool:
        """Equal when every array is (both None or) equal element by element."""
        if not isinstance(other, Result):
            return NotImplemented
        for name in self.__dataclass_fields__:
            a, b = getattr(self, name), getattr(other, name)
            if (a is None) != (b is None):
                return False
            if a is not None and not np.array_equal(a, b):
                return False
        return True

    __hash__ = None  # type: ignore[assignment]  # unhashable: equality is by value

    def format(self) -> str:
        """A per-PMC table of the final values, and the READ values."""
        from .trace import selector_text

        lines = [f"{'pmc':>3}  {'counter':>16}  {'overflows':>9}  {'pmis':>5}  eventsel_hw"]
        lines.extend(
            f"{i:>3}  {int(self.counters[i]):>16}  {int(self.overflows[i]):>9}  "
            f"{int(self.pmis[i]):>5}  {selector_text(int(self.eventsel_hw[i]))}"
            for i in range(self.n_pmcs)
        )
        lines.append("reads: " + (", ".join(str(int(v)) for v in self.reads) or "none"))
        return "\n".join(lines)


@dataclass(frozen=True, eq=False)
class Comparison:
    """A policy compared with a reference on one trace (model.md section 8).

    ``diverges`` is true when any READ value or any final counter, overflow count or PMI count
    differs. ``first_divergence`` is then the index of the first record after which the two
    models' counters (or overflow or PMI counts) differ; None when they do not diverge.
    ``differing_pmcs`` lists the PMCs whose final counter, overflows or PMIs differ and
    ``differing_reads`` the positions (in ``reads``) of READ values that differ.
    """

    diverges: bool
    first_divergence: int | None
    differing_pmcs: tuple[int, ...]
    differing_reads: tuple[int, ...]
    policy: Result
    reference: Result

    def __bool__(self) -> bool:
        """True when the two models diverge."""
        return self.diverges

    def __eq__(self, other: object) -> bool:
        """Equal when every field is: the verdict, the differences and both results (whose
        arrays are compared element by element)."""
        if not isinstance(other, Comparison):
            return NotImplemented
        return all(
            getattr(self, name) == getattr(other, name) for name in self.__dataclass_fields__
        )

    __hash__ = None  # type: ignore[assignment]  # unhashable: equality is by value

    def format(self) -> str:
        """A readable account: where they diverge and the per-PMC values of both."""
        if not self.diverges:
            return "no divergence"
        lines = [f"diverges after record {self.first_divergence}"]
        lines.append(f"{'pmc':>3}  {'policy':>16}  {'reference':>16}  overflows  pmis")
        p, r = self.policy, self.reference
        lines.extend(
            f"{i:>3}  {int(p.counters[i]):>16}  {int(r.counters[i]):>16}  "
            f"{int(p.overflows[i])}/{int(r.overflows[i])}  {int(p.pmis[i])}/{int(r.pmis[i])}"
            for i in self.differing_pmcs
        )
        lines.extend(
            f"read #{k}: policy {int(p.reads[k])}, reference {int(r.reads[k])}"
            for k in self.differing_reads
        )
        return "\n".join(lines)
