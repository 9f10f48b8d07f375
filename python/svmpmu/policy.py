"""KVM policies and the architectural reference (model.md sections 5 to 7)."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Union

from .errors import PolicyError

__all__ = ["KNOB_VALUES", "PRESETS", "Policy", "PolicyLike", "resolve_policy"]

_TIMING = ("sync", "deferred", "none")

KNOB_VALUES: dict[str, tuple] = {
    "model": ("kvm", "arch"),
    "svme0": ("off", "ignore"),
    "hg": ("honored", "reserved"),
    "emul_mode_aware": (True, False),
    "filter_on_sync": (True, False),
    "efer_timing": _TIMING,
    "vmrun_timing": _TIMING,
    "vmexit_timing": _TIMING,
    "forced_leave_timing": ("deferred", "sync", "none"),
    "set_nested_state_timing": ("deferred", "sync", "none"),
    "vmrun_order": ("after_entry", "before_entry"),
    "enabling_wrmsr": ("old", "new"),
    "efer_retire": ("new", "old"),
    "vmrun_retire": ("guest", "host"),
    "failed_vmrun_retire": ("host", "guest"),
}
"""Every knob of :class:`Policy` and its allowed values, the default first. The knobs are in
the order the Rust core reads them (``KNOBS`` in ``rust/model.rs``)."""


@dataclass(frozen=True)
class Policy:
    """One configuration of the model: a KVM policy (``model="kvm"``) or the reference.

    The defaults are the ``final`` preset (the code merged in 2026). Override knobs with
    :func:`dataclasses.replace`, e.g.
    ``replace(Policy.preset("final"), vmrun_order="before_entry")``.
    With ``model="arch"`` only the reference knobs (``enabling_wrmsr``, ``efer_retire``,
    ``vmrun_retire``, ``failed_vmrun_retire``) matter; with ``model="kvm"`` they are ignored.
    """

    model: str = "kvm"
    """``"kvm"``: the KVM model of model.md section 6; ``"arch"``: the reference of section 5."""
    svme0: str = "off"
    """With EFER.SVME = 0 and any H/G bit: ``"off"`` (no counting) or ``"ignore"`` the bits."""
    hg: str = "honored"
    """``"honored"`` (bits 40/41 writable, mediated PMU) or ``"reserved"`` (dropped on write)."""
    emul_mode_aware: bool = True
    """Whether the emulation bitmap (``emul_ok``) follows the H/G mode rule, or only EN."""
    filter_on_sync: bool = True
    """Whether a synchronous re-evaluation at a transition honours the event filter."""
    efer_timing: str = "sync"
    """Re-evaluation timing of WRMSR(EFER) transitions: ``"sync"``, ``"deferred"`` or ``"none"``."""
    vmrun_timing: str = "sync"
    """Re-evaluation timing of the VMRUN transition."""
    vmexit_timing: str = "sync"
    """Re-evaluation timing of the #VMEXIT transition."""
    forced_leave_timing: str = "deferred"
    """Re-evaluation timing of a forced leave (svm_leave_nested)."""
    set_nested_state_timing: str = "deferred"
    """Re-evaluation timing of KVM_SET_NESTED_STATE."""
    vmrun_order: str = "after_entry"
    """VMRUN retires ``"before_entry"`` (pre-2026 code) or ``"after_entry"`` (the merged fix)."""
    enabling_wrmsr: str = "old"
    """Reference: a WRMSR to a selector is attributed to the ``"old"`` or ``"new"`` selector."""
    efer_retire: str = "new"
    """Reference: a WRMSR(EFER) counts in the state after (``"new"``) or before (``"old"``) it."""
    vmrun_retire: str = "guest"
    """Reference: a successful VMRUN counts as a ``"guest"`` or a ``"host"`` instruction."""
    failed_vmrun_retire: str = "host"
    """Reference: a failed VMRUN counts as a ``"host"`` or a ``"guest"`` instruction."""

    def __post_init__(self) -> None:
        for knob, allowed in KNOB_VALUES.items():
            value = getattr(self, knob)
            # bool knobs: accept exactly True/False (not 0/1 or strings)
            if not any(value is a or (type(value) is type(a) and value == a) for a in allowed):
                raise PolicyError(
                    f"knob {knob!r} cannot be {value!r}; allowed: "
                    + ", ".join(repr(a) for a in allowed)
                )

    @functools.cached_property
    def _core_knobs(self) -> tuple[str, ...]:
        """The knob values as the Rust core reads them (strings, booleans as "true" or
        "false", in the order of :data:`KNOB_VALUES`), made once per policy: reading the
        attributes on every call took 1.2 us."""
        return tuple(
            ("true" if value else "false") if isinstance(value, bool) else value
            for value in (getattr(self, knob) for knob in KNOB_VALUES)
        )

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

    def overrides(self) -> dict[str, object]:
        """The knobs that differ from the nearest preset of the same model (for display)."""
        base = PRESETS["arch"] if self.model == "arch" else PRESETS["final"]
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(base, f.name)
        }

    def __str__(self) -> str:
        name = self.preset_name
        if name is not None:
            return name
        return "custom(" + ", ".join(f"{k}={v}" for k, v in self.overrides().items()) + ")"


def _kvm(**knobs: object) -> Policy:
    return Policy(model="kvm", **knobs)  # type: ignore[arg-type]


_DEFERRED = dict(
    efer_timing="deferred",
    vmrun_timing="deferred",
    vmexit_timing="deferred",
    forced_leave_timing="deferred",
    set_nested_state_timing="deferred",
)
_V1_V4 = dict(svme0="ignore", emul_mode_aware=False, vmrun_order="before_entry")

PRESETS: dict[str, Policy] = {
    "arch": Policy(model="arch"),
    "final": _kvm(),
    "hybrid": _kvm(svme0="ignore"),
    "v4": _kvm(**_V1_V4, **_DEFERRED),
    "v3": _kvm(
        **_V1_V4,
        filter_on_sync=False,
        forced_leave_timing="sync",
        set_nested_state_timing="sync",
    ),
    "v1": _kvm(
        **_V1_V4,
        filter_on_sync=False,
        forced_leave_timing="none",
        set_nested_state_timing="none",
    ),
    "legacy": _kvm(
        hg="reserved",
        emul_mode_aware=False,
        efer_timing="none",
        vmrun_timing="none",
        vmexit_timing="none",
        forced_leave_timing="none",
        set_nested_state_timing="none",
        vmrun_order="before_entry",
    ),
}
"""The presets of model.md section 7, by name."""

PolicyLike = Union[Policy, str]
"""A :class:`Policy` or the name of a preset."""


def resolve_policy(policy: PolicyLike) -> Policy:
    """Turn a preset name or a Policy into a Policy (PolicyError for anything else)."""
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, str):
        return Policy.preset(policy)
    raise PolicyError(f"expected a Policy or a preset name, got {type(policy).__name__}")
