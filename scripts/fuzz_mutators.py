"""Mutators for scripts/fuzz_loaders.py: how a valid ``.onnx`` (or its input) becomes a hostile one.

Each mutator edits a file (bytes, an ``onnx.ModelProto`` or an input ``.npy``)
in place or returns new bytes, and returns a short description of what it did.
:func:`mutate_onnx` picks one at random and returns a :class:`Case` the runner
writes to disk; ``.keras`` mutators are in ``fuzz_mutators_keras.py``.

Classes of mutation: bytes (bit flips, truncation, splices); protobuf fields
(dims, data types, raw data, nodes, versions, graph I/O, tie metadata);
external-data entries (paths that escape, offsets and lengths that are not
numbers, NUL bytes, unknown or repeated keys); sparse tensors (dense sizes up to
exabytes, inconsistent values and indices); non-tensor outputs (strings,
sequences); input data (overflow, NaN, absurd ``.npy`` headers, pickles).
Scripts only: the package never imports this.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field


@dataclass
class Case:
    kind: str  # "onnx" or "keras"
    mutation: str
    files: dict[str, bytes]  # name -> content, written into the case folder
    model: str  # the model's file name in that folder
    links: dict[str, str] = field(default_factory=dict)  # name -> symlink target
    seed_name: str = ""


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
    return rnd.choice(list(model.graph.initializer))


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


def _make_external(t, files, entries: list[tuple[str, str]]) -> None:
    import onnx

    del t.external_data[:]
    for key, value in entries:
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    t.data_location = onnx.TensorProto.EXTERNAL
    t.ClearField("raw_data")


def m_external(model, rnd, files):
    """Point a tensor at external data: escaping paths, bad offsets/lengths, symlinks."""
    t = _pick_initializer(model, rnd)
    nbytes = len(t.raw_data) or 4
    location = rnd.choice(["../outside.bin", "/etc/passwd", "sub/../../outside.bin", "weights.bin",
                           "missing.bin", "", "link.bin", "./weights.bin", "weights.bin\x00x", "."])
    offset = rnd.choice([0, 0, 4, -8, 10**12])
    length = rnd.choice([nbytes, nbytes, nbytes + 4, 0, 2**40])
    if location in ("weights.bin", "./weights.bin") and "weights.bin" not in files:
        files["weights.bin"] = t.raw_data + bytes(rnd.randrange(256) for _ in range(8))
    entries = [("location", location), ("offset", str(offset)), ("length", str(length))]
    if rnd.random() < 0.2:
        entries.append(("checksum", "zz"))
    _make_external(t, files, entries)
    return f"{t.name}: external location={location!r} offset={offset} length={length}"


# Values onnx never writes in an external-data entry (issue 13: each was a traceback).
NOT_NUMBERS = ["abc", "8.0", "-8", "9" * 30, "9" * 5000, "", " 0", "0x10", "1e3", "\u0661", "+4"]
ODD_KEYS = [("__class__", "x"), ("__dict__", "x"), ("basepath", "/etc"), ("location", "../x.bin"),
            ("offset", "0"), ("", ""), ("checksum", "\x00")]


def m_external_fields(model, rnd, files):
    """A correct external tensor with one field that is not what onnx writes."""
    t = _pick_initializer(model, rnd)
    data = t.raw_data
    files["weights.bin"] = data
    fields = {"location": "weights.bin", "offset": "0", "length": str(len(data))}
    choice = rnd.choice(["offset", "length", "location", "extra_key"])
    if choice in ("offset", "length"):
        fields[choice] = rnd.choice(NOT_NUMBERS)
    elif choice == "location":
        fields["location"] = rnd.choice(["weights.bin\x00", "\x00", "weights.bin/", "weights.bin\n",
                                         "weights.bin" + "/." * 2000, "w" * 5000])
    entries = list(fields.items())
    if choice == "extra_key":
        entries.insert(rnd.randrange(len(entries) + 1), rnd.choice(ODD_KEYS))
    _make_external(t, files, entries)
    shown = {k: (v[:12] + "...") if len(v) > 15 else v for k, v in entries}
    return f"{t.name}: external fields {shown}"


def m_external_entries(model, rnd, files):
    """Edit the existing external_data entries of an externally stored model."""
    import onnx

    tensors = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if not tensors:
        return m_external(model, rnd, files)
    t = rnd.choice(tensors)
    entry = rnd.choice(list(t.external_data))
    entry.value = rnd.choice(["../weights.bin", "/proc/self/environ", "-1", "99999999", "", "weights.bin",
                              str(rnd.randrange(0, 4096)), *NOT_NUMBERS[:4]])
    if rnd.random() < 0.3 and "weights.bin" in files:
        files["weights.bin"] = files["weights.bin"][: rnd.randrange(len(files["weights.bin"]))]
        return f"{t.name}: {entry.key}={entry.value!r}; weights.bin truncated"
    return f"{t.name}: {entry.key}={entry.value!r}"


def m_sparse(model, rnd, files):
    """An unused sparse initializer or Constant(sparse_value): dense sizes up to bombs."""
    from onnx import TensorProto, helper

    dims = rnd.choice([[4, 4], [2**20, 2**20], [2**31, 2**31], [-1, 4], [0, 3], [10**6, 10**6], [2**62, 4]])
    nnz = rnd.choice([0, 1, 2])
    values = helper.make_tensor("sparse_v", TensorProto.FLOAT, [nnz], [1.0] * nnz)
    idx_dims = rnd.choice([[nnz], [nnz, len(dims)], [nnz + 1]])
    indices = helper.make_tensor("sparse_i", TensorProto.INT64, idx_dims,
                                 [rnd.choice([0, 1, -1, 10**12]) for _ in range(max(0, _prod(idx_dims)))])
    sparse = helper.make_sparse_tensor(values, indices, dims)
    if rnd.random() < 0.5:
        model.graph.sparse_initializer.append(sparse)
        where = "sparse_initializer"
    else:
        model.graph.node.insert(0, helper.make_node("Constant", [], ["sparse_c"], sparse_value=sparse))
        where = "Constant(sparse_value)"
    return f"{where}: dims {dims}, {nnz} values, indices {idx_dims}"


def _prod(dims) -> int:
    out = 1
    for d in dims:
        out *= d
    return out


def m_output_type(model, rnd, files):
    """Make an output a string tensor or a sequence (``run`` cannot store either)."""
    from onnx import TensorProto, helper

    out = model.graph.output[0]
    inner = out.name + "__inner"
    for node in model.graph.node:
        node.output[:] = [inner if o == out.name else o for o in node.output]
        node.input[:] = [inner if i == out.name else i for i in node.input]
    choice = rnd.choice(["string", "sequence", "declared_string"])
    if choice == "string":
        model.graph.node.append(helper.make_node("Cast", [inner], [out.name], to=TensorProto.STRING))
        out.type.tensor_type.elem_type = TensorProto.STRING
    elif choice == "sequence":
        model.graph.node.append(helper.make_node("SequenceConstruct", [inner], [out.name]))
        out.type.CopyFrom(helper.make_sequence_type_proto(out.type))
    else:  # declared string, computed float: the checker's shape inference must catch it
        model.graph.node.append(helper.make_node("Identity", [inner], [out.name]))
        out.type.tensor_type.elem_type = TensorProto.STRING
    return f"output {out.name}: {choice}"


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
                             '[{"initializer": "nope", "uses": "x"}]', "\xed\xb3\xbf", "[" * 100000])
    return f"tiedonnx.ties = {prop.value[:20]!r}"


PROTO_MUTATORS = [m_dims, m_data_type, m_raw_data, m_external, m_external_fields, m_external_entries,
                  m_sparse, m_sparse, m_output_type, m_node, m_versions, m_graph_io, m_metadata]


# ------------------------------------------------------------- input data


def d_input(data: bytes, rnd: random.Random) -> tuple[bytes, str]:
    """A hostile input .npy for the model's (batch, ...) float32 input."""
    import numpy as np

    good = np.load(io.BytesIO(data))
    choice = rnd.choice(["float64_overflow", "nan", "absurd_header", "huge_header", "negative_header",
                         "pickle", "float16", "int64_big", "empty_batch"])
    if choice.endswith("_header"):
        shape = {"absurd_header": f"({2**62}, {2**62})", "huge_header": f"({2**70}, 4)",
                 "negative_header": "(-3, 4)"}[choice]
        header = "{'descr': '<f4', 'fortran_order': False, 'shape': %s, }" % shape
        header += " " * ((64 - (len(header) + 11) % 64) % 64) + "\n"
        return (b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode("latin1")
                + bytes(64)), choice
    array = {"float64_overflow": lambda: np.full(good.shape, 1e300),
             "nan": lambda: np.where(np.arange(good.size).reshape(good.shape) == 1, np.nan, good),
             "pickle": lambda: np.array([{"x": 1}], dtype=object),
             "float16": lambda: good.astype(np.float16),
             "int64_big": lambda: np.full(good.shape, 2**62, dtype=np.int64),
             "empty_batch": lambda: good[:0]}[choice]()
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue(), choice


def mutate_onnx(seed: dict, rnd: random.Random) -> Case:
    import onnx

    files = dict(seed["files"])
    links = {}
    roll = rnd.random()
    if roll < 0.12:
        files["x.npy"], what = d_input(seed["x"], rnd)
        return Case("onnx", f"input: {what}", files, seed["model"])
    if roll < 0.4:
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
