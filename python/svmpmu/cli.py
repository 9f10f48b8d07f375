"""The ``svmpmu`` command line: ``svmpmu fuzz``, ``svmpmu verify``, ``svmpmu replay``,
``svmpmu presets``; the file commands (``import``, ``convert``, ``plot``, ``export``,
``scenarios``) are in :mod:`svmpmu.cli_files`."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os
import pathlib
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import Any, NoReturn, TextIO, TypeVar

import numpy as np

from . import __version__
from ._api import MAX_THREADS, compare, simulate
from .cli_campaign import register as register_campaign
from .cli_files import (
    InvalidValue,
    int_option,
    invalid_values,
    load_trace,
    n_pmcs_option,
    register,
    text_line,
    trace_arguments,
)
from .errors import PolicyError, TraceError
from .explain import explain
from .files import atomic_write
from .fuzz import ENGINES, FuzzReport, fuzz
from .policy import (
    KNOB_VALUES,
    PRESETS,
    REFERENCE_KNOBS,
    KnobValue,
    Policy,
    knobs_of,
    resolve_policy,
)
from .verify import Verdict, verify

__all__ = ["main"]

EXIT_AGREE = 0
"""The models agree (replay, explain, fuzz: no divergence; verify: equivalent, a proof)."""
EXIT_DIVERGES = 1
"""The models diverge (a divergence, a class, a diverging READ)."""
EXIT_USAGE = 2
"""A usage error or a bad input: a bad option, a file that cannot be read, a bad trace."""
EXIT_ORACLE = 3
"""``fuzz --check-oracle``: the Rust core and the oracle disagree, or ``fuzz --engine
automaton``: a walk was not confirmed by the concrete models (a bug in svmpmu)."""
EXIT_INCONCLUSIVE = 3
"""``verify --max-states``: the bound was reached before a divergence was found."""
EXIT_INTERRUPTED = 130
"""Interrupted by SIGINT or SIGTERM; ``fuzz`` prints the report of the work finished first."""

T = TypeVar("T")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``svmpmu: error: ...``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``message`` on one line and exit with status 2 (SystemExit)."""
        self.exit(EXIT_USAGE, f"svmpmu: error: {_one_line(message)} (see {self.prog} --help)\n")


class _Abandoned(KeyboardInterrupt):
    """An interrupt that left a call into the core running on a worker thread, which nothing
    can stop: :func:`main` ends the process at once."""


def _one_line(text: str) -> str:
    """``text`` on one line (an error message must not spill over several)."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _json_option(text: str) -> str | InvalidValue:
    """The ``type=`` of ``--json``: ``-``, or a file that can be created (its directory
    exists, it is not a directory), checked before the run rather than after it."""
    if text == "-":
        return text
    if not text.strip():
        return InvalidValue(text, "expected a file name or '-', got an empty name")
    path = pathlib.Path(text)
    if path.is_dir():
        return InvalidValue(text, f"{text} is a directory")
    if not path.parent.is_dir():
        return InvalidValue(text, f"no directory {path.parent} to write {path.name} in")
    return text


EXIT_HELP = (
    "exit status: 0 the models agree (verify: equivalent), 1 they diverge, 2 a usage error or"
    " a bad input, 3 fuzz --check-oracle found the core and the oracle disagreeing, fuzz"
    " --engine automaton had a walk the concrete models did not confirm, or verify"
    " --max-states stopped before finding a divergence, 130 interrupted"
)


def _write_json(path: str, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all."""
    data = text.encode()
    atomic_write(path, lambda f: f.write(data))


def _knob(text: str) -> tuple[str, KnobValue]:
    """Parse a ``KNOB=VALUE`` option (argparse's error for an unknown knob or value)."""
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KNOB=VALUE, got {text!r}")
    if name not in KNOB_VALUES:
        raise argparse.ArgumentTypeError(f"unknown knob {name!r}; knobs: {', '.join(KNOB_VALUES)}")
    allowed = KNOB_VALUES[name]
    if isinstance(allowed[0], bool):
        if value.lower() not in ("true", "false", "yes", "no", "1", "0"):
            raise argparse.ArgumentTypeError(f"knob {name!r} takes true or false, got {value!r}")
        return name, value.lower() in ("true", "yes", "1")
    if value not in allowed:
        raise argparse.ArgumentTypeError(
            f"knob {name!r} cannot be {value!r}; allowed: {', '.join(map(str, allowed))}"
        )
    return name, value


