"""Traces: records held column-wise (model.md section 4), and a builder for them."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import IO, Union

import numpy as np
import numpy.typing as npt

from .model import (
    CPL_USER,
    INSTRUCTIONS_RETIRED,
    FilterAction,
    Op,
)

__all__ = ["COLUMNS", "Trace", "TraceBuilder", "format_record", "selector_text"]

COLUMNS: dict[str, np.dtype] = {
    "op": np.dtype(np.uint8),
    "pmc": np.dtype(np.uint8),
    "cpl": np.dtype(np.uint8),
    "flag": np.dtype(np.uint8),
    "key": np.dtype(np.uint32),
    "value": np.dtype(np.uint64),
}
"""The record columns of a trace and their dtypes: 16 bytes a record."""

Columns = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""A trace's columns as they cross into the core: ``(op, pmc, cpl, flag, key, value)``."""

FileLike = Union[str, os.PathLike[str], IO[bytes]]
"""Where :meth:`Trace.save` writes and :meth:`Trace.load` reads: a path or a binary file."""


def _is_integer(item: object) -> bool:
    """Whether ``item`` is an integer a column takes: a Python or numpy integer, or a bool."""
    return isinstance(item, (int, np.integer, np.bool_))


def _exact_integers(name: str, data: npt.ArrayLike, dtype: np.dtype) -> np.ndarray | None:
    """``data`` converted element by element, exactly, when it holds only integers that numpy
    could not give one integer dtype (values above 2**63 beside others, or above 2**64, make a
    float64 or object array); None when some element is not an integer."""
    try:
        items = np.asarray(data, dtype=object)
    except (ValueError, TypeError):
        return None
    if items.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {items.shape}")
    values = items.tolist()
    if not all(_is_integer(item) for item in values):
        return None
    numbers = [int(item) for item in values]
    if numbers and min(numbers) < 0:
        raise ValueError(f"{name} holds a negative value")
    if numbers and max(numbers) > np.iinfo(dtype).max:
        raise ValueError(
            f"{name} holds a value wider than its dtype {dtype} (maximum {max(numbers):#x})"
        )
    return np.array(numbers, dtype=dtype)


def integer_array(name: str, data: npt.ArrayLike, dtype: np.dtype) -> np.ndarray:
    """``data`` as a contiguous 1-D array of ``dtype``, without a copy when it already is one.

    Integers are taken exactly, however large: a list of Python ints up to 2**64 - 1 (which
    numpy alone would turn into float64) gives exact uint64 values. Raises TypeError for
    non-integers (floats are never truncated), ValueError for negative values or values wider
    than ``dtype``."""
    try:
        array = np.asarray(data)
    except OverflowError:  # an integer too large for any numpy dtype, beside a negative one
        array = np.asarray(data, dtype=object)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.dtype != dtype:
        from_ints = array.dtype.kind == "O" or (
            array.dtype.kind == "f" and not isinstance(data, np.ndarray)
        )  # perhaps: numpy makes float64 of Python ints beyond int64 beside others
        if array.size and from_ints:
            exact = _exact_integers(name, data, dtype)
            if exact is not None:
                return exact
        if array.size and array.dtype.kind not in "iub":
            raise TypeError(f"{name} must hold integers, got dtype {array.dtype}")
        if array.size and array.dtype.kind == "i" and int(array.min()) < 0:
            raise ValueError(f"{name} holds a negative value")
        if array.size and int(array.max()) > np.iinfo(dtype).max:
            raise ValueError(
                f"{name} holds a value wider than its dtype {dtype} (maximum {int(array.max()):#x})"
            )
        array = array.astype(dtype)
    return np.ascontiguousarray(array)


def _column(name: str, data: npt.ArrayLike | None, length: int | None) -> np.ndarray:
    """One column as a contiguous 1-D array of its dtype, without a copy when it already is one."""
    dtype = COLUMNS[name]
    if data is None:
        if length is None:
            raise ValueError("the 'op' column is required")
        return np.zeros(length, dtype=dtype)
    array = integer_array(f"column {name!r}", data, dtype)
    if length is not None and len(array) != length:
        raise ValueError(f"column {name!r} has {len(array)} records, but 'op' has {length}")
    return array


