"""Benchmark suites: ``python -m pytest benches --benchmark-enable``.

Without ``--benchmark-enable`` (pyproject.toml disables benchmarks by default) every body
runs once as a smoke test and no target is checked. The measurements themselves live in
``measure.py``, shared with the regression gate ``gate.py``.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
