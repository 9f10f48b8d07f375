"""Importing KVM trace events (issue 15's target: at least 1 million trace lines per second)."""

from __future__ import annotations

import functools
import pathlib
import re

from svmpmu.ftrace import read_ftrace

LINES = 2_000_000
MIN_RATE = 1e6

FIXTURES = pathlib.Path(__file__).parent.parent / "tests" / "fixtures" / "ftrace"
FIXTURE = FIXTURES / "trace-cmd-6.13.txt"
_TIMESTAMP = re.compile(r"^(.*?\]\s+)(\d+\.\d+)(:.*)$")


@functools.cache
def capture() -> bytes:
    """A trace-cmd report of ``LINES`` lines: the fixture's events again and again, each copy
    1 ms after the one before (two vCPUs, nested entries and exits, MSR writes, noise)."""
    events = []
    for line in FIXTURE.read_text().splitlines():
        match = _TIMESTAMP.match(line)
        if match:
            head, ts, tail = match.groups()
            events.append((head, float(ts), tail))
    out = ["cpus=4"]
    for copy in range(-(-(LINES - 1) // len(events))):
        shift = copy * 0.001
        out.extend(f"{head}{ts + shift:.6f}{tail}" for head, ts, tail in events)
    return ("\n".join(out[:LINES]) + "\n").encode()


def test_read_ftrace(benchmark):
    data = capture()
    imported = benchmark.pedantic(read_ftrace, args=(data,), rounds=3, warmup_rounds=1)
    assert imported.lines == LINES
    assert not imported.unparsed
    if benchmark.disabled:
        return
    rate = LINES / benchmark.stats.stats.min
    records = sum(len(trace) for trace in imported.traces.values())
    benchmark.extra_info.update(
        lines_per_second=rate, bytes_per_line=len(data) / LINES, records=records
    )
    assert rate >= MIN_RATE, f"read_ftrace: {rate / 1e6:.2f} M lines/s < {MIN_RATE / 1e6:.0f} M"
