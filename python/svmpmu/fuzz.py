"""Differential fuzzing of a policy against a reference, with classes and shrunk reproducers."""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any

import numpy as np

from . import _core
from ._api import _check_run, _columns, _n_pmcs, compare
from ._values import dataclass_eq
from .mix import Mix
from .model import Op
from .policy import Policy, PolicyLike, resolve_policy
from .result import Comparison
from .trace import Trace

__all__ = [
    "ENGINES",
    "DivergenceClass",
    "FuzzReport",
    "FuzzRun",
    "FuzzTally",
    "Signature",
    "Unconfirmed",
    "fuzz",
]

_HG = ("no H/G", "G", "H", "HG")
_STATE = {0: "svme=0", 1: "host (svme=1)", 3: "guest"}
_HG_NAME = ("none", "G", "H", "HG")
_MODE_NAME = {0: "svme0", 1: "host", 3: "guest"}

BLOCK_RECORDS = 2_000_000
"""The records a block of :func:`fuzz` replays at most (but one trace a worker thread), so that
a block takes a fraction of a second and an interrupt acts within one."""
SHRINK_AFTER_INTERRUPT = (1.0, 100_000)
"""After an interrupted run, :func:`fuzz` shrinks classes for at most this many seconds, and
only those whose first trace has at most this many records; the others are reported unshrunk."""
PRINTED_UNSHRUNK = 200
"""An unshrunk reproducer of at most this many records is printed and serialised; a longer
one is named by its trace index only."""
NOT_SHRUNK = "not shrunk"
"""What the report's ``documented as`` column says of a class left unshrunk."""


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

    __eq__ = dataclass_eq
    __hash__ = None  # type: ignore[assignment]  # mutable arrays: not hashable

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
    shrunk: bool = True
    """False for a class left unshrunk because the run was interrupted: its reproducer is
    then its first trace as generated (and, for :func:`fuzz`'s classes, made only when asked
    for)."""

    def format(self) -> str:
        """The counterexample: the records, and what the reference (expected) and the policy
        (observed) count on them."""
        if not self.shrunk:
            return self._format_unshrunk()
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

    def _format_unshrunk(self) -> str:
        """An unshrunk class: its first trace, printed only when it is short."""
        lines = [
            f"{self.signature.describe()}",
            (
                f"  {self.count} traces; first is trace {self.trace_index}"
                f" ({self.original_length} records), NOT SHRUNK (the run was interrupted)"
                + (":" if self.original_length <= PRINTED_UNSHRUNK else "")
            ),
        ]
        if self.original_length <= PRINTED_UNSHRUNK:
            lines += counterexample_lines(
                self.reproducer, self.comparison, self.policy_counted, self.reference_counted
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The class as plain data (for JSON): the reproducer's columns and text, and the
        counts of both models. An unshrunk class longer than :data:`PRINTED_UNSHRUNK` records
        has ``None`` for these (its ``trace_index`` names it)."""
        head = {
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
            "shrunk": self.shrunk,
        }
        if not self.shrunk and self.original_length > PRINTED_UNSHRUNK:
            omitted = ("reproducer", "policy_counted", "reference_counted", "reproducer_text")
            return {**head, **dict.fromkeys(omitted), "expected": None, "observed": None}
        c = self.comparison
        return {
            **head,
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


class _UnshrunkClass(DivergenceClass):
    """A class of an interrupted :func:`fuzz` left unshrunk. Its reproducer is its first trace
    as generated, regenerated and replayed only when asked for, so that an interrupted run
    ends at once however long its traces are."""

    _source: tuple[tuple[Policy, Policy], FuzzRun]

    def __init__(
        self,
        sig: Signature,
        count: int,
        first: int,
        models: tuple[Policy, Policy],
        run: FuzzRun,
    ) -> None:
        """Class ``sig`` of ``models`` (policy, reference), ``count`` traces, the first being
        trace ``first`` of ``run``."""
        for name, value in (
            ("signature", sig),
            ("count", count),
            ("trace_index", first),
            ("original_length", run.length),
            ("shrunk", False),
        ):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_source", (models, run))

    @functools.cached_property
    def reproducer(self) -> Trace:
        """The class's first trace, regenerated."""
        _models, run = self._source
        return run.trace(self.trace_index)

    @functools.cached_property
    def comparison(self) -> Comparison:
        """The first trace replayed through both models."""
        (p, q), run = self._source
        return compare(self.reproducer, p, q, n_pmcs=run.n_pmcs)

    @functools.cached_property
    def policy_counted(self) -> np.ndarray:
        """Per record of the first trace, the PMCs the policy counted on."""
        (p, _q), run = self._source
        return _core.count_masks(_columns(self.reproducer), p._core_knobs, run.n_pmcs)

    @functools.cached_property
    def reference_counted(self) -> np.ndarray:
        """The same for the reference."""
        (_p, q), run = self._source
        return _core.count_masks(_columns(self.reproducer), q._core_knobs, run.n_pmcs)


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
    figures then cover the traces done so far (``traces`` of ``requested``). ``interrupted``
    is True when the run or the shrinking was; classes left unshrunk then have
    ``shrunk=False``."""

    __eq__ = dataclass_eq
    __hash__ = None  # type: ignore[assignment]  # mutable arrays: not hashable

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
    interrupted: bool = False
    """A SIGINT (KeyboardInterrupt) or SIGTERM stopped the run or the shrinking of the classes:
    the report holds what was finished."""
    engine: str = "concrete"
    """The engine that ran the traces (:data:`ENGINES`)."""
    table: dict[str, Any] | None = None
    """For the automaton engine: the compiled table (``states``, ``columns``, ``table_bytes``,
    ``total_bytes``, ``build_seconds``, ``cached``, ...; :meth:`FuzzRun.table`)."""
    unconfirmed: tuple[Unconfirmed, ...] = ()
    """For the automaton engine: walks the concrete models did not confirm (a bug of
    svmpmu, never expected; their classes are left out of ``classes``)."""
    campaign: dict[str, Any] | None = None
    """For a report of :func:`svmpmu.campaign`: how it ran (shards, their size, the workers,
    shards rerun after a worker died, shards taken from a checkpoint), as plain data;
    ``None`` for :func:`fuzz`."""

    def trace(self, index: int) -> Trace:
        """Trace ``index`` of the run, regenerated from its seed (the same trace whatever the
        threads and blocks of the run); for the automaton engine, walk ``index`` made
        concrete."""
        return self.run().trace(index)

    def run(self) -> FuzzRun:
        """The :class:`FuzzRun` of this report: its traces, and more of them."""
        return FuzzRun(
            self.policy,
            self.reference,
            seed=self.seed,
            length=self.length,
            n_pmcs=self.n_pmcs,
            mix=self.mix,
            baseline=self.baseline,
            engine=self.engine,
        )

    @property
    def unshrunk(self) -> int:
        """How many classes (``classes`` and ``gone``) were left unshrunk by an interrupt."""
        return sum(not c.shrunk for c in (*self.classes, *self.gone))

    @property
    def records_per_second(self) -> float:
        """Records run per second of the run: replayed by both models, or walked on the
        automaton engine's table."""
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
        if self.table is not None:
            lines.append(self._table_line())
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
        width = max(width, len("documented as")) if why else 0
        for title, tag, classes in sections:
            if title:
                lines += ["", title]
            if classes:
                lines.append("")
                column = f"  {'documented as':<{width}}" if why else ""
                lines.append(f"{'#':>4}  {'traces':>9}  {'min':>3}{column}  class")
                lines.extend(
                    f"{tag}{k:>3}  {c.count:>9}  {len(c.reproducer) if c.shrunk else '*':>3}"
                    + (f"  {why[c.signature]:<{width}}" if why else "")
                    + f"  {c.signature.describe()}"
                    for k, c in enumerate(classes)
                )
        if self.unshrunk:
            lines += ["", self._unshrunk_note()]
        if self.unconfirmed:
            lines += ["", *(u.format() for u in self.unconfirmed)]
        if why:
            lines += ["", self._documented_summary(why)]
        if counterexamples:
            for _title, tag, classes in sections:
                for k, c in enumerate(classes):
                    lines.append("")
                    lines.append(f"[{tag}{k}] " + c.format())
        return "\n".join(lines)

    def _table_line(self) -> str:
        """The automaton engine's table, in one line."""
        t = self.table or {}
        built = (
            "compiled earlier in this process"
            if t.get("cached")
            else f"compiled in {t.get('build_seconds', 0.0):.2f} s"
        )
        return (
            f"engine automaton: one PMC's product automaton, {t.get('explored_states')} states"
            f" minimised to {t.get('states')}, {t.get('columns')} columns,"
            f" {t.get('merged_letters')} letters; table {t.get('table_bytes', 0) / 1024:.0f} KiB,"
            f" {built}"
        )

    def _unshrunk_note(self) -> str:
        """What the ``*`` in the ``min`` column means."""
        when = "the run" if not self.complete else "the shrinking"
        return (
            f"interrupted: {self.unshrunk} classes marked * are not shrunk ({when} was"
            " interrupted); their reproducer is their first trace as generated (trace_index),"
            " which a run of as many traces shrinks"
        )

    def _documented(self) -> dict[Signature, str]:
        """Each class's documented choice(s), or ``UNDOCUMENTED`` (``not shrunk`` for a class
        left unshrunk: the check would replay its whole first trace)."""
        from .documented import explained_by

        return {
            c.signature: (
                "+".join(explained_by(c, self.policy, self.reference, self.n_pmcs))
                or "UNDOCUMENTED"
            )
            if c.shrunk
            else NOT_SHRUNK
            for c in self.classes
        }

    def _documented_summary(self, why: dict[Signature, str]) -> str:
        from .documented import documented_choices

        choices = documented_choices(self.policy, self.reference)
        unchecked = sum(w == NOT_SHRUNK for w in why.values())
        why = {s: w for s, w in why.items() if w != NOT_SHRUNK}
        undocumented = sum(w == "UNDOCUMENTED" for w in why.values())
        if not choices:
            return (
                f"no documented choices apply to {self.policy} against {self.reference}: every"
                " class is a divergence to look at (svmpmu explain on a reproducer)."
            )
        parts = [f"{c.name} ({sum(c.name in w for w in why.values())})" for c in choices]
        if unchecked and not why:
            return f"{unchecked} classes not shrunk, so not checked against the documented choices."
        which = " shrunk" if unchecked else ""
        verdict = (
            f"all {len(why)}{which} classes come from the documented choices of the merged code"
            if not undocumented
            else f"{undocumented} of {len(why)}{which} classes are UNDOCUMENTED (not explained by"
            " the documented choices of the merged code): look at them first"
        )
        if unchecked:
            verdict += f" ({unchecked} not shrunk, not checked)"
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
            "interrupted": self.interrupted,
            "engine": self.engine,
            "table": self.table,
            "unconfirmed": [u.to_dict() for u in self.unconfirmed],
            "campaign": self.campaign,
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
    engine: str = "concrete",
) -> FuzzReport:
    """Generate ``traces`` random valid traces of ``length`` records from ``seed``, replay each
    through ``policy`` and ``reference`` in one pass in Rust, and group the diverging traces
    into classes by :class:`Signature`. Each class keeps its count and its first trace, shrunk
    to a minimal reproducer that still shows the class.

    The work runs in blocks of at most ``block`` traces (a positive int) and at most
    :data:`BLOCK_RECORDS` records (but one trace a worker thread), so that a block takes well
    under a second; ``progress(done, total)`` is called after each. Results are the same for
    any ``threads`` and any ``block``: every figure is a function of the trace indices.

    Interrupts: on the main thread, a SIGINT (or a SIGTERM whose handler is a Python
    function) is deferred to the end of the block under way, so a finished block is never
    lost; the run then stops and the report is partial (``complete=False``,
    ``interrupted=True``), its classes shrunk for at most about a second
    (:data:`SHRINK_AFTER_INTERRUPT`). An interrupt while shrinking keeps the classes shrunk so
    far and leaves the others unshrunk (``shrunk=False``: their reproducer is their first
    trace as generated). A KeyboardInterrupt raised by ``progress`` stops the run likewise.

    With ``baseline`` (another policy), every trace is also replayed through the baseline
    against the same reference, and the report diffs the two designs trace by trace:
    ``classes`` are those the policy shows on a trace where the baseline does not (a new bug
    shows there even when the baseline has the same class on other traces), ``gone`` the
    reverse; each reproducer is shrunk keeping that difference.

    ``engine`` picks how traces are run (:data:`ENGINES`). A run is a :class:`FuzzRun`;
    :meth:`FuzzRun.tally` runs any range of its traces and :meth:`FuzzRun.report` turns the
    merged tallies into this report (what :func:`svmpmu.campaign` builds on).
    """
    p, q = resolve_policy(policy), resolve_policy(reference)
    b = None if baseline is None else resolve_policy(baseline)
    mix = mix if mix is not None else Mix()
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)):
        raise TypeError(f"block must be an int, got {type(block).__name__}")
    if block < 1:
        raise ValueError(f"block must be a positive number of traces, got {block}")
    given: object = n_pmcs  # a numpy integer is taken too
    n_pmcs = _n_pmcs(int(given) if isinstance(given, np.integer) else n_pmcs)
    _check_run(traces, length, seed, threads)
    run = FuzzRun(p, q, seed=seed, length=length, n_pmcs=n_pmcs, mix=mix, baseline=b, engine=engine)
    # Fail on a bad policy, mix, n_pmcs or engine before any work (and compile the automaton
    # engine's table, timed apart).
    table = run.table(threads)
    run.tally(0, 0, threads)
    step = _block_traces(int(block), length, threads)
    tally = FuzzTally()
    complete = True
    start = time.perf_counter()
    deferred = _DeferredSignals()
    with deferred:
        try:
            deferred.check()
            while tally.traces < traces:
                done = tally.traces
                end = min(done + step, traces)
                tally = tally.merge(run.tally(done, end, threads))
                if progress is not None:
                    progress(end, traces)
                deferred.check()
        except KeyboardInterrupt:
            complete = False
        seconds = time.perf_counter() - start
        return run.report(
            tally,
            requested=traces,
            seconds=seconds,
            complete=complete,
            deferred=deferred,
            table=table,
        )


