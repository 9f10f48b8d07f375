"""KVM policies and the architectural reference (model.md sections 5 to 7).

The knobs, their values and the presets are written once, in the Rust core
(``rust/model/policy.rs``), and exported as ``svmpmu._core.KNOBS`` and
``svmpmu._core.PRESETS``. :class:`Policy` declares its fields here for typing and
documentation; at import they are checked against the core's table (names, order, values and
defaults), and :data:`PRESETS` and :data:`KNOB_VALUES` are read from the core.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, Union

from . import _core
from .errors import PolicyError

__all__ = [
    "KNOB_VALUES",
    "PRESETS",
    "REFERENCE_KNOBS",
    "Attribution",
    "Context",
    "Hg",
    "KnobValue",
    "Model",
    "Policy",
    "PolicyLike",
    "Svme0",
    "Timing",
    "VmrunOrder",
    "knobs_of",
    "resolve_policy",
]

Model = Literal["kvm", "arch"]
"""The model a policy runs: KVM's (model.md section 6) or the reference (section 5)."""
Svme0 = Literal["off", "ignore"]
"""What H/G bits do while EFER.SVME = 0."""
Hg = Literal["honored", "reserved"]
"""Whether bits 40/41 of a selector are writable."""
Timing = Literal["sync", "deferred", "none"]
"""When a flow re-evaluates the counters."""
VmrunOrder = Literal["after_entry", "before_entry"]
"""Whether VMRUN retires before or after entering guest mode."""
Attribution = Literal["old", "new"]
"""Whether an instruction that changes the state counts in the state before or after it."""
Context = Literal["guest", "host"]
"""Whether VMRUN counts as a guest or a host instruction."""
KnobValue = Union[str, bool]
"""A knob's value: a string, or a bool for the two boolean knobs."""

_BOOL = {"true": True, "false": False}


def _knob_value(text: str) -> KnobValue:
    """A knob value as the core writes it, as a Policy holds it (booleans as bools)."""
    return _BOOL.get(text, text)


