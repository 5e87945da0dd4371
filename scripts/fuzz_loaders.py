"""Fuzz the model loaders: mutated .onnx, .keras and input files through the real CLI.

    python scripts/fuzz_loaders.py --cases 200     # ~10 minutes on 2 cores
    python scripts/fuzz_loaders.py --cases 400 --jobs 4 --seed 1 --keep /tmp/fuzz_failures
    python scripts/fuzz_loaders.py --cases 2000 --mix onnx=0.4,ties=0.3,ort=0.3   # no TensorFlow per case

Valid seed files (a tied dense autoencoder and a tied conv autoencoder, each as
``.keras`` and as ``.onnx`` from ``tiedonnx export``, plus the dense one with its
weights in an external data file) are mutated by ``scripts/fuzz_mutators.py``:
bytes, protobuf fields, external-data entries, sparse tensors, non-tensor
outputs, ``.keras`` config objects, registered names and modules, deep JSON,
archive member tricks, and hostile input ``.npy`` files.

Tie records and ``.ort`` files are mutated by ``scripts/fuzz_mutators_ties.py``
(JSON values retyped, deleted, duplicated, cycles, bad permutations, deep
nesting; ``.ort`` bytes, flatbuffer offsets, the record's text in place, and
files rebuilt by onnxruntime around a hostile record).

Each mutated ``.onnx`` and ``.ort`` goes through ``tiedonnx inspect`` and
``tiedonnx run``, each ``.onnx`` with a mutated tie record through ``inspect``
and ``quantize`` (int8 and int4), each mutated ``.keras`` through ``tiedonnx
export``, every one in its own subprocess with a timeout. A case passes when the command exits 0, or exits 2
with exactly one stderr line ``tiedonnx <cmd>: error: ...``; and, either way,
leaves no temporary file, and on failure no output file. Anything else (a
traceback, exit 3 (a bug in tiedonnx, counted on its own in the summary) or
another code, extra stderr lines, a signal, a hang, a file left behind) is a
failure; failing inputs are kept with ``--keep``.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz_mutators import Case, mutate_onnx  # noqa: E402
from fuzz_mutators_keras import mutate_keras  # noqa: E402
from fuzz_mutators_ties import mutate_ort, mutate_ties  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

FEATURES = 16


@dataclass
class Outcome:
    case: int
    command: str
    mutation: str
    status: str  # "ok", "refused" or a failure kind
    detail: str = ""
    seconds: float = 0.0


# ------------------------------------------------------------------ seeds


def build_seeds(folder: Path) -> dict[str, dict]:
    """Valid seed files: name -> {"kind", "files", "model", "x"}."""
    import keras
    import numpy as np
    import onnx

    from tiedonnx.converter import Conv2DTransposeTied, DenseTied
    from tiedonnx.converter.export import export

    def dense():
        inputs = keras.Input((FEATURES,), name="pixels")
        enc = keras.layers.Dense(4, activation="relu", name="enc")
        return keras.Model(inputs, DenseTied(activation="sigmoid", tied_to=enc, name="dec")(enc(inputs)))

    def conv():
        inputs = keras.Input((8, 8, 2), name="image")
        c1 = keras.layers.Conv2D(3, 3, strides=2, padding="same", activation="relu", name="c1")
        out = Conv2DTransposeTied(tied_to=c1, activation="sigmoid", name="d1")(c1(inputs))
        return keras.Model(inputs, out)

    seeds: dict[str, dict] = {}
    rng = np.random.default_rng(0)
    for name, build, shape in (("dense", dense, (3, FEATURES)), ("conv", conv, (2, 8, 8, 2))):
        model = build()
        model.save(folder / f"{name}.keras")
        export(model, folder / f"{name}.onnx")
        np.save(folder / f"{name}_x.npy", rng.random(shape, dtype=np.float32))
        x = (folder / f"{name}_x.npy").read_bytes()
        seeds[f"{name}.keras"] = {"kind": "keras", "model": "model.keras",
                                  "files": {"model.keras": (folder / f"{name}.keras").read_bytes()}}
        seeds[f"{name}.onnx"] = {"kind": "onnx", "model": "model.onnx", "x": x,
                                 "files": {"model.onnx": (folder / f"{name}.onnx").read_bytes()}}
    from tiedonnx.runtime.graph.ort_format import save_ort

    for name in ("dense", "conv"):
        save_ort(folder / f"{name}.onnx", folder / f"{name}.ort")
        seeds[f"{name}.ort"] = {"kind": "ort", "model": "model.ort", "x": seeds[f"{name}.onnx"]["x"],
                                "onnx": (folder / f"{name}.onnx").read_bytes(),
                                "files": {"model.ort": (folder / f"{name}.ort").read_bytes()}}
    proto = onnx.load(folder / "dense.onnx")
    ext = folder / "ext"
    ext.mkdir()
    onnx.save_model(proto, ext / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    seeds["dense_external.onnx"] = {
        "kind": "onnx", "model": "model.onnx", "x": seeds["dense.onnx"]["x"],
        "files": {"model.onnx": (ext / "model.onnx").read_bytes(),
                  "weights.bin": (ext / "weights.bin").read_bytes()},
    }
    return seeds


# ----------------------------------------------------------------- running


def commands_for(case: Case, folder: Path) -> list[tuple[str, list[str], list[Path]]]:
    """(command name, argv after `tiedonnx`, files the command would write)."""
    model = str(folder / case.model)
    if case.kind == "keras":
        out = folder / "out.onnx"
        return [("export", ["export", model, "-o", str(out), "--no-verify"], [out])]
    y, q = folder / "y.npy", folder / "q.onnx"
    if case.kind == "onnx_ties":  # what reads tie records: inspect and the quantizers
        return [("inspect", ["inspect", model], []),
                ("quantize", ["quantize", model, "-o", str(q), "--precision", "int8"], [q]),
                ("quantize", ["quantize", model, "-o", str(q), "--precision", "int4", "--force"], [q])]
    return [("inspect", ["inspect", model], []),
            ("run", ["run", model, "-i", str(folder / "x.npy"), "-o", str(y), "--provider", "cpu"], [y])]


def run_command(name: str, argv: list[str], folder: Path, outputs: list[Path],
                timeout: float) -> tuple[str, str]:
    """Return (status, detail) for one subprocess."""
    for path in outputs:
        if path.exists():
            path.unlink()
    before = set(os.listdir(folder))
    try:
        proc = subprocess.run([sys.executable, "-m", "tiedonnx.runtime.cli", *argv], capture_output=True,
                              text=True, errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:
        return "hang", f"no exit after {timeout:.0f} s"
    err = proc.stderr
    lines = err.splitlines()
    created = sorted(set(os.listdir(folder)) - before - {p.name for p in outputs})
    if "Traceback (most recent call last)" in err:
        return "traceback", err[err.index("Traceback"):][-1500:]
    if proc.returncode < 0:
        return "signal", f"killed by signal {-proc.returncode}; stderr tail: {err[-500:]}"
    if created:
        return "file_left", f"exit {proc.returncode} left {created}"
    if proc.returncode == 0:
        return "ok", ""
    if proc.returncode != 2:
        return f"exit_{proc.returncode}", err[-800:]
    if len(lines) != 1 or not lines[0].startswith(f"tiedonnx {name}: error: "):
        return "not_one_line", err[-800:]
    left = [str(p) for p in outputs if os.path.lexists(p)]
    if left:
        return "output_left", f"exit 2 but wrote {left}"
    return "refused", lines[0][:200]


def run_case(index: int, case: Case, seed: dict, root: Path, outside: Path, timeout: float) -> list[Outcome]:
    folder = root / f"case{index:05d}"
    folder.mkdir()
    for name, data in case.files.items():
        (folder / name).write_bytes(data)
    for name in case.links:
        (folder / name).symlink_to(outside)
    if case.kind in ("onnx", "onnx_ties", "ort") and "x.npy" not in case.files:
        (folder / "x.npy").write_bytes(seed["x"])
    outcomes = []
    for name, argv, outputs in commands_for(case, folder):
        start = time.perf_counter()
        status, detail = run_command(name, argv, folder, outputs, timeout)
        outcomes.append(Outcome(index, name, f"[{case.seed_name}] {case.mutation}", status, detail,
                                time.perf_counter() - start))
    return outcomes


MUTATE = {"onnx": mutate_onnx, "ties": mutate_ties, "ort": mutate_ort, "keras": mutate_keras}
SEED_KIND = {"onnx": "onnx", "ties": "onnx", "ort": "ort", "keras": "keras"}


def parse_mix(text: str) -> dict[str, float]:
    """``"onnx=0.4,ties=0.2,ort=0.2,keras=0.2"`` -> shares that sum to 1."""
    mix = {k.strip(): float(v) for k, v in (part.split("=") for part in text.split(","))}
    unknown = set(mix) - set(MUTATE)
    if unknown or sum(mix.values()) <= 0:
        raise SystemExit(f"--mix: families are {sorted(MUTATE)} with positive shares; received {text!r}")
    total = sum(mix.values())
    return {k: v / total for k, v in mix.items()}


def make_cases(seeds: dict[str, dict], n: int, rnd: random.Random, mix: dict[str, float]) -> list[Case]:
    families, bounds, acc = list(mix), [], 0.0
    for family in families:
        acc += mix[family]
        bounds.append(round(n * acc))
    cases = []
    for i in range(n):
        family = families[next(j for j, bound in enumerate(bounds) if i < bound)]
        name = rnd.choice(sorted(k for k, s in seeds.items() if s["kind"] == SEED_KIND[family]
                                 and (family != "ties" or "external" not in k)))
        case = MUTATE[family](seeds[name], rnd)
        case.seed_name = name
        cases.append(case)
    return cases


def report(outcomes: list[Outcome], cases: list[Case], elapsed: float, keep: Path | None, root: Path) -> int:
    by_command = collections.defaultdict(collections.Counter)
    for o in outcomes:
        by_command[o.command][o.status] += 1
    failures = [o for o in outcomes if o.status not in ("ok", "refused")]
    kinds = collections.Counter(c.kind for c in cases)
    families = collections.Counter(f"{c.kind}:{c.mutation.split(':')[0]}" for c in cases)
    exit3 = sum(o.status == "exit_3" for o in outcomes)
    print(f"fuzz_loaders: {len(cases)} mutated files ({kinds['onnx']} .onnx, {kinds['onnx_ties']} .onnx "
          f"tie records, {kinds['ort']} .ort, {kinds['keras']} .keras), "
          f"{len(outcomes)} subprocess runs in {elapsed:.0f} s")
    print("  mutations: " + ", ".join(f"{k} {v}" for k, v in sorted(families.items())))
    for command in sorted(by_command):
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(by_command[command].items()))
        slowest = max(o.seconds for o in outcomes if o.command == command)
        print(f"  {command:8} {counts}  (slowest {slowest:.1f} s)")
    print(f"failures: {len(failures)} (exit 3, a bug in tiedonnx: {exit3}; tracebacks: "
          f"{sum(o.status == 'traceback' for o in failures)}; signals: "
          f"{sum(o.status == 'signal' for o in failures)}; hangs: {sum(o.status == 'hang' for o in failures)})")
    for o in failures:
        print(f"  case {o.case} {o.command} [{o.status}] {o.mutation}")
        print("    " + o.detail.strip().replace("\n", "\n    ")[-1200:])
        if keep is not None:
            shutil.copytree(root / f"case{o.case:05d}", keep / f"case{o.case:05d}", dirs_exist_ok=True)
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200,
                        help="mutated files to try (default 200, ~10 min on 2 cores)")
    parser.add_argument("--mix", default="onnx=0.35,ties=0.2,ort=0.2,keras=0.25",
                        help="share of each mutation family: .onnx files, their tie records, .ort files, "
                             ".keras files (default onnx=0.35,ties=0.2,ort=0.2,keras=0.25)")
    parser.add_argument("--jobs", type=int, default=2, help="subprocesses at a time (default 2)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a run counts as a hang")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="copy failing cases into this folder")
    args = parser.parse_args()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tiedonnx-fuzz-") as tmp:
        root = Path(tmp)
        seeds = build_seeds(root)
        outside = root / "outside.bin"
        outside.write_bytes(b"secret outside the model folder\n" * 64)
        rnd = random.Random(args.seed)
        cases = make_cases(seeds, args.cases, rnd, parse_mix(args.mix))
        print(f"seeds built in {time.perf_counter() - start:.0f} s: {', '.join(sorted(seeds))}", flush=True)
        outcomes: list[Outcome] = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(run_case, i, case, seeds[case.seed_name], root, outside, args.timeout)
                       for i, case in enumerate(cases)]
            for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
                outcomes.extend(future.result())
                if done % 10 == 0:
                    print(f"  {done}/{len(cases)} cases, {time.perf_counter() - start:.0f} s", flush=True)
        outcomes.sort(key=lambda o: (o.case, o.command))
        return report(outcomes, cases, time.perf_counter() - start, args.keep, root)


if __name__ == "__main__":
    sys.exit(main())