def _policy(preset: str, overrides: list[tuple[str, KnobValue]], option: str = "--set") -> Policy:
    """A preset with some knobs overridden; a knob the chosen model does not read is an error
    (it would change nothing), naming the option that sets the other model's knobs."""
    knobs: dict[str, Any] = dict(overrides)
    base = resolve_policy(preset)
    model = str(knobs.get("model", base.model))
    other = "--set-reference" if option == "--set" else "--set"
    for name in knobs:
        if name not in knobs_of(model):
            whose = "the reference's (arch)" if name in REFERENCE_KNOBS else "a KVM policy's"
            what = "the reference" if model == "arch" else "a KVM policy"
            raise PolicyError(
                f"{option} {name}=...: {preset} is {what}"
                f" and does not read {name}, which is {whose} knob; it would change nothing"
                f" (the other model's knobs go to {other})"
            )
    return dataclasses.replace(base, **knobs)


def policy_from_args(args: argparse.Namespace) -> Policy:
    """The policy of ``--policy`` with the ``--set`` overrides."""
    return _policy(args.policy, args.policy_knobs)


def reference_from_args(args: argparse.Namespace, preset: str) -> Policy:
    """The reference ``preset`` with the ``--set-reference`` overrides."""
    return _policy(preset, args.reference_knobs, "--set-reference")


def knob_option(
    parser: argparse.ArgumentParser, flag: str, dest: str, whose: str, example: str
) -> None:
    """A repeatable KNOB=VALUE option that overrides a knob of the policy or the reference."""
    parser.add_argument(
        flag,
        dest=dest,
        action="append",
        type=_knob,
        default=[],
        metavar="KNOB=VALUE",
        help=f"override a knob of the {whose}, e.g. {flag} {example} (repeatable)",
    )


def _model_options(parser: argparse.ArgumentParser, set_example: str) -> None:
    """--policy, --reference and their repeatable knob overrides, as fuzz and verify take them."""
    parser.add_argument(
        "--policy",
        default="final",
        help=f"preset of the policy under test ({', '.join(PRESETS)}; default final)",
    )
    parser.add_argument(
        "--reference", default="arch", help="preset of the reference (default arch)"
    )
    knob_option(parser, "--set", "policy_knobs", "policy", set_example)
    knob_option(parser, "--set-reference", "reference_knobs", "reference", "enabling_wrmsr=new")
    parser.add_argument(
        "--baseline",
        default=None,
        metavar="PRESET",
        help="diff the policy against this design on the same traces: the classes one shows"
        " where the other does not (exit status 1 when they differ)",
    )
    knob_option(parser, "--set-baseline", "baseline_knobs", "baseline", "vmexit_timing=sync")


