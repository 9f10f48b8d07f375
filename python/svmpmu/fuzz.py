"""Differential fuzzing of a policy against a reference, with classes and shrunk reproducers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _core
from ._api import _check_run, _columns, compare
from .mix import Mix
from .model import Op
from .policy import Policy, PolicyLike, resolve_policy
from .result import Comparison
from .trace import Trace

__all__ = ["DivergenceClass", "FuzzReport", "Signature", "fuzz"]

_HG = ("no H/G", "G", "H", "HG")
_STATE = {0: "svme=0", 1: "host (svme=1)", 3: "guest"}
_HG_NAME = ("none", "G", "H", "HG")
_MODE_NAME = {0: "svme0", 1: "host", 3: "guest"}


@dataclass(frozen=True, order=True)
class Signature:
    """What explains a divergence: a record at which exactly one of the two models counted.

    ``op`` is the record's op, ``hg`` the H/G bits of the PMC's selector (0 none, 1 G, 2 H,
    3 both), ``before``/``after`` the mode state around the record (0 svme=0, 1 host mode with
    svme=1, 3 guest mode) and ``policy_counts`` whether it was the policy (True) or the
    reference (False) that counted.
    """

    op: int
    hg: int
    before: int
    after: int
    policy_counts: bool

    def describe(self) -> str:
        """One line in words, e.g. ``VMRUN on a H counter, host (svme=1) -> guest: ...``."""
        mode = _STATE[self.before]
        if self.after != self.before:
            mode += f" -> {_STATE[self.after]}"
        who = (
            "policy counts, reference does not"
            if self.policy_counts
            else ("reference counts, policy does not")
        )
        return f"{Op(self.op).name} on a {_HG[self.hg]} counter, {mode}: {who}"

    def as_tuple(self) -> tuple[int, int, int, int, bool]:
        """``(op, hg, before, after, policy_counts)``, as the core writes a signature."""
        return (self.op, self.hg, self.before, self.after, self.policy_counts)

    @property
    def name(self) -> str:
        """A short name that :meth:`parse` reads back, e.g. ``VMRUN:G:host:guest:reference``
        (op, the counter's H/G bits ``none``/``G``/``H``/``HG``, the modes before and after
        ``svme0``/``host``/``guest``, and which model counts)."""
        who = "policy" if self.policy_counts else "reference"
        return ":".join(
            (
                Op(self.op).name,
                _HG_NAME[self.hg],
                _MODE_NAME[self.before],
                _MODE_NAME[self.after],
                who,
            )
        )

    @classmethod
    def parse(cls, text: str) -> Signature:
        """A signature from its :attr:`name` (case-insensitive); ``ValueError`` names the part
        that is wrong."""
        parts = text.strip().split(":")
        if len(parts) != 5:  # noqa: PLR2004 (the five parts of a name)
            raise ValueError(
                f"class {text!r}: expected OP:HG:BEFORE:AFTER:WHO, "
                "e.g. VMRUN:G:host:guest:reference"
            )
        op, hg, before, after, who = (p.strip() for p in parts)

        def pick(kind: str, value: str, names: dict[int, str]) -> int:
            for number, name in names.items():
                if name.lower() == value.lower():
                    return number
            raise ValueError(
                f"class {text!r}: {kind} {value!r} is not one of " + ", ".join(names.values())
            )

        ops = {int(o): o.name for o in Op}
        return cls(
            pick("op", op, ops),
            pick("H/G", hg, dict(enumerate(_HG_NAME))),
            pick("mode", before, _MODE_NAME),
            pick("mode", after, _MODE_NAME),
            pick("who", who, {1: "policy", 0: "reference"}) == 1,
        )


@dataclass(frozen=True)
class DivergenceClass:
    """One class of divergences: how many traces show it, the first one that does (its index
    in the run) and that trace shrunk to a minimal reproducer."""

    signature: Signature
    count: int
    trace_index: int
    original_length: int
    reproducer: Trace
    comparison: Comparison = field(repr=False)
    policy_counted: np.ndarray = field(repr=False)
    """Per record of the reproducer, the PMCs the policy counted on (bit i: PMC i)."""
    reference_counted: np.ndarray = field(repr=False)
    """The same for the reference."""

    def format(self) -> str:
        """The counterexample: the records, and what the reference (expected) and the policy
        (observed) count on them."""
        lines = [
            f"{self.signature.describe()}",
            (
                f"  {self.count} traces; first is trace {self.trace_index} "
                f"({self.original_length} records), shrunk to {len(self.reproducer)}:"
            ),
        ]
        lines += counterexample_lines(
            self.reproducer, self.comparison, self.policy_counted, self.reference_counted
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The class as plain data (for JSON): the reproducer's columns and text, and the
        counts of both models."""
        c = self.comparison
        return {
            "name": self.signature.name,
            "signature": {
                "op": Op(self.signature.op).name,
                "hg": _HG[self.signature.hg],
                "before": _STATE[self.signature.before],
                "after": _STATE[self.signature.after],
                "policy_counts": self.signature.policy_counts,
            },
            "description": self.signature.describe(),
            "count": self.count,
            "trace_index": self.trace_index,
            "original_length": self.original_length,
            "reproducer": {k: v.tolist() for k, v in self.reproducer.columns().items()},
            "policy_counted": self.policy_counted.tolist(),
            "reference_counted": self.reference_counted.tolist(),
            "reproducer_text": [
                line.split(None, 1)[1] for line in self.reproducer.format(None).splitlines()
            ],
            "expected": {
                "counters": c.reference.counters.tolist(),
                "reads": c.reference.reads.tolist(),
            },
            "observed": {"counters": c.policy.counters.tolist(), "reads": c.policy.reads.tolist()},
        }


