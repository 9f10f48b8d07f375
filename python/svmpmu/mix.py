"""The generator's mix: how often each op and each selector field appears."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from . import _core

__all__ = ["Mix"]

_DEFAULT: dict[str, Any] = {
    name: tuple(value) if isinstance(value, list) else value
    for name, value in _core.default_mix().items()
}
"""The generator's own mix (lists as tuples), the defaults of :class:`Mix`."""


_U32 = 2**32 - 1
_U64 = 2**64 - 1
_WEIGHTS = {"hg": 4, "events": 3, "cpl_bits": 4, "filter": 3}
"""The weight tuples of a :class:`Mix` and their lengths."""
_PER_MILLE = tuple(
    name for name in _DEFAULT if name not in _WEIGHTS and name not in ("ops", "run_max")
)
"""The per-mille fields of a :class:`Mix` (chances out of 1000)."""


def _integer(name: str, value: object, low: int, high: int, what: str = "a count") -> int:
    """``value`` as a Python int in ``low..high`` (a numpy integer is taken, a bool, a float or
    a string is not); a ValueError naming the field ``name`` otherwise."""
    expected = f"mix: {name} must be {what}, an integer in {low}..{high}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{expected}; got {type(value).__name__} {value!r}")
    if not low <= int(value) <= high:
        raise ValueError(f"{expected}; got {int(value)}")
    return int(value)


def _weight(name: str, value: object) -> int:
    """A weight: an integer in 0..2**32-1 (see :func:`_integer`)."""
    return _integer(name, value, 0, _U32, "a weight")


def _restore(cls: type[Mix], fields: dict[str, Any]) -> Mix:
    """A mix from its fields: what :meth:`Mix.__reduce__` pickles."""
    return cls(**fields)


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
        """Check every field (a ValueError that names it): ``ops`` must map known op names
        to weights, each weight and each tuple entry be an integer in 0..2**32-1, each tuple
        have its length, each per-mille field be an integer in 0..1000 and ``run_max`` one in
        1..2**64-1; then the core's own checks (no all-zero weights, an op to draw in every
        mode). The ops left out get a weight of 0; ``ops`` is frozen, in the core's op order,
        and the weights are stored as Python ints and tuples."""
        if not isinstance(self.ops, Mapping):
            raise ValueError(
                f"mix: ops must map op names to weights, got {type(self.ops).__name__}"
            )
        unknown = set(self.ops) - set(_DEFAULT["ops"])
        if unknown:
            raise ValueError(f"mix: unknown ops {sorted(unknown, key=str)}")
        ops = {name: _weight(f"ops[{name!r}]", self.ops.get(name, 0)) for name in _DEFAULT["ops"]}
        if sum(ops.values()) > _U32:
            raise ValueError("mix: ops: the op weights must add up to less than 2**32")
        object.__setattr__(self, "ops", MappingProxyType(ops))
        for name, size in _WEIGHTS.items():
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or len(value) != size:
                raise ValueError(f"mix: {name} must be a tuple of {size} weights, got {value!r}")
            object.__setattr__(
                self, name, tuple(_weight(f"{name}[{i}]", w) for i, w in enumerate(value))
            )
        for name in _PER_MILLE:
            object.__setattr__(
                self, name, _integer(name, getattr(self, name), 0, 1000, "a per-mille value")
            )
        object.__setattr__(self, "run_max", _integer("run_max", self.run_max, 1, _U64))
        _core.generate_one(0, 0, 0, 1, self)  # the core's checks: a ValueError naming the field

    def __reduce__(self) -> tuple[Callable[..., Mix], tuple[type[Mix], dict[str, Any]]]:
        """Pickle (and copy) by the fields, ``ops`` as a plain dict: the frozen mapping
        itself cannot be pickled. Unpickling checks the fields again."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        fields["ops"] = dict(self.ops)
        return (_restore, (type(self), fields))

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
