"""The documented choices of the merged code: which divergences of ``final`` from ``arch`` are
expected, and which class comes from which choice.

``final`` parts from the reference in exactly two ways (README, "What final does differently,
proven"; ``svmpmu verify`` proves that aligning both leaves no divergence): the enabling WRMSR
is counted by the counter it enables, and a forced leave is re-evaluated at the next VM-entry.
A class is put down to a choice when its reproducer stops showing it once that choice is
aligned (the knob overrides below); a class that no choice explains is *undocumented*: a
regression, or a new design decision to document.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from .fuzz import DivergenceClass, Signature, signatures
from .policy import KnobValue, Policy

__all__ = ["DOCUMENTED", "Choice", "documented_choices", "explained_by"]


@dataclass(frozen=True)
class Choice:
    """A documented choice: its short name, the knobs that align it with the reference
    (overrides of the policy's and of the reference's knobs), and why the code makes it."""

    name: str
    policy: dict[str, KnobValue]
    reference: dict[str, KnobValue]
    why: str


DOCUMENTED: dict[tuple[str, str], tuple[Choice, ...]] = {
    ("final", "arch"): (
        Choice(
            "enabling-wrmsr",
            {},
            {"enabling_wrmsr": "new"},
            "KVM recomputes emul_ok when a selector is written, before the WRMSR retires: the"
            " enabling WRMSR counts and the disabling one does not",
        ),
        Choice(
            "forced-leave-deferred",
            {"forced_leave_timing": "sync"},
            {},
            "a forced leave (svm_leave_nested, also behind KVM_SET_NESTED_STATE to host mode)"
            " is re-evaluated at the next VM-entry: emul_ok keeps L2's verdict until then",
        ),
    ),
}
"""The documented choices of a (policy, reference) pair of presets."""


def documented_choices(policy: Policy, reference: Policy) -> tuple[Choice, ...]:
    """The documented choices that apply to ``policy`` against ``reference``: those of the
    merged code (``final`` against ``arch``) for any KVM policy against the ``arch`` preset,
    since every design is judged against the merged code (a class they do not explain is one
    it does not have, or does not have for that reason); none otherwise."""
    if policy.model != "kvm" or reference.preset_name != "arch":
        return ()
    return DOCUMENTED[("final", "arch")]


def _aligned(policy: Policy, reference: Policy, choices: Iterable[Choice]) -> tuple[Policy, Policy]:
    p_knobs: dict[str, KnobValue] = {}
    r_knobs: dict[str, KnobValue] = {}
    for c in choices:
        p_knobs.update(c.policy)
        r_knobs.update(c.reference)
    return dataclasses.replace(policy, **p_knobs), dataclasses.replace(reference, **r_knobs)  # type: ignore[arg-type]


def explained_by(
    c: DivergenceClass, policy: Policy, reference: Policy, n_pmcs: int = 6
) -> tuple[str, ...]:
    """The documented choices that explain class ``c`` (of ``policy`` against
    ``reference``): each choice that, aligned alone, makes ``c``'s reproducer stop showing it;
    or all of them when only aligning all does; empty when none does (undocumented)."""
    choices = documented_choices(policy, reference)
    sig: Signature = c.signature

    def gone(aligned: Iterable[Choice]) -> bool:
        p, q = _aligned(policy, reference, aligned)
        return sig not in signatures(c.reproducer, p, q, n_pmcs)

    alone = tuple(ch.name for ch in choices if gone([ch]))
    if alone:
        return alone
    if choices and gone(choices):
        return tuple(ch.name for ch in choices)
    return ()
