"""A process forked after the parent used its worker threads (as Python's ``multiprocessing``
does by default on Linux) can still replay, generate and fuzz: rayon's threads do not survive
``fork()``, so the core must not hand the child's work to them."""

from __future__ import annotations

import os
import select
import signal

import numpy as np
import pytest

import svmpmu

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _in_forked_child(work, timeout: float = 60.0) -> bytes:
    """Run ``work()`` (which returns bytes) in a forked child; its answer, or a failure if
    the child hangs or dies."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        status = 1
        try:
            os.write(w, work())
            status = 0
        finally:
            os._exit(status)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], timeout)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the forked child did not answer within {timeout:.0f} s")
        answer = os.read(r, 64)
    finally:
        os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the forked child failed"
    return answer


def test_a_forked_child_replays_generates_and_fuzzes():
    # A trace long enough to be cut into chunks, replayed here first: this process's worker
    # threads are running when it forks.
    trace = svmpmu.generate(1, 40_000, seed=3).trace(0)
    batch = svmpmu.generate(512, 64, seed=4)
    replay = svmpmu.simulate(trace, "final", threads=2)
    replays = svmpmu.simulate_batch(batch, "final")
    fuzzed = svmpmu.fuzz("final", traces=512, length=64, seed=5)

    def work() -> bytes:
        same = [
            svmpmu.simulate(trace, "final", threads=2) == replay,
            svmpmu.simulate(trace, "final") == replay,
            bool(np.array_equal(svmpmu.simulate_batch(batch, "final").counters, replays.counters)),
            bool(np.array_equal(svmpmu.generate(512, 64, seed=4).records.op, batch.records.op)),
            svmpmu.fuzz("final", traces=512, length=64, seed=5).diverging == fuzzed.diverging,
        ]
        return bytes(int(s) for s in same)

    assert _in_forked_child(work) == bytes([1, 1, 1, 1, 1])
