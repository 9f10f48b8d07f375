"""Fuzz campaigns: one fuzzing run cut into shards of trace indices, run in this process or on
a Dask cluster, merged exactly, and resumable from a checkpoint file.

A campaign is the run :func:`svmpmu.fuzz` would make (the models, the seed, the trace length,
the PMCs, the mix, the engine and the number of traces), cut into shards: contiguous ranges of
trace indices of the same seed. Trace ``i`` is a function of ``(seed, i)`` alone, and tallies
merge associatively and commutatively (:meth:`FuzzTally.merge`), so the merged report equals
:func:`svmpmu.fuzz`'s over the same traces whatever the shard size, the order in which shards
finish or the number of workers. ``docs/campaigns.md`` has the design, the checkpoint format
and how failures are handled.

Dask is an optional dependency (``pip install 'svmpmu[cluster]'``): it is imported only when a
campaign runs on a cluster.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from ._api import _check_run, _n_pmcs
from ._core import __version__
from .files import atomic_write, read_file_bytes
from .fuzz import FuzzReport, FuzzRun, FuzzTally, _DeferredSignals
from .mix import Mix
from .policy import Policy, PolicyLike, resolve_policy

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_INTERVAL",
    "CHECKPOINT_VERSION",
    "MIN_SHARD_RECORDS",
    "SHARDS_PER_WORKER_THREAD",
    "SHARD_RECORDS",
    "CampaignError",
    "CampaignProgress",
    "campaign",
    "default_shard_traces",
]

SHARD_RECORDS = 32_000_000
"""The records of a default shard at most: on one thread here 1.6 to 1.8 s of work, against
the 16 ms a shard costs a Dask worker thread beyond its traces, so that the cost of shards
stays near 1% (under 2% from 20 M records; docs/performance.md, "Campaigns")."""
MIN_SHARD_RECORDS = 2_000_000
"""The records of a default shard at least (but one trace), however few the traces: a
smaller campaign runs in a few shards rather than in many that cost more than they do."""
SHARDS_PER_WORKER_THREAD = 4
"""A default campaign has at least this many shards a worker thread (when its shards can be
as large as :data:`MIN_SHARD_RECORDS`), so that the threads finish within about a quarter of
a shard's time of one another and none idles long at the end."""
CHECKPOINT_INTERVAL = 2.0
"""The checkpoint is written after a shard finishes, but at most once in this many seconds;
the end of a campaign, an interrupt and an error always write it."""
CHECKPOINT_FORMAT = "svmpmu campaign checkpoint"
"""The ``format`` field of a checkpoint file."""
CHECKPOINT_VERSION = 1
"""The ``version`` field of the checkpoint files this version writes and reads."""

_CLUSTER_EXTRA = "pip install 'svmpmu[cluster]'"


class CampaignError(RuntimeError):
    """A campaign could not finish on its cluster: a shard killed every worker it ran on, a
    worker runs another version of svmpmu, or the cluster went away. The checkpoint (if any)
    keeps every shard finished before."""


@dataclass(frozen=True)
class CampaignProgress:
    """What a campaign's ``progress`` callback is given: once when it starts (with the shards
    taken from a checkpoint) and after each shard it finishes."""

    shards_done: int
    """Shards finished, those taken from the checkpoint included."""
    shards: int
    """Shards in the whole campaign."""
    traces_done: int
    """Traces of the finished shards."""
    traces: int
    """Traces in the whole campaign."""
    records_per_second: float
    """Records replayed by this call per second of it (the checkpoint's left out)."""
    classes: int
    """Classes found so far (with a baseline, both ways)."""
    rerun: int
    """Shards started again after the worker running them died."""
    dashboard: str | None
    """The Dask dashboard's address, or ``None`` in this process."""


def _distributed() -> ModuleType:
    """``dask.distributed``, or an ImportError that says how to install it."""
    try:
        import distributed
    except ImportError as e:
        raise ImportError(
            f"a campaign on a Dask cluster needs dask.distributed: {_CLUSTER_EXTRA}"
            f" (the workers need svmpmu and dask.distributed too): {e}"
        ) from e
    return distributed