class Trace:
    """A sequence of records, held column-wise (struct of arrays).

    Columns (see :data:`COLUMNS`): ``op`` (uint8, an :class:`~svmpmu.Op`), ``pmc`` (uint8),
    ``cpl`` (uint8: 0 is kernel, 1..3 user), ``flag`` (uint8), ``key`` (uint32, a 20-bit event
    key) and ``value`` (uint64). A record uses only the fields its op needs; the others are
    ignored. Build a trace with :class:`TraceBuilder`, or from your own arrays: columns that are
    already contiguous arrays of the right dtype are used as they are, without a copy; omitted
    columns are zeros. The arrays are made read-only views so that a trace cannot change under
    a result. A trace is not validated until it is simulated.
    """

    __slots__ = ("cpl", "flag", "key", "op", "pmc", "value")
    op: np.ndarray
    pmc: np.ndarray
    cpl: np.ndarray
    flag: np.ndarray
    key: np.ndarray
    value: np.ndarray

    def __init__(
        self,
        op: npt.ArrayLike,
        pmc: npt.ArrayLike | None = None,
        cpl: npt.ArrayLike | None = None,
        flag: npt.ArrayLike | None = None,
        key: npt.ArrayLike | None = None,
        value: npt.ArrayLike | None = None,
    ) -> None:
        """A trace from its columns (see the class docstring); only ``op`` is required."""
        op_array = _column("op", op, None)
        n = len(op_array)
        columns = {
            "op": op_array,
            "pmc": _column("pmc", pmc, n),
            "cpl": _column("cpl", cpl, n),
            "flag": _column("flag", flag, n),
            "key": _column("key", key, n),
            "value": _column("value", value, n),
        }
        for name, array in columns.items():
            view = array.view()
            view.flags.writeable = False
            object.__setattr__(self, name, view)

    def __setattr__(self, name: str, value: object) -> None:
        """Refuse: a trace is immutable."""
        raise AttributeError("a Trace is immutable")

    def __reduce__(self) -> tuple[type[Trace], Columns]:
        """Pickle (and ``multiprocessing``) by the columns: unpickling calls the constructor,
        so the copy is as immutable as the original."""
        return (type(self), (self.op, self.pmc, self.cpl, self.flag, self.key, self.value))

    def __copy__(self) -> Trace:
        """A new trace that shares this one's (read-only) columns."""
        return type(self)(self.op, self.pmc, self.cpl, self.flag, self.key, self.value)

    def __deepcopy__(self, memo: dict[int, object]) -> Trace:
        """A new trace with its own copy of every column."""
        return type(self)(*(np.array(getattr(self, name)) for name in COLUMNS))

    @classmethod
    def from_columns(cls, columns: Mapping[str, npt.ArrayLike]) -> Trace:
        """A trace from a mapping of column names to arrays (e.g. an ``np.load`` of a ``.npz``)."""
        unknown = set(columns) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown trace columns: {', '.join(sorted(unknown))}")
        return cls(**{name: columns[name] for name in columns})

    def columns(self) -> dict[str, np.ndarray]:
        """The columns by name, in layout order."""
        return {name: getattr(self, name) for name in COLUMNS}

    def save(self, path: FileLike) -> None:
        """Write the trace to a ``.npz`` file (one array a column); :meth:`load` reads it.

        A path gets ``.npz`` appended when it does not end with it (as :func:`numpy.savez`
        does) and is written through a temporary file (:func:`svmpmu.files.atomic_write`): a
        failure, a full disk say, leaves the file as it was. An open binary file is written
        in place."""
        columns = self.columns()

        def write(file: FileLike) -> None:
            # mypy cannot tell **columns from savez's bool keyword allow_pickle; no column has
            # that name, so the call is sound.
            np.savez(file, **columns)  # type: ignore[arg-type]

        if isinstance(path, (str, os.PathLike)):
            from .files import atomic_write  # here: svmpmu.files imports this module

            target = os.fspath(path)
            atomic_write(target if target.endswith(".npz") else target + ".npz", write)
        else:
            write(path)

    def to_text(self) -> str:
        """The trace as text, one record per line (docs/text-format.md);
        :func:`svmpmu.read_text` reads it back to an equal trace.

        >>> print(TraceBuilder().wrmsr_efer(1).vmrun(cpl=3).build().to_text())
        # svmpmu text trace
        WRMSR_EFER svme=1
        VMRUN cpl=3
        <BLANKLINE>
        """
        from .files import to_text

        return to_text(self)

    @classmethod
    def load(cls, path: FileLike) -> Trace:
        """Read a trace written by :meth:`save` (a ``.npz`` archive of the columns). A file
        that is not one, or is cut short, raises :class:`~svmpmu.TraceFileError` saying so;
        nothing in it is ever unpickled. :func:`svmpmu.read_trace` reads any trace format."""
        from .files import read_npz

        return read_npz(path)

    def __len__(self) -> int:
        """The number of records."""
        return len(self.op)

    @property
    def nbytes(self) -> int:
        """Bytes held by the record columns (16 a record)."""
        return sum(getattr(self, name).nbytes for name in COLUMNS)

    def __getitem__(self, index: slice) -> Trace:
        """A slice of the trace, as a trace (views, no copy)."""
        if not isinstance(index, slice):
            raise TypeError("a Trace is indexed by slices; use records() for single records")
        return Trace(**{name: getattr(self, name)[index] for name in COLUMNS})

    def records(self) -> Iterator[tuple[int, int, int, int, int, int]]:
        """The records as ``(op, pmc, cpl, flag, key, value)`` tuples of Python ints."""
        return zip(*(getattr(self, name).tolist() for name in COLUMNS))

    def __eq__(self, other: object) -> bool:
        """Equal when every column holds the same values."""
        if not isinstance(other, Trace):
            return NotImplemented
        return all(np.array_equal(getattr(self, n), getattr(other, n)) for n in COLUMNS)

    __hash__ = None  # type: ignore[assignment]  # unhashable: equality is by value

    def __repr__(self) -> str:
        """``<Trace of N records>``."""
        return f"<Trace of {len(self)} records>"

    def format(self, limit: int | None = 50) -> str:
        """The records as readable lines, one a record (at most ``limit``; None for all)."""
        lines = []
        for index, record in enumerate(self.records()):
            if limit is not None and index >= limit:
                lines.append(f"... {len(self) - limit} more records")
                break
            lines.append(f"{index:6d}  {format_record(*record)}")
        return "\n".join(lines)


