"""Flags that several commands share, defined once (same name, help and default)."""

from __future__ import annotations

import argparse

from ..options import MEMORY_MODES, PROVIDER_CHOICES


def add_force(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true",
                        help="overwrite existing output files (default: refuse)")


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def add_file_to_file(parser: argparse.ArgumentParser, *, dest: str, input_help: str, output_metavar: str,
                     output_help: str) -> None:
    """A model-to-model command's arguments: ``IN.onnx``, ``-o OUT`` (required), ``--force``, ``--json``."""
    parser.add_argument(dest, metavar="IN.onnx", help=input_help)
    parser.add_argument("-o", "--output", required=True, metavar=output_metavar, help=output_help)
    add_force(parser)
    add_json(parser)


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no step lines on stderr (--json implies it)")


def add_unsafe_load_code(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--unsafe-load-code", action="store_true",
                        help="DANGEROUS: let code stored in the .keras/.h5 file run "
                             "(trusted files only; see SECURITY.md)")


def add_import_modules(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--import", dest="import_modules", action="append", default=[], metavar="PACKAGE",
                        help="import PACKAGE first so the Keras classes it registers (e.g. keras_hub) "
                             "load with safe mode on; repeatable (see SECURITY.md)")


def add_keras_loading(parser: argparse.ArgumentParser) -> None:
    """How a command that reads a .keras file loads it: ``--unsafe-load-code`` and ``--import``."""
    add_unsafe_load_code(parser)
    add_import_modules(parser)


def add_provider(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--provider", choices=PROVIDER_CHOICES, default="auto",
                        help="execution provider (default: auto, CUDA if active, else CPU)")


def add_memory(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--memory", choices=MEMORY_MODES, default="fast",
                        help="fast: onnxruntime's full optimizations; lean: one in-memory copy "
                             "per tied weight (default: fast)")


def add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="intra-op threads (default: onnxruntime's choice)")


def emit(report: dict, *, as_json: bool, lines: list[str]) -> None:
    """Print a command's report to stdout: JSON for machines, ``lines`` for people."""
    import json
    import sys

    if as_json:
        json.dump(report, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
    else:
        sys.stdout.write("\n".join(lines) + "\n")


def human_bytes(n: int) -> str:
    return f"{n:,} B ({n / 1e6:.2f} MB)"
