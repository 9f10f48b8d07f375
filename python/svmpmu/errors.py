"""Exceptions raised by svmpmu."""

from __future__ import annotations

__all__ = ["PolicyError", "TraceError", "TraceSyntaxError"]


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


class TraceSyntaxError(TraceError):
    """A text trace that cannot be read (docs/text-format.md): where, and what was expected.

    Attributes:
        line: the 1-based line number.
        column: the 1-based column (in bytes) where reading failed.
        index: the index the record of that line would have had.
        reason: what was expected there, in words.
        source: the file name, when the text came from a file (else None).
    """

    def __init__(
        self, line: int, column: int, index: int, reason: str, source: str | None = None
    ) -> None:
        """The error at ``line``:``column`` (1-based) of the text of record ``index``."""
        self.line = int(line)
        self.column = int(column)
        self.source = source
        super().__init__(index, reason)
        where = f"{source}:" if source else "line "
        sep = ":" if source else ", column "
        self.args = (f"{where}{self.line}{sep}{self.column}: {self.reason}",)

    def __str__(self) -> str:
        """``FILE:LINE:COLUMN: reason``, or ``line L, column C: reason``."""
        return str(self.args[0])

    def __reduce__(  # type: ignore[override]
        self,
    ) -> tuple[type[TraceSyntaxError], tuple[int, int, int, str, str | None]]:
        """Keep the fields through pickling (multiprocessing)."""
        return (type(self), (self.line, self.column, self.index, self.reason, self.source))


class PolicyError(ValueError):
    """An unknown preset name, knob name or knob value."""
