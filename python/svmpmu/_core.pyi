# Type stubs of the Rust extension ``svmpmu._core`` (internal: use the ``svmpmu`` API).
#
# A trace crosses the boundary as a tuple of its six columns (see ``svmpmu.COLUMNS``); a policy
# as the tuple of its 15 knob values as strings, in the order of ``KNOBS``
# (``svmpmu.Policy._core_knobs``); a mix as a ``svmpmu.Mix`` (None: the generator's own).
#
# Every function releases the GIL while it computes. An allocation it cannot make raises
# MemoryError; a long call stops within milliseconds when a signal handler raises (Ctrl-C:
# KeyboardInterrupt) and raises that exception; an internal error is a RuntimeError, never a
# PanicException. The Python API (``svmpmu._api``) checks the arguments first.

from collections.abc import Callable
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from svmpmu.mix import Mix

__all__ = [
    "KNOBS",
    "PRESETS",
    "automaton_range",
    "automaton_walk",
    "compare",
    "count_masks",
    "default_mix",
    "explain",
    "fuzz_range",
    "generate",
    "generate_one",
    "read_ftrace",
    "read_text",
    "selector_text",
    "shrink",
    "signatures",
    "simulate",
    "simulate_batch",
    "validate",
    "verify",
    "write_text",
    "__version__",
]

__version__: str
KNOBS: tuple[tuple[str, tuple[str, ...]], ...]
"""Every knob and its allowed values, in the order a policy crosses into the core."""
PRESETS: dict[str, tuple[str, ...]]
"""The presets of model.md section 7: name -> knob values, in the order of ``KNOBS``."""

_U8: TypeAlias = npt.NDArray[np.uint8]
_U32: TypeAlias = npt.NDArray[np.uint32]
_U64: TypeAlias = npt.NDArray[np.uint64]
_Columns: TypeAlias = tuple[_U8, _U8, _U8, _U8, _U32, _U64]
_Result: TypeAlias = tuple[
    _U64,
    _U64,
    _U64,
    _U64,
    _U64,
    _U8 | None,
    npt.NDArray[np.bool_] | None,
    npt.NDArray[np.bool_] | None,
]
_Signature: TypeAlias = tuple[int, int, int, int, bool]
_Knobs: TypeAlias = tuple[str, ...]

def simulate(
    columns: _Columns, policy: _Knobs, n_pmcs: int, timeline: bool, threads: int | None = None
) -> _Result: ...
def compare(
    columns: _Columns, policy: _Knobs, reference: _Knobs, n_pmcs: int
) -> tuple[bool, int | None, _Result, _Result]: ...
def validate(columns: _Columns, n_pmcs: int) -> None: ...
def count_masks(columns: _Columns, policy: _Knobs, n_pmcs: int) -> _U8: ...
def default_mix(workload: bool = False) -> dict[str, Any]: ...
def generate(
    n_traces: int,
    length: int,
    seed: int,
    n_pmcs: int,
    mix: Mix | None = None,
    threads: int | None = None,
) -> tuple[_Columns, _U64]: ...
def generate_one(seed: int, index: int, length: int, n_pmcs: int, mix: Mix | None) -> _Columns: ...
def simulate_batch(
    columns: _Columns, offsets: _U64, policy: _Knobs, n_pmcs: int, threads: int | None = None
) -> tuple[
    npt.NDArray[np.uint64],
    npt.NDArray[np.uint64],
    npt.NDArray[np.uint64],
    npt.NDArray[np.uint64],
    _U64,
    _U64,
]: ...
def fuzz_range(
    policy: _Knobs,
    reference: _Knobs,
    seed: int,
    length: int,
    n_pmcs: int,
    mix: Mix | None,
    start: int,
    end: int,
    threads: int | None = None,
    baseline: _Knobs | None = None,
) -> tuple[int, int, int, list[tuple[_Signature, int, int]], list[tuple[_Signature, int, int]]]: ...
def automaton_range(
    policy: _Knobs,
    reference: _Knobs,
    seed: int,
    length: int,
    n_pmcs: int,
    mix: Mix | None,
    start: int,
    end: int,
    threads: int | None = None,
) -> tuple[int, int, int, list[tuple[_Signature, int, int]], dict[str, Any]]: ...
def automaton_walk(
    policy: _Knobs,
    reference: _Knobs,
    seed: int,
    index: int,
    length: int,
    n_pmcs: int,
    mix: Mix | None,
) -> tuple[_Columns, list[_Signature], list[_Signature], bool]: ...
def signatures(
    columns: _Columns, policy: _Knobs, reference: _Knobs, n_pmcs: int
) -> list[_Signature]: ...
def verify(
    policy: _Knobs,
    reference: _Knobs,
    n_pmcs: int,
    ignore: list[_Signature],
    max_states: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    threads: int | None = None,
) -> tuple[bool, bool, int, int, int, list[tuple[_Signature, _Columns, int, bool]]]: ...
def shrink(
    columns: _Columns,
    signature: _Signature,
    policy: _Knobs,
    reference: _Knobs,
    n_pmcs: int,
    baseline: _Knobs | None = None,
) -> _Columns: ...
def read_text(data: bytes) -> _Columns: ...
def write_text(columns: _Columns) -> bytes: ...
def selector_text(value: int) -> str: ...
def explain(
    columns: _Columns, policy: _Knobs, reference: _Knobs, n_pmcs: int
) -> dict[str, Any]: ...
def read_ftrace(
    data: bytes,
    rate: float,
    event: int,
    run_cpl: int,
    vmrun_cpl: int,
    reads: bool,
    infer_start: bool,
) -> tuple[
    list[tuple[int, _Columns, str]],
    list[tuple[str, int]],
    list[tuple[int, str]],
    list[tuple[str, int]],
    int,
    int,
]: ...