def _core_value(value: KnobValue) -> str:
    """A knob value as a Policy holds it, as the core reads it (booleans as "true"/"false")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


_CORE_KNOBS: tuple[str, ...] = tuple(name for name, _ in _core.KNOBS)
"""The knobs in the order the core reads a policy."""


class _Defaults(dict[str, Any]):
    """The default of each knob; None for a knob the core does not have (which the import
    check below then names, rather than a KeyError in the class body)."""

    def __missing__(self, knob: str) -> None:
        """None (the core has no such knob)."""


_FINAL = _Defaults(zip(_CORE_KNOBS, map(_knob_value, _core.PRESETS["final"])))
"""The ``final`` preset, knob by knob: the default of every knob (its reference knobs are the
reference's defaults). Its values are typed ``Any`` so that each field's default below, with
its ``Literal`` type, can be read from it: the defaults follow the core."""

KNOB_VALUES: dict[str, tuple[KnobValue, ...]] = {
    knob: (_FINAL[knob], *(v for v in map(_knob_value, allowed) if v != _FINAL[knob]))
    for knob, allowed in _core.KNOBS
}
"""Every knob of :class:`Policy` and its allowed values, the default first. The knobs are in
the order the Rust core reads them (``svmpmu._core.KNOBS``)."""

_P = TypeVar("_P")


def _known_knobs_only(cls: type[_P]) -> type[_P]:
    """Make the constructor raise PolicyError, not TypeError, for an unknown knob: a keyword
    that names no knob, more positional values than there are knobs, or a knob given both by
    position and by name."""
    generated: Callable[..., None] = cls.__init__

    @functools.wraps(generated)
    def __init__(self: _P, *args: object, **knobs: object) -> None:  # noqa: N807 (it is the method)
        names = tuple(KNOB_VALUES)
        unknown = [name for name in knobs if name not in KNOB_VALUES]
        if unknown:
            raise PolicyError(f"unknown knob {unknown[0]!r}; knobs: " + ", ".join(names))
        if len(args) > len(names):
            raise PolicyError(
                f"{len(args)} knob values given by position, but there are {len(names)} knobs: "
                + ", ".join(names)
            )
        twice = [name for name in names[: len(args)] if name in knobs]
        if twice:
            raise PolicyError(f"knob {twice[0]!r} given both by position and by name")
        generated(self, *args, **knobs)

    setattr(cls, "__init__", __init__)  # noqa: B010 (mypy forbids assigning to a method)
    return cls


@_known_knobs_only
@dataclass(frozen=True)
class Policy:
    """One configuration of the model: a KVM policy (``model="kvm"``) or the reference.

    The defaults are the ``final`` preset (the code merged in 2026), read from the core.
    Override knobs with :func:`dataclasses.replace`, e.g.
    ``replace(Policy.preset("final"), vmrun_order="before_entry")``. An unknown knob or a
    value a knob does not take raises :class:`~svmpmu.PolicyError`.
    With ``model="arch"`` only the reference knobs (``enabling_wrmsr``, ``efer_retire``,
    ``vmrun_retire``, ``failed_vmrun_retire``) matter; with ``model="kvm"`` they are ignored.

    The fields are declared in the order the core reads them, with the values the core
    allows; both are checked at import against ``svmpmu._core.KNOBS``.
    """

    model: Model = _FINAL["model"]
    """``"kvm"``: the KVM model of model.md section 6; ``"arch"``: the reference of section 5."""
    svme0: Svme0 = _FINAL["svme0"]
    """With EFER.SVME = 0 and any H/G bit: ``"off"`` (no counting) or ``"ignore"`` the bits."""
    hg: Hg = _FINAL["hg"]
    """``"honored"`` (bits 40/41 writable, mediated PMU) or ``"reserved"`` (dropped on write)."""
    emul_mode_aware: bool = _FINAL["emul_mode_aware"]
    """Whether the emulation bitmap (``emul_ok``) follows the H/G mode rule, or only EN."""
    filter_on_sync: bool = _FINAL["filter_on_sync"]
    """Whether a synchronous re-evaluation at a transition honours the event filter."""
    efer_timing: Timing = _FINAL["efer_timing"]
    """Re-evaluation timing of WRMSR(EFER) transitions: ``"sync"``, ``"deferred"`` or ``"none"``."""
    vmrun_timing: Timing = _FINAL["vmrun_timing"]
    """Re-evaluation timing of the VMRUN transition."""
    vmexit_timing: Timing = _FINAL["vmexit_timing"]
    """Re-evaluation timing of the #VMEXIT transition."""
    forced_leave_timing: Timing = _FINAL["forced_leave_timing"]
    """Re-evaluation timing of a forced leave (svm_leave_nested)."""
    set_nested_state_timing: Timing = _FINAL["set_nested_state_timing"]
    """Re-evaluation timing of KVM_SET_NESTED_STATE."""
    vmrun_order: VmrunOrder = _FINAL["vmrun_order"]
    """VMRUN retires ``"before_entry"`` (pre-2026 code) or ``"after_entry"`` (the merged fix)."""
    enabling_wrmsr: Attribution = _FINAL["enabling_wrmsr"]
    """Reference: a WRMSR to a selector is attributed to the ``"old"`` or ``"new"`` selector."""
    efer_retire: Attribution = _FINAL["efer_retire"]
    """Reference: a WRMSR(EFER) counts in the state after (``"new"``) or before (``"old"``) it."""
    vmrun_retire: Context = _FINAL["vmrun_retire"]
    """Reference: a successful VMRUN counts as a ``"guest"`` or a ``"host"`` instruction."""
    failed_vmrun_retire: Context = _FINAL["failed_vmrun_retire"]
    """Reference: a failed VMRUN counts as a ``"host"`` or a ``"guest"`` instruction."""

    def __post_init__(self) -> None:
        """Check every knob's value (PolicyError, which names the knob, and the type when a
        value is not even of the knob's type)."""
        for knob, allowed in KNOB_VALUES.items():
            value = getattr(self, knob)
            # bool knobs: accept exactly True/False (not 0/1 or strings)
            if not any(value is a or (type(value) is type(a) and value == a) for a in allowed):
                types = sorted({type(a).__name__ for a in allowed})
                wrong_type = (
                    f" (type {type(value).__name__}, not {' or '.join(types)})"
                    if type(value).__name__ not in types
                    else ""
                )
                raise PolicyError(
                    f"knob {knob!r} cannot be {value!r}{wrong_type}; allowed: "
                    + ", ".join(repr(a) for a in allowed)
                )

    @functools.cached_property
    def _core_knobs(self) -> tuple[str, ...]:
        """The knob values as the Rust core reads them (strings, booleans as "true" or
        "false", in the order of the fields, which is the core's), made once per policy:
        reading the attributes on every call took 1.2 us."""
        return tuple(_core_value(getattr(self, knob)) for knob in _CORE_KNOBS)

    @classmethod
    def preset(cls, name: str) -> Policy:
        """The policy of a named preset (model.md section 7): one of :data:`PRESETS`."""
        try:
            return PRESETS[name]
        except (KeyError, TypeError):
            raise PolicyError(f"unknown preset {name!r}; presets: " + ", ".join(PRESETS)) from None

    @property
    def preset_name(self) -> str | None:
        """The name of the preset this policy equals, or None if knobs were overridden."""
        for name, policy in PRESETS.items():
            if policy == self:
                return name
        return None

    def overrides(self) -> dict[str, KnobValue]:
        """The knobs that differ from the nearest preset of the same model (for display)."""
        base = PRESETS["arch"] if self.model == "arch" else PRESETS["final"]
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(base, f.name)
        }

    def __str__(self) -> str:
        """The preset's name, or ``custom(knob=value, ...)`` with the overridden knobs."""
        name = self.preset_name
        if name is not None:
            return name
        return "custom(" + ", ".join(f"{k}={v}" for k, v in self.overrides().items()) + ")"


