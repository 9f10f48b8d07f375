"""Exhaustive verification: every trace, not a random sample.

A policy and its reference are compiled into one finite automaton over their decision
states (counter values left out) and explored breadth-first from reset, so the classes a
:class:`Verdict` lists are all the classes any trace can show (for the alphabet described in
``docs/verification.md``), each with its shortest witness. ``equivalent`` is then a proof.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _core
from ._api import _columns, _n_pmcs, compare
from ._values import dataclass_eq
from .fuzz import Signature, counterexample_lines
from .policy import Policy, PolicyLike, resolve_policy
from .result import Comparison
from .trace import Trace

__all__ = ["VerifiedClass", "Verdict", "verify"]


@dataclass(frozen=True)
class VerifiedClass:
    """One reachable divergence class and its shortest witness: a diverging trace with a
    record of the class, as short as any can be."""

    __eq__ = dataclass_eq
    __hash__ = None  # type: ignore[assignment]  # mutable arrays: not hashable

    signature: Signature
    witness: Trace
    transitions: int
    """How many transitions of the product automaton show the class."""
    ignored: bool
    """Set aside by ``ignore``: found, but not against equivalence."""
    comparison: Comparison = field(repr=False)
    policy_counted: np.ndarray = field(repr=False)
    """Per record of the witness, the PMCs the policy counted on (bit i: PMC i)."""
    reference_counted: np.ndarray = field(repr=False)
    """The same for the reference."""

    def format(self) -> str:
        """The witness, as a fuzz reproducer is printed: the records, and what the reference
        (expected) and the policy (observed) count on them."""
        head = [
            self.signature.describe() + (" (ignored)" if self.ignored else ""),
            f"  {self.signature.name}; shortest witness, {len(self.witness)} records:",
        ]
        lines = counterexample_lines(
            self.witness, self.comparison, self.policy_counted, self.reference_counted
        )
        return "\n".join(head + lines)

    def to_dict(self) -> dict[str, Any]:
        """The class as plain data (for JSON)."""
        c = self.comparison
        return {
            "class": self.signature.name,
            "description": self.signature.describe(),
            "ignored": self.ignored,
            "transitions": self.transitions,
            "witness": {k: v.tolist() for k, v in self.witness.columns().items()},
            "witness_text": [
                line.split(None, 1)[1] for line in self.witness.format(None).splitlines()
            ],
            "expected": {
                "counters": c.reference.counters.tolist(),
                "reads": c.reference.reads.tolist(),
            },
            "observed": {"counters": c.policy.counters.tolist(), "reads": c.policy.reads.tolist()},
        }


@dataclass(frozen=True)
class Verdict:
    """The result of :func:`verify`."""

    __eq__ = dataclass_eq
    __hash__ = None  # type: ignore[assignment]  # mutable arrays: not hashable

    policy: Policy
    reference: Policy
    n_pmcs: int
    equivalent: bool
    """No class outside ``ignore`` is reachable, and the exploration was complete: for every
    trace, the policy counts as the reference does but for the ignored classes."""
    bounded: bool
    """``max_states`` stopped the exploration: ``classes`` are some of those reachable, and
    the verdict is never "equivalent"."""
    states: int
    """Reachable product states (or those visited, when bounded)."""
    depth: int
    """The longest shortest path from reset to a product state."""
    transitions: int
    seconds: float
    classes: tuple[VerifiedClass, ...]
    """Every reachable class, ignored ones included (marked), in signature order."""

    @property
    def diverging_classes(self) -> tuple[VerifiedClass, ...]:
        """The classes that are not ignored."""
        return tuple(c for c in self.classes if not c.ignored)

    @property
    def outcome(self) -> str:
        """``"equivalent"``, ``"bounded"`` or ``"diverges"``."""
        if self.bounded:
            return "bounded"
        return "equivalent" if self.equivalent else "diverges"

    def format(self, witnesses: bool = True) -> str:
        """The verdict, the table of classes, then each class's witness."""
        ignored = sum(c.ignored for c in self.classes)
        lines = [
            (
                f"svmpmu verify: policy {self.policy} vs reference {self.reference}, "
                f"{self.n_pmcs} PMC{'s' if self.n_pmcs > 1 else ''}"
            ),
            (
                f"{self.states} product states, depth {self.depth}, {self.transitions} "
                f"transitions, {self.seconds:.2f} s"
            ),
        ]
        if self.bounded:
            lines.append(
                "BOUNDED: max_states stopped the exploration; the classes below are some of "
                "those reachable, and nothing is proven"
            )
        elif self.equivalent:
            lines.append(
                "EQUIVALENT: no trace diverges"
                + (f" but in the {ignored} ignored classes" if ignored else "")
            )
        else:
            lines.append(
                f"DIVERGES: {len(self.classes) - ignored} classes"
                + (f" (and {ignored} ignored)" if ignored else "")
            )
        if self.classes:
            lines.append("")
            width = max(len(c.signature.name) for c in self.classes)
            lines.append(f"{'#':>3}  {'min':>3}  {'class':{width}}  in words")
            lines.extend(
                f"{k:>3}  {len(c.witness):>3}  {c.signature.name:{width}}  "
                f"{c.signature.describe()}" + ("  (ignored)" if c.ignored else "")
                for k, c in enumerate(self.classes)
            )
        if witnesses:
            for k, c in enumerate(self.classes):
                lines.append("")
                lines.append(f"[{k}] " + c.format())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The verdict as plain data (for JSON)."""
        return {
            "policy": str(self.policy),
            "policy_knobs": {k: getattr(self.policy, k) for k in self.policy.__dataclass_fields__},
            "reference": str(self.reference),
            "reference_knobs": {
                k: getattr(self.reference, k) for k in self.reference.__dataclass_fields__
            },
            "n_pmcs": self.n_pmcs,
            "outcome": self.outcome,
            "equivalent": self.equivalent,
            "bounded": self.bounded,
            "states": self.states,
            "depth": self.depth,
            "transitions": self.transitions,
            "seconds": self.seconds,
            "classes": [c.to_dict() for c in self.classes],
        }

    def to_json(self, **kwargs: Any) -> str:  # noqa: ANN401 (json.dumps's options, passed on)
        """The verdict as JSON; ``kwargs`` go to :func:`json.dumps`."""
        return json.dumps(self.to_dict(), **kwargs)


def _signature(s: Signature | str) -> Signature:
    if isinstance(s, Signature):
        return s
    if isinstance(s, str):
        return Signature.parse(s)
    raise TypeError(f"ignore: expected a Signature or a class name, got {type(s).__name__}")


def verify(
    policy: PolicyLike,
    reference: PolicyLike = "arch",
    *,
    n_pmcs: int = 1,
    ignore: Iterable[Signature | str] = (),
    max_states: int | None = None,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Verdict:
    """Explore every trace of ``policy`` against ``reference`` at once, as one finite
    automaton, and return a :class:`Verdict`: whether they are equivalent, and every
    reachable divergence class with its shortest witness.

    ``n_pmcs`` PMCs are explored (one covers any number: ``docs/verification.md``).
    ``ignore`` sets classes aside (signatures or names such as
    ``"WRMSR_EVTSEL:none:svme0:svme0:policy"``), so that "equivalent but for these" is one
    call. ``max_states`` bounds the exploration: it stops once that many product states are
    known (it finishes the state it is expanding, so ``states`` may pass the bound by at most
    the size of the alphabet); the verdict is then ``bounded``, never equivalent.
    ``progress(states, depth)`` is called once a breadth-first layer. The result is the same
    for any ``threads``.

    An interrupt (SIGINT, or a KeyboardInterrupt raised by ``progress``) gives no verdict, since
    a partial exploration proves nothing: ``verify`` raises KeyboardInterrupt, once the core
    returns (``svmpmu verify`` runs the exploration on a worker thread, so that it exits with
    status 130 at once).

    >>> verify("arch").equivalent
    True
    """
    p, q = resolve_policy(policy), resolve_policy(reference)
    n = _n_pmcs(n_pmcs)
    if max_states is not None:
        if isinstance(max_states, bool) or not isinstance(max_states, (int, np.integer)):
            raise TypeError(f"max_states must be an integer, got {type(max_states).__name__}")
        if max_states < 1:
            raise ValueError(f"max_states must be at least 1, got {max_states}")
        max_states = int(max_states)
    ignored = [_signature(s).as_tuple() for s in ignore]
    start = time.perf_counter()
    equivalent, bounded, states, depth, transitions, found = _core.verify(
        p._core_knobs, q._core_knobs, n, ignored, max_states, progress, threads
    )
    seconds = time.perf_counter() - start
    classes = []
    for sig, columns, count, is_ignored in found:
        witness = Trace(*columns)
        cols = _columns(witness)
        classes.append(
            VerifiedClass(
                signature=Signature(*sig),
                witness=witness,
                transitions=count,
                ignored=is_ignored,
                comparison=compare(witness, p, q, n_pmcs=n),
                policy_counted=_core.count_masks(cols, p._core_knobs, n),
                reference_counted=_core.count_masks(cols, q._core_knobs, n),
            )
        )
    return Verdict(
        policy=p,
        reference=q,
        n_pmcs=n,
        equivalent=equivalent,
        bounded=bounded,
        states=states,
        depth=depth,
        transitions=transitions,
        seconds=seconds,
        classes=tuple(classes),
    )