def counterexample_lines(
    trace: Trace,
    comparison: Comparison,
    policy_counted: np.ndarray,
    reference_counted: np.ndarray,
) -> list[str]:
    """A counterexample's records, each with a note where the models counted differently,
    then the counters and READs where the reference (expected) and the policy (observed)
    differ. Shared by fuzz reproducers and verification witnesses."""
    c = comparison
    lines = []
    for k, line in enumerate(trace.format(None).splitlines()):
        note = _who_counted(policy_counted[k], reference_counted[k])
        text = "  " + line
        lines.append(text.ljust(max(56, len(text) + 2)) + note if note else text)
    lines.append(f"  {'pmc':>5}  {'expected':>16}  {'observed':>16}")
    for i in range(c.policy.n_pmcs):
        exp, obs = int(c.reference.counters[i]), int(c.policy.counters[i])
        mark = "  <--" if i in c.differing_pmcs else ""
        if exp or obs:
            lines.append(f"  {i:>5}  {exp:>16}  {obs:>16}{mark}")
    lines.extend(
        f"  read #{k}: expected {int(c.reference.reads[k])}, observed {int(c.policy.reads[k])}"
        for k in c.differing_reads
    )
    return lines


def _who_counted(policy: int, reference: int) -> str:
    """A note for a record at which the two models counted on different PMCs."""
    notes = []
    for who, mine, theirs in (("policy", policy, reference), ("reference", reference, policy)):
        only = [i for i in range(8) if (int(mine) >> i) & 1 and not (int(theirs) >> i) & 1]
        if only:
            notes.append(f"{who} counts on PMC {', '.join(map(str, only))}")
    return ("<- " + "; ".join(notes)) if notes else ""


