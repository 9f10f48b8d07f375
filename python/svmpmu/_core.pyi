"""Type stubs of the Rust extension ``svmpmu._core`` (internal: use the ``svmpmu`` API).

A trace crosses the boundary as a tuple of its six columns (see ``svmpmu.COLUMNS``); a policy
as the tuple of its 15 knob values as strings (``svmpmu.Policy._core_knobs``); a mix as a
``svmpmu.Mix``.
"""

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "compare",
    "count_masks",
    "default_mix",
    "fuzz_range",
    "generate",
    "generate_one",
    "shrink",
    "signatures",
    "simulate",
    "simulate_batch",
    "validate",
    "__version__",
]

__version__: str

_U8 = npt.NDArray[np.uint8]
_U32 = npt.NDArray[np.uint32]
_U64 = npt.NDArray[np.uint64]
_Columns = tuple[_U8, _U8, _U8, _U8, _U32, _U64]
_Result = tuple[
    _U64,
    _U64,
    _U64,
    _U64,
    _U64,
    _U8 | None,
    npt.NDArray[np.bool_] | None,
    npt.NDArray[np.bool_] | None,
]
_Signature = tuple[int, int, int, int, bool]
_Knobs = tuple[str, ...]

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
    mix: Any = None,
    threads: int | None = None,
) -> tuple[_Columns, _U64]: ...
def generate_one(seed: int, index: int, length: int, n_pmcs: int, mix: Any) -> _Columns: ...
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
    mix: Any,
    start: int,
    end: int,
    threads: int | None = None,
) -> tuple[int, int, int, list[tuple[_Signature, int, int]]]: ...
def signatures(
    columns: _Columns, policy: _Knobs, reference: _Knobs, n_pmcs: int
) -> list[_Signature]: ...
def shrink(
    columns: _Columns, signature: _Signature, policy: _Knobs, reference: _Knobs, n_pmcs: int
) -> _Columns: ...