def default_shard_traces(traces: int, length: int, worker_threads: int = 1) -> int:
    """The shard size a campaign takes when it is not given one: at most
    :data:`SHARD_RECORDS` records (the cost of a shard stays under 2% of its work), small
    enough for :data:`SHARDS_PER_WORKER_THREAD` shards a worker thread, but at least
    :data:`MIN_SHARD_RECORDS` records; at least one trace, at most ``traces``."""
    per_trace = max(length, 1)
    largest = max(1, SHARD_RECORDS // per_trace)
    smallest = max(1, MIN_SHARD_RECORDS // per_trace)
    balanced = math.ceil(traces / (SHARDS_PER_WORKER_THREAD * max(worker_threads, 1)))
    return max(1, min(largest, max(smallest, balanced), traces))


def campaign(
    policy: PolicyLike,
    reference: PolicyLike = "arch",
    *,
    traces: int,
    length: int,
    seed: int,
    shard_traces: int | None = None,
    client: Client | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    n_pmcs: int = 6,
    mix: Mix | None = None,
    baseline: PolicyLike | None = None,
    threads: int | None = None,
    engine: str = "concrete",
    progress: Callable[[CampaignProgress], None] | None = None,
) -> FuzzReport:
    """Fuzz ``policy`` against ``reference`` over ``traces`` traces of ``length`` records from
    ``seed``, in shards, and return the report :func:`svmpmu.fuzz` gives for the same
    arguments (with ``campaign`` saying how it ran).

    Args:
        policy: The policy under test (a preset's name or a :class:`Policy`).
        reference: The reference it is compared with.
        traces: Traces in the whole campaign.
        length: Records per trace.
        seed: The seed of the traces, 0..2**64-1.
        shard_traces: Traces a shard: contiguous trace indices that run as one task. By
            default the checkpoint's, else :func:`default_shard_traces` (from the cluster's
            worker threads at the start).
        client: A ``dask.distributed.Client``: one task a shard on its cluster, whose workers
            need svmpmu (the same version) installed. ``None`` runs the shards in this
            process, one after the other.
        checkpoint: A JSON file that holds the campaign's definition and the merged tally of
            its finished shards, written atomically after each shard (at most every
            :data:`CHECKPOINT_INTERVAL` seconds), at the end and on an interrupt. If it
            exists, the campaign resumes from it without running its finished shards again;
            a checkpoint of another campaign is refused, naming what differs.
        n_pmcs: PMCs per trace, 1..6.
        mix: The generator's mix (the default :class:`Mix` when ``None``).
        baseline: Another design to diff the policy against trace by trace, as
            :func:`svmpmu.fuzz` does.
        threads: Threads a shard runs on. Default: every core in this process; one on a
            Dask cluster, whose workers run a shard on each of their threads.
        engine: How traces are run (:data:`svmpmu.fuzz.ENGINES`).
        progress: Called with a :class:`CampaignProgress` when the campaign starts and after
            each shard.

    Returns:
        The merged report. Its ``campaign`` field holds how it ran: ``shards``,
        ``shard_traces``, ``scheduler`` (the address, ``None`` in this process),
        ``workers`` and ``worker_threads`` at the start, ``threads``, ``dashboard``,
        ``rerun`` (shards started again after a worker died, over every run of the
        checkpoint), ``from_checkpoint`` (shards taken from it), ``checkpoint`` and
        ``earlier_seconds`` (the wall time of the earlier runs it counts). ``seconds`` is the
        campaign's wall time, earlier runs of the checkpoint included.

    An interrupt (KeyboardInterrupt, e.g. from ``progress``) stops the campaign: the shard
    under way in this process is dropped, the checkpoint is written, and the report covers
    the finished shards (``complete=False``), which need not be the first traces.

    Raises:
        ValueError: A bad argument, or a checkpoint that cannot be read or is of another
            campaign; nothing has run then.
        TypeError: An argument of the wrong type.
        ImportError: ``client`` given without dask.distributed installed.
        CampaignError: The cluster could not finish a shard; the checkpoint keeps the others.
    """
    p, q = resolve_policy(policy), resolve_policy(reference)
    b = None if baseline is None else resolve_policy(baseline)
    mix = mix if mix is not None else Mix()
    if not isinstance(mix, Mix):
        raise TypeError(f"mix must be a svmpmu.Mix or None, got {type(mix).__name__}")
    given: object = n_pmcs
    n_pmcs = _n_pmcs(int(given) if isinstance(given, np.integer) else n_pmcs)
    traces, length, seed, threads = _check_run(traces, length, seed, threads, traces_name="traces")
    if client is not None:
        _check_client(client)
        threads = 1 if threads is None else threads
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable, got {type(progress).__name__}")
    run = FuzzRun(p, q, seed=seed, length=length, n_pmcs=n_pmcs, mix=mix, baseline=b, engine=engine)
    path = _checkpoint_path(checkpoint)
    saved = _read_checkpoint(path) if path is not None and path.exists() else None
    if shard_traces is not None:
        shard_traces = _positive_int("shard_traces", shard_traces)
    elif saved is not None and isinstance(saved["campaign"].get("shard_traces"), int):
        shard_traces = int(saved["campaign"]["shard_traces"])
    else:
        slots = 1 if client is None else sum(_nthreads(client).values())
        shard_traces = default_shard_traces(traces, length, slots)
    definition = _definition(run, traces, shard_traces)
    # A bad policy, mix or engine fails here, before any work or any file is written.
    run.tally(0, 0, threads)
    ledger = _Ledger(traces, shard_traces, path, definition)
    if saved is not None and path is not None:
        ledger.resume(saved, path)
    ledger.save(force=True)
    return _Campaign(run, ledger, client, threads, progress).run()


def _check_client(client: object) -> None:
    """Refuse what is not a running ``dask.distributed.Client``."""
    distributed = _distributed()
    if not isinstance(client, distributed.Client):
        raise TypeError(
            f"client must be a dask.distributed.Client or None, got {type(client).__name__}"
        )
    if client.status != "running":
        raise ValueError(f"the Dask client is {client.status}, not running")


def _positive_int(name: str, value: object) -> int:
    """``value`` as an int of at least 1, or a TypeError or ValueError naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return int(value)


def _checkpoint_path(checkpoint: str | os.PathLike[str] | None) -> pathlib.Path | None:
    """The checkpoint's path, refused up front when no file can be written there."""
    if checkpoint is None:
        return None
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a path or None, got {type(checkpoint).__name__}")
    path = pathlib.Path(checkpoint)
    if not str(checkpoint).strip():
        raise ValueError("checkpoint: expected a file name, got an empty name")
    if path.is_dir():
        raise ValueError(f"checkpoint {path} is a directory")
    if not path.parent.is_dir():
        raise ValueError(f"checkpoint {path}: no directory {path.parent} to write it in")
    return path


def _knobs(policy: Policy) -> dict[str, Any]:
    """A policy's knobs as plain data."""
    return {k: getattr(policy, k) for k in policy.__dataclass_fields__}


def _definition(run: FuzzRun, traces: int, shard_traces: int) -> dict[str, Any]:
    """What defines a campaign, as the checkpoint holds it (plain JSON data)."""
    data = {
        "policy": _knobs(run.policy),
        "reference": _knobs(run.reference),
        "baseline": None if run.baseline is None else _knobs(run.baseline),
        "seed": run.seed,
        "length": run.length,
        "n_pmcs": run.n_pmcs,
        "mix": run.mix.to_dict(),
        "engine": run.engine,
        "traces": traces,
        "shard_traces": shard_traces,
    }
    plain: dict[str, Any] = json.loads(json.dumps(data))
    return plain


def _differences(there: Any, here: Any, where: str = "") -> list[str]:  # noqa: ANN401 (JSON data)
    """Where two definitions differ, each as ``name: X in the checkpoint, Y here``."""
    if isinstance(there, dict) and isinstance(here, dict):
        out = []
        for key in sorted(set(there) | set(here), key=str):
            name = f"{where}.{key}" if where else str(key)
            if key not in there:
                out.append(f"{name}: missing in the checkpoint, {here[key]!r} here")
            elif key not in here:
                out.append(f"{name}: {there[key]!r} in the checkpoint, unknown here")
            else:
                out += _differences(there[key], here[key], name)
        return out
    if there != here:
        return [f"{where}: {there!r} in the checkpoint, {here!r} here"]
    return []


def _read_checkpoint(path: pathlib.Path) -> dict[str, Any]:
    """A checkpoint file's data, its format and version checked (its campaign is compared by
    :meth:`_Ledger.resume`)."""
    bad = f"checkpoint {path} is not a svmpmu campaign checkpoint"
    try:
        data = json.loads(read_file_bytes(path))
    except OSError as e:
        raise ValueError(f"checkpoint {path} cannot be read: {e}") from None
    except ValueError as e:  # JSON, or a device
        raise ValueError(f"{bad}: {e}") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{bad} (no 'format': {CHECKPOINT_FORMAT!r})")
    if data.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"checkpoint {path} is of version {data.get('version')!r}; this svmpmu reads"
            f" version {CHECKPOINT_VERSION}"
        )
    if data.get("svmpmu") != __version__:
        raise ValueError(
            f"checkpoint {path} was written by svmpmu {data.get('svmpmu')}, this is"
            f" {__version__}: another version may generate other traces from the same seed,"
            " so its shards cannot be merged with new ones; resume it with that version"
        )
    if not isinstance(data.get("campaign"), dict):
        raise ValueError(f"{bad}: it has no campaign")
    return data


class _Ledger:
    """The shards of a campaign, which of them are finished and their merged tally; and the
    checkpoint file that keeps them."""

    def __init__(
        self, traces: int, shard_traces: int, path: pathlib.Path | None, definition: dict[str, Any]
    ) -> None:
        """A campaign of ``traces`` traces in shards of ``shard_traces``, none finished yet."""
        self.traces = traces
        self.shard_traces = shard_traces
        self.shards = math.ceil(traces / shard_traces)
        self.path = path
        self.definition = definition
        # Replaced whole, in one assignment, so that an interrupt never leaves a shard's
        # tally merged without the shard marked finished (or the reverse).
        self.state: tuple[FuzzTally, frozenset[int]] = (FuzzTally(), frozenset())
        self.from_checkpoint = 0
        self.earlier_seconds = 0.0
        self.earlier_rerun = 0
        self.started = time.perf_counter()
        self.saved_at = -math.inf

    def bounds(self, index: int) -> tuple[int, int]:
        """The trace indices ``start..end`` of shard ``index``."""
        start = index * self.shard_traces
        return start, min(start + self.shard_traces, self.traces)

    def pending(self) -> list[int]:
        """The shards not finished, in order."""
        done = self.state[1]
        return [i for i in range(self.shards) if i not in done]

    def finish(self, index: int, tally: FuzzTally) -> None:
        """Shard ``index`` finished with ``tally``."""
        start, end = self.bounds(index)
        if tally.traces != end - start:
            raise CampaignError(
                f"shard {index} (traces {start}..{end}) came back with {tally.traces} traces"
            )
        merged, done = self.state
        if index in done:  # a result delivered twice: counted once
            return
        self.state = (merged.merge(tally), done | {index})

    def resume(self, saved: dict[str, Any], path: pathlib.Path) -> None:
        """Take the finished shards of the checkpoint ``saved``, after checking that it is a
        checkpoint of this campaign and that its shards and tally agree."""
        differ = _differences(saved["campaign"], self.definition)
        if differ:
            raise ValueError(
                f"checkpoint {path} is of another campaign: {'; '.join(differ)}. Resume it"
                " with the same arguments, or give another checkpoint file"
            )
        bad = f"checkpoint {path} is damaged"
        try:
            ranges = [(int(a), int(b)) for a, b in saved["done"]]
            tally = FuzzTally.from_dict(saved["tally"])
            seconds = float(saved.get("seconds", 0.0))
            rerun = int(saved.get("rerun", 0))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{bad}: {type(e).__name__}: {e}") from None
        done: set[int] = set()
        for start, end in ranges:
            on_grid = start % self.shard_traces == 0 and (
                end % self.shard_traces == 0 or end == self.traces
            )
            if not (0 <= start < end <= self.traces and on_grid):
                raise ValueError(f"{bad}: finished traces {start}..{end} are not whole shards")
            first, last = start // self.shard_traces, math.ceil(end / self.shard_traces)
            if done & set(range(first, last)):
                raise ValueError(f"{bad}: finished traces {start}..{end} counted twice")
            done.update(range(first, last))
        if tally.traces != sum(self.bounds(i)[1] - self.bounds(i)[0] for i in done):
            raise ValueError(
                f"{bad}: its tally has {tally.traces} traces, its finished shards"
                f" {sum(end - start for start, end in ranges)}"
            )
        if not (math.isfinite(seconds) and seconds >= 0 and rerun >= 0):
            raise ValueError(f"{bad}: seconds {seconds}, rerun {rerun}")
        self.state = (tally, frozenset(done))
        self.from_checkpoint = len(done)
        self.earlier_seconds = seconds
        self.earlier_rerun = rerun

    def kept(self) -> str:
        """What the checkpoint keeps, as the end of an error message."""
        if self.path is None:
            return ""
        done = len(self.state[1])
        return (
            f"; the checkpoint {self.path} keeps the {done} shards finished of {self.shards}:"
            " the same call resumes from it"
        )

    def seconds(self) -> float:
        """The campaign's wall time: earlier runs of the checkpoint, and this one so far."""
        return self.earlier_seconds + (time.perf_counter() - self.started)

    def save(self, rerun: int = 0, *, force: bool = False) -> None:
        """Write the checkpoint (if there is one): when ``force``d, or when the last write is
        :data:`CHECKPOINT_INTERVAL` seconds old."""
        now = time.perf_counter()
        if self.path is None or (not force and now - self.saved_at < CHECKPOINT_INTERVAL):
            return
        tally, done = self.state
        data = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "svmpmu": __version__,
            "campaign": self.definition,
            "done": [list(r) for r in _ranges(done, self.bounds)],
            "tally": tally.to_dict(),
            "seconds": self.seconds(),
            "rerun": self.earlier_rerun + rerun,
        }
        text = (json.dumps(data, indent=1) + "\n").encode()
        atomic_write(self.path, lambda f: f.write(text))
        self.saved_at = now