def fuzz_run_options(
    f: argparse.ArgumentParser,
    *,
    traces: str,
    threads: str,
    between: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    """The options of a fuzzing run that ``fuzz`` and ``campaign`` share, with their own help
    for ``--traces`` and ``--threads``; ``between`` adds the caller's own options after
    ``--n-pmcs``."""
    f.add_argument("--traces", type=int_option(0), default=1_000_000, help=traces)
    f.add_argument(
        "--length", type=int_option(0), default=64, help="records per trace (default 64)"
    )
    f.add_argument(
        "--seed",
        type=int_option(0, 2**64 - 1),
        default=1,
        help="seed of the generator, 0..2**64-1 (default 1)",
    )
    f.add_argument("--threads", type=int_option(1, MAX_THREADS), default=None, help=threads)
    f.add_argument(
        "--n-pmcs", type=n_pmcs_option(), default=6, help="PMCs per trace, 1..6 (default 6)"
    )
    if between is not None:
        between(f)
    f.add_argument(
        "--json",
        type=_json_option,
        metavar="FILE",
        help="also write the report as JSON to FILE "
        "('-' for standard output, instead of the text report)",
    )
    f.add_argument(
        "--engine",
        choices=ENGINES,
        default="concrete",
        help="concrete: generate and replay concrete records (the default; sees counter"
        " values, overflows, PMIs and READ values); automaton: random walks on the two"
        " models' compiled product automaton, several times faster, each reported class"
        " confirmed on a concrete trace (docs/automaton.md)",
    )
    f.add_argument(
        "--check-oracle",
        type=int_option(0),
        default=0,
        metavar="N",
        help="replay the first N generated traces through the pure-Python oracle as "
        "well and fail on any disagreement with the core",
    )
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    f.add_argument(
        "--full",
        action="store_true",
        help="print every class's shrunk reproducer after the table (the default prints the"
        " table of classes, each with the documented choice that explains it)",
    )
    f.add_argument(
        "--summary", action="store_true", help="the table only (the default; kept for scripts)"
    )


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="svmpmu",
        description="Replay, compare and fuzz KVM's virtualization of AMD Host-Only/Guest-Only "
        "performance counters under nested SVM.",
    )
    parser.add_argument("--version", action="version", version=f"svmpmu {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on an error, print its traceback too (for a bug report)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    f = sub.add_parser(
        "fuzz",
        epilog=EXIT_HELP,
        help="fuzz a policy against a reference and print the divergence classes",
        description="Generate random valid traces, replay each through POLICY and REFERENCE, "
        "group the divergences into classes and shrink one trace of each class to a minimal "
        "counterexample. Every figure is reproducible from --seed.",
    )
    _model_options(f, "vmrun_order=before_entry")
    fuzz_run_options(
        f,
        traces="number of traces (default 1000000)",
        threads="worker threads (default: all cores, or RAYON_NUM_THREADS)",
    )

    v = sub.add_parser(
        "verify",
        epilog=EXIT_HELP,
        help="explore every trace of a policy against a reference: a proof, or the shortest "
        "counterexample of every class",
        description="Compile POLICY and REFERENCE into one finite automaton over their decision "
        "states (counter values left out) and explore it completely from reset: either no trace "
        "diverges (but in the --ignore classes), or every reachable divergence class is printed "
        "with its shortest witness. With --matrix, every preset against arch and against each "
        "other. docs/verification.md argues why the exploration covers every trace.",
    )
    _model_options(v, "forced_leave_timing=sync")
    v.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="CLASS",
        help="set a class aside, by the name the report prints "
        "(e.g. WRMSR_EVTSEL:none:svme0:svme0:policy; repeatable)",
    )
    v.add_argument(
        "--n-pmcs",
        type=n_pmcs_option(),
        default=1,
        help="PMCs explored, 1..6 (default 1: covers any number)",
    )
    v.add_argument(
        "--max-states",
        type=int_option(1),
        default=None,
        metavar="N",
        help="stop after N product states (the verdict is then bounded, never equivalent)",
    )
    v.add_argument(
        "--threads",
        type=int_option(1, MAX_THREADS),
        default=None,
        help="worker threads (default: all cores, or RAYON_NUM_THREADS)",
    )
    v.add_argument(
        "--json",
        type=_json_option,
        metavar="FILE",
        help="also write the verdict as JSON to FILE "
        "('-' for standard output, instead of the text report)",
    )
    v.add_argument(
        "--matrix",
        action="store_true",
        help="every preset against arch and against each other, as a table "
        "(equivalent, or the number of classes)",
    )
    v.add_argument("--no-progress", action="store_true", help="no progress bar")
    v.add_argument(
        "--summary", action="store_true", help="print only the table of classes, not each witness"
    )

    r = sub.add_parser(
        "replay",
        epilog=EXIT_HELP,
        help="replay a trace file through a policy and compare with a reference",
        description="Replay a trace (a text trace, an .npz written by Trace.save, a KVM"
        " trace-event capture, or a shipped scenario) through a policy and a reference.",
    )
    trace_arguments(r)
    _model_options(r, "vmrun_order=before_entry")
    r.add_argument("--n-pmcs", type=n_pmcs_option(), default=6, help="PMCs, 1..6 (default 6)")

    x = sub.add_parser(
        "explain",
        epilog=EXIT_HELP,
        help="explain every record: what each model counted, and why not",
        description="Replay a trace through a policy and a reference side by side and print"
        " every record: the mode before and after, what each model counted on it and, for a"
        " PMC it did not count on, the rule that ruled it out (the H/G mode rule, a stale or"
        " pending re-evaluation and the record that left it so, the filter, the CPL, the"
        " global control), the eventsel_hw changes and the READ values. '>>' marks the first"
        " divergence. Exit status: 0 when the models agree, 1 when they part, 2 on an error.",
    )
    trace_arguments(x)
    x.add_argument("--policy", default="final", help="preset of the policy (default final)")
    x.add_argument("--vs", default="arch", help="preset to compare with (default arch)")
    knob_option(x, "--set", "policy_knobs", "policy", "vmrun_order=before_entry")
    knob_option(x, "--set-reference", "reference_knobs", "reference", "enabling_wrmsr=new")
    x.add_argument("--n-pmcs", type=n_pmcs_option(), default=6, help="PMCs, 1..6 (default 6)")
    x.add_argument(
        "--limit",
        type=int_option(0),
        default=200,
        help="records to print at most (default 200; 0: all)",
    )
    x.add_argument(
        "--every-pmc",
        action="store_true",
        help="also the PMCs neither model counts, for reasons of no interest (not enabled,"
        " another event)",
    )

    sub.add_parser(
        "presets",
        help="list the presets and their knobs",
        description="List every preset with the knobs it sets.",
    )
    parser.set_defaults(file_commands={**register(sub), **register_campaign(sub)})
    for command in sub.choices.values():  # --debug after the command's name works too
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    return parser


