"""Trace files: the text format, ``.npz``, and the shipped scenarios, read by their content.

The text format (one record per line, docs/text-format.md) is read and written by the Rust core
(:func:`read_text`, :meth:`Trace.to_text`). :func:`read_trace` reads any trace file, whatever
its name: a ``.npz`` archive, a text trace, or a KVM trace-event capture (through
:func:`svmpmu.read_ftrace`); :func:`write_trace` writes ``.npz`` or text by the suffix, through a
temporary file, so that a failure leaves no half-written file behind.
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import stat
import tempfile
import zipfile
from collections.abc import Callable
from importlib import resources
from typing import IO, Literal, Union

import numpy as np
from numpy.lib import format as npy_format

from . import _core
from .errors import TraceSyntaxError
from .model import Op
from .trace import COLUMNS, Trace

__all__ = [
    "TEXT_SUFFIXES",
    "atomic_write",
    "TraceFileError",
    "detect_format",
    "line_of_record",
    "read_file_bytes",
    "read_npz",
    "read_text",
    "read_trace",
    "scenario",
    "scenario_path",
    "scenarios",
    "to_text",
    "write_trace",
]

TextSource = Union[str, bytes, os.PathLike[str], IO[str], IO[bytes]]
"""What :func:`read_text` reads: text (a ``str`` holding a newline, or ``bytes``), a path (a
``str`` without a newline, or an ``os.PathLike``) or an open file."""

Format = Literal["npz", "text", "ftrace"]
TEXT_SUFFIXES = (".txt", ".trace")
"""File suffixes :func:`write_trace` writes as text (anything else but ``.npz`` is refused)."""

_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP_MAGIC = b"PK\x05\x06"
_NPY_MAGIC = b"\x93NUMPY"
_TRACE_DAT_MAGIC = b"\x17\x08\x44tracing"
_OP_NAMES = frozenset(op.name for op in Op)


class TraceFileError(ValueError):
    """A file that is not a trace svmpmu reads, or one that is cut short.

    The message says what the file is and what to do. (A text trace with a syntax error
    raises :class:`TraceSyntaxError` instead.)
    """


def _read_source(source: TextSource) -> tuple[bytes, str | None]:
    """The bytes of ``source`` and, when it is a file, its name."""
    if isinstance(source, bytes):
        return source, None
    if isinstance(source, str) and "\n" in source:
        return source.encode(), None
    if isinstance(source, (str, os.PathLike)):
        path = pathlib.Path(source)
        return read_file_bytes(path), str(path)
    data = source.read()
    name = getattr(source, "name", None)
    return (data.encode() if isinstance(data, str) else data), (
        name if isinstance(name, str) else None
    )


def read_file_bytes(path: pathlib.Path) -> bytes:
    """The bytes of the file at ``path``. A character or block device is refused with a
    :class:`TraceFileError` (``/dev/zero`` would never end) unless it is empty at once, as
    ``/dev/null`` is; pipes and regular files are read whole."""
    mode = path.stat().st_mode
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        with path.open("rb") as f:
            if not f.read(1):
                return b""
        raise TraceFileError(f"{path}: a device, not a trace file")
    return path.read_bytes()


def _parse_text(data: bytes, name: str | None) -> Trace:
    try:
        columns = _core.read_text(data)
    except TraceSyntaxError as e:
        raise TraceSyntaxError(e.line, e.column, e.index, e.reason, name) from None
    return Trace(*columns)


def read_text(source: TextSource) -> Trace:
    r"""Read a text trace: one record per line (docs/text-format.md).

    ``source`` is the text itself (a ``str`` holding a newline, or ``bytes``), a path (a
    ``str`` without a newline, or an ``os.PathLike``) or an open file. A line that cannot be
    read raises :class:`TraceSyntaxError` with its line, column and what was expected. The
    records are not validated here: :func:`svmpmu.simulate` does that, as for any trace.

    >>> t = read_text("WRMSR_EFER svme=1\nVMRUN cpl=3\nRUN n=10 event=0xc0 cpl=3\n")
    >>> len(t), t.to_text().splitlines()[2]
    (3, 'VMRUN cpl=3')
    """
    data, name = _read_source(source)
    return _parse_text(data, name)


def to_text(trace: Trace) -> str:
    """The text form of ``trace``: a header comment and one line a record. Reading it back
    with :func:`read_text` gives an equal trace (:meth:`Trace.to_text` is the same)."""
    if not isinstance(trace, Trace):
        raise TypeError(f"expected a svmpmu.Trace, got {type(trace).__name__}")
    columns = (trace.op, trace.pmc, trace.cpl, trace.flag, trace.key, trace.value)
    data: bytes = _core.write_text(columns)
    return data.decode()


def line_of_record(text: bytes, index: int) -> int | None:
    """The 1-based line of record ``index`` in a text trace (None past its end): to point a
    :class:`TraceError` of a text file at its line."""
    records = 0
    for number, raw in enumerate(text.splitlines(), 1):
        if raw.split(b"#", 1)[0].strip():
            if records == index:
                return number
            records += 1
    return None


def detect_format(data: bytes) -> Format:
    """What ``data`` (the start of a file is enough) holds: ``"npz"``, ``"text"`` or
    ``"ftrace"``, judged by content, not by a file name. Raises :class:`TraceFileError` for
    anything else (with a hint for a trace-cmd binary ``trace.dat``, and for a single numpy
    array ``.npy``)."""
    if data.startswith((_ZIP_MAGIC, _EMPTY_ZIP_MAGIC)):
        return "npz"
    if data.startswith(_NPY_MAGIC):
        raise TraceFileError(_npy_message())
    if data.startswith(_TRACE_DAT_MAGIC):
        raise TraceFileError(
            "a trace-cmd binary file (trace.dat): run 'trace-cmd report -i FILE > FILE.txt'"
            " and read its text output"
        )
    if b"\0" in data[:4096]:
        raise TraceFileError("a binary file that is neither a .npz trace nor a trace-cmd report")
    for raw in data.splitlines():
        line = raw.split(b"#", 1)[0].strip()
        if not line:
            continue
        word = line.split(None, 1)[0].split(b"(", 1)[0].decode("ascii", "replace")
        if word.upper() in _OP_NAMES:
            return "text"
        break
    if b"kvm_" in data or b"# tracer:" in data or data.startswith(b"cpus="):
        return "ftrace"
    if not data.strip(b" \t\r\n") or all(
        not line.split(b"#", 1)[0].strip() for line in data.splitlines()
    ):
        return "text"  # only comments: an empty text trace
    raise TraceFileError(
        "neither a .npz trace, a text trace (the first record should start with an op name"
        " such as VMRUN) nor a KVM trace-event capture (no kvm_ events)"
    )


def read_trace(
    source: str | os.PathLike[str] | bytes,
    *,
    vcpu: int | None = None,
    **ftrace_options: object,
) -> Trace:
    """Read a trace from a file of any format svmpmu knows, detected from its content: a
    ``.npz`` archive (:meth:`Trace.save`, read by :func:`read_npz`), a text trace
    (:func:`read_text`) or a KVM trace-event capture (:func:`svmpmu.read_ftrace`; ``vcpu``
    picks one vCPU when it holds several, and ``ftrace_options`` such as ``rate`` go to the
    importer). ``source`` may also be the name of a shipped scenario (:func:`scenarios`)
    when no such file exists. Raises :class:`TraceFileError`, in one line, for an empty file
    (``/dev/null`` included), a foreign file, a single ``.npy`` array, or a truncated,
    corrupted or foreign ``.npz``; a text trace that cannot be parsed raises
    :class:`TraceSyntaxError`."""
    if isinstance(source, bytes):
        data, name = source, None
    else:
        path = pathlib.Path(source)
        if not path.exists() and isinstance(source, str) and source in scenarios():
            path = scenario_path(source)
        data, name = read_file_bytes(path), str(path)
    where = f"{name}: " if name else ""
    if not data:
        raise TraceFileError(f"{where}empty file: no records")
    try:
        kind = detect_format(data)
    except TraceFileError as e:
        raise TraceFileError(f"{where}{e}") from None
    if kind == "npz":
        return _npz_trace(data, where)
    if kind == "text":
        return _parse_text(data, name)
    from .ftrace import read_ftrace

    imported = read_ftrace(io.BytesIO(data), **ftrace_options)  # type: ignore[arg-type]
    vcpus = sorted(imported.traces)
    if vcpu is None:
        if len(vcpus) == 1:
            return imported.traces[vcpus[0]]
        if not vcpus:
            raise TraceFileError(f"{where}a KVM trace with no vCPU events: no records")
        raise TraceFileError(
            f"{where}a KVM trace with {len(vcpus)} vCPUs ({', '.join(map(str, vcpus))}):"
            " choose one (vcpu=N, or --vcpu N)"
        )
    if vcpu not in imported.traces:
        raise TraceFileError(
            f"{where}no vCPU {vcpu} in this trace (it has {', '.join(map(str, vcpus)) or 'none'})"
        )
    return imported.traces[vcpu]


def read_npz(source: str | os.PathLike[str] | bytes | IO[bytes]) -> Trace:
    """Read a ``.npz`` trace (as :meth:`Trace.save` writes it) from a path, its bytes or an
    open binary file, safely: nothing is ever unpickled (``allow_pickle`` stays off), and
    each column's header is checked before its data is read.

    Raises :class:`TraceFileError`, in one line naming the file, for an empty file, a file
    that is not a zip archive or is cut short, a corrupted member, an archive without an
    ``op`` column or with members that are not trace columns, and a column that is not a
    one-dimensional array of integers (a float or an object column is named with its
    dtype). Omitted columns other than ``op`` are zeros, as for :class:`Trace`."""
    name: str | None
    if isinstance(source, bytes):
        data, name = source, None
    elif isinstance(source, (str, os.PathLike)):
        path = pathlib.Path(source)
        data, name = read_file_bytes(path), str(path)
    else:
        data = source.read()
        given = getattr(source, "name", None)
        name = given if isinstance(given, str) else None
    where = f"{name}: " if name else ""
    if not data:
        raise TraceFileError(f"{where}empty file: no records")
    if data.startswith(_NPY_MAGIC):
        raise TraceFileError(f"{where}{_npy_message()}")
    if not data.startswith(_ZIP_MAGIC):
        raise TraceFileError(
            f"{where}not a .npz archive (it does not start as a zip file does);"
            " svmpmu.read_trace reads text traces and KVM captures too"
        )
    return _npz_trace(data, where)


def _npy_message() -> str:
    """What a ``.npy`` file is told: a single array, not a trace archive."""
    return (
        "a single numpy array (.npy), not a trace archive: a trace is a .npz of its six"
        " columns (op, pmc, cpl, flag, key, value), as Trace.save and svmpmu convert write it"
    )


def _npz_trace(data: bytes, where: str) -> Trace:
    """The trace in the ``.npz`` archive ``data``; ``where`` (``"FILE: "`` or ``""``)
    starts every error message."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
        raise TraceFileError(
            f"{where}a .npz archive that cannot be read (cut short?): {e}"
        ) from None
    with archive:
        members: dict[str, zipfile.ZipInfo] = {}
        for info in archive.infolist():
            if not info.is_dir():
                members[info.filename.removesuffix(".npy")] = info
        unknown = sorted(set(members) - set(COLUMNS))
        if unknown or "op" not in members:
            held = sorted(members)
            listed = ", ".join(held[:8]) + (", ..." if len(held) > 8 else "")  # noqa: PLR2004
            raise TraceFileError(
                f"{where}a .npz archive that is not a svmpmu trace: it holds"
                f" {listed or 'nothing'}, where a trace holds the columns {', '.join(COLUMNS)}"
            )
        columns = {
            name: _npz_column(archive, members[name], name, where)
            for name in COLUMNS
            if name in members
        }
    try:
        return Trace(**columns)
    except (ValueError, TypeError) as e:
        raise TraceFileError(f"{where}a .npz archive that is not a svmpmu trace: {e}") from None


