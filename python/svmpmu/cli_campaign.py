"""The ``svmpmu campaign`` command: :func:`svmpmu.campaign` from the command line, in this
process, on a Dask scheduler (``--scheduler``) or on a local Dask cluster (``--local-workers``).

:mod:`svmpmu.cli` imports this module, so the helpers this one takes from it are imported
inside the functions that use them."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from .campaign import CampaignError, CampaignProgress, campaign
from .cli_files import MAX_COUNT, InvalidValue, int_option

__all__ = ["register"]

Handler = Callable[[argparse.Namespace, TextIO], int]

_CLUSTER_EXTRA = "pip install 'svmpmu[cluster]'"


def _scheduler_option(text: str) -> str | InvalidValue:
    """The ``type=`` of ``--scheduler``: a Dask scheduler's address, ``tcp://HOST:PORT``."""
    address = text.strip()
    scheme, sep, rest = address.partition("://")
    host, colon, port = rest.rpartition(":")
    if not (sep and scheme and host and colon and port.isdigit()):
        return InvalidValue(text, f"expected a scheduler address tcp://HOST:PORT, got {text!r}")
    return address


def _checkpoint_option(text: str) -> str | InvalidValue:
    """The ``type=`` of ``--checkpoint``: a file name (whether it can be written is checked
    by :func:`svmpmu.campaign` before any work)."""
    if not text.strip():
        return InvalidValue(text, "expected a file name, got an empty name")
    return text


def register(sub: argparse._SubParsersAction[Any]) -> dict[str, Handler]:
    """Add the ``campaign`` command to ``sub``; its handler by command name."""
    from .cli import EXIT_HELP, _model_options, fuzz_run_options

    c = sub.add_parser(
        "campaign",
        epilog=EXIT_HELP,
        help="fuzz in shards, here or on a Dask cluster, resumable from a checkpoint",
        description="The run of svmpmu fuzz cut into shards of trace indices of the same seed,"
        " run in this process, on a Dask scheduler (--scheduler) or on a local Dask cluster"
        " (--local-workers), and merged into the report svmpmu fuzz prints for the same"
        " options, whatever the shards and the workers. With --checkpoint, an interrupted"
        " campaign resumes where it stopped. Dask is an optional extra: "
        f"{_CLUSTER_EXTRA} (docs/campaigns.md).",
    )
    _model_options(c, "vmrun_order=before_entry")

    def campaign_options(c: argparse.ArgumentParser) -> None:
        """The options of a campaign alone: its shards, where they run, its checkpoint."""
        c.add_argument(
            "--shard-traces",
            type=int_option(1, MAX_COUNT),
            default=None,
            metavar="N",
            help="traces a shard (default: the checkpoint's, else at most 32 M records a shard"
            " and at least 4 shards a worker thread; docs/campaigns.md)",
        )
        where = c.add_mutually_exclusive_group()
        where.add_argument(
            "--scheduler",
            type=_scheduler_option,
            default=None,
            metavar="tcp://HOST:PORT",
            help="run the shards on the Dask cluster of this scheduler (its workers need svmpmu"
            " installed, the same version)",
        )
        where.add_argument(
            "--local-workers",
            type=int_option(1, 1024),
            default=None,
            metavar="N",
            help="start a Dask cluster of N worker processes of one thread each on this"
            " machine (loopback only) and run the shards there",
        )
        c.add_argument(
            "--checkpoint",
            type=_checkpoint_option,
            default=None,
            metavar="FILE",
            help="keep the finished shards in FILE (JSON, written atomically) and resume from it"
            " if it exists; a checkpoint of another campaign is refused",
        )

    fuzz_run_options(
        c,
        traces="traces in the whole campaign (default 1000000)",
        threads="threads a shard runs on (default: all cores in this process; 1 on a Dask"
        " cluster, whose workers run a shard a thread)",
        between=campaign_options,
    )
    return {"campaign": _campaign}


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while the local cluster's processes start, so that they ignore it too
    (an ignored signal stays ignored in a new program): Ctrl-C on a terminal reaches the whole
    process group, and only this process is to act on it, writing the checkpoint and closing
    the cluster, rather than every worker dying with a traceback."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


