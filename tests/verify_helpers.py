"""Helpers of tests/test_verify.py: cached verdicts, random policies, and the replay of a
verification witness through every implementation."""

from __future__ import annotations

import dataclasses
import functools
import random

import svmpmu
from svmpmu import KNOB_VALUES, Policy, _core, oracle
from svmpmu.policy import resolve_policy
from svmpmu.verify import Verdict, VerifiedClass


@functools.cache
def verdict(policy: Policy | str, reference: Policy | str = "arch", n_pmcs: int = 1) -> Verdict:
    """``svmpmu.verify(policy, reference, n_pmcs=n_pmcs)``, explored once per test session."""
    return svmpmu.verify(policy, reference, n_pmcs=n_pmcs)


def random_policy(rng: random.Random) -> Policy:
    """A policy with every knob drawn from its allowed values."""
    knobs = {knob: rng.choice(values) for knob, values in KNOB_VALUES.items()}
    return dataclasses.replace(Policy(), **knobs)


def core_signatures(trace, policy, reference, n_pmcs):
    """The classes the core's replay assigns to ``trace`` (as the fuzzer does)."""
    p, q = resolve_policy(policy), resolve_policy(reference)
    columns = (trace.op, trace.pmc, trace.cpl, trace.flag, trace.key, trace.value)
    found = _core.signatures(columns, p._core_knobs, q._core_knobs, n_pmcs)
    return {svmpmu.Signature(*s) for s in found}


def check_witness(c: VerifiedClass, policy, reference, n_pmcs: int) -> None:
    """The witness is a valid trace that diverges, in the core and in the oracle, with the
    class it stands for; the oracle computes what the core does for both models."""
    w, sig = c.witness, c.signature
    where = f"{sig.name}, witness:\n{w.format(None)}"
    assert len(w) >= 1, where
    svmpmu.validate(w, n_pmcs=n_pmcs)
    assert sig.op in w.op.tolist(), where
    for n in sorted({n_pmcs, 6}):
        core = svmpmu.compare(w, policy, reference, n_pmcs=n)
        ref = oracle.compare(w, policy, reference, n_pmcs=n)
        assert core.diverges, f"core, {n} PMCs: {where}"
        assert ref.diverges, f"oracle, {n} PMCs: {where}"
        assert core.policy == ref.policy, f"policy, {n} PMCs: {where}"
        assert core.reference == ref.reference, f"reference, {n} PMCs: {where}"
        assert core.first_divergence == ref.first_divergence, where
        assert core.differing_pmcs == ref.differing_pmcs, where
        assert core.differing_reads == ref.differing_reads, where
        assert svmpmu.simulate(w, policy, n_pmcs=n) == core.policy, where
        assert oracle.simulate(w, reference, n_pmcs=n) == core.reference, where
        sigs = core_signatures(w, policy, reference, n)
        assert sig in sigs, f"{n} PMCs: {sorted(s.name for s in sigs)}; {where}"
    # The verdict's own comparison is that of the witness.
    assert c.comparison.diverges, where
    assert c.comparison.policy == svmpmu.simulate(w, policy, n_pmcs=n_pmcs), where


def check_verdict(v: Verdict) -> None:
    """Every witness of a complete verdict replays with its class."""
    assert not v.bounded
    assert v.equivalent == (not v.diverging_classes)
    assert list(v.classes) == sorted(v.classes, key=lambda c: c.signature)
    assert len({c.signature for c in v.classes}) == len(v.classes)
    for c in v.classes:
        assert c.transitions >= 1, c.signature.name
        check_witness(c, v.policy, v.reference, v.n_pmcs)