def _check_oracle(report: FuzzReport, n: int, out: TextIO) -> tuple[int, bool]:
    """Replay the first ``n`` traces of the run through the oracle too: the number of
    disagreements, and whether an interrupt stopped the check (what was checked is said)."""
    from . import oracle

    bad = checked = 0
    try:
        for i in range(n):
            trace = report.trace(i)
            for policy in (report.policy, report.reference):
                if simulate(trace, policy, n_pmcs=report.n_pmcs) != oracle.simulate(
                    trace, policy, n_pmcs=report.n_pmcs
                ):
                    bad += 1
                    print(f"ORACLE DISAGREES on trace {i} under {policy}:", file=sys.stderr)
                    print(trace.format(None), file=sys.stderr)
            checked += 1
    except KeyboardInterrupt:
        print(
            f"oracle cross-check interrupted: {checked} of {n} traces, {bad} disagreements",
            file=out,
        )
        return bad, True
    print(f"oracle cross-check: {n} traces, {bad} disagreements", file=out)
    return bad, False


def _fuzz(args: argparse.Namespace, out: TextIO) -> int:
    """``svmpmu fuzz``: an interrupt (SIGINT, SIGTERM) prints the report of the work finished
    and exits 130."""
    from tqdm import tqdm

    policy = _policy(args.policy, args.policy_knobs)
    reference = reference_from_args(args, args.reference)
    baseline = _baseline(args)
    bar = tqdm(
        total=args.traces,
        unit=" traces",
        unit_scale=True,
        file=sys.stderr,
        disable=args.no_progress or None,
        dynamic_ncols=True,
    )
    last = [0]

    def progress(done: int, _total: int) -> None:
        bar.update(done - last[0])
        last[0] = done

    try:
        report = fuzz(
            policy,
            reference,
            traces=args.traces,
            length=args.length,
            seed=args.seed,
            threads=args.threads,
            n_pmcs=args.n_pmcs,
            progress=progress,
            baseline=baseline,
            engine=args.engine,
        )
    finally:
        bar.close()
    return print_fuzz_report(
        report, args, out, interrupted_note="the report covers the work finished"
    )


