"""What ONNX simplifiers do to a tiedonnx file: do they fold the tie's Transpose into a second copy?

For each tool (onnxslim, onnxsim; a tool that is not installed is reported
and skipped), with default settings and with the settings that keep the tie,
on the 784-256 tied autoencoder (``to_precision(tied_autoencoder(784, 256),
"fp32")``, which carries a tie record):

* file bytes before and after the tool;
* what ``tiedonnx inspect`` says: the tie's status and the untied duplicates;
* when the tie is broken, the bytes after ``tiedonnx retie`` and whether
  inspect is clean again;
* max abs difference of the outputs against the original file (onnxruntime
  CPU, 64 random rows), after the tool and after retie.

Run: python scripts/bench_untie_tools.py
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402  (scripts/ is on sys.path)

from tiedonnx.runtime.graph.inspect import inspect_file  # noqa: E402
from tiedonnx.runtime.graph.quantize import to_precision  # noqa: E402
from tiedonnx.runtime.graph.retie import retie_file  # noqa: E402
from tiedonnx.runtime.testing import tied_autoencoder  # noqa: E402

FEATURES, HIDDEN = 784, 256
W_BYTES = FEATURES * HIDDEN * 4  # the tied kernel, float32


def _slim(**kw):
    import onnxslim

    return lambda src: onnxslim.slim(str(src), **kw)


def _sim(**kw):
    import onnxsim

    def run(src):
        model, ok = onnxsim.simplify(onnx.load(str(src)), **kw)
        if not ok:
            raise RuntimeError("onnxsim's own check failed")
        return model
    return run


# (tool, module, setting as the tool's CLI spells it, Python call)
VARIANTS = [
    ("onnxslim", "onnxslim", "default", _slim()),
    ("onnxslim", "onnxslim", "--skip-optimizations constant_folding",
     _slim(skip_optimizations=["constant_folding"])),
    ("onnxslim", "onnxslim", "--size-threshold 1024", _slim(size_threshold=1024)),
    ("onnxslim", "onnxslim", "--skip-optimizations weight_tying", _slim(skip_optimizations=["weight_tying"])),
    ("onnxslim", "onnxslim", "--skip-fusion-patterns EliminationTranspose",
     _slim(skip_fusion_patterns=["EliminationTranspose"])),
    ("onnxsim", "onnxsim", "default", _sim()),
    ("onnxsim", "onnxsim", "--skip-constant-folding", _sim(skip_constant_folding=True)),
    ("onnxsim", "onnxsim", "--skip-optimization (perform_optimization=False)", _sim(perform_optimization=False)),
]


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except ImportError:
        return None
    return getattr(mod, "__version__", "?")


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _tie_state(path: Path) -> tuple[str, int, int]:
    """(tie status, untied duplicates, initializers holding >= W's bytes)."""
    rep = inspect_file(path)
    status = "; ".join(t["status"] for t in rep.ties) or "no tie record"
    big = sum(1 for i in rep.initializers if i["bytes"] >= W_BYTES)
    return ("ok" if status == "ok" else "BROKEN"), len(rep.untied_duplicates), big


def main() -> int:
    logging.getLogger("onnxslim").setLevel(logging.ERROR)
    print(describe())
    print(f"onnx {onnx.__version__}; onnxslim {_version('onnxslim') or 'not installed'}; "
          f"onnxsim {_version('onnxsim') or 'not installed'}")
    x = np.random.default_rng(0).random((64, FEATURES), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "tied.onnx"
        onnx.save(to_precision(tied_autoencoder(FEATURES, HIDDEN), "fp32"), src)
        ref = _run(src, x)
        state = _tie_state(src)
        print(f"tiedonnx file (784-256 tied AE, fp32): {src.stat().st_size} bytes; tie {state[0]}, "
              f"{state[1]} duplicates, {state[2]} initializer(s) of W's size")
        head = (f"{'tool':<9} {'setting':<46} {'bytes after':>11} {'tie':>6} {'dups':>4} {'W-size':>6} "
                f"{'max|d|':>8} {'retie bytes':>11} {'retie tie':>9} {'max|d| retie':>12}")
        print(head)
        print("-" * len(head))
        for i, (tool, module, setting, call) in enumerate(VARIANTS):
            if _version(module) is None:
                print(f"{tool:<9} {setting:<46} not installed")
                continue
            out = tmp / f"{i}.onnx"
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # the tools print summary tables
                    onnx.save(call(src), out)
            except Exception as exc:  # a setting this version does not take: say so, go on
                print(f"{tool:<9} {setting:<46} failed: {type(exc).__name__}: {exc}")
                continue
            tie, dups, big = _tie_state(out)
            diff = float(np.abs(_run(out, x) - ref).max())
            row = f"{tool:<9} {setting:<46} {out.stat().st_size:>11} {tie:>6} {dups:>4} {big:>6} {diff:>8.1e}"
            if tie != "ok" or dups:
                back = tmp / f"{i}.retied.onnx"
                retie_file(out, back)
                rtie, rdups, _ = _tie_state(back)
                rdiff = float(np.abs(_run(back, x) - ref).max())
                row += f" {back.stat().st_size:>11} {rtie + ('' if not rdups else f'+{rdups}d'):>9} {rdiff:>12.1e}"
            else:
                row += f" {'-':>11} {'-':>9} {'-':>12}"
            print(row)
    print("tie: inspect's ties[*].status; dups: untied_duplicates; W-size: initializers as big as W "
          f"({W_BYTES} bytes); max|d|: max abs output difference vs the tiedonnx file (onnxruntime CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