def selector_text(value: int) -> str:
    """A selector value with its bits named, as the text format writes it.

    >>> selector_text(0x100004300C0)
    'EN|OS|USR|G|event=0xc0'
    """
    from . import _core

    text: str = _core.selector_text(int(value))
    return text


def format_record(op: int, pmc: int, cpl: int, flag: int, key: int, value: int) -> str:
    """One record in the notation of the specification, e.g. ``RUN(n=1000, key=0x0c0, cpl=3)``."""
    try:
        name = Op(op).name
    except ValueError:
        return f"<unknown op {op}>"
    if op == Op.WRMSR_EVTSEL:
        return f"WRMSR_EVTSEL(pmc={pmc}, value={selector_text(value)})"
    if op == Op.WRMSR_CTR:
        return f"WRMSR_CTR(pmc={pmc}, value={value:#x})"
    if op == Op.WRMSR_GLOBAL_CTRL:
        return f"WRMSR_GLOBAL_CTRL(value={value:#x})"
    if op == Op.WRMSR_EFER:
        return f"WRMSR_EFER(svme={flag})"
    if op == Op.VMRUN:
        return f"VMRUN(cpl={cpl})"
    if op == Op.SET_NESTED_STATE:
        return f"SET_NESTED_STATE(guest_mode={flag})"
    if op == Op.SET_FILTER:
        try:
            action = FilterAction(flag).name.lower()
        except ValueError:
            action = f"<flag {flag}>"
        return f"SET_FILTER({action}, key={key:#05x})"
    if op == Op.EMULATE:
        return f"EMULATE(cpl={cpl}{', branch' if flag else ''})"
    if op == Op.RUN:
        return f"RUN(n={value}, key={key:#05x}, cpl={cpl})"
    if op == Op.READ:
        return f"READ(pmc={pmc})"
    return name