def print_fuzz_report(
    report: FuzzReport, args: argparse.Namespace, out: TextIO, *, interrupted_note: str
) -> int:
    """Print ``report`` as ``fuzz`` and ``campaign`` do (text or ``--json``, then
    ``--check-oracle``) and return the exit status; ``interrupted_note`` ends the line said
    when the run was interrupted."""
    interrupted = report.interrupted
    if args.json == "-":
        print(report.to_json(indent=2), file=out)
    else:
        try:
            text = report.format(counterexamples=args.full, documented=True)
        except KeyboardInterrupt:  # while checking the documented choices: the plain table
            text, interrupted = report.format(counterexamples=False), True
        print(text, file=out)
        if args.json:
            _write_json(args.json, report.to_json(indent=2))
    status = EXIT_DIVERGES if report.classes or report.gone else EXIT_AGREE
    if report.unconfirmed:  # a walk the concrete models did not confirm: a bug
        for u in report.unconfirmed:
            print(f"svmpmu: {u.format()}", file=sys.stderr)
        status = EXIT_ORACLE
    if args.check_oracle:
        where = sys.stderr if args.json == "-" else out
        if interrupted:
            print("oracle cross-check skipped: the run was interrupted", file=where)
        else:
            bad, interrupted = _check_oracle(report, args.check_oracle, where)
            if bad:
                status = EXIT_ORACLE
    if interrupted:
        print(f"svmpmu: interrupted: {interrupted_note}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return status


def _off_main_thread(call: Callable[[], T]) -> T:
    """Run ``call``, a call into the core that may not look at signals for minutes (a
    verify exploration), on a worker thread while this one waits, so that SIGINT and SIGTERM
    act at once. On an interrupt it raises :class:`_Abandoned`: the worker cannot be stopped,
    so :func:`main` ends the process."""
    if threading.current_thread() is not threading.main_thread():
        return call()
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["value"] = call()
        except BaseException as e:  # noqa: BLE001 (handed to the waiting thread, raised there)
            box["error"] = e

    worker = threading.Thread(target=work, name="svmpmu-core", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.1)
    except KeyboardInterrupt:
        raise _Abandoned from None
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


def _verify(args: argparse.Namespace, out: TextIO) -> int:
    """``svmpmu verify``."""
    from tqdm import tqdm

    if args.matrix:
        return _matrix(args, out)
    policy = _policy(args.policy, args.policy_knobs)
    reference = reference_from_args(args, args.reference)
    bar = tqdm(
        unit=" states",
        unit_scale=True,
        file=sys.stderr,
        disable=args.no_progress or None,
        dynamic_ncols=True,
    )

    def progress(states: int, depth: int) -> None:
        bar.set_postfix(depth=depth)
        bar.update(states - bar.n)

    try:
        verdict = _off_main_thread(
            lambda: verify(
                policy,
                reference,
                n_pmcs=args.n_pmcs,
                ignore=args.ignore,
                max_states=args.max_states,
                threads=args.threads,
                progress=progress,
            )
        )
    finally:
        bar.close()
    base = _baseline(args)
    if base is not None:
        return _verify_against(verdict, base, args, out)
    _write_verdict(verdict, args, out)
    if verdict.diverging_classes:
        return EXIT_DIVERGES
    return EXIT_INCONCLUSIVE if verdict.bounded else EXIT_AGREE


def _baseline(args: argparse.Namespace) -> Policy | None:
    """The design of ``--baseline`` with its ``--set-baseline`` overrides, or None."""
    if args.baseline is None:
        if args.baseline_knobs:
            raise PolicyError("--set-baseline needs --baseline")
        return None
    return _policy(args.baseline, args.baseline_knobs, "--set-baseline")


def _verify_against(verdict: Verdict, base: Policy, args: argparse.Namespace, out: TextIO) -> int:
    """``svmpmu verify --baseline``: the policy explored against the baseline design itself,
    so every record where the two designs count differently is a class (with its shortest
    witness), whether or not the reference's classes tell them apart; for each, which design
    the reference agrees with on the witness."""
    diff = _off_main_thread(
        lambda: verify(
            verdict.policy,
            base,
            n_pmcs=args.n_pmcs,
            max_states=args.max_states,
            threads=args.threads,
        )
    )
    reference = verdict.reference
    print(
        f"svmpmu verify: {verdict.policy} against the baseline {base} ({len(verdict.classes)}"
        f" classes against {reference}); where the two designs count differently:",
        file=out,
    )
    print(diff.format(witnesses=not args.summary), file=out)
    if diff.classes:
        print(f"\nwhich design {reference} agrees with, on each witness:", file=out)
    for c in diff.classes:
        ref = simulate(c.witness, reference, n_pmcs=args.n_pmcs)
        mine = simulate(c.witness, verdict.policy, n_pmcs=args.n_pmcs)
        theirs = simulate(c.witness, base, n_pmcs=args.n_pmcs)
        agrees = [
            name
            for name, r in ((str(verdict.policy), mine), (f"the baseline {base}", theirs))
            if np.array_equal(r.counters, ref.counters) and np.array_equal(r.reads, ref.reads)
        ]
        print(f"  {c.signature.name:40}  {' and '.join(agrees) or 'neither'}", file=out)
    return EXIT_DIVERGES if diff.classes else EXIT_AGREE


def _write_verdict(verdict: Verdict, args: argparse.Namespace, out: TextIO) -> None:
    """The verdict as text (or JSON with ``--json -``), and as JSON to ``--json FILE``."""
    if args.json == "-":
        print(verdict.to_json(indent=2), file=out)
        return
    print(verdict.format(witnesses=not args.summary), file=out)
    if args.json:
        _write_json(args.json, verdict.to_json(indent=2))


def _matrix(args: argparse.Namespace, out: TextIO) -> int:
    """``svmpmu verify --matrix``: every preset against every preset."""
    from tqdm import tqdm

    names = list(PRESETS)
    cells: dict[tuple[str, str], Verdict] = {}
    pairs = [(p, q) for q in names for p in names]
    for p, q in tqdm(pairs, unit=" pairs", file=sys.stderr, disable=args.no_progress or None):
        cells[p, q] = _off_main_thread(
            functools.partial(
                verify, p, q, n_pmcs=args.n_pmcs, ignore=args.ignore, threads=args.threads
            )
        )
    width = max(len("equivalent"), *(len(n) for n in names))
    print(
        f"svmpmu verify --matrix: policy (row) against reference (column), "
        f"{args.n_pmcs} PMC{'s' if args.n_pmcs > 1 else ''}; a cell is 'equivalent' or the "
        "number of reachable divergence classes",
        file=out,
    )
    print(" " * 8 + "  ".join(f"{q:>{width}}" for q in names), file=out)
    for p in names:
        row = []
        for q in names:
            v = cells[p, q]
            row.append("equivalent" if v.equivalent else f"{len(v.diverging_classes)} classes")
        print(f"{p:>8}" + "".join(f"  {c:>{width}}" for c in row), file=out)
    if args.json:
        data = {f"{p} vs {q}": v.to_dict() for (p, q), v in cells.items()}
        import json

        text = json.dumps(data, indent=2)
        if args.json == "-":
            print(text, file=out)
        else:
            _write_json(args.json, text)
    return EXIT_AGREE


def _replay(args: argparse.Namespace, out: TextIO) -> int:
    """``svmpmu replay``."""
    trace = load_trace(args)
    policy = policy_from_args(args)
    reference = reference_from_args(args, args.reference)
    try:
        c = compare(trace, policy, reference, n_pmcs=args.n_pmcs)
    except TraceError as e:
        raise TraceError(e.index, e.reason + text_line(args.trace, e.index)) from None
    print(f"{len(trace)} records; policy {policy}:", file=out)
    print(c.policy.format(), file=out)
    print(f"reference {reference}:", file=out)
    print(c.reference.format(), file=out)
    print(c.format(), file=out)
    parts = explain(trace, policy, reference, n_pmcs=args.n_pmcs)
    if parts.diverges:
        print("\nwhere they part (svmpmu explain shows every record):", file=out)
        print("\n".join(parts.format(limit=None, parting_only=True).splitlines()[1:]), file=out)
    return EXIT_DIVERGES if c.diverges else EXIT_AGREE


def _explain(args: argparse.Namespace, out: TextIO) -> int:
    """``svmpmu explain``: exit 1 when the models part."""
    trace = load_trace(args)
    policy = policy_from_args(args)
    reference = reference_from_args(args, args.vs)
    try:
        e = explain(trace, policy, reference, n_pmcs=args.n_pmcs)
    except TraceError as err:
        raise TraceError(err.index, err.reason + text_line(args.trace, err.index)) from None
    print(e.format(limit=args.limit or None, every_pmc=args.every_pmc), file=out)
    return 1 if e.diverges else 0


def _presets(out: TextIO) -> int:
    """``svmpmu presets``."""
    for name, policy in PRESETS.items():
        knobs = policy.overrides()
        print(
            f"{name:8} " + (", ".join(f"{k}={v}" for k, v in knobs.items()) or "(defaults)"),
            file=out,
        )
    print("\nknobs and their values (the first is the default):", file=out)
    for knob, values in KNOB_VALUES.items():
        print(f"  {knob:24} {' | '.join(map(str, values))}", file=out)
    return 0


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace, out: TextIO) -> int:
    """Run the command ``args`` names."""
    if args.command == "fuzz":
        return _fuzz(args, out)
    if args.command == "verify":
        return _verify(args, out)
    if args.command == "replay":
        return _replay(args, out)
    if args.command == "presets":
        return _presets(out)
    if args.command == "explain":
        return _explain(args, out)
    if args.command in args.file_commands:
        return int(args.file_commands[args.command](args, out))
    parser.print_help(out)
    return EXIT_USAGE


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While the command runs (on the main thread), SIGTERM raises KeyboardInterrupt as SIGINT
    does, so that both stop it the same way; the previous handler is put back after. A
    SIGTERM that is ignored stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_IGN:
        yield
        return

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