_ClassKey = tuple[int, int, int, int, bool]


@dataclass(frozen=True)
class FuzzTally:
    """The unshrunk figures of some traces of a run: how many traces and records, how many
    diverged, and per class (a signature as ``(op, hg, before, after, policy_counts)``) its
    count and the index of its first trace. :meth:`merge` is associative and commutative
    (counts add up, each class keeps its lowest trace index), so tallies of any split of a
    run's traces merge into the tally of the whole run."""

    traces: int = 0
    records: int = 0
    diverging: int = 0
    classes: dict[_ClassKey, tuple[int, int]] = field(default_factory=dict)
    """Per class: (traces that show it, the lowest of their indices)."""
    gone: dict[_ClassKey, tuple[int, int]] = field(default_factory=dict)
    """With a baseline: the same for the classes the baseline shows where the policy does
    not."""

    def merge(self, other: FuzzTally) -> FuzzTally:
        """The tally of both sets of traces (which must not overlap)."""

        def add(
            a: dict[_ClassKey, tuple[int, int]], b: dict[_ClassKey, tuple[int, int]]
        ) -> dict[_ClassKey, tuple[int, int]]:
            out = dict(a)
            for sig, (count, first) in b.items():
                old = out.get(sig)
                out[sig] = (count, first) if old is None else (old[0] + count, min(old[1], first))
            return dict(sorted(out.items()))

        return FuzzTally(
            traces=self.traces + other.traces,
            records=self.records + other.records,
            diverging=self.diverging + other.diverging,
            classes=add(self.classes, other.classes),
            gone=add(self.gone, other.gone),
        )

    def to_dict(self) -> dict[str, Any]:
        """The tally as plain data (for JSON): classes as ``[op, hg, before, after,
        policy_counts, count, first]`` lists."""
        return {
            "traces": self.traces,
            "records": self.records,
            "diverging": self.diverging,
            "classes": [[*sig, *t] for sig, t in self.classes.items()],
            "gone": [[*sig, *t] for sig, t in self.gone.items()],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FuzzTally:
        """A tally from :meth:`to_dict`'s data."""

        def classes(rows: list[list[Any]]) -> dict[_ClassKey, tuple[int, int]]:
            return {
                (int(r[0]), int(r[1]), int(r[2]), int(r[3]), bool(r[4])): (int(r[5]), int(r[6]))
                for r in rows
            }

        return cls(
            traces=int(data["traces"]),
            records=int(data["records"]),
            diverging=int(data["diverging"]),
            classes=classes(data["classes"]),
            gone=classes(data["gone"]),
        )


ENGINES = ("concrete", "automaton")
"""The fuzzing engines. ``concrete`` generates concrete records and replays them through both
models. ``automaton`` walks the product automaton of the two models compiled to a table,
drawing abstract records with the generator's probabilities, and makes a walk concrete only
to report it (each class's first walk is replayed through the concrete models, which must
show the same classes); it leaves out what the abstraction does not see: counter values,
overflows, PMIs and READ values (docs/automaton.md)."""


@dataclass(frozen=True)
class Unconfirmed:
    """A walk of the automaton engine that the concrete models did not confirm: its trace
    shows other classes than the walk (a bug of svmpmu; please report it)."""

    trace_index: int
    walk_classes: tuple[Signature, ...]
    concrete_classes: tuple[Signature, ...]

    def format(self) -> str:
        """One line naming the walk and the classes on each side."""

        def names(sigs: tuple[Signature, ...]) -> str:
            return ", ".join(s.name for s in sigs) or "none"

        return (
            f"BUG: walk {self.trace_index} was not confirmed: the walk shows"
            f" {names(self.walk_classes)}; its trace replayed shows"
            f" {names(self.concrete_classes)} (please report it with this line)"
        )

    def to_dict(self) -> dict[str, Any]:
        """As plain data (for JSON): class names."""
        return {
            "trace_index": self.trace_index,
            "walk_classes": [s.name for s in self.walk_classes],
            "concrete_classes": [s.name for s in self.concrete_classes],
        }


@dataclass(frozen=True)
class FuzzRun:
    """What defines a fuzzing run, whatever range of its traces is run where: the models,
    the seed, the trace length, the PMCs, the mix, the baseline and the engine. Trace ``i`` of
    a run is the same wherever and whenever it is run, so :meth:`tally` over any split of
    ``0..n`` merges (:meth:`FuzzTally.merge`) into the tally of :func:`fuzz` over ``n``
    traces, and :meth:`report` turns it into the same report."""

    __eq__ = dataclass_eq
    __hash__ = None  # type: ignore[assignment]

    policy: Policy
    reference: Policy
    seed: int
    length: int
    n_pmcs: int = 6
    mix: Mix = field(default_factory=Mix)
    baseline: Policy | None = None
    engine: str = "concrete"

    def __post_init__(self) -> None:
        """Check the engine (the rest is checked by the core on the first :meth:`tally`)."""
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.engine == "automaton" and self.baseline is not None:
            raise ValueError(
                "the automaton engine does not diff against a baseline: use engine='concrete'"
                " (--engine concrete) with a baseline"
            )

    def _walks(self, start: int, end: int, threads: int | None) -> Any:  # noqa: ANN401
        """The core's walks ``start..end``: (traces, records, diverging, classes, table)."""
        return _core.automaton_range(
            self.policy._core_knobs,
            self.reference._core_knobs,
            self.seed,
            self.length,
            self.n_pmcs,
            self.mix,
            start,
            end,
            threads,
        )

    def _walk(self, index: int) -> Any:  # noqa: ANN401
        """The core's walk ``index``: (columns, walk classes, concrete classes, diverged)."""
        return _core.automaton_walk(
            self.policy._core_knobs,
            self.reference._core_knobs,
            self.seed,
            index,
            self.length,
            self.n_pmcs,
            self.mix,
        )

    def table(self, threads: int | None = None) -> dict[str, Any] | None:
        """For the automaton engine, the compiled table's figures: the states of one PMC's
        product automaton explored and left after minimising, its symbols and columns, the
        letters drawn, the classes it can show, its bytes and all the bytes a walk reads, the
        seconds its build took, and whether it came from this process's cache (it is
        compiled on first use). ``None`` for the concrete engine."""
        if self.engine != "automaton":
            return None
        stats: dict[str, Any] = self._walks(0, 0, threads)[4]
        return stats

    def trace(self, index: int) -> Trace:
        """Trace ``index`` of the run: generated from the seed, or for the automaton engine,
        walk ``index`` made concrete."""
        if self.engine == "automaton":
            return Trace(*self._walk(index)[0])
        return _regenerate(self.seed, index, self.length, self.n_pmcs, self.mix)

    def confirm(self, index: int) -> tuple[Trace, Unconfirmed | None]:
        """Walk ``index`` of the automaton engine made concrete, and ``None`` if the concrete
        models show the walk's classes on it, else what they show instead."""
        columns, walk, concrete, _diverged = self._walk(index)
        trace = Trace(*columns)
        if sorted(walk) == sorted(concrete):
            return trace, None
        return trace, Unconfirmed(
            index,
            tuple(Signature(*s) for s in sorted(walk)),
            tuple(Signature(*s) for s in sorted(concrete)),
        )

    def tally(self, start: int, end: int, threads: int | None = None) -> FuzzTally:
        """Run traces ``start..end`` (in parallel on ``threads``, the same for any number)
        and tally them, unshrunk. A SIGINT raises KeyboardInterrupt within a few
        milliseconds and the range is lost: callers cut their work into pieces of a second or
        so (:func:`fuzz` does)."""
        if self.engine == "automaton":
            _n, r, d, classes, _table = self._walks(start, end, threads)
            lost: list[Any] = []
        else:
            bk = None if self.baseline is None else self.baseline._core_knobs
            _n, r, d, classes, lost = _core.fuzz_range(
                self.policy._core_knobs,
                self.reference._core_knobs,
                self.seed,
                self.length,
                self.n_pmcs,
                self.mix,
                start,
                end,
                threads,
                bk,
            )

        def keyed(rows: list[Any]) -> dict[_ClassKey, tuple[int, int]]:
            return {tuple(sig): (count, first) for sig, count, first in rows}

        return FuzzTally(
            traces=end - start, records=r, diverging=d, classes=keyed(classes), gone=keyed(lost)
        )

    def report(
        self,
        tally: FuzzTally,
        *,
        requested: int | None = None,
        seconds: float = 0.0,
        complete: bool = True,
        deferred: _DeferredSignals | None = None,
        table: dict[str, Any] | None = None,
    ) -> FuzzReport:
        """The report of ``tally`` (of traces ``0..tally.traces`` of this run): each class's
        first trace shrunk, as :func:`fuzz` reports it. ``requested`` defaults to the traces
        of the tally; ``complete=False`` marks a run that stopped early (its classes are then
        shrunk for at most about a second). ``table`` is the automaton engine's
        :meth:`table` as the run first got it (by default, asked for now)."""
        deferred = deferred if deferred is not None else _DeferredSignals()
        p, q, b = self.policy, self.reference, self.baseline
        shrinking = _Shrinking(deferred, after_interrupt=not complete)
        unconfirmed: list[Unconfirmed] = []
        found = _classes(tally.classes, p, q, b, self, shrinking, unconfirmed)
        gone = _classes(tally.gone, b, q, p, self, shrinking, unconfirmed) if b is not None else ()
        shrinking.checkpoint()
        return FuzzReport(
            policy=p,
            reference=q,
            seed=self.seed,
            length=self.length,
            n_pmcs=self.n_pmcs,
            requested=tally.traces if requested is None else requested,
            traces=tally.traces,
            records=tally.records,
            diverging=tally.diverging,
            classes=tuple(found),
            seconds=seconds,
            complete=complete,
            mix=self.mix,
            baseline=b,
            gone=gone,
            interrupted=not complete or shrinking.stopped,
            engine=self.engine,
            table=table if table is not None else self.table(),
            unconfirmed=tuple(unconfirmed),
        )


def _block_traces(block: int, length: int, threads: int | None) -> int:
    """Traces per block: at most ``block`` and :data:`BLOCK_RECORDS` records, but at least
    one a worker thread (a trace runs on one thread: fewer would leave threads idle)."""
    workers = threads if threads is not None else _default_threads()
    return max(1, min(block, max(workers, BLOCK_RECORDS // max(length, 1))))


def _default_threads() -> int:
    """The threads the core uses when it is not told: RAYON_NUM_THREADS, or the cores."""
    try:
        n = int(os.environ.get("RAYON_NUM_THREADS", "0"))
    except ValueError:
        n = 0
    if n > 0:
        return n
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class _DeferredSignals:
    """While active, on the main thread: a SIGINT or SIGTERM whose handler is a Python
    function is only noted when it arrives, and that handler runs at the next :meth:`check`,
    between two steps of work, so that a step that finished is never thrown away (SIGINT's
    default handler then raises KeyboardInterrupt there). Elsewhere it does nothing."""

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        """Inactive until entered."""
        self._saved: dict[int, Callable[[int, FrameType | None], Any]] = {}
        self._pending: list[int] = []

    def __enter__(self) -> None:
        """Put the noting handler in place of each Python handler of SIGINT and SIGTERM."""
        if threading.current_thread() is threading.main_thread():
            for signum in self._SIGNALS:
                handler = signal.getsignal(signum)
                if callable(handler):
                    self._saved[signum] = handler
                    signal.signal(signum, self._note)

    def _note(self, signum: int, _frame: FrameType | None) -> None:
        """The handler while active: note the signal for the next :meth:`check`."""
        self._pending.append(signum)

    def check(self) -> None:
        """Run the handlers of the signals that arrived since the last check; SIGINT's raises
        KeyboardInterrupt."""
        while self._pending:
            signum = self._pending.pop(0)
            self._saved[signum](signum, None)

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        """Put the handlers back, and deliver a signal that arrived after the last check."""
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        self._saved.clear()
        pending, self._pending = self._pending, []
        for signum in pending:
            signal.raise_signal(signum)


class _Shrinking:
    """Whether :func:`fuzz` may shrink the next class: not once an interrupt came while
    shrinking, and after an interrupted run only within :data:`SHRINK_AFTER_INTERRUPT`."""

    def __init__(self, deferred: _DeferredSignals, *, after_interrupt: bool) -> None:
        """Shrinking under ``deferred``'s signals; ``after_interrupt`` when the run was."""
        self.deferred = deferred
        self.stopped = False
        seconds, self.max_length = SHRINK_AFTER_INTERRUPT
        self.deadline = time.perf_counter() + seconds if after_interrupt else None
        self.checkpoint()

    def allowed(self, length: int) -> bool:
        """Whether a class whose first trace has ``length`` records is to be shrunk."""
        if self.stopped:
            return False
        if self.deadline is None:
            return True
        return length <= self.max_length and time.perf_counter() < self.deadline

    def checkpoint(self) -> None:
        """Stop shrinking if an interrupt arrived (what was shrunk is kept)."""
        try:
            self.deferred.check()
        except KeyboardInterrupt:
            self.stopped = True


def _classes(
    tallies: dict[_ClassKey, tuple[int, int]],
    p: Policy,
    q: Policy,
    without: Policy | None,
    run: FuzzRun,
    shrinking: _Shrinking,
    unconfirmed: list[Unconfirmed],
) -> tuple[DivergenceClass, ...]:
    """The classes of ``tallies`` (``p`` against ``q``), most frequent first, each with its
    first trace shrunk to a reproducer that keeps showing it (and, with ``without``, keeps
    ``without`` from showing it), as far as ``shrinking`` allows; the others unshrunk. For
    the automaton engine, each class's first walk is made concrete and replayed first: a walk
    the concrete models do not confirm goes to ``unconfirmed`` and its class is left out."""
    length, n_pmcs = run.length, run.n_pmcs
    pk, qk = p._core_knobs, q._core_knobs
    wk = None if without is None else without._core_knobs
    found: list[DivergenceClass] = []
    for sig, (count, first) in sorted(tallies.items(), key=lambda kv: (-kv[1][0], kv[0])):
        if run.engine == "automaton":
            original, bug = run.confirm(first)
            if bug is not None:
                if bug not in unconfirmed:
                    unconfirmed.append(bug)
                continue
        elif shrinking.allowed(length):
            original = run.trace(first)
        if not shrinking.allowed(length):
            found.append(_UnshrunkClass(Signature(*sig), count, first, (p, q), run))
            continue
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
        shrinking.checkpoint()
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