def _npz_column(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, where: str
) -> np.ndarray:
    """Column ``name`` of ``archive``, read from its member ``info`` after its ``.npy`` header
    says it is a one-dimensional integer array of the size the member holds."""
    what = f"{where}column {name!r}"
    broken = f"{what}: a .npz member that cannot be read (cut short or corrupted?)"
    try:
        with archive.open(info) as f:
            version = npy_format.read_magic(f)
            if version == (1, 0):
                shape, _fortran, dtype = npy_format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _fortran, dtype = npy_format.read_array_header_2_0(f)
            else:
                raise TraceFileError(
                    f"{what}: .npy format version {version[0]}.{version[1]}, which svmpmu"
                    " does not read (Trace.save writes 1.0)"
                )
            _check_column(what, shape, dtype, name)
            expected = int(shape[0]) * dtype.itemsize
            if info.file_size - f.tell() != expected:
                raise TraceFileError(
                    f"{broken}: its header says {shape[0]} values, its size"
                    f" {info.file_size - f.tell()} bytes of data"
                )
            raw = f.read()  # reading to the end checks the member's CRC
    except TraceFileError:
        raise
    except Exception as e:  # noqa: BLE001 (a decompressor's error: zlib, bz2, lzma; all the same here)
        raise TraceFileError(f"{broken}: {e}") from None
    if len(raw) != expected:
        raise TraceFileError(f"{broken}: {len(raw)} bytes of data, {expected} expected")
    return np.frombuffer(raw, dtype=dtype)


