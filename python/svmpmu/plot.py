"""One picture of a trace under a policy and a reference (docs/pictures.md), with matplotlib.

matplotlib is an optional dependency (``pip install 'svmpmu[plot]'``); it is imported only when
a picture is drawn, never by ``import svmpmu``, and only its Agg (PNG) and SVG renderers are
used: no GUI backend, no pyplot, no global state.
"""

from __future__ import annotations

import io
import os
import pathlib
from typing import TYPE_CHECKING

import numpy as np

from .files import atomic_write
from .policy import PolicyLike
from .timeline import MODE_NAMES, Timeline, timeline
from .trace import Trace, format_record

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "DPI",
    "FIGURE_SIZE",
    "INSTALL_HINT",
    "PIXEL_SIZE",
    "SUFFIXES",
    "draw",
    "plot",
    "plot_figure",
]

FIGURE_SIZE: tuple[float, float] = (12.0, 8.0)
"""The figure's size in inches (width, height)."""
DPI = 100
"""Dots per inch of a PNG."""
PIXEL_SIZE: tuple[int, int] = (1200, 800)
"""The size of a PNG in pixels (width, height): :data:`FIGURE_SIZE` times :data:`DPI`."""
SUFFIXES: dict[str, str] = {".png": "png", ".svg": "svg"}
"""The file suffixes :func:`plot` writes, and the format of each."""
INSTALL_HINT = "pip install 'svmpmu[plot]'"
"""How to install what the pictures need."""

MODE_COLOURS = ("#c7c7c7", "#4c72b0", "#dd8452")
"""The colour of each mode of :data:`~svmpmu.timeline.MODE_NAMES` in the mode band."""
_POLICY_COLOUR = "#2a7f62"
_REFERENCE_COLOUR = "#222222"
_DIVERGENCE_COLOUR = "#c0392b"


def _matplotlib() -> None:
    """Import matplotlib, or raise ImportError saying how to install it."""
    try:
        import matplotlib as mpl  # noqa: F401 (imported to check that it is there)
    except ImportError as error:
        raise ImportError(
            f"svmpmu's pictures need matplotlib (3.7 or newer), which is not installed: "
            f"{INSTALL_HINT}"
        ) from error