def _ranges(done: Iterable[int], bounds: Callable[[int], tuple[int, int]]) -> list[tuple[int, int]]:
    """The trace ranges of the shards ``done``, adjacent ones joined."""
    out: list[tuple[int, int]] = []
    for index in sorted(done):
        start, end = bounds(index)
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def _local_order(shards: Sequence[int]) -> Sequence[int]:
    """The order in which this process runs ``shards`` (ascending; the tests shuffle it)."""
    return shards


class _Campaign:
    """One run of a campaign: its shards run in this process or on a Dask cluster."""

    def __init__(
        self,
        run: FuzzRun,
        ledger: _Ledger,
        client: Client | None,
        threads: int | None,
        progress: Callable[[CampaignProgress], None] | None,
    ) -> None:
        """The shards of ``ledger`` not finished yet, to run on ``client`` (or here)."""
        self.fuzz_run = run
        self.ledger = ledger
        self.client = client
        self.threads = threads
        self.progress = progress
        self.rerun = 0
        self.records = 0
        self.dashboard: str | None = None
        self.scheduler: str | None = None
        self.workers = 1
        self.worker_threads = 1
        if client is not None:
            nthreads = _nthreads(client)
            self.workers, self.worker_threads = len(nthreads), sum(nthreads.values())
            self.scheduler = str(getattr(client.scheduler, "address", None))
            self.dashboard = _dashboard(client)

    def run(self) -> FuzzReport:
        """Run every shard not finished, then merge and report (an interrupt: the shards
        finished, with the checkpoint written)."""
        complete = False
        try:
            self.notify()
            if self.client is None:
                self.run_here()
            else:
                self.run_on_dask(self.client)
            complete = True
        except KeyboardInterrupt:
            pass
        except CampaignError as e:
            self.ledger.save(self.rerun, force=True)
            raise CampaignError(f"{e}{self.ledger.kept()}") from e
        finally:
            self.ledger.save(self.rerun, force=True)
        ledger = self.ledger
        tally, _done = ledger.state
        # As fuzz() does: an interrupt while shrinking stops it, the classes left unshrunk.
        deferred = _DeferredSignals()
        with deferred:
            report = self.fuzz_run.report(
                tally,
                requested=ledger.traces,
                seconds=ledger.seconds(),
                complete=complete,
                deferred=deferred,
            )
        return dataclasses.replace(
            report,
            campaign={
                "shards": ledger.shards,
                "shard_traces": ledger.shard_traces,
                "scheduler": self.scheduler,
                "workers": self.workers,
                "worker_threads": self.worker_threads,
                "threads": self.threads,
                "dashboard": self.dashboard,
                "rerun": ledger.earlier_rerun + self.rerun,
                "from_checkpoint": ledger.from_checkpoint,
                "checkpoint": None if ledger.path is None else str(ledger.path),
                "earlier_seconds": ledger.earlier_seconds,
            },
        )

    def finished(self, index: int, tally: FuzzTally) -> None:
        """Shard ``index`` came back: merge it, write the checkpoint if due, and tell."""
        self.ledger.finish(index, tally)
        self.records += tally.records
        self.ledger.save(self.rerun)
        self.notify()

    def notify(self) -> None:
        """Call ``progress`` with the figures so far."""
        if self.progress is None:
            return
        tally, done = self.ledger.state
        elapsed = time.perf_counter() - self.ledger.started
        self.progress(
            CampaignProgress(
                shards_done=len(done),
                shards=self.ledger.shards,
                traces_done=tally.traces,
                traces=self.ledger.traces,
                records_per_second=self.records / elapsed if elapsed > 0 else 0.0,
                classes=len(tally.classes) + len(tally.gone),
                rerun=self.ledger.earlier_rerun + self.rerun,
                dashboard=self.dashboard,
            )
        )

    def run_here(self) -> None:
        """Run the shards in this process, one after the other, each on ``threads``."""
        for index in _local_order(self.ledger.pending()):
            start, end = self.ledger.bounds(index)
            self.finished(index, self.fuzz_run.tally(start, end, self.threads))

    def run_on_dask(self, client: Client) -> None:
        """One task a shard on ``client``'s cluster, merged as they finish. Each task first
        records its start in a distributed queue: a shard started twice was started again
        because the worker running it died (Dask reruns it)."""
        pending = self.ledger.pending()
        if not pending:
            return
        distributed = _distributed()
        token = uuid.uuid4().hex[:12]
        queue_name = f"svmpmu-starts-{token}"
        starts = distributed.Queue(queue_name, client=client)
        started: Counter[int] = Counter()
        futures = {
            client.submit(
                _shard_task,
                self.fuzz_run,
                index,
                *self.ledger.bounds(index),
                self.threads,
                queue_name,
                __version__,
                key=f"svmpmu-shard-{index}-{token}",
            ): index
            for index in pending
        }
        drained = time.perf_counter()
        try:
            for future in distributed.as_completed(list(futures)):
                index = futures.pop(future)
                self.finished(index, _result(future, index, self.ledger.bounds(index)))
                future.release()
                if time.perf_counter() - drained > 1.0:
                    self.rerun = _count_reruns(starts, started)
                    drained = time.perf_counter()
            self.rerun = _count_reruns(starts, started)
        finally:
            with contextlib.suppress(Exception):  # the cluster may be gone
                if futures:
                    dask_client: Any = client  # its cancel() has no annotations
                    dask_client.cancel(list(futures))
                starts.close()


