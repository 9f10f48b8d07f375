"""The README's Python examples run, and print what the README says they print."""

from __future__ import annotations

import contextlib
import io
import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_examples_print_what_they_claim():
    blocks = python_blocks()
    assert blocks, "the README has Python examples"
    for block in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, str(README), "exec"), {})
        printed = out.getvalue().splitlines()
        claims = [
            line.split("# ", 1)[1].split(":")[0].strip()
            for line in block.splitlines()
            if line.startswith("print(") and "# " in line
        ]
        # Each commented print states the start of what it prints, e.g. "[1001]" or "True 0".
        for claim, line in zip(claims, printed):
            assert line.replace(" dtype=uint64", "").startswith(claim) or claim in line, (
                claim,
                line,
            )
