"""The files of the export: :data:`ExportFormat` and :func:`write_export`, which writes a
trace as a KVM selftest (:mod:`svmpmu.export.selftest`), as TraceBuilder code
(:mod:`svmpmu.export.builder`) or as a text trace, through a temporary file.
"""

from __future__ import annotations

import os
from typing import Literal

from svmpmu.files import atomic_write
from svmpmu.trace import Trace

from .builder import to_builder_code
from .selftest import to_selftest

ExportFormat = Literal["selftest", "python", "text"]
"""What :func:`write_export` writes: a KVM selftest (C), TraceBuilder code, or a text trace."""


def write_export(
    trace: Trace,
    path: str | os.PathLike[str],
    *,
    format: ExportFormat = "selftest",  # noqa: A002 (the option's name in the CLI and the docs)
    **options: object,
) -> None:
    """Write ``trace`` to ``path`` as a KVM selftest (``"selftest"``: :func:`to_selftest`,
    which takes ``options`` such as ``name``, ``model``, ``n_pmcs`` and ``source``), as
    TraceBuilder code (``"python"``: :func:`to_builder_code`) or as a text trace (``"text"``:
    :meth:`Trace.to_text`). The content is made first, then written through a temporary file:
    a refusal (:class:`ExportError`) or any failure leaves ``path`` as it was."""
    if format == "selftest":
        text = to_selftest(trace, **options)  # type: ignore[arg-type]
    elif options:
        raise TypeError(f"format {format!r} takes no options, got {', '.join(sorted(options))}")
    elif format == "python":
        text = to_builder_code(trace)
    elif format == "text":
        if not isinstance(trace, Trace):
            raise TypeError(f"expected a svmpmu.Trace, got {type(trace).__name__}")
        text = trace.to_text()
    else:
        raise ValueError(f"format must be 'selftest', 'python' or 'text', got {format!r}")
    data = text.encode()
    atomic_write(path, lambda f: f.write(data))
