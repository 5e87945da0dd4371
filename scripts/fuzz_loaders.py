"""Fuzz the model loaders: mutated .onnx and .keras files through the real CLI.

    python scripts/fuzz_loaders.py                 # ~5 minutes on 2 cores
    python scripts/fuzz_loaders.py --cases 400 --jobs 4 --seed 1 --keep /tmp/fuzz_failures

Valid seed files (a tied dense autoencoder and a tied conv autoencoder, each as
``.keras`` and as ``.onnx`` from ``tiedonnx export``, plus the dense one with its
weights in an external data file) are mutated: bit flips, truncation at a random
offset, random bytes spliced in, random edits of protobuf fields through onnx's
proto API (tensor dims, data_type, raw_data, external_data entries, node op types,
inputs and attributes, opset and IR versions, graph inputs/outputs, the
``tiedonnx.ties`` metadata) and, for ``.keras``, edits of the zip members
(config.json objects and values, weights, metadata, deleted members).

Each mutated ``.onnx`` goes through ``tiedonnx inspect`` and ``tiedonnx run``,
each mutated ``.keras`` through ``tiedonnx export``, every one in its own
subprocess with a timeout. A case passes when the command exits 0, or exits 2
with a ``tiedonnx <cmd>: error:`` line and no traceback, and a failed command left
no output file. Anything else (a traceback, another exit code, a signal, a hang)
is a failure; failing inputs are kept with ``--keep``.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import copy
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

FEATURES = 16
# Layer sizes the config mutator may write: large enough to matter, small enough
# (<= 16 x 10**5 float32 = 6.4 MB) not to exhaust a shared machine's memory.
SIZES = [-5, -1, 0, 1, 3, 10**5, "7", None, 2.5]


@dataclass
class Case:
    kind: str  # "onnx" or "keras"
    mutation: str
    files: dict[str, bytes]  # name -> content, written into the case folder
    model: str  # the model's file name in that folder
    links: dict[str, str] = field(default_factory=dict)  # name -> symlink target
    seed_name: str = ""


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


# ---------------------------------------------------------- byte mutations


def bitflip(data: bytes, rnd: random.Random) -> tuple[bytes, str]:
    buf = bytearray(data)
    n = rnd.choice([1, 1, 2, 4, 16])
    for _ in range(n):
        i = rnd.randrange(len(buf))
        buf[i] ^= 1 << rnd.randrange(8)
    return bytes(buf), f"bitflip x{n}"


def truncate(data: bytes, rnd: random.Random) -> tuple[bytes, str]:
    cut = rnd.randrange(1, len(data))
    return data[:cut], f"truncate at {cut}/{len(data)}"


def splice(data: bytes, rnd: random.Random) -> tuple[bytes, str]:
    i = rnd.randrange(len(data))
    junk = bytes(rnd.randrange(256) for _ in range(rnd.choice([1, 8, 64])))
    if rnd.random() < 0.5:
        return data[:i] + junk + data[i:], f"insert {len(junk)} bytes at {i}"
    return data[:i] + junk + data[i + len(junk):], f"overwrite {len(junk)} bytes at {i}"


BYTE_MUTATORS = [bitflip, truncate, splice]


# ---------------------------------------------------------- ONNX mutations


def _pick_initializer(model, rnd):
    inits = list(model.graph.initializer)
    return rnd.choice(inits) if inits else None


def m_dims(model, rnd, files):
    t = _pick_initializer(model, rnd)
    if not t.dims or rnd.random() < 0.3:
        t.dims.append(rnd.choice([1, 2, 0]))
        return f"{t.name}: append dim"
    i = rnd.randrange(len(t.dims))
    t.dims[i] = rnd.choice([0, 1, -1, t.dims[i] + 1, t.dims[i] * 2, 2**31, 2**40])
    return f"{t.name}: dims[{i}] = {t.dims[i]}"


def m_data_type(model, rnd, files):
    t = _pick_initializer(model, rnd)
    t.data_type = rnd.randrange(0, 26)
    return f"{t.name}: data_type = {t.data_type}"


def m_raw_data(model, rnd, files):
    t = _pick_initializer(model, rnd)
    raw = t.raw_data
    choice = rnd.choice(["empty", "half", "double", "random", "floats"])
    if choice == "empty":
        t.raw_data = b""
    elif choice == "half":
        t.raw_data = raw[: len(raw) // 2]
    elif choice == "double":
        t.raw_data = raw + raw
    elif choice == "random":
        t.raw_data = bytes(rnd.randrange(256) for _ in range(len(raw)))
    else:  # both raw_data and float_data set
        t.float_data.extend([1.0, 2.0])
    return f"{t.name}: raw_data {choice}"


def m_external(model, rnd, files):
    """Point a tensor at external data: escaping paths, bad offsets/lengths, symlinks."""
    t = _pick_initializer(model, rnd)
    import onnx

    nbytes = len(t.raw_data) or 4
    location = rnd.choice(["../outside.bin", "/etc/passwd", "sub/../../outside.bin", "weights.bin",
                           "missing.bin", "", "link.bin", "./weights.bin", "weights.bin\x00x"])
    offset = rnd.choice([0, 0, 4, -8, 10**12])
    length = rnd.choice([nbytes, nbytes, nbytes + 4, 0, 2**40])
    if location in ("weights.bin", "./weights.bin") and "weights.bin" not in files:
        files["weights.bin"] = t.raw_data + bytes(rnd.randrange(256) for _ in range(8))
    del t.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    if rnd.random() < 0.2:
        entry = t.external_data.add()
        entry.key, entry.value = "checksum", "zz"
    t.data_location = onnx.TensorProto.EXTERNAL
    t.ClearField("raw_data")
    return f"{t.name}: external location={location!r} offset={offset} length={length}"


def m_external_entries(model, rnd, files):
    """Edit the existing external_data entries of an externally stored model."""
    import onnx

    tensors = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if not tensors:
        return m_external(model, rnd, files)
    t = rnd.choice(tensors)
    entry = rnd.choice(list(t.external_data))
    entry.value = rnd.choice(["../weights.bin", "/proc/self/environ", "-1", "99999999", "", "weights.bin",
                              str(rnd.randrange(0, 4096))])
    if rnd.random() < 0.3 and "weights.bin" in files:
        files["weights.bin"] = files["weights.bin"][: rnd.randrange(len(files["weights.bin"]))]
        return f"{t.name}: {entry.key}={entry.value!r}; weights.bin truncated"
    return f"{t.name}: {entry.key}={entry.value!r}"


def m_node(model, rnd, files):
    if not model.graph.node:
        return "no node"
    node = rnd.choice(list(model.graph.node))
    choice = rnd.choice(["op_type", "domain", "input", "drop_input", "attr", "drop_node", "output"])
    if choice == "op_type":
        node.op_type = rnd.choice(["Foo", "", "Loop", "Gemm", "MatMul", "Transpose", "Sigmoid", "Conv"])
    elif choice == "domain":
        node.domain = rnd.choice(["com.evil", "ai.onnx.ml", "com.microsoft"])
    elif choice == "input" and node.input:
        other = node.output[0] if node.output else "x"  # a cycle: the node reads its own output
        node.input[rnd.randrange(len(node.input))] = rnd.choice(["nope", "", other])
    elif choice == "drop_input" and node.input:
        del node.input[rnd.randrange(len(node.input))]
    elif choice == "attr" and node.attribute:
        attr = rnd.choice(list(node.attribute))
        if attr.ints:
            attr.ints[rnd.randrange(len(attr.ints))] = rnd.choice([-1, 0, 7, 2**40])
        else:
            attr.type = rnd.randrange(0, 15)
    elif choice == "drop_node":
        model.graph.node.remove(node)
    elif choice == "output" and node.output:
        node.output[0] = rnd.choice(["", model.graph.input[0].name, "dup"])
    return f"node {node.name or node.op_type}: {choice}"


def m_versions(model, rnd, files):
    if rnd.random() < 0.5:
        model.ir_version = rnd.choice([0, 1, 3, 99, 2**40])
        return f"ir_version = {model.ir_version}"
    opset = model.opset_import[0]
    opset.version = rnd.choice([1, 6, 30, 10**6])
    return f"opset {opset.domain or 'ai.onnx'} = {opset.version}"


def m_graph_io(model, rnd, files):
    value = rnd.choice([*model.graph.input, *model.graph.output])
    choice = rnd.choice(["elem_type", "dim", "drop_output", "no_shape"])
    tensor_type = value.type.tensor_type
    if choice == "elem_type":
        tensor_type.elem_type = rnd.randrange(0, 26)
    elif choice == "dim" and tensor_type.shape.dim:
        dim = rnd.choice(list(tensor_type.shape.dim))
        dim.dim_value = rnd.choice([0, 1, 3, 2**40])
    elif choice == "drop_output":
        model.graph.output.pop()
    else:
        tensor_type.ClearField("shape")
    return f"{value.name}: {choice}"


def m_metadata(model, rnd, files):
    props = {p.key: p for p in model.metadata_props}
    prop = props.get("tiedonnx.ties") or model.metadata_props.add()
    prop.key = "tiedonnx.ties"
    prop.value = rnd.choice(["", "{", "null", "[1, 2]", '{"a": 1}', '[{"initializer": 5}]',
                             '[{"initializer": "nope", "uses": "x"}]', "\xed\xb3\xbf"])
    return f"tiedonnx.ties = {prop.value[:20]!r}"


PROTO_MUTATORS = [m_dims, m_data_type, m_raw_data, m_external, m_external_entries, m_node,
                  m_versions, m_graph_io, m_metadata]


def mutate_onnx(seed: dict, rnd: random.Random) -> Case:
    import onnx

    files = dict(seed["files"])
    links = {}
    if rnd.random() < 0.35:
        target = rnd.choice(sorted(files))
        files[target], what = rnd.choice(BYTE_MUTATORS)(files[target], rnd)
        return Case("onnx", f"{target}: {what}", files, seed["model"])
    model = onnx.ModelProto.FromString(files["model.onnx"])
    mutator = rnd.choice(PROTO_MUTATORS)
    what = mutator(model, rnd, files)
    if "link.bin" in what:
        links["link.bin"] = "OUTSIDE"
    files["model.onnx"] = model.SerializeToString()
    return Case("onnx", f"{mutator.__name__[2:]}: {what}", files, seed["model"], links)


# --------------------------------------------------------- .keras mutations


def _members(data: bytes) -> dict[str, bytes]:
    import io

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _zip(members: dict[str, bytes]) -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


def _objects(node, found):
    if isinstance(node, dict):
        if "class_name" in node:
            found.append(node)
        for value in node.values():
            _objects(value, found)
    elif isinstance(node, list):
        for value in node:
            _objects(value, found)
    return found


def k_config(members, rnd):
    config = json.loads(members["config.json"])
    objects = _objects(config, [])
    obj = rnd.choice(objects)
    choice = rnd.choice(["class_name", "module", "registered_name", "value", "drop_key", "lambda", "json"])
    if choice == "class_name":
        obj["class_name"] = rnd.choice(["Dense", "Lambda", "__lambda__", "system", "DenseTied", "Foo", ""])
    elif choice == "module":
        obj["module"] = rnd.choice(["builtins", "os", "subprocess", "keras.layers", "keras.src.saving", None])
    elif choice == "registered_name":
        obj["registered_name"] = rnd.choice(["tiedonnx>DenseTied", "builtins>eval", None, 5])
    elif choice == "value" and isinstance(obj.get("config"), dict) and obj["config"]:
        key = rnd.choice(sorted(obj["config"]))
        obj["config"][key] = rnd.choice(SIZES + ["enc", [], {}, {"class_name": "Foo"}])
        choice = f"config[{key!r}] = {obj['config'][key]!r}"
    elif choice == "drop_key" and obj:
        key = rnd.choice(sorted(obj))
        del obj[key]
        choice = f"drop {key!r}"
    elif choice == "lambda":
        obj["class_name"], obj["module"] = "Lambda", "keras.layers"
        code = {"code": "YWJj", "defaults": None, "closure": None}
        obj["config"] = {"name": "lam", "function": {"class_name": "__lambda__", "config": code}}
    else:
        members["config.json"] = members["config.json"][: rnd.randrange(len(members["config.json"]))]
        return "config.json truncated"
    members["config.json"] = json.dumps(config).encode()
    return f"config {obj.get('class_name', '?')}: {choice}"


def k_weights(members, rnd):
    name = next((n for n in members if n.endswith(".h5")), None)
    if name is None:
        return "no weights member"
    mutator = rnd.choice(BYTE_MUTATORS)
    members[name], what = mutator(members[name], rnd)
    return f"{name}: {what}"


def k_metadata(members, rnd):
    value = rnd.choice([b"", b"{", b'{"keras_version": "1.0.0"}', b'{"keras_version": 5}', b"null"])
    members["metadata.json"] = value
    return f"metadata.json = {value!r}"


def k_drop(members, rnd):
    name = rnd.choice(sorted(members))
    del members[name]
    return f"drop member {name}"


ZIP_MUTATORS = [k_config, k_config, k_config, k_weights, k_metadata, k_drop]


def mutate_keras(seed: dict, rnd: random.Random) -> Case:
    data = seed["files"]["model.keras"]
    if rnd.random() < 0.3:
        data, what = rnd.choice(BYTE_MUTATORS)(data, rnd)
        return Case("keras", f"zip bytes: {what}", {"model.keras": data}, "model.keras")
    members = _members(data)
    mutator = rnd.choice(ZIP_MUTATORS)
    what = mutator(members, rnd)
    return Case("keras", f"{mutator.__name__[2:]}: {what}", {"model.keras": _zip(members)}, "model.keras")


# ----------------------------------------------------------------- running


def commands_for(case: Case, folder: Path) -> list[tuple[str, list[str], list[Path]]]:
    """(command name, argv after `tiedonnx`, files the command would write)."""
    model = str(folder / case.model)
    if case.kind == "keras":
        out = folder / "out.onnx"
        return [("export", ["export", model, "-o", str(out), "--no-verify"], [out])]
    y = folder / "y.npy"
    return [("inspect", ["inspect", model], []),
            ("run", ["run", model, "-i", str(folder / "x.npy"), "-o", str(y), "--provider", "cpu"], [y])]


def run_command(name: str, argv: list[str], outputs: list[Path], timeout: float) -> tuple[str, str]:
    """Return (status, detail) for one subprocess."""
    for path in outputs:
        if path.exists():
            path.unlink()
    try:
        proc = subprocess.run([sys.executable, "-m", "tiedonnx.runtime.cli", *argv], capture_output=True,
                              text=True, errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:
        return "hang", f"no exit after {timeout:.0f} s"
    err = proc.stderr
    error_lines = [line for line in err.splitlines() if line.startswith(f"tiedonnx {name}: error: ")]
    if "Traceback (most recent call last)" in err:
        return "traceback", err[err.index("Traceback"):][-1500:]
    if proc.returncode < 0:
        return "signal", f"killed by signal {-proc.returncode}; stderr tail: {err[-500:]}"
    if proc.returncode == 0:
        return "ok", ""
    if proc.returncode == 2 and len(error_lines) == 1:
        left = [str(p) for p in outputs if p.exists()]
        if left:
            return "output_left", f"exit 2 but wrote {left}"
        return "refused", error_lines[0][:200]
    return f"exit_{proc.returncode}", err[-800:]


def run_case(index: int, case: Case, seed: dict, root: Path, outside: Path, timeout: float) -> list[Outcome]:
    folder = root / f"case{index:05d}"
    folder.mkdir()
    for name, data in case.files.items():
        (folder / name).write_bytes(data)
    for name in case.links:
        (folder / name).symlink_to(outside)
    if case.kind == "onnx":
        (folder / "x.npy").write_bytes(seed["x"])
    outcomes = []
    for name, argv, outputs in commands_for(case, folder):
        start = time.perf_counter()
        status, detail = run_command(name, argv, outputs, timeout)
        outcomes.append(Outcome(index, name, f"[{case.seed_name}] {case.mutation}", status, detail,
                                time.perf_counter() - start))
    return outcomes


def make_cases(seeds: dict[str, dict], n: int, rnd: random.Random, onnx_share: float) -> list[Case]:
    onnx_seeds = sorted(k for k, s in seeds.items() if s["kind"] == "onnx")
    keras_seeds = sorted(k for k, s in seeds.items() if s["kind"] == "keras")
    cases = []
    for i in range(n):
        if i < round(n * onnx_share):
            name = rnd.choice(onnx_seeds)
            case = mutate_onnx(seeds[name], rnd)
        else:
            name = rnd.choice(keras_seeds)
            case = mutate_keras(seeds[name], rnd)
        case.seed_name = name
        cases.append(case)
    return cases


def report(outcomes: list[Outcome], cases: list[Case], elapsed: float, keep: Path | None, root: Path) -> int:
    by_command = collections.defaultdict(collections.Counter)
    for o in outcomes:
        by_command[o.command][o.status] += 1
    failures = [o for o in outcomes if o.status not in ("ok", "refused")]
    kinds = collections.Counter(c.kind for c in cases)
    print(f"fuzz_loaders: {len(cases)} mutated files ({kinds['onnx']} .onnx, {kinds['keras']} .keras), "
          f"{len(outcomes)} subprocess runs in {elapsed:.0f} s")
    for command in sorted(by_command):
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(by_command[command].items()))
        slowest = max(o.seconds for o in outcomes if o.command == command)
        print(f"  {command:8} {counts}  (slowest {slowest:.1f} s)")
    print(f"failures: {len(failures)}")
    for o in failures:
        print(f"  case {o.case} {o.command} [{o.status}] {o.mutation}")
        print("    " + o.detail.strip().replace("\n", "\n    ")[-1200:])
        if keep is not None:
            shutil.copytree(root / f"case{o.case:05d}", keep / f"case{o.case:05d}", dirs_exist_ok=True)
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=40,
                        help="mutated files to try (default 40, ~5 min on 2 cores)")
    parser.add_argument("--onnx-share", type=float, default=0.6,
                        help="fraction of cases that are .onnx (default 0.6)")
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
        cases = make_cases(seeds, args.cases, rnd, args.onnx_share)
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