def _format_of(path: str | os.PathLike[str]) -> str:
    suffix = pathlib.Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        accepted = ", ".join(SUFFIXES)
        raise ValueError(f"cannot tell the picture's format from {str(path)!r}: use {accepted}")
    return SUFFIXES[suffix]


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The runs of equal values of a 1-D array: (first index, length) of each."""
    change = np.flatnonzero(values[1:] != values[:-1]) + 1
    starts = np.concatenate(([0], change))
    return starts, np.diff(np.concatenate((starts, [len(values)])))


def _spans(ax: Axes, values: np.ndarray, value: int, y: tuple[float, float], colour: str) -> None:
    """Filled spans [i, i + run) of the runs where ``values`` equals ``value``."""
    if len(values) == 0:
        return
    starts, lengths = _runs(values)
    keep = values[starts] == value
    if keep.any():
        ranges = list(zip(starts[keep].tolist(), lengths[keep].tolist()))
        ax.broken_barh(ranges, y, facecolors=colour, linewidth=0)


def _steps(ax: Axes, column: np.ndarray, colour: str, dashed: bool, label: str) -> None:
    """A count as a step line: the value after record i holds over [i, i + 1)."""
    starts, _ = _runs(column)
    xs = np.concatenate((starts, [len(column)]))
    ys = column[np.concatenate((starts, [starts[-1]]))].astype(np.float64)
    ax.step(
        xs,
        ys,
        where="post",
        color=colour,
        linewidth=1.2 if dashed else 1.8,
        linestyle="--" if dashed else "-",
        label=label,
    )


def draw(figure: Figure, tl: Timeline, trace: Trace, *, title: str | None = None) -> None:
    """Draw ``tl`` (the :class:`~svmpmu.timeline.Timeline` of ``trace``) on an empty figure:
    the mode band, one EN lane per PMC, one count axis per PMC, and the first divergence."""
    from matplotlib.patches import Patch
    from matplotlib.ticker import EngFormatter

    n, pmcs = len(tl), tl.n_pmcs
    grid = figure.add_gridspec(2 + pmcs, 1, height_ratios=[0.6, 0.35 * pmcs + 0.4] + [1.0] * pmcs)
    mode_ax = figure.add_subplot(grid[0])
    lanes = figure.add_subplot(grid[1], sharex=mode_ax)
    counts = [figure.add_subplot(grid[2 + p], sharex=mode_ax) for p in range(pmcs)]

    mode = tl.mode
    for index, colour in enumerate(MODE_COLOURS):
        _spans(mode_ax, mode, index, (0.0, 1.0), colour)
    mode_ax.set_ylim(0, 1)
    mode_ax.set_yticks([])
    mode_ax.set_ylabel("mode", rotation=0, ha="right", va="center")
    mode_ax.legend(
        handles=[Patch(facecolor=c, label=m) for m, c in zip(MODE_NAMES, MODE_COLOURS)],
        loc="upper left",
        bbox_to_anchor=(1.0, 1.2),
        fontsize="small",
        frameon=False,
    )

    for p in range(pmcs):
        row = pmcs - 1 - p  # PMC 0 on top
        _spans(lanes, tl.enabled(p), True, (row + 0.3, 0.6), _POLICY_COLOUR)
        _spans(lanes, tl.enabled(p, reference=True), True, (row + 0.05, 0.15), _REFERENCE_COLOUR)
    lanes.set_ylim(0, pmcs)
    lanes.set_yticks([pmcs - 0.5 - p for p in range(pmcs)], [f"PMC {p}" for p in range(pmcs)])
    lanes.set_title("eventsel_hw.EN", fontsize="small", loc="left")
    lanes.legend(
        handles=[
            Patch(facecolor=_POLICY_COLOUR, label=f"eventsel_hw.EN ({tl.policy})"),
            Patch(facecolor=_REFERENCE_COLOUR, label=f"eventsel_hw.EN ({tl.reference})"),
        ],
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize="small",
        frameon=False,
    )

    counts[0].set_title("counts (the legends give the final values)", fontsize="small", loc="left")
    for p, ax in enumerate(counts):
        if n:
            mine, theirs = int(tl.counts[-1, p]), int(tl.reference_counts[-1, p])
            _steps(ax, tl.counts[:, p], _POLICY_COLOUR, False, f"{tl.policy}: {mine:,}")
            _steps(
                ax,
                tl.reference_counts[:, p],
                _REFERENCE_COLOUR,
                True,
                f"{tl.reference}: {theirs:,}",
            )
            legend = ax.legend(
                loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small", frameon=False
            )
            if mine != theirs:
                for text in legend.get_texts():
                    text.set_color(_DIVERGENCE_COLOUR)
        ax.set_ylabel(f"PMC {p}")
        ax.yaxis.set_major_formatter(EngFormatter(sep=""))
    for ax in [mode_ax, lanes, *counts[:-1]]:
        ax.tick_params(labelbottom=False)
    counts[-1].set_xlabel("record index (the state after record i is drawn over [i, i + 1))")
    mode_ax.set_xlim(0, max(n, 1))

    k = tl.first_divergence
    if k is not None:
        for ax in [mode_ax, lanes, *counts]:
            ax.axvline(k + 0.5, color=_DIVERGENCE_COLOUR, linewidth=1.2, linestyle=":")
        record = format_record(*next(trace[k : k + 1].records()))
        mode_ax.annotate(
            f"first divergence: record {k}, {record}",
            xy=(k + 0.5, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, 4),
            textcoords="offset points",
            color=_DIVERGENCE_COLOUR,
            fontsize="small",
            ha="left" if k < n / 2 else "right",
            va="bottom",
            annotation_clip=False,
        )
    if title is None:
        verdict = "no divergence" if k is None else f"first divergence after record {k}"
        title = f"{n:,} records, {tl.policy} vs {tl.reference}: {verdict}"
    figure.suptitle(title)


def plot_figure(
    trace: Trace,
    *,
    policy: PolicyLike = "final",
    reference: PolicyLike = "arch",
    n_pmcs: int | None = None,
    title: str | None = None,
) -> Figure:
    """The picture of ``trace`` as a matplotlib Figure (:data:`FIGURE_SIZE` at :data:`DPI`,
    rendered by Agg), for a caller that wants to change it before saving it.

    Raises ImportError (saying ``pip install 'svmpmu[plot]'``) without matplotlib.
    """
    _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tl = timeline(trace, policy, reference, n_pmcs=n_pmcs)
    figure = Figure(figsize=FIGURE_SIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    draw(figure, tl, trace, title=title)
    return figure


def plot(
    trace: Trace,
    path: str | os.PathLike[str],
    *,
    policy: PolicyLike = "final",
    reference: PolicyLike = "arch",
    n_pmcs: int | None = None,
    title: str | None = None,
) -> None:
    """Draw ``trace`` under ``policy`` and ``reference`` into ``path``, a ``.png`` (always
    :data:`PIXEL_SIZE`, 1200x800 pixels) or a ``.svg`` (12x8 inches).

    The x axis is the record index. From the top: the mode after each record (L1 with SVME = 0,
    L1 with SVME = 1, L2); one lane per PMC, filled where ``eventsel_hw``.EN is set under the
    policy (thick) and under the reference (thin); one axis per PMC with the policy's count
    (solid) and the reference's (dashed); a dotted line and a note at the first record after
    which the counts differ. ``n_pmcs`` as for :func:`~svmpmu.timeline.timeline` (None: the
    PMCs the trace touches).

    Another suffix raises ValueError, before any work; a missing matplotlib, ImportError
    (saying ``pip install 'svmpmu[plot]'``). The file is written to a temporary file in the
    same directory and renamed over ``path``, so a failure leaves no half-written file.
    """
    fmt = _format_of(path)
    figure = plot_figure(trace, policy=policy, reference=reference, n_pmcs=n_pmcs, title=title)
    buffer = io.BytesIO()
    # No date in an SVG, so that the same trace gives the same file.
    metadata = {"Date": None} if fmt == "svg" else {}
    figure.savefig(buffer, format=fmt, dpi=DPI, metadata=metadata)
    data = buffer.getvalue()
    atomic_write(path, lambda f: f.write(data))