def _nthreads(client: Client) -> dict[str, int]:
    """The threads of each worker of ``client``'s cluster, now."""
    dask_client: Any = client  # its nthreads() has no annotations
    return {str(k): int(v) for k, v in dask_client.nthreads().items()}


def _dashboard(client: Client) -> str | None:
    """The dashboard's address of ``client``'s cluster, if it has one."""
    try:
        link = client.dashboard_link
    except (AttributeError, KeyError):
        return None
    return str(link) if link else None


def _result(future: Any, index: int, bounds: tuple[int, int]) -> FuzzTally:  # noqa: ANN401
    """A shard's tally from its future; a shard that killed its workers, or lost to the
    cluster, is a CampaignError."""
    distributed = _distributed()
    shard = f"shard {index} (traces {bounds[0]}..{bounds[1]})"
    try:
        tally = future.result()
    except distributed.KilledWorker as e:
        raise CampaignError(
            f"{shard} was running on every worker that died while running it, as many as Dask"
            f" allows (distributed.scheduler.allowed-failures): {e}"
        ) from e
    except (distributed.CancelledError, OSError) as e:
        raise CampaignError(f"{shard} was lost with the connection to the cluster: {e}") from e
    if not isinstance(tally, FuzzTally):
        raise CampaignError(f"{shard} came back as {type(tally).__name__}, not a tally")
    return tally


