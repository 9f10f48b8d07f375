"""The file commands of the ``svmpmu`` command line: ``import``, ``convert``, ``plot``,
``export`` and ``scenarios``, and the trace options every command that reads a trace takes."""

from __future__ import annotations

import argparse
import math
import pathlib
from collections.abc import Callable
from typing import Any, TextIO

from .files import (
    TEXT_SUFFIXES,
    TraceFileError,
    detect_format,
    line_of_record,
    read_file_bytes,
    read_trace,
    scenario_path,
    scenarios,
    write_trace,
)
from .model import MAX_PMCS
from .trace import Trace

__all__ = [
    "MAX_COUNT",
    "InvalidValue",
    "int_option",
    "invalid_values",
    "load_trace",
    "n_pmcs_option",
    "positive_float",
    "register",
    "text_line",
    "trace_arguments",
]

Handler = Callable[[argparse.Namespace, TextIO], int]

MAX_COUNT = 2**63 - 1
"""The largest count an option takes (traces, records, states): what the core's integers hold."""


class InvalidValue:
    """What an option's ``type=`` function gives for a value it refuses, with the reason.

    :func:`svmpmu.cli.main` looks for these once the command line is parsed and reports the
    first as a usage error, on one line, returning 2 (argparse's own errors, such as an
    unknown option, raise SystemExit(2) as argparse does)."""

    def __init__(self, text: str, reason: str) -> None:
        """The refused ``text`` and why."""
        self.text = text
        self.reason = reason

    def __repr__(self) -> str:
        """``InvalidValue('text': reason)``."""
        return f"InvalidValue({self.text!r}: {self.reason})"


def int_option(
    low: int, high: int = MAX_COUNT, *, base: int = 10
) -> Callable[[str], int | InvalidValue]:
    """An argparse ``type=`` that reads a whole number in ``low..high`` (in ``base``; 0
    takes a ``0x`` prefix); a bad number gives an :class:`InvalidValue` that names the
    range, a usage error before any work."""

    def parse(text: str) -> int | InvalidValue:
        try:
            value = int(text.strip(), base)
        except ValueError:
            hex_too = " (0x... for hex)" if base == 0 else ""
            return InvalidValue(text, f"expected a whole number{hex_too}, got {text!r}")
        if not low <= value <= high:
            limits = f"{low}..{high}" if high < MAX_COUNT else f"{low} to {high}"
            return InvalidValue(text, f"must be {limits}, got {text.strip()}")
        return value

    parse.__name__ = "integer"
    return parse


def n_pmcs_option() -> Callable[[str], int | InvalidValue]:
    """The ``type=`` of ``--n-pmcs``: 1..6."""
    return int_option(1, MAX_PMCS)


def positive_float(text: str) -> float | InvalidValue:
    """An argparse ``type=`` for a finite number greater than 0 (``--rate``)."""
    try:
        value = float(text)
    except ValueError:
        return InvalidValue(text, f"expected a number, got {text!r}")
    if not (math.isfinite(value) and value > 0):
        return InvalidValue(text, f"must be a finite number above 0, got {text.strip()}")
    return value


