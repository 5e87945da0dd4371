"""``tiedonnx demo``: train, export, verify and benchmark a tied autoencoder on bundled digits."""

from __future__ import annotations

import argparse

from . import _flags

HELP = ("Train a tied autoencoder on bundled digits, export fp32/fp16/int8/int4 ONNX, verify, "
        "benchmark, and draw the results.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo-out", metavar="DIR",
                        help="output folder (default: demo-out)")
    parser.add_argument("--epochs", type=int, default=30, metavar="N",
                        help="training epochs (default: 30)")
    parser.add_argument("--force", action="store_true",
                        help="replace earlier demo output in --out (default: refuse)")
    _flags.add_json(parser)
    _flags.add_quiet(parser)


def run(args: argparse.Namespace) -> int:
    from ..extras import require
    from ..options import check_positive_int
    from ._preflight import check_demo_out_dir
    from ._progress import StepPrinter

    check_positive_int("epochs", args.epochs)  # refusals that need no Keras, before TensorFlow loads
    check_demo_out_dir(args.out, force=args.force)
    require("convert", "demo", what="tiedonnx demo")
    with StepPrinter(enabled=not (args.json or args.quiet)) as step:
        step("loading TensorFlow, Keras and scikit-learn")
        from tiedonnx.converter.demo import run_demo

        report = run_demo(args.out, epochs=args.epochs, force=args.force, on_step=step)
    _flags.emit(report.as_dict(), as_json=args.json, lines=render(report))
    return 0


def render(report) -> list[str]:
    """The demo's table, what it wrote and the next step."""
    from tiedonnx.converter.demo_plots import TABLE_HEADER, speed_line, table_rows

    from .._term import format_table

    out = report.out_dir
    lines = [format_table(TABLE_HEADER, table_rows(report))]
    lines += [speed_line(report)] if speed_line(report) else []
    lines += [report.timing_note] if report.timing_note else []
    lines += ["",
             f"done in {report.seconds:.1f} s; wrote {out}/: reconstructions.png, "
             "size_latency.png, report.md, report.json, model.keras, the .onnx files"
             + (" and web/" if report.web_dir else "")]
    if report.web_dir:
        lines.append(f"next: tiedonnx web --serve {report.web_dir} (the models in your browser)")
    elif report.web_note:
        lines.append(report.web_note)
    return lines