_U8 = 0xFF
_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF


def _integer(method: str, name: str, value: object, limit: int) -> int:
    """``value`` as an int in ``0..limit``; a Python or numpy integer is taken. Raises
    TypeError for anything else (a float, a bool, a string) and ValueError for a value out of
    range, both naming the argument ``name`` of :class:`TraceBuilder`'s ``method``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(
            f"TraceBuilder.{method}(): {name} must be an integer, "
            f"got {type(value).__name__} {value!r}"
        )
    number = int(value)
    if not 0 <= number <= limit:
        raise ValueError(
            f"TraceBuilder.{method}(): {name} {number} does not fit its column (0..{limit:#x})"
        )
    return number


def _flag(method: str, name: str, value: object) -> int:
    """A flag argument (a bool, or an integer that fits the uint8 ``flag`` column) as an int;
    TypeError or ValueError naming the argument otherwise (see :func:`_integer`)."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if not isinstance(value, (int, np.integer)):
        raise TypeError(
            f"TraceBuilder.{method}(): {name} must be a bool or an integer, "
            f"got {type(value).__name__} {value!r}"
        )
    return _integer(method, name, value, _U8)


class TraceBuilder:
    """Build a trace record by record; every method returns the builder, so calls chain.

    >>> from svmpmu import TraceBuilder, eventsel, INSTRUCTIONS_RETIRED
    >>> trace = (TraceBuilder()
    ...          .wrmsr_evtsel(0, eventsel(INSTRUCTIONS_RETIRED, guest_only=True))
    ...          .wrmsr_efer(1).vmentry().vmrun().run(1000).vmexit().read(0)
    ...          .build())
    >>> len(trace)
    7
    """

    def __init__(self) -> None:
        """An empty builder."""
        self._records: list[tuple[int, int, int, int, int, int]] = []

    def _add(
        self, op: Op, pmc: int = 0, cpl: int = 0, flag: int = 0, key: int = 0, value: int = 0
    ) -> TraceBuilder:
        """Append one record whose fields have been checked."""
        self._records.append((int(op), pmc, cpl, flag, key, value))
        return self

    def wrmsr_evtsel(self, pmc: int, value: int) -> TraceBuilder:
        """The current context writes PerfEvtSel[pmc] (see :func:`~svmpmu.eventsel`)."""
        method = "wrmsr_evtsel"
        return self._add(
            Op.WRMSR_EVTSEL,
            pmc=_integer(method, "pmc", pmc, _U8),
            value=_integer(method, "value", value, _U64),
        )

    def wrmsr_ctr(self, pmc: int, value: int) -> TraceBuilder:
        """The current context writes PerfCtr[pmc] (masked to 48 bits)."""
        return self._add(
            Op.WRMSR_CTR,
            pmc=_integer("wrmsr_ctr", "pmc", pmc, _U8),
            value=_integer("wrmsr_ctr", "value", value, _U64),
        )

    def wrmsr_global_ctrl(self, value: int) -> TraceBuilder:
        """The current context writes PerfCntGlobalCtl (bit i enables PMC i)."""
        return self._add(
            Op.WRMSR_GLOBAL_CTRL, value=_integer("wrmsr_global_ctrl", "value", value, _U64)
        )

    def wrmsr_efer(self, svme: bool | int) -> TraceBuilder:
        """L1 writes EFER with SVME = ``svme`` (host mode only)."""
        return self._add(Op.WRMSR_EFER, flag=_flag("wrmsr_efer", "svme", svme))

    def vmrun(self, cpl: int = 0) -> TraceBuilder:
        """L1 executes VMRUN and it succeeds: enter guest mode (needs SVME = 1); L2 resumes at
        ``cpl`` (vmcb12's save.cpl), the CPL at which an ``after_entry`` VMRUN retires."""
        return self._add(Op.VMRUN, cpl=_integer("vmrun", "cpl", cpl, _U8))

    def vmrun_fail(self) -> TraceBuilder:
        """L1's VMRUN fails its consistency checks: #VMEXIT(INVALID), stay in host mode."""
        return self._add(Op.VMRUN_FAIL)

    def vmexit(self) -> TraceBuilder:
        """#VMEXIT from L2 to L1 (guest mode only)."""
        return self._add(Op.VMEXIT)

    def forced_leave(self) -> TraceBuilder:
        """KVM leaves guest mode outside the architecture (svm_leave_nested)."""
        return self._add(Op.FORCED_LEAVE)

    def set_nested_state(self, guest_mode: bool | int) -> TraceBuilder:
        """Userspace restores the nested state: guest mode (1) or host mode (0)."""
        return self._add(
            Op.SET_NESTED_STATE, flag=_flag("set_nested_state", "guest_mode", guest_mode)
        )

    def set_filter(self, action: str, event: int | None = None) -> TraceBuilder:
        """Userspace replaces the event filter: ``"none"``, or ``"allow"``/``"deny"`` one event."""
        try:
            flag = FilterAction[action.upper()]
        except (KeyError, AttributeError):
            raise ValueError(
                f"filter action must be 'none', 'allow' or 'deny', got {action!r}"
            ) from None
        if flag != FilterAction.NONE and event is None:
            raise ValueError(f"a {action!r} filter needs an event key")
        key = 0 if event is None else _integer("set_filter", "event", event, _U32)
        return self._add(Op.SET_FILTER, flag=int(flag), key=key)

    def emulate(self, cpl: int = 0, branch: bool = False) -> TraceBuilder:
        """KVM emulates one instruction of the current context at ``cpl`` (a branch if flagged)."""
        return self._add(
            Op.EMULATE,
            cpl=_integer("emulate", "cpl", cpl, _U8),
            flag=_flag("emulate", "branch", branch),
        )

    def run(self, n: int, event: int = INSTRUCTIONS_RETIRED, cpl: int = CPL_USER) -> TraceBuilder:
        """The vCPU runs natively: ``n`` occurrences of ``event`` at ``cpl``."""
        return self._add(
            Op.RUN,
            cpl=_integer("run", "cpl", cpl, _U8),
            key=_integer("run", "event", event, _U32),
            value=_integer("run", "n", n, _U64),
        )

    def vmentry(self) -> TraceBuilder:
        """An explicit VM-entry: KVM services pending requests."""
        return self._add(Op.VMENTRY)

    def read(self, pmc: int) -> TraceBuilder:
        """Observation point: the value of counter ``pmc`` goes into the result's ``reads``."""
        return self._add(Op.READ, pmc=_integer("read", "pmc", pmc, _U8))

    def reset(self) -> TraceBuilder:
        """A vCPU reset: back to the reset state."""
        return self._add(Op.RESET)

    def extend(self, trace: Trace) -> TraceBuilder:
        """Append every record of ``trace``."""
        if not isinstance(trace, Trace):
            raise TypeError(
                f"TraceBuilder.extend(): trace must be a svmpmu.Trace, got {type(trace).__name__}"
            )
        self._records.extend(trace.records())
        return self

    def __len__(self) -> int:
        """The number of records added so far."""
        return len(self._records)

    def build(self) -> Trace:
        """The trace of the records added so far."""
        if not self._records:
            return Trace(np.zeros(0, dtype=np.uint8))
        op, pmc, cpl, flag, key, value = zip(*self._records)
        return Trace(
            np.array(op, dtype=np.uint8),
            np.array(pmc, dtype=np.uint8),
            np.array(cpl, dtype=np.uint8),
            np.array(flag, dtype=np.uint8),
            np.array(key, dtype=np.uint32),
            np.array(value, dtype=np.uint64),
        )