def invalid_values(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The values ``args`` holds that their option refused (:class:`InvalidValue`), each as
    ``argument --option: reason``."""
    flags: dict[str, str] = {}
    parsers = [parser]
    while parsers:
        for action in parsers.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            else:
                names = action.option_strings or [str(action.metavar or action.dest)]
                flags.setdefault(action.dest, max(names, key=len))
    return [
        f"argument {flags.get(dest, dest)}: {value.reason}"
        for dest, value in vars(args).items()
        if isinstance(value, InvalidValue)
    ]


def trace_arguments(parser: argparse.ArgumentParser) -> None:
    """The TRACE argument and the options of an imported KVM trace."""
    parser.add_argument(
        "trace",
        metavar="TRACE",
        help="a trace file (text, .npz, or a KVM trace-event capture: the format is read from"
        " the content) or the name of a shipped scenario (svmpmu scenarios)",
    )
    parser.add_argument(
        "--vcpu",
        type=int_option(0),
        default=None,
        help="for a KVM trace with several vCPUs: the vCPU to use",
    )
    parser.add_argument(
        "--rate",
        type=positive_float,
        default=None,
        help="for a KVM trace: guest events per microsecond between kvm_entry and kvm_exit,"
        " an estimate (default 1000; docs/ftrace.md)",
    )
    parser.add_argument(
        "--event",
        type=int_option(0, 0xFFFFF, base=0),
        default=None,
        help="for a KVM trace: the event key of the guest's RUN records (default 0xc0)",
    )
    parser.add_argument(
        "--run-cpl",
        type=int_option(0, 3),
        default=None,
        help="for a KVM trace: the CPL the guest runs at, which the trace does not say (default 3)",
    )
    parser.add_argument(
        "--vmrun-cpl",
        type=int_option(0, 3),
        default=None,
        help="for a KVM trace: the CPL at which L2 resumes after VMRUN (default 0)",
    )


def _import_options(args: argparse.Namespace) -> dict[str, object]:
    """The importer's options the command line gave."""
    names = {"rate": "rate", "event": "event", "run_cpl": "run_cpl", "vmrun_cpl": "vmrun_cpl"}
    return {k: getattr(args, a) for k, a in names.items() if getattr(args, a) is not None}


def load_trace(args: argparse.Namespace) -> Trace:
    """The trace named by the TRACE argument, with the import options given; a trace of no
    records (a text file of comments only) is refused, as an empty file is."""
    trace = read_trace(args.trace, vcpu=args.vcpu, **_import_options(args))
    if not len(trace):
        raise TraceFileError(f"{args.trace}: no records (only comments or blank lines)")
    return trace


def text_line(source: str, index: int) -> str:
    """`` (line N of FILE)`` when ``source`` names a text trace holding record ``index``."""
    path = pathlib.Path(source)
    if not path.exists() and source in scenarios():
        path = scenario_path(source)
    try:
        data = read_file_bytes(path)
        if detect_format(data) != "text":
            return ""
    except (OSError, ValueError):
        return ""
    line = line_of_record(data, index)
    return f" (line {line} of {path})" if line else ""


def _import(args: argparse.Namespace, out: TextIO) -> int:
    """``svmpmu import``: one output file per vCPU (or the one chosen)."""
    from .ftrace import read_ftrace

    imported = read_ftrace(args.trace, **_import_options(args))  # type: ignore[arg-type]
    print(imported.format(), file=out)
    target = pathlib.Path(args.output)
    vcpus = sorted(imported.traces)
    if args.vcpu is not None:
        if args.vcpu not in imported.traces:
            raise ValueError(
                f"no vCPU {args.vcpu} in {args.trace} (it has {', '.join(map(str, vcpus))})"
            )
        vcpus = [args.vcpu]
    outputs = {
        v: target if len(vcpus) == 1 else target.with_name(f"{target.stem}.vcpu{v}{target.suffix}")
        for v in vcpus
    }
    for v, path in outputs.items():
        write_trace(imported.traces[v], path)
        print(f"vCPU {v}: {len(imported.traces[v])} records written to {path}", file=out)
    return 0


def _convert(args: argparse.Namespace, out: TextIO) -> int:
    """``svmpmu convert``."""
    trace = load_trace(args)
    write_trace(trace, args.output)
    print(f"{len(trace)} records written to {args.output}", file=out)
    return 0


def _plot(args: argparse.Namespace, out: TextIO) -> int:
    """``svmpmu plot``."""
    from .cli import policy_from_args
    from .plot import plot

    trace = load_trace(args)
    try:
        plot(
            trace, args.output, policy=policy_from_args(args), reference=args.vs, n_pmcs=args.n_pmcs
        )
    except ImportError as e:  # matplotlib missing: the message says how to install it
        raise ValueError(str(e)) from None
    print(f"{args.output}: {len(trace)} records, {args.policy} against {args.vs}", file=out)
    return 0


def _export(args: argparse.Namespace, out: TextIO) -> int:
    """``svmpmu export``."""
    from .cli import policy_from_args
    from .perfetto import write_perfetto

    trace = load_trace(args)
    write_perfetto(
        trace, args.perfetto, policy=policy_from_args(args), reference=args.vs, n_pmcs=args.n_pmcs
    )
    print(f"{args.perfetto}: open it in https://ui.perfetto.dev or chrome://tracing", file=out)
    return 0


def _export_selftest(args: argparse.Namespace, out: TextIO) -> int:
    """``svmpmu export-selftest``."""
    from .export import write_export

    trace = load_trace(args)
    if args.format == "selftest":
        name = args.name or pathlib.Path(args.output).stem.replace("-", "_")
        options = {"name": name, "model": args.model, "n_pmcs": args.n_pmcs, "source": args.trace}
        write_export(trace, args.output, format="selftest", **options)
    else:
        write_export(trace, args.output, format=args.format)
    print(f"{args.output}: {len(trace)} records as {args.format}", file=out)
    return 0


def _diff(args: argparse.Namespace, out: TextIO) -> int:
    """``svmpmu diff``: exit 1 when the reports show different classes."""
    from .reports import diff_reports, load_report

    d = diff_reports(load_report(args.a), load_report(args.b), (args.a, args.b))
    print(d.format(), file=out)
    return 1 if d.differ else 0


def _scenarios(args: argparse.Namespace, out: TextIO) -> int:
    """``svmpmu scenarios``."""
    for name, title in scenarios().items():
        print(f"{name:16} {title}", file=out)
        if args.paths:
            print(f"{'':16} {scenario_path(name)}", file=out)
    return 0


def _picture_options(parser: argparse.ArgumentParser) -> None:
    from .cli import knob_option

    parser.add_argument("--policy", default="final", help="preset of the policy (default final)")
    parser.add_argument("--vs", default="arch", help="preset to compare with (default arch)")
    knob_option(parser, "--set", "policy_knobs", "policy", "vmrun_order=before_entry")
    parser.add_argument(
        "--n-pmcs",
        type=n_pmcs_option(),
        default=None,
        help="PMCs to show, 1..6 (default: those the trace uses)",
    )


def register(sub: argparse._SubParsersAction[Any]) -> dict[str, Handler]:
    """Add the file commands to ``sub``; their handlers by command name."""
    text = " or ".join(TEXT_SUFFIXES)
    i = sub.add_parser(
        "import",
        help="import a KVM trace-event capture (trace-cmd report, tracefs trace)",
        description="Map the kvm events of a trace-cmd report or a tracefs trace file to"
        " records, one trace per vCPU, and write them; prints what was mapped, skipped and"
        " could not be read. See docs/ftrace.md for the mapping.",
    )
    trace_arguments(i)
    i.add_argument(
        "-o",
        "--output",
        required=True,
        help=f"the output file (.npz, {text}); with several vCPUs and no --vcpu, one file a"
        " vCPU named OUT.vcpuN.SUFFIX",
    )

    c = sub.add_parser(
        "convert",
        help="convert a trace between text, .npz and an imported KVM trace",
        description="Read a trace in any format (detected from the content) and write it in"
        " the format of the output's suffix.",
    )
    trace_arguments(c)
    c.add_argument("-o", "--output", required=True, help=f"the output file (.npz, {text})")

    p = sub.add_parser(
        "plot",
        help="draw a trace's timeline under a policy and a reference (PNG or SVG)",
        description="One figure: the mode over time, when eventsel_hw.EN is set on each PMC"
        " under the policy, and each PMC's count under the policy and the reference, with the"
        " first divergence marked. Needs matplotlib: pip install 'svmpmu[plot]'.",
    )
    trace_arguments(p)
    p.add_argument("-o", "--output", required=True, help="the picture (.png or .svg)")
    _picture_options(p)

    e = sub.add_parser(
        "export",
        help="export a trace's timeline for Perfetto or chrome://tracing",
        description="Write the timeline of the plot command as Chrome trace-event JSON, which"
        " ui.perfetto.dev and chrome://tracing open (docs/pictures.md lists its events).",
    )
    trace_arguments(e)
    e.add_argument("--perfetto", required=True, metavar="OUT.json", help="the JSON file")
    _picture_options(e)

    x = sub.add_parser(
        "export-selftest",
        help="export a trace as a KVM selftest (C), as TraceBuilder code or as text",
        description="Write a KVM selftest in the style of svm_pmu_host_guest_test.c that"
        " replays the trace on an AMD host with nested SVM and asserts each READ against the"
        " counts of a model (arch by default), so that running it shows which model the"
        " hardware and the kernel agree with. Records a selftest cannot replay faithfully"
        " are refused with the reason (docs/selftest-export.md).",
    )
    trace_arguments(x)
    x.add_argument("-o", "--output", required=True, help="the file to write (NAME.c)")
    x.add_argument(
        "--name", default=None, help="the test's name, a C identifier (default: the file's stem)"
    )
    x.add_argument(
        "--model", default="arch", help="the preset whose counts the asserts expect (arch)"
    )
    x.add_argument(
        "--format",
        choices=("selftest", "python", "text"),
        default="selftest",
        help="selftest (C, the default), python (TraceBuilder code) or text (a text trace)",
    )
    x.add_argument("--n-pmcs", type=n_pmcs_option(), default=6, help="PMCs, 1..6 (default 6)")

    d = sub.add_parser(
        "diff",
        help="compare two saved reports (svmpmu fuzz/verify --json)",
        description="The classes one report shows and the other does not, and for fuzz"
        " reports the classes whose number of traces changed. A class-level diff: to compare"
        " two designs trace by trace, use svmpmu fuzz --baseline. Exit status: 0 the same"
        " classes with the same counts, 1 they differ, 2 an error.",
    )
    d.add_argument("a", metavar="A.json", help="the first report")
    d.add_argument("b", metavar="B.json", help="the second report")

    s = sub.add_parser(
        "scenarios",
        help="list the scenario files shipped with svmpmu",
        description="List the shipped scenarios; any command that reads a TRACE takes their"
        " names, e.g. svmpmu replay worked-example.",
    )
    s.add_argument("--paths", action="store_true", help="print each file's path too")
    return {
        "import": _import,
        "convert": _convert,
        "plot": _plot,
        "export": _export,
        "scenarios": _scenarios,
        "diff": _diff,
        "export-selftest": _export_selftest,
    }