def _mismatches(
    fields: Mapping[str, tuple[object, object]],
    knobs: tuple[tuple[str, tuple[str, ...]], ...],
    final: tuple[str, ...],
) -> list[str]:
    """How the fields (name -> (type, default)) differ from the core's knob table and its
    ``final`` preset, one line per difference; empty if they agree."""
    problems = []
    names, core_names = list(fields), [name for name, _ in knobs]
    if names != core_names:
        missing = [name for name in core_names if name not in fields]
        extra = [name for name in names if name not in core_names]
        if missing:
            problems.append(f"no field for the core's knobs {missing}")
        if extra:
            problems.append(f"fields {extra} are not knobs of the core")
        if not missing and not extra:
            problems.append(f"the fields are not in the core's order, {core_names}")
    if len(final) != len(knobs):
        problems.append(f"the core's final preset has {len(final)} values for {len(knobs)} knobs")
    for (knob, allowed), default in zip(knobs, final):
        if knob not in fields:
            continue
        hint, value = fields[knob]
        if set(allowed) == set(_BOOL):
            if hint is not bool:
                problems.append(f"{knob}: typed {hint!r}, but the core's values are booleans")
        elif typing.get_origin(hint) is not Literal or set(typing.get_args(hint)) != set(allowed):
            problems.append(f"{knob}: typed {hint!r}, but the core's values are {allowed}")
        if value != _knob_value(default):
            problems.append(
                f"{knob}: defaults to {value!r}, but the core's final preset has {default!r}"
            )
    return problems


def _check_against_core() -> None:
    """ImportError unless Policy's fields are the core's knobs: same order, same values, and
    the final preset's defaults."""
    hints = typing.get_type_hints(Policy)
    fields = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(Policy)}
    problems = _mismatches(fields, _core.KNOBS, _core.PRESETS["final"])
    if problems:
        raise ImportError(
            "svmpmu.Policy (python/svmpmu/policy.py) does not match the Rust core's knob table "
            "(svmpmu._core.KNOBS and PRESETS, rust/model/policy.rs); rebuild the extension or "
            "update the Policy fields:\n  " + "\n  ".join(problems)
        )


_check_against_core()


def _preset(values: tuple[str, ...]) -> Policy:
    """A preset's Policy from the core's knob strings (each checked by ``__post_init__``)."""
    if len(values) != len(_CORE_KNOBS):
        raise ImportError(f"a preset of the core has {len(values)} values for {len(_CORE_KNOBS)}")
    knobs: dict[str, Any] = dict(zip(_CORE_KNOBS, map(_knob_value, values)))
    return Policy(**knobs)


PRESETS: dict[str, Policy] = {name: _preset(values) for name, values in _core.PRESETS.items()}
"""The presets of model.md section 7, by name, in the core's order (``svmpmu._core.PRESETS``)."""

REFERENCE_KNOBS: tuple[str, ...] = (
    "enabling_wrmsr",
    "efer_retire",
    "vmrun_retire",
    "failed_vmrun_retire",
)
"""The knobs only the reference (``model="arch"``) reads; every other knob but ``model`` is
read only by the KVM model."""


def knobs_of(model: str) -> tuple[str, ...]:
    """The knobs a model reads: ``"arch"`` the reference knobs, ``"kvm"`` the others (and
    both ``model`` itself)."""
    own = [k for k in KNOB_VALUES if k != "model" and (k in REFERENCE_KNOBS) == (model == "arch")]
    return ("model", *own)


PolicyLike = Union[Policy, str]
"""A :class:`Policy` or the name of a preset."""


def resolve_policy(policy: PolicyLike) -> Policy:
    """Turn a preset name or a Policy into a Policy (PolicyError for anything else)."""
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, str):
        return Policy.preset(policy)
    raise PolicyError(f"expected a Policy or a preset name, got {type(policy).__name__}")
