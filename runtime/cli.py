"""The ``tiedonnx`` command line: a thin adapter over the library.

Each subcommand lives in ``tiedonnx.runtime.commands.<name>`` and defines
``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``. Building the
parser imports only those small modules; each ``run`` imports what it needs
(TensorFlow only for commands that need Keras), so ``tiedonnx run`` on an edge
install never pulls TensorFlow.

Exit codes: 0 success, 1 parity failure, 2 bad input or usage.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import TiedOnnxError

# Order here is the order in ``tiedonnx --help``.
COMMANDS = (
    "demo",
    "export",
    "inspect",
    "verify",
    "retie",
    "quantize",
    "ort",
    "run",
    "bench",
    "triton",
    "web",
)


def _command_module(name: str):
    return importlib.import_module(f"tiedonnx.runtime.commands.{name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tiedonnx",
        description="Tied-weight Keras models to small, verified ONNX deployments.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            module = _command_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != f"tiedonnx.runtime.commands.{name}":
                raise
            continue  # command not part of this build
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tiedonnx`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits 2 on usage errors
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args._run(args) or 0)
    except TiedOnnxError as exc:
        print(f"tiedonnx {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"tiedonnx {args.command}: interrupted; no output was written.", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
