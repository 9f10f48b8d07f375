"""The generator's mix: how often each op and each selector field appears."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from . import _core

__all__ = ["Mix"]

_DEFAULT: dict[str, Any] = {
    name: tuple(value) if isinstance(value, list) else value
    for name, value in _core.default_mix().items()
}
"""The generator's own mix (lists as tuples), the defaults of :class:`Mix`."""


@dataclass(frozen=True)
class Mix:
    """What the generator draws, and how often. Defaults are the generator's own.

    Weights are relative (the generator resolves op weights to 1/4096 of their total and the
    other weighted choices to 1/256); per-mille fields are chances out of 1000 (resolved to
    1/1024). Each record is drawn from four random words. Ops that are invalid in the
    current mode (VMRUN in guest mode, VMEXIT in host mode, ...) are left out of each draw, so
    only valid traces come out. Override with :func:`dataclasses.replace` or :meth:`with_ops`.
    """

    ops: Mapping[str, int] = field(default_factory=lambda: MappingProxyType(dict(_DEFAULT["ops"])))
    """Relative weight of each op, by name (``"RUN"``, ``"VMRUN"``, ...)."""
    hg: tuple[int, ...] = _DEFAULT["hg"]
    """Weights of a written selector's H/G bits: none, G only, H only, both."""
    events: tuple[int, ...] = _DEFAULT["events"]
    """Weights of the event of a selector, a RUN or a filter: instructions, branches, other."""
    cpl_bits: tuple[int, ...] = _DEFAULT["cpl_bits"]
    """Weights of a selector's OS/USR bits: both, OS only, USR only, neither."""
    filter: tuple[int, ...] = _DEFAULT["filter"]
    """Weights of SET_FILTER actions: none, allow, deny."""
    enable: int = _DEFAULT["enable"]
    """Per mille of written selectors with EN set."""
    interrupt: int = _DEFAULT["interrupt"]
    """Per mille of written selectors with INT set."""
    zero_selector: int = _DEFAULT["zero_selector"]
    """Per mille of selector writes of 0."""
    reserved_junk: int = _DEFAULT["reserved_junk"]
    """Per mille of selector writes with random reserved bits (which the write drops)."""
    kernel: int = _DEFAULT["kernel"]
    """Per mille of EMULATE and RUN records at CPL 0 (the rest at CPL 3)."""
    vmrun_user: int = _DEFAULT["vmrun_user"]
    """Per mille of VMRUN records into an L2 that resumes at CPL 3 (the rest at CPL 0)."""
    branch: int = _DEFAULT["branch"]
    """Per mille of EMULATE records that are branches."""
    ctr_near_wrap: int = _DEFAULT["ctr_near_wrap"]
    """Per mille of WRMSR_CTR values within 2^12 of the 48-bit wrap."""
    run_huge: int = _DEFAULT["run_huge"]
    """Per mille of RUN records with n in 2^47..2^48 (counters wrap)."""
    global_all: int = _DEFAULT["global_all"]
    """Per mille of WRMSR_GLOBAL_CTRL writes that enable every PMC (the rest are random)."""
    run_max: int = _DEFAULT["run_max"]
    """The largest n of an ordinary RUN (n is uniform in 1..run_max)."""

    def __post_init__(self) -> None:
        """Check the op names; give the ops left out a weight of 0; freeze ``ops``."""
        unknown = set(self.ops) - set(_DEFAULT["ops"])
        if unknown:
            raise ValueError(f"mix: unknown ops {sorted(unknown)}")
        missing = set(_DEFAULT["ops"]) - set(self.ops)
        if missing:
            object.__setattr__(
                self, "ops", MappingProxyType({**dict.fromkeys(missing, 0), **self.ops})
            )
        else:
            object.__setattr__(self, "ops", MappingProxyType(dict(self.ops)))

    @classmethod
    def workload(cls) -> Mix:
        """A guest that mostly runs: long stretches of RUN and EMULATE records (about 30
        between two nested transitions), with occasional selector writes, VM-entries and
        READs; no resets. The benchmarks' "workload-like" trace."""
        return cls(ops=_core.default_mix(workload=True)["ops"])

    def with_ops(self, **weights: int) -> Mix:
        """A copy with some op weights changed, e.g. ``mix.with_ops(RESET=0, RUN=500)``."""
        return dataclasses.replace(self, ops={**self.ops, **weights})

    def to_dict(self) -> dict[str, Any]:
        """The mix as plain data (for JSON)."""
        d: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            d[f.name] = dict(v) if f.name == "ops" else list(v) if isinstance(v, tuple) else v
        return d
