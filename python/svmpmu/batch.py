"""Batches of traces: the record columns of many traces concatenated, with offsets."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt

from .trace import COLUMNS, Columns, Trace, integer_array

__all__ = ["TraceBatch"]


class TraceBatch:
    """Many traces in one set of columns (Arrow-style): trace ``i`` is records
    ``offsets[i]:offsets[i + 1]`` of the columns.

    ``offsets`` is a uint64 array of ``len(batch) + 1`` non-decreasing entries, the first 0 and
    the last the number of records. The columns follow :data:`~svmpmu.COLUMNS`; arrays that are
    already contiguous and of the right dtype are used without a copy.
    """

    __slots__ = ("columns_trace", "offsets")
    columns_trace: Trace
    offsets: np.ndarray

    def __init__(
        self,
        offsets: npt.ArrayLike,
        op: npt.ArrayLike,
        pmc: npt.ArrayLike | None = None,
        cpl: npt.ArrayLike | None = None,
        flag: npt.ArrayLike | None = None,
        key: npt.ArrayLike | None = None,
        value: npt.ArrayLike | None = None,
    ) -> None:
        """A batch from its offsets and its record columns (see the class docstring)."""
        trace = Trace(op, pmc, cpl, flag, key, value)
        off = integer_array("offsets", offsets, np.dtype(np.uint64))
        if len(off) < 1:
            raise ValueError("offsets must have at least one entry")
        if int(off[0]) != 0 or int(off[-1]) != len(trace):
            raise ValueError(
                f"offsets must start at 0 and end at the number of records ({len(trace)}), "
                f"got {int(off[0])} and {int(off[-1])}"
            )
        if len(off) > 1 and bool(np.any(off[1:] < off[:-1])):
            raise ValueError("offsets must not decrease")
        view = off.view()
        view.flags.writeable = False
        object.__setattr__(self, "columns_trace", trace)
        object.__setattr__(self, "offsets", view)

    def __setattr__(self, name: str, value: object) -> None:
        """Refuse: a batch is immutable."""
        raise AttributeError("a TraceBatch is immutable")

    def _arrays(self) -> tuple[np.ndarray, ...]:
        """The constructor's arguments: the offsets, then the record columns."""
        t = self.columns_trace
        return (self.offsets, t.op, t.pmc, t.cpl, t.flag, t.key, t.value)

    def __reduce__(self) -> tuple[type[TraceBatch], tuple[np.ndarray, ...]]:
        """Pickle (and ``multiprocessing``) by the offsets and the columns: unpickling calls
        the constructor, so the copy is checked and as immutable as the original."""
        return (type(self), self._arrays())

    def __copy__(self) -> TraceBatch:
        """A new batch that shares this one's (read-only) arrays."""
        return type(self)(*self._arrays())

    def __deepcopy__(self, memo: dict[int, object]) -> TraceBatch:
        """A new batch with its own copy of the offsets and of every column."""
        return type(self)(*(np.array(a) for a in self._arrays()))

    @classmethod
    def from_traces(cls, traces: Sequence[Trace]) -> TraceBatch:
        """Concatenate traces into a batch (this copies their records once)."""
        traces = list(traces)
        for t in traces:
            if not isinstance(t, Trace):
                raise TypeError(f"expected svmpmu.Trace items, got {type(t).__name__}")
        lengths = np.array([len(t) for t in traces], dtype=np.uint64)
        offsets = np.zeros(len(traces) + 1, dtype=np.uint64)
        np.cumsum(lengths, out=offsets[1:])
        columns = {
            name: np.concatenate([getattr(t, name) for t in traces])
            if traces
            else np.zeros(0, dtype=dtype)
            for name, dtype in COLUMNS.items()
        }
        return cls(offsets, **columns)

    @property
    def records(self) -> Trace:
        """All records of the batch as one (concatenated) trace of column views."""
        return self.columns_trace

    def __len__(self) -> int:
        """The number of traces."""
        return len(self.offsets) - 1

    @property
    def n_records(self) -> int:
        """The number of records in all traces together."""
        return len(self.columns_trace)

    @property
    def nbytes(self) -> int:
        """Bytes held by the columns and the offsets."""
        return self.columns_trace.nbytes + self.offsets.nbytes

    def trace(self, index: int) -> Trace:
        """Trace ``index`` (column views, no copy)."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"trace index {index} out of range for a batch of {n}")
        index %= n
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return self.columns_trace[start:end]

    def __iter__(self) -> Iterator[Trace]:
        """The traces, in order (column views)."""
        return (self.trace(i) for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        """Equal when the offsets and every column hold the same values."""
        if not isinstance(other, TraceBatch):
            return NotImplemented
        return bool(np.array_equal(self.offsets, other.offsets)) and (
            self.columns_trace == other.columns_trace
        )

    __hash__ = None  # type: ignore[assignment]  # unhashable: equality is by value

    def __repr__(self) -> str:
        """``<TraceBatch of N traces, M records>``."""
        return f"<TraceBatch of {len(self)} traces, {self.n_records} records>"

    def _core_args(self) -> tuple[Columns, np.ndarray]:
        """The columns and the offsets as the core takes them."""
        t = self.columns_trace
        return (t.op, t.pmc, t.cpl, t.flag, t.key, t.value), self.offsets