@dataclass(frozen=True)
class FuzzReport:
    """The result of :func:`fuzz`. ``complete`` is False when the run was interrupted; the
    figures then cover the traces done so far (``traces`` of ``requested``)."""

    policy: Policy
    reference: Policy
    seed: int
    length: int
    n_pmcs: int
    requested: int
    traces: int
    records: int
    diverging: int
    classes: tuple[DivergenceClass, ...]
    seconds: float
    complete: bool = True
    mix: Mix = field(default_factory=Mix, repr=False)
    baseline: Policy | None = None
    """With ``fuzz(..., baseline=B)``: the policy diffed against. ``classes`` then holds only
    the classes the policy shows on a trace where ``B`` does not show them (``count`` such
    traces), and ``gone`` the reverse."""
    gone: tuple[DivergenceClass, ...] = ()
    """With a baseline: the classes ``B`` shows on a trace where the policy does not (their
    reproducers and counts are ``B``'s against the reference)."""

    @property
    def records_per_second(self) -> float:
        """Records replayed (by both models) per second of the run."""
        return self.records / self.seconds if self.seconds > 0 else 0.0

    def format(self, counterexamples: bool = True, *, documented: bool = False) -> str:
        """The report as a table of classes, then each class's counterexample. With
        ``documented``, each class also says which documented choice of the policy explains
        it, or ``UNDOCUMENTED`` (:mod:`svmpmu.documented`), and a last line sums them up."""
        against = f", baseline {self.baseline}" if self.baseline is not None else ""
        head = (
            f"svmpmu fuzz: policy {self.policy} vs reference {self.reference}{against}, "
            f"seed {self.seed}, {self.traces} traces x {self.length} records"
            + ("" if self.complete else f" (interrupted: {self.traces} of {self.requested})")
        )
        share = self.diverging / max(self.traces, 1)
        lines = [head]
        if self.baseline is None:
            lines.append(
                f"{self.diverging} diverging traces ({share:.2%}), {len(self.classes)} classes;"
                f" {self.records_per_second / 1e6:.1f} M records/s"
            )
            sections = [("", "", self.classes)]
        else:
            lines.append(
                f"{self.diverging} traces where {self.policy} diverges ({share:.2%}); "
                f"{self.records_per_second / 1e6:.1f} M records/s"
            )
            sections = [
                (
                    (
                        f"{len(self.classes)} classes {self.policy} shows where {self.baseline}"
                        " does not (traces: how many show the class under the policy only)"
                    ),
                    "+",
                    self.classes,
                ),
                (
                    f"{len(self.gone)} classes {self.baseline} shows where {self.policy} does not",
                    "-",
                    self.gone,
                ),
            ]
        why = self._documented() if documented else {}
        width = max((len(w) for w in why.values()), default=0)
        for title, tag, classes in sections:
            if title:
                lines += ["", title]
            if classes:
                lines.append("")
                column = f"  {'documented as':<{width}}" if why else ""
                lines.append(f"{'#':>4}  {'traces':>9}  {'min':>3}{column}  class")
                lines.extend(
                    f"{tag}{k:>3}  {c.count:>9}  {len(c.reproducer):>3}"
                    + (f"  {why[c.signature]:<{width}}" if why else "")
                    + f"  {c.signature.describe()}"
                    for k, c in enumerate(classes)
                )
        if why:
            lines += ["", self._documented_summary(why)]
        if counterexamples:
            for _title, tag, classes in sections:
                for k, c in enumerate(classes):
                    lines.append("")
                    lines.append(f"[{tag}{k}] " + c.format())
        return "\n".join(lines)

    def _documented(self) -> dict[Signature, str]:
        """Each class's documented choice(s), or ``UNDOCUMENTED``."""
        from .documented import explained_by

        return {
            c.signature: "+".join(explained_by(c, self.policy, self.reference, self.n_pmcs))
            or "UNDOCUMENTED"
            for c in self.classes
        }

    def _documented_summary(self, why: dict[Signature, str]) -> str:
        from .documented import documented_choices

        choices = documented_choices(self.policy, self.reference)
        undocumented = sum(w == "UNDOCUMENTED" for w in why.values())
        if not choices:
            return (
                f"no documented choices apply to {self.policy} against {self.reference}: every"
                " class is a divergence to look at (svmpmu explain on a reproducer)."
            )
        parts = [f"{c.name} ({sum(c.name in w for w in why.values())})" for c in choices]
        verdict = (
            f"all {len(why)} classes come from the documented choices of the merged code"
            if not undocumented
            else f"{undocumented} of {len(why)} classes are UNDOCUMENTED (not explained by the"
            " documented choices of the merged code): look at them first"
        )
        return (
            f"{verdict}: {', '.join(parts)}. What each choice is: README, 'What final does"
            " differently, proven'; --full prints every reproducer."
        )

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (for JSON), every class included."""
        return {
            "policy": str(self.policy),
            "policy_knobs": {k: getattr(self.policy, k) for k in self.policy.__dataclass_fields__},
            "reference": str(self.reference),
            "seed": self.seed,
            "length": self.length,
            "n_pmcs": self.n_pmcs,
            "requested": self.requested,
            "traces": self.traces,
            "records": self.records,
            "diverging": self.diverging,
            "seconds": self.seconds,
            "complete": self.complete,
            "mix": self.mix.to_dict(),
            "classes": [c.to_dict() for c in self.classes],
            "baseline": None if self.baseline is None else str(self.baseline),
            "gone": [c.to_dict() for c in self.gone],
        }

    def to_json(self, **kwargs: Any) -> str:  # noqa: ANN401 (json.dumps's options, passed on)
        """The report as JSON; ``kwargs`` go to :func:`json.dumps` (e.g. ``indent=2``)."""
        return json.dumps(self.to_dict(), **kwargs)


def fuzz(
    policy: PolicyLike,
    reference: PolicyLike = "arch",
    *,
    traces: int,
    length: int,
    seed: int,
    threads: int | None = None,
    n_pmcs: int = 6,
    mix: Mix | None = None,
    block: int = 200_000,
    progress: Callable[[int, int], None] | None = None,
    baseline: PolicyLike | None = None,
) -> FuzzReport:
    """Generate ``traces`` random valid traces of ``length`` records from ``seed``, replay each
    through ``policy`` and ``reference`` in one pass in Rust, and group the diverging traces
    into classes by :class:`Signature`. Each class keeps its count and its first trace, shrunk
    to a minimal reproducer that still shows the class.

    The work runs in blocks of ``block`` traces; ``progress(done, total)`` is called after each.
    A KeyboardInterrupt between blocks stops the run and returns the partial report
    (``complete=False``). Results are the same for any ``threads`` and any ``block``.

    With ``baseline`` (another policy), every trace is also replayed through the baseline
    against the same reference, and the report diffs the two designs trace by trace:
    ``classes`` are those the policy shows on a trace where the baseline does not (a new bug
    shows there even when the baseline has the same class on other traces), ``gone`` the
    reverse; each reproducer is shrunk keeping that difference.
    """
    p, q = resolve_policy(policy), resolve_policy(reference)
    b = None if baseline is None else resolve_policy(baseline)
    bk = None if b is None else b._core_knobs
    mix = mix if mix is not None else Mix()
    _check_run(traces, length, seed, threads)
    # Fail on a bad policy, mix or n_pmcs before any work.
    pk, qk = p._core_knobs, q._core_knobs
    _core.fuzz_range(pk, qk, seed, length, n_pmcs, mix, 0, 0, threads)
    done = records = diverging = 0
    tallies: dict[tuple[int, int, int, int, bool], list[int]] = {}
    gone_tallies: dict[tuple[int, int, int, int, bool], list[int]] = {}
    complete = True
    start = time.perf_counter()
    try:
        while done < traces:
            end = min(done + block, traces)
            _n, r, d, classes, lost = _core.fuzz_range(
                pk, qk, seed, length, n_pmcs, mix, done, end, threads, bk
            )
            records += r
            diverging += d
            for into, found_here in ((tallies, classes), (gone_tallies, lost)):
                for sig, count, first in found_here:
                    t = into.setdefault(sig, [0, first])
                    t[0] += count
                    t[1] = min(t[1], first)
            done = end
            if progress is not None:
                progress(done, traces)
    except KeyboardInterrupt:
        complete = False
    seconds = time.perf_counter() - start
    run = (seed, length, n_pmcs, mix)
    found = _classes(tallies, p, q, b, run)
    gone = _classes(gone_tallies, b, q, p, run) if b is not None else ()
    return FuzzReport(
        policy=p,
        reference=q,
        seed=seed,
        length=length,
        n_pmcs=n_pmcs,
        requested=traces,
        traces=done,
        records=records,
        diverging=diverging,
        classes=tuple(found),
        seconds=seconds,
        complete=complete,
        mix=mix,
        baseline=b,
        gone=gone,
    )


def _classes(
    tallies: dict[tuple[int, int, int, int, bool], list[int]],
    p: Policy,
    q: Policy,
    without: Policy | None,
    run: tuple[int, int, int, Mix],
) -> tuple[DivergenceClass, ...]:
    """The classes of ``tallies`` (``p`` against ``q``), most frequent first, each with its
    first trace shrunk to a reproducer that keeps showing it (and, with ``without``, keeps
    ``without`` from showing it)."""
    seed, length, n_pmcs, mix = run
    pk, qk = p._core_knobs, q._core_knobs
    wk = None if without is None else without._core_knobs
    found = []
    for sig, (count, first) in sorted(tallies.items(), key=lambda kv: (-kv[1][0], kv[0])):
        original = _regenerate(seed, first, length, n_pmcs, mix)
        small = Trace(*_core.shrink(_columns(original), sig, pk, qk, n_pmcs, wk))
        columns = _columns(small)
        found.append(
            DivergenceClass(
                signature=Signature(*sig),
                count=count,
                trace_index=first,
                original_length=len(original),
                reproducer=small,
                comparison=compare(small, p, q, n_pmcs=n_pmcs),
                policy_counted=_core.count_masks(columns, pk, n_pmcs),
                reference_counted=_core.count_masks(columns, qk, n_pmcs),
            )
        )
    return tuple(found)


def signatures(
    trace: Trace, policy: PolicyLike, reference: PolicyLike = "arch", n_pmcs: int = 6
) -> set[Signature]:
    """The classes ``trace`` shows between ``policy`` and ``reference`` (empty when they do
    not diverge on it)."""
    p, q = resolve_policy(policy), resolve_policy(reference)
    found = _core.signatures(_columns(trace), p._core_knobs, q._core_knobs, n_pmcs)
    return {Signature(*sig) for sig in found}


def _regenerate(seed: int, index: int, length: int, n_pmcs: int, mix: Mix) -> Trace:
    """Trace ``index`` of the run seeded by ``seed``, regenerated alone."""
    return Trace(*_core.generate_one(seed, index, length, n_pmcs, mix))
