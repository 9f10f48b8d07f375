"""Two saved reports compared: ``svmpmu diff A.json B.json`` and :func:`diff_reports`.

A report is the JSON of ``svmpmu fuzz --json`` or ``svmpmu verify --json``. Classes are matched
by name (``Signature.name``, e.g. ``VMRUN:G:host:guest:reference``); for fuzz reports the
number of traces of each class is compared too. A JSON report holds classes, not traces, so
this is a class-level diff: to compare two designs trace by trace, run
``svmpmu fuzz --policy A --baseline B`` (or ``svmpmu verify --baseline``) instead.
"""

from __future__ import annotations

import json
import os
import pathlib
from dataclasses import dataclass
from typing import Any

from .fuzz import _HG, _STATE, Signature
from .model import Op

__all__ = ["ReportDiff", "diff_reports", "load_report"]

_RUN_FIELDS = ("reference", "seed", "length", "n_pmcs", "traces", "mix")
_JSON_KINDS = {
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def load_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A fuzz or verify report written with ``--json``; a ValueError, in one line naming the
    file, for anything else: an empty file, a file that is not UTF-8 text, JSON cut short or
    malformed, JSON that is not a report, or a class the report cannot name."""
    data_bytes = pathlib.Path(path).read_bytes()
    expected = "expected the JSON of svmpmu fuzz --json or svmpmu verify --json"
    if not data_bytes.strip():
        raise ValueError(f"{path}: empty file; {expected}")
    try:
        text = data_bytes.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not text (not UTF-8 at byte {e.start}); {expected}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg.startswith("Unterminated string") or not text[e.pos :].strip():
            raise ValueError(
                f"{path}: JSON cut short (it ends inside a value, at line {e.lineno}, column"
                f" {e.colno} or after); {expected}"
            ) from None
        raise ValueError(f"{path}: not JSON ({e}); {expected}") from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply to be a report; {expected}") from None
    if not isinstance(data, dict) or "classes" not in data or "policy" not in data:
        raise ValueError(
            f"{path}: not a svmpmu report (no 'policy' and 'classes'); expected the JSON of"
            " svmpmu fuzz --json or svmpmu verify --json"
        )
    classes = data["classes"]
    if not isinstance(classes, list):
        raise ValueError(f"{path}: not a svmpmu report ('classes' is not a list); {expected}")
    for k, c in enumerate(classes):
        problem = _class_problem(c)
        if problem:
            raise ValueError(
                f"{path}: class #{k} is not a class of a svmpmu report ({problem}); {expected}"
            )
    return data


def _class_problem(c: object) -> str:
    """What keeps ``c`` from being a class of a report ("" when nothing does)."""
    if not isinstance(c, dict):
        return f"a JSON {_JSON_KINDS.get(type(c), 'value')}, not an object"
    try:
        _name(c)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        return f"no name: {e!r}"
    count = c.get("count")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
        return f"its count is {count!r}, not a whole number"
    return ""


def _name(c: dict[str, Any]) -> str:
    """A class's name in either report format (fuzz reports of 0.2 had only the signature's
    parts, in words)."""
    if "name" in c:
        return str(c["name"])
    if "class" in c:
        return str(c["class"])
    s = c["signature"]
    state = {words: number for number, words in _STATE.items()}
    return Signature(
        op=int(Op[s["op"]]),
        hg=_HG.index(s["hg"]),
        before=state[s["before"]],
        after=state[s["after"]],
        policy_counts=bool(s["policy_counts"]),
    ).name


@dataclass(frozen=True)
class ReportDiff:
    """What differs between reports ``a`` and ``b``: classes only in one, classes in both
    whose trace counts differ (fuzz reports), and the run settings that differ (which make
    counts incomparable)."""

    a: str
    b: str
    only_a: tuple[str, ...]
    only_b: tuple[str, ...]
    counts: tuple[tuple[str, int, int], ...]
    settings: tuple[tuple[str, Any, Any], ...]
    descriptions: dict[str, str]

    @property
    def differ(self) -> bool:
        """True when the reports do not show the same classes, or as many traces of each."""
        return bool(self.only_a or self.only_b or self.counts)

    def format(self) -> str:
        """The diff in words, ``-`` for a class only in A and ``+`` for one only in B."""
        lines = [f"--- {self.a}", f"+++ {self.b}"]
        lines.extend(f"  setting {k}: {va!r} -> {vb!r}" for k, va, vb in self.settings)
        lines.extend(f"- {n:42} {self.descriptions.get(n, '')}" for n in self.only_a)
        lines.extend(f"+ {n:42} {self.descriptions.get(n, '')}" for n in self.only_b)
        lines.extend(f"  {n:42} traces {ca} -> {cb}" for n, ca, cb in self.counts)
        if not self.differ:
            lines.append("  the same classes")
        return "\n".join(lines)


def diff_reports(
    a: dict[str, Any], b: dict[str, Any], names: tuple[str, str] = ("A", "B")
) -> ReportDiff:
    """Compare two reports (as :func:`load_report` reads them)."""
    ca = {_name(c): c for c in a["classes"] if not c.get("ignored")}
    cb = {_name(c): c for c in b["classes"] if not c.get("ignored")}
    counts = tuple(
        (n, ca[n]["count"], cb[n]["count"])
        for n in sorted(ca.keys() & cb.keys())
        if "count" in ca[n] and "count" in cb[n] and ca[n]["count"] != cb[n]["count"]
    )
    settings = tuple(
        (k, a.get(k), b.get(k)) for k in ("policy", *_RUN_FIELDS) if a.get(k) != b.get(k)
    )
    descriptions = {n: c.get("description", "") for n, c in {**ca, **cb}.items()}
    return ReportDiff(
        a=names[0],
        b=names[1],
        only_a=tuple(sorted(ca.keys() - cb.keys())),
        only_b=tuple(sorted(cb.keys() - ca.keys())),
        counts=counts,
        settings=settings,
        descriptions=descriptions,
    )
