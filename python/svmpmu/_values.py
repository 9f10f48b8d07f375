"""Equality by value for the dataclasses that hold numpy arrays (results, reports, classes):
the generated ``__eq__`` compares field tuples, which is ambiguous for arrays."""

from __future__ import annotations

import dataclasses

import numpy as np


def same_value(a: object, b: object) -> bool:
    """Whether ``a`` and ``b`` hold the same values: arrays element by element (and of one
    dtype and shape), dataclasses field by field, sequences and mappings item by item."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(np.array_equal(a, b))
        )
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and all(
            same_value(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)
        )
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same_value, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    return bool(a == b)


def dataclass_eq(self: object, other: object) -> bool:
    """``__eq__`` for a dataclass with array fields: equal when of one type with the same
    values (:func:`same_value`)."""
    if type(other) is not type(self):
        return NotImplemented  # type: ignore[no-any-return]
    return same_value(self, other)
