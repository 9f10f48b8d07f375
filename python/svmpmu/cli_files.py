"""The file commands of the ``svmpmu`` command line: ``import``, ``convert``, ``plot``,
``export`` and ``scenarios``, and the trace options every command that reads a trace takes."""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Callable
from typing import TextIO

from .files import (
    TEXT_SUFFIXES,
    detect_format,
    line_of_record,
    read_trace,
    scenario_path,
    scenarios,
    write_trace,
)
from .trace import Trace

__all__ = ["load_trace", "register", "text_line", "trace_arguments"]

Handler = Callable[[argparse.Namespace, TextIO], int]


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
        type=int,
        default=None,
        help="for a KVM trace with several vCPUs: the vCPU to use",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="for a KVM trace: guest events per microsecond between kvm_entry and kvm_exit,"
        " an estimate (default 1000; docs/ftrace.md)",
    )
    parser.add_argument(
        "--event",
        type=lambda text: int(text, 0),
        default=None,
        help="for a KVM trace: the event key of the guest's RUN records (default 0xc0)",
    )
    parser.add_argument(
        "--run-cpl",
        type=int,
        default=None,
        help="for a KVM trace: the CPL the guest runs at, which the trace does not say (default 3)",
    )
    parser.add_argument(
        "--vmrun-cpl",
        type=int,
        default=None,
        help="for a KVM trace: the CPL at which L2 resumes after VMRUN (default 0)",
    )


def _import_options(args: argparse.Namespace) -> dict[str, object]:
    """The importer's options the command line gave."""
    names = {"rate": "rate", "event": "event", "run_cpl": "run_cpl", "vmrun_cpl": "vmrun_cpl"}
    return {k: getattr(args, a) for k, a in names.items() if getattr(args, a) is not None}


def load_trace(args: argparse.Namespace) -> Trace:
    """The trace named by the TRACE argument, with the import options given."""
    return read_trace(args.trace, vcpu=args.vcpu, **_import_options(args))


def text_line(source: str, index: int) -> str:
    """`` (line N of FILE)`` when ``source`` names a text trace holding record ``index``."""
    path = pathlib.Path(source)
    if not path.exists() and source in scenarios():
        path = scenario_path(source)
    try:
        data = path.read_bytes()
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
        type=int,
        default=None,
        help="PMCs to show, 1..6 (default: those the trace uses)",
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, Handler]:
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
    x.add_argument("--n-pmcs", type=int, default=6, help="PMCs, 1..6 (default 6)")

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