@contextlib.contextmanager
def _dask_client(args: argparse.Namespace) -> Iterator[Any]:
    """The Dask client of ``--scheduler`` or of a ``--local-workers`` cluster (closed after
    the campaign), or ``None``."""
    if args.scheduler is None and args.local_workers is None:
        yield None
        return
    try:
        import distributed as imported
    except ImportError:
        raise ValueError(
            f"--scheduler and --local-workers need dask.distributed: {_CLUSTER_EXTRA}"
        ) from None
    distributed: Any = imported  # Client and LocalCluster have no annotations
    if args.scheduler is not None:
        try:
            client = distributed.Client(args.scheduler, timeout="20s")
        except (OSError, TimeoutError) as e:
            raise ValueError(f"cannot connect to the scheduler {args.scheduler}: {e}") from None
        with client:
            yield client
        return
    with _sigint_ignored():
        cluster = distributed.LocalCluster(
            n_workers=args.local_workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            silence_logs=logging.ERROR,  # a worker that dies: the report counts its reruns
        )
    with cluster, distributed.Client(cluster) as client:
        yield client


class _Bar:
    """The progress bar: shards done of all, records per second, classes so far, and the
    dashboard's address."""

    def __init__(self, disable: bool) -> None:
        """A bar on standard error (none when ``disable``)."""
        from tqdm import tqdm

        self.bar = tqdm(
            unit=" shards",
            file=sys.stderr,
            disable=disable or None,
            dynamic_ncols=True,
        )

    def __call__(self, p: CampaignProgress) -> None:
        """Show ``p``."""
        if self.bar.total != p.shards:
            self.bar.reset(total=p.shards)
        postfix = {
            "rate": f"{p.records_per_second / 1e6:.1f}M records/s",
            "classes": p.classes,
        }
        if p.rerun:
            postfix["rerun"] = p.rerun
        if p.dashboard:
            postfix["dashboard"] = p.dashboard
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(p.shards_done - self.bar.n)

    def close(self) -> None:
        """Take the bar off the terminal."""
        self.bar.close()


def _how_it_ran(how: dict[str, Any]) -> str:
    """One line on how a campaign ran (its report's ``campaign``)."""

    def some(n: int, what: str) -> str:
        return f"{n} {what}{'s' if n != 1 else ''}"

    where = (
        f"on {some(how['workers'], 'Dask worker')} ({some(how['worker_threads'], 'thread')})"
        f" of {how['scheduler']}"
        if how.get("scheduler")
        else "in this process"
    )
    line = f"campaign: {some(how['shards'], 'shard')} of {how['shard_traces']} traces {where}"
    if how.get("from_checkpoint"):
        line += f", {how['from_checkpoint']} taken from the checkpoint {how['checkpoint']}"
    if how.get("rerun"):
        line += f", {some(how['rerun'], 'shard')} rerun after their worker died"
    return line


def _campaign(args: argparse.Namespace, out: TextIO) -> int:
    """``svmpmu campaign``: statuses as ``svmpmu fuzz``'s; an interrupt writes the
    checkpoint, prints the report of the finished shards and exits 130."""
    from .cli import (
        EXIT_USAGE,
        _baseline,
        _one_line,
        _policy,
        print_fuzz_report,
        reference_from_args,
    )

    policy = _policy(args.policy, args.policy_knobs)
    reference = reference_from_args(args, args.reference)
    baseline = _baseline(args)
    bar = _Bar(disable=args.no_progress)
    try:
        with _dask_client(args) as client:
            report = campaign(
                policy,
                reference,
                traces=args.traces,
                length=args.length,
                seed=args.seed,
                shard_traces=args.shard_traces,
                client=client,
                checkpoint=args.checkpoint,
                n_pmcs=args.n_pmcs,
                baseline=baseline,
                threads=args.threads,
                engine=args.engine,
                progress=bar,
            )
    except CampaignError as e:
        bar.close()
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"svmpmu: error: {_one_line(str(e))}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        bar.close()
    print(_how_it_ran(report.campaign or {}), file=sys.stderr)
    resume = f"; resume with --checkpoint {args.checkpoint}" if args.checkpoint else ""
    return print_fuzz_report(
        report, args, out, interrupted_note=f"the report covers the shards finished{resume}"
    )
