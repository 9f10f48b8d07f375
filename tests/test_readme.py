"""The Python examples of the README and of docs/ run, and print what they say they print.

A line ``print(...)  # claim`` claims that the print's output starts with ``claim`` (the
comment up to its first colon, e.g. ``[1001]`` or ``True 0``). Each top-level statement of a
block is run on its own, so that every claim is checked against its own statement's output.
"""

from __future__ import annotations

import ast
import contextlib
import io
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(path: pathlib.Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


def claim_of(line: str) -> str | None:
    """The claim of a commented print line, or None."""
    if not line.lstrip().startswith("print(") or "  # " not in line:
        return None
    return line.split("  # ", 1)[1].split(":", maxsplit=1)[0].strip()


def run_block(block: str, filename: str) -> list[tuple[str, str]]:
    """Run a block statement by statement; (claim, output) for each claiming statement."""
    lines = block.splitlines()
    namespace: dict = {}
    checked = []
    for node in ast.parse(block).body:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(ast.Module([node], type_ignores=[]), filename, "exec"), namespace)
        claim = claim_of(lines[node.end_lineno - 1])
        if claim is not None:
            checked.append((claim, out.getvalue()))
    return checked


def test_the_readme_has_examples_with_claims():
    blocks = python_blocks(ROOT / "README.md")
    assert len(blocks) >= 3
    assert all(any(claim_of(line) for line in b.splitlines()) for b in blocks)


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_examples_print_what_they_claim(path):
    for block in python_blocks(path):
        for claim, output in run_block(block, str(path)):
            assert output, f"{path.name}: expected output starting with {claim!r}, got nothing"
            assert output.replace(" dtype=uint64", "").startswith(claim), (claim, output)