_KNOWN_ERRORS = (PolicyError, TraceError, ValueError, OSError, MemoryError)
"""The errors of a bad input or a bad environment, printed as they are; any other exception
is an internal error (a bug), printed with its type."""


def _error_line(e: BaseException) -> str:
    """The one line of ``svmpmu: error: ...`` for ``e``."""
    text = _one_line(str(e))
    if isinstance(e, MemoryError):
        return f"out of memory: {text}" if text and "alloc" not in text else text or "out of memory"
    if isinstance(e, _KNOWN_ERRORS):
        return text or type(e).__name__
    return (
        f"internal error: {type(e).__name__}: {text or 'no message'}"
        " (run with --debug for the traceback, and please report it)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (see ``EXIT_HELP``).

    Every error is one line on standard error, ``svmpmu: error: ...``, exit status 2: an
    error argparse finds (an unknown option, a knob that does not parse) raises
    SystemExit(2) as argparse does; a value an option refuses (a number out of range,
    ``--json ''``), a bad input and any unexpected exception return 2. ``--debug`` (before or
    after the command) prints the traceback too. SIGINT and SIGTERM stop the command with
    status 130, after what was finished is printed (``fuzz``: its partial report)."""
    parser = _parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    refused = invalid_values(parser, args)
    if refused:
        command = f"svmpmu {args.command}" if args.command else "svmpmu"
        print(f"svmpmu: error: {refused[0]} (see {command} --help)", file=sys.stderr)
        return EXIT_USAGE
    out = sys.stdout
    with _sigterm_as_interrupt():
        try:
            return _run(parser, args, out)
        except BrokenPipeError:  # the output went to a pager or `head` that stopped reading
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_USAGE
        except KeyboardInterrupt as e:
            if debug:
                traceback.print_exc()
            print("svmpmu: interrupted", file=sys.stderr)
            if isinstance(e, _Abandoned):  # a core call still runs on a worker thread
                with contextlib.suppress(OSError, ValueError):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(EXIT_INTERRUPTED)
            return EXIT_INTERRUPTED
        except Exception as e:  # noqa: BLE001 (every error is one line; --debug shows the rest)
            if debug:
                traceback.print_exc()
            print(f"svmpmu: error: {_error_line(e)}", file=sys.stderr)
            return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
