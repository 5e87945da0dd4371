"""Start-up cost of the ONNX-only commands: wall time and peak RSS per command.

Each command runs as its own process (the console script's entry point via
``python -m``-style ``-c``), rounds interleaved across commands so a load burst
spreads over all of them; the figure is the median of ``--rounds`` runs. The
baseline is ``python -c "import onnx, onnxruntime"``: the issue's target is
each command <= baseline + 0.5 s and <= 150 MB peak RSS on the full dev install.

Usage: python scripts/bench_startup.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from machine import describe

from tiedonnx.runtime.testing import tied_autoencoder


def _timed(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr.read().decode()[-500:]}")
    return wall, usage.ru_maxrss / 1024  # Linux reports KiB


def _commands(d: Path) -> dict[str, list[str]]:
    cli = [sys.executable, "-c", "import sys; from tiedonnx.runtime.cli import main; sys.exit(main())"]
    return {
        "python -c 'import onnx, onnxruntime'": [sys.executable, "-c", "import onnx, onnxruntime"],
        "tiedonnx inspect": cli + ["inspect", str(d / "ae.onnx")],
        "tiedonnx retie": cli + ["retie", str(d / "ae.onnx"), "-o", str(d / "r.onnx"), "--force"],
        "tiedonnx quantize int8": cli + ["quantize", str(d / "ae.onnx"), "-o", str(d / "q.onnx"),
                                         "--precision", "int8", "--force"],
        "tiedonnx ort": cli + ["ort", str(d / "ae.onnx"), "-o", str(d / "a.ort"), "--force"],
        "tiedonnx run": cli + ["run", str(d / "ae.onnx"), "-i", str(d / "x.npy"), "-o",
                               str(d / "y.npy"), "--force"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    installed = [m for m in ("tensorflow", "keras", "tf2onnx")
                 if __import__("importlib").util.find_spec(m) is not None]
    print(f"{describe()}; installed heavy packages: {installed or 'none'}")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        onnx.save(tied_autoencoder(784, 256), str(d / "ae.onnx"))
        np.save(d / "x.npy", np.random.default_rng(0).random((64, 784), dtype=np.float32))
        commands = _commands(d)
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, argv in commands.items():
                samples[name].append(_timed(argv))
    base = statistics.median(w for w, _ in samples[next(iter(commands))])
    print(f"{'command':40} {'wall s':>8} {'- base':>8} {'peak RSS MB':>12}")
    for name, runs in samples.items():
        wall = statistics.median(w for w, _ in runs)
        rss = statistics.median(r for _, r in runs)
        print(f"{name:40} {wall:8.2f} {wall - base:+8.2f} {rss:12.0f}")


if __name__ == "__main__":
    main()
