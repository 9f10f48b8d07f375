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
import tempfile
import zipfile
from collections.abc import Callable
from importlib import resources
from typing import IO, Literal, Union

from . import _core
from .errors import TraceSyntaxError
from .model import Op
from .trace import Trace

__all__ = [
    "TEXT_SUFFIXES",
    "atomic_write",
    "TraceFileError",
    "detect_format",
    "line_of_record",
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
        return path.read_bytes(), str(path)
    data = source.read()
    name = getattr(source, "name", None)
    return (data.encode() if isinstance(data, str) else data), (
        name if isinstance(name, str) else None
    )


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
    anything else (with a hint for a trace-cmd binary ``trace.dat``)."""
    if data.startswith(_ZIP_MAGIC):
        return "npz"
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
    ``.npz`` archive (:meth:`Trace.save`), a text trace (:func:`read_text`) or a KVM
    trace-event capture (:func:`svmpmu.read_ftrace`; ``vcpu`` picks one vCPU when it holds
    several, and ``ftrace_options`` such as ``rate`` go to the importer). ``source`` may
    also be the name of a shipped scenario (:func:`scenarios`) when no such file exists.
    Raises :class:`TraceFileError` for a foreign or truncated file."""
    if isinstance(source, bytes):
        data, name = source, None
    else:
        path = pathlib.Path(source)
        if not path.exists() and isinstance(source, str) and source in scenarios():
            path = scenario_path(source)
        data, name = path.read_bytes(), str(path)
    where = f"{name}: " if name else ""
    try:
        kind = detect_format(data)
    except TraceFileError as e:
        raise TraceFileError(f"{where}{e}") from None
    if kind == "npz":
        try:
            trace: Trace = Trace.load(io.BytesIO(data))
            return trace
        except (zipfile.BadZipFile, EOFError, OSError, KeyError) as e:
            raise TraceFileError(
                f"{where}a .npz archive that cannot be read (cut short?): {e}"
            ) from None
        except (ValueError, TypeError) as e:
            raise TraceFileError(f"{where}a .npz archive that is not a svmpmu trace: {e}") from None
    if kind == "text":
        return _parse_text(data, name)
    from .ftrace import read_ftrace

    imported = read_ftrace(io.BytesIO(data), **ftrace_options)  # type: ignore[arg-type]
    vcpus = sorted(imported.traces)
    if vcpu is None:
        if len(vcpus) == 1:
            return imported.traces[vcpus[0]]
        raise TraceFileError(
            f"{where}a KVM trace with {len(vcpus)} vCPUs ({', '.join(map(str, vcpus))}):"
            " choose one (vcpu=N, or --vcpu N)"
        )
    if vcpu not in imported.traces:
        raise TraceFileError(
            f"{where}no vCPU {vcpu} in this trace (it has {', '.join(map(str, vcpus))})"
        )
    return imported.traces[vcpu]


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
