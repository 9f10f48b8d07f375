"""Exceptions raised by svmpmu."""

from __future__ import annotations

__all__ = ["PolicyError", "TraceError"]


class TraceError(ValueError):
    """A trace breaks one of the record rules of the specification (model.md section 4).

    Attributes:
        index: the index of the first invalid record.
        reason: what rule it breaks, in words.
    """

    def __init__(self, index: int, reason: str) -> None:
        """The error of record ``index``, which breaks the rule ``reason``."""
        self.index = int(index)
        self.reason = str(reason)
        super().__init__(f"record {self.index}: {self.reason}")

    def __reduce__(self) -> tuple[type[TraceError], tuple[int, str]]:
        """Keep the two fields through pickling (multiprocessing)."""
        return (type(self), (self.index, self.reason))


class PolicyError(ValueError):
    """An unknown preset name, knob name or knob value."""