def _count_reruns(starts: Any, started: Counter[int]) -> int:  # noqa: ANN401 (a Dask Queue)
    """Take the shard starts recorded since the last call; the shards started more than once."""
    started.update(int(i) for i in starts.get(batch=True))
    return sum(1 for n in started.values() if n > 1)


_START_QUEUES: dict[str, Any] = {}
"""In a worker process: the queues of shard starts, by name (made once a campaign)."""


def _shard_task(
    run: FuzzRun,
    index: int,
    start: int,
    end: int,
    threads: int | None,
    queue_name: str,
    version: str,
) -> FuzzTally:
    """A shard on a Dask worker: record its start, then tally traces ``start..end``."""
    if version != __version__:
        raise CampaignError(
            f"this worker runs svmpmu {__version__}, the client {version}: install the"
            " same version everywhere, or traces would differ"
        )
    distributed = _distributed()
    queue = _START_QUEUES.get(queue_name)
    if queue is None:
        if len(_START_QUEUES) >= 16:  # noqa: PLR2004 (those of earlier campaigns: dropped)
            for old in _START_QUEUES.values():
                with contextlib.suppress(Exception):
                    old.close()
            _START_QUEUES.clear()
        queue = _START_QUEUES[queue_name] = distributed.Queue(queue_name)
    queue.put(index)
    return run.tally(start, end, threads)
