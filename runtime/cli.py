"""The ``tiedonnx`` command line: a thin adapter over the library.

Each subcommand lives in ``tiedonnx.runtime.commands.<name>`` and defines
``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``: it parses, calls
one library function and prints its report. Building the parser imports only
those small modules; each ``run`` imports what it needs, and only the Keras
commands (``export``, ``verify``, ``demo``, ``bench --keras``) import
:mod:`tiedonnx.converter`, inside ``run``.

Exit codes: 0 success, 1 parity failure, 2 bad input or usage (one line on
stderr), 3 an internal error (a bug: one line, ``-v`` prints the traceback),
130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import TiedOnnxError, short_error

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
    "generate",
    "bench",
    "triton",
    "web",
)

EXIT_BUG = 3
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (the promise for every bad input), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _command_module(name: str):
    return importlib.import_module(f"tiedonnx.runtime.commands.{name}")


def version() -> str:
    """The installed distribution's version (package metadata), e.g. ``"0.1.0"``."""
    from . import UNINSTALLED_VERSION, __version__

    return f"{__version__} (not installed)" if __version__ == UNINSTALLED_VERSION else __version__


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tiedonnx",
                     description="Tied-weight Keras models to small, verified ONNX deployments.")
    parser.add_argument("--version", action="version", version=f"tiedonnx {version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more output: -v info logs, TensorFlow's own logs and tracebacks of "
                             "internal errors; -vv debug logs")
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
    args = parser.parse_args(argv)  # usage errors exit 2 here, in one line
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("tiedonnx").setLevel(level)
    prog = f"tiedonnx {args.command}"
    try:
        return int(args._run(args) or 0)
    except TiedOnnxError as exc:
        print(f"{prog}: error: {exc.cli_message()}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # stdout closed early (`| head`): not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; no output was written.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: say so in one line, keep the traceback behind -v
        if args.verbose:
            import traceback

            traceback.print_exc()
        print(f"{prog}: internal error (a bug in tiedonnx, please report it): "
              f"{type(exc).__name__}: {short_error(exc)}"
              f"{'' if args.verbose else ' (run with -v for the traceback)'}", file=sys.stderr)
        return EXIT_BUG


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
