"""CLI subcommands. Each module: ``HELP``, ``add_arguments(parser)``, ``run(args) -> int``.

Modules here import only argparse-level things at import time; the library is
imported inside ``run`` so building the parser stays fast and TensorFlow-free.
"""