def _check_column(what: str, shape: tuple[int, ...], dtype: np.dtype, name: str) -> None:
    """Refuse a column that is not a one-dimensional array of integers (the dtype named)."""
    want = np.dtype(COLUMNS[name])
    if dtype.hasobject:
        raise TraceFileError(
            f"{what} has dtype object (pickled Python objects), which svmpmu never loads:"
            f" not a svmpmu trace (Trace.save writes {want})"
        )
    if dtype.kind not in "iub" or dtype.fields is not None:
        raise TraceFileError(
            f"{what} has dtype {dtype}, not integers: not a svmpmu trace (Trace.save writes {want})"
        )
    if len(shape) != 1:
        raise TraceFileError(f"{what} has shape {shape}, where a trace column has one dimension")


def _umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write`` on a temporary file next to ``path``, then move it to ``path``: a
    failure (a full disk, an exception, an interrupt) leaves ``path`` as it was and no
    temporary file behind. The file gets the permissions a plain ``open`` would give it."""
    target = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        pathlib.Path(tmp).chmod(0o666 & ~_umask())  # mkstemp makes it private
        pathlib.Path(tmp).replace(target)
    except BaseException:
        with contextlib.suppress(OSError):
            pathlib.Path(tmp).unlink()
        raise


def write_trace(trace: Trace, path: str | os.PathLike[str]) -> None:
    """Write ``trace`` to ``path``: ``.npz`` as :meth:`Trace.save`, ``.txt`` or ``.trace`` as
    text (:meth:`Trace.to_text`); any other suffix is refused. The file appears complete or
    not at all."""
    suffix = pathlib.Path(path).suffix.lower()
    if suffix == ".npz":
        atomic_write(path, trace.save)
    elif suffix in TEXT_SUFFIXES:
        text = to_text(trace).encode()
        atomic_write(path, lambda f: f.write(text))
    else:
        raise ValueError(
            f"cannot tell the format of {os.fspath(path)!r} from its suffix: use .npz, "
            + " or ".join(TEXT_SUFFIXES)
        )


def scenarios() -> dict[str, str]:
    """The scenario files shipped with svmpmu: their names and first comment line (a title)."""
    out = {}
    for entry in sorted(resources.files("svmpmu._scenarios").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".txt"):
            first = entry.read_text().splitlines()[0] if entry.is_file() else ""
            out[entry.name.removesuffix(".txt")] = first.lstrip("# ").strip()
    return out


def scenario_path(name: str) -> pathlib.Path:
    """The path of the shipped scenario ``name`` (see :func:`scenarios`)."""
    if name not in scenarios():
        raise ValueError(f"no scenario {name!r}: there are {', '.join(scenarios())}")
    return pathlib.Path(str(resources.files("svmpmu._scenarios").joinpath(f"{name}.txt")))


def scenario(name: str) -> Trace:
    """The shipped scenario ``name`` as a trace.

    >>> import svmpmu
    >>> int(svmpmu.simulate(svmpmu.scenario("worked-example"), "final").reads[0])
    1001
    """
    return read_text(scenario_path(name))
