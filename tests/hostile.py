"""Hostile and broken input files, and the CLI checks every bad-input test applies; not a test module.

Builders take a valid file and a folder, and return the path of a bad file of
the requested kind. :func:`assert_clean_failure` is the promise of README and
SECURITY.md: exit 2, exactly one ``tiedonnx <cmd>: error:`` line on stderr and
no traceback, no numpy or Python warning (in a real process it would be
another stderr line), no output or temporary file created, and existing
outputs left byte for byte as they were even with ``--force``.
"""

from __future__ import annotations

import json
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tiedonnx.runtime.cli import main

from .hostile_metadata import TIE_KINDS, bad_ort, edit_tie_record  # noqa: F401  (re-exported)

FEATURES = 8
SENTINEL = b"existing output: must survive a failed command\n"
# Warning categories Python's default filters hide from a CLI user; any other
# warning would print extra stderr lines.
_HIDDEN = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


# ------------------------------------------------------------ running the CLI


def call(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run the CLI in-process; an exception escaping main() or a warning fails the test."""
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code
        except Exception as exc:
            pytest.fail(f"traceback: {' '.join(argv[:1])} raised {type(exc).__name__}: {exc}")
    shown = [f"{w.category.__name__}: {w.message}" for w in seen if not issubclass(w.category, _HIDDEN)]
    assert not shown, f"{argv[0]} printed warnings (extra stderr lines): {shown}"
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def listing(folder: Path) -> dict[str, bytes | str | None]:
    """Every entry under ``folder``, hidden ones too: file bytes, link target, or None."""
    def content(p: Path):
        if p.is_symlink():
            return f"-> {p.readlink()}"
        return p.read_bytes() if p.is_file() else None
    return {str(p.relative_to(folder)): content(p) for p in sorted(folder.rglob("*"))}


def assert_one_error_line(code: int, stdout: str, stderr: str, cmd: str) -> str:
    assert "Traceback" not in stdout + stderr
    lines = stderr.strip().splitlines()
    assert code == 2, (code, stderr)
    assert len(lines) == 1 and lines[0].startswith(f"tiedonnx {cmd}: error: "), lines
    return lines[0]


def assert_clean_failure(argv: list[str], outputs: list[Path], out: Path, capsys) -> str:
    """The bad-input promise for ``argv``, first with no outputs, then over existing ones."""
    cmd = argv[0]
    before = listing(out)
    code, stdout, stderr = call(argv, capsys)
    line = assert_one_error_line(code, stdout, stderr, cmd)
    assert stdout == ""
    assert listing(out) == before, f"{cmd} left files behind: {sorted(set(listing(out)) - set(before))}"
    if not outputs:
        return line
    for path in outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(SENTINEL)
    before = listing(out)
    code, stdout, stderr = call([*argv, "--force"], capsys)
    assert_one_error_line(code, stdout, stderr, cmd)
    assert listing(out) == before, f"{cmd} --force changed existing files"
    return line


# ------------------------------------------------------------ any model file

GENERIC_KINDS = ("missing", "directory", "empty", "truncated", "truncated_at_field", "random",
                 "wrong_ext", "npy_as_model", "h5", "no_config", "bad_config", "bad_weights")


def bad_model(kind: str, good: Path, folder: Path) -> Path:
    """A bad model file of ``kind`` with ``good``'s suffix (or another, for wrong_ext)."""
    if kind not in GENERIC_KINDS:
        return (bad_onnx if good.suffix == ".onnx" else bad_keras)(kind, good, folder)
    suffix = good.suffix
    path = folder / f"bad_{kind}{suffix}"
    data = good.read_bytes()
    if kind == "missing":
        return folder / f"missing{suffix}"
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated_at_field":
        path.write_bytes(data[: _decodable_cut(data)])
    elif kind == "random":
        path.write_bytes(seeded(kind).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "wrong_ext":  # the other kind of model file, under its own suffix
        other = good.with_suffix(".onnx" if suffix == ".keras" else ".keras")
        path = folder / f"bad_{kind}{other.suffix}"
        path.write_bytes(other.read_bytes())
    elif kind == "npy_as_model":
        path.write_bytes((good.parent / "x.npy").read_bytes())
    elif kind == "h5":  # legacy HDF5 needs --unsafe-load-code, whatever it holds
        path = folder / "bad_legacy.h5"
        path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    elif kind == "no_config":  # a zip, but not a Keras archive
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("hello.txt", "not a model")
    else:  # bad_config / bad_weights: a Keras archive with one member that is garbage
        member = "config.json" if kind == "bad_config" else "model.weights.h5"
        members = _members(good)
        members[member] = b"{not json" if kind == "bad_config" else b"garbage" * 100
        _write_zip(path, members.items())
    return path


def _decodable_cut(data: bytes) -> int:
    """A prefix length at a top-level field boundary: the prefix still decodes as a
    ModelProto (with its graph) but has lost ``opset_import``, which protobuf writes
    after the graph. onnx.checker and onnxruntime both refuse such a file."""
    for cut in range(len(data) - 1, 0, -1):
        try:
            proto = onnx.ModelProto.FromString(data[:cut])
        except Exception:
            continue
        if proto.HasField("graph") and not proto.opset_import:
            return cut
    raise AssertionError("no decodable truncation without opset_import")  # pragma: no cover


# ------------------------------------------------------------------- ONNX


def bad_onnx(kind: str, good: Path, folder: Path) -> Path:
    """An ``.onnx`` file whose problem is ``kind``, in ``folder`` (with any data file it names)."""
    path = folder / f"bad_{kind}.onnx"
    proto = onnx.load(good)
    if kind.startswith("ext_"):
        _external_field(proto, kind, folder)
    elif kind == "sparse_initializer_bomb":  # unused, 4 TiB once dense, 100 bytes on disk
        proto.graph.sparse_initializer.append(_sparse("bomb", [2**20, 2**20]))
    elif kind == "sparse_constant_bomb":
        node = helper.make_node("Constant", [], ["bomb"], sparse_value=_sparse("bomb_v", [2**20, 2**20]))
        proto.graph.node.insert(0, node)
    elif kind in TIE_KINDS:
        edit_tie_record(proto, kind)
    elif kind == "huge_fixed_input":  # valid, one Identity node, input [batch, 2**40] float32 (4 TiB a row)
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2**40])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2**40])
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
        return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    elif kind == "string_output":
        return _save(_non_tensor_output("string"), path)
    elif kind == "sequence_output":
        return _save(_non_tensor_output("sequence"), path)
    else:  # pragma: no cover
        raise AssertionError(kind)
    return _save(proto, path)


def _external_field(proto: onnx.ModelProto, kind: str, folder: Path) -> None:
    """Move the first initializer's data to ``w.bin`` and give one external field a bad value."""
    tensor = proto.graph.initializer[0]
    (folder / "w.bin").write_bytes(tensor.raw_data)
    fields = {"location": "w.bin", "offset": "0", "length": str(len(tensor.raw_data))}
    fields.update({"ext_offset_text": {"offset": "abc"}, "ext_length_float": {"length": "8.0"},
                   "ext_location_nul": {"location": "w.bin\0x"}, "ext_unknown_key": {"__class__": "x"},
                   "ext_offset_huge": {"offset": "9" * 5000},
                   # issue 26, also seen: the model file itself as data (its own bytes, within its size)
                   "ext_location_self": {"location": "bad_ext_location_self.onnx"},
                   "ext_overlap": {}}[kind])
    size = len(tensor.raw_data)
    _make_external(tensor, fields)
    if kind == "ext_overlap":  # a second tensor reading the first one's bytes of w.bin
        other = next(t for t in proto.graph.initializer[1:] if 0 < len(t.raw_data) <= size)
        _make_external(other, {"location": "w.bin", "offset": "0", "length": str(len(other.raw_data))})


def _make_external(tensor: onnx.TensorProto, fields: dict[str, str]) -> None:
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in fields.items():
        tensor.external_data.add(key=key, value=value)


def _sparse(name: str, dims: list[int]) -> onnx.SparseTensorProto:
    values = helper.make_tensor(name, TensorProto.FLOAT, [1], [1.0])
    indices = helper.make_tensor(f"{name}_indices", TensorProto.INT64, [1], [0])
    return helper.make_sparse_tensor(values, indices, dims)


def _non_tensor_output(kind: str) -> onnx.ModelProto:
    """x[?, FEATURES] -> a string tensor, or a sequence of one float tensor."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])
    if kind == "string":
        node = helper.make_node("Cast", ["x"], ["y"], to=TensorProto.STRING)
        y = helper.make_tensor_value_info("y", TensorProto.STRING, ["batch", FEATURES])
    else:
        node = helper.make_node("SequenceConstruct", ["x"], ["y"])
        y = helper.make_value_info("y", helper.make_sequence_type_proto(
            helper.make_tensor_type_proto(TensorProto.FLOAT, ["batch", FEATURES])))
    graph = helper.make_graph([node], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _save(proto: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(proto.SerializeToString())
    return path


# ------------------------------------------------------------------ .keras


def bad_keras(kind: str, good: Path, folder: Path) -> Path:
    """A ``.keras`` archive made from ``good`` whose problem is ``kind``."""
    path = folder / f"bad_{kind}.keras"
    members = _members(good)
    config = json.loads(members["config.json"])
    layers = config["config"]["layers"]
    tied = next(layer for layer in layers if not str(layer.get("module")).startswith("keras"))
    extra: list[tuple[str, bytes]] = []
    if kind == "registered_name_list":
        tied["registered_name"] = ["tiedonnx>DenseTied"]
    elif kind == "registered_name_dict":
        tied["registered_name"] = {"name": "tiedonnx>DenseTied"}
    elif kind == "registered_from_os":  # a registered name cannot vouch for another module
        tied["module"] = "os"
    elif kind == "marker_from_os":  # a Keras marker's name cannot vouch for a module
        tied.update(class_name="__keras_tensor__", module="os", registered_name=None)
    elif kind == "dunder_from_os":
        tied.update(class_name="__system__", module="os", registered_name=None)
    elif kind == "string_input":
        layers[0]["config"]["dtype"] = "string"
    elif kind == "nested_config":  # deeper than the scan's cap, within json's recursion limit
        config["config"]["deep"] = _nest(150)
    elif kind == "deep_config":  # ~200k levels: json.loads itself would recurse too deep
        members["config.json"] = b'{"a":' * 200_000 + b"1" + b"}" * 200_000
    elif kind == "duplicate_members":  # the same name twice: a size cap that keys by name sees one
        extra.append(("model.weights.h5", members["model.weights.h5"]))
    elif kind == "weights_renamed_layer":  # Keras warns about the group it cannot find, then fails
        members["model.weights.h5"] = _rename_h5_group(members["model.weights.h5"], "layers/dense")
    else:  # pragma: no cover
        raise AssertionError(kind)
    if kind != "deep_config":
        members["config.json"] = json.dumps(config).encode()
    _write_zip(path, [*members.items(), *extra])
    return path


def _write_zip(path: Path, members) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile: "Duplicate name"
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in members:
                archive.writestr(name, data)


def _rename_h5_group(data: bytes, group: str) -> bytes:
    import io

    import h5py

    buffer = io.BytesIO(data)
    with h5py.File(buffer, "r+") as weights:
        weights.move(group, group + "_renamed")
    return buffer.getvalue()


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _nest(depth: int):
    node: object = 1
    for _ in range(depth):
        node = {"a": node}
    return node


# ------------------------------------------------------------- input data


def bad_array(kind: str, folder: Path) -> Path:
    """An input file for a model taking float32 (batch, FEATURES) whose problem is ``kind``."""
    path = folder / f"x_{kind}.npy"
    rng = np.random.default_rng(1)
    good = rng.random((4, FEATURES), dtype=np.float32)
    simple = {"wrong_shape": lambda: good[:, :-1], "rank1": lambda: good[0],
              "rank3": lambda: good[:, :, None], "dtype_int": lambda: (good * 10).astype(np.int64),
              "dtype_complex": lambda: good.astype(np.complex64), "dtype_str": lambda: good.astype(str),
              "empty_batch": lambda: good[:0], "nan": lambda: _put(good, (2, 3), np.nan),
              "inf": lambda: _put(good, (1, 0), -np.inf)}
    if kind in simple:
        np.save(path, simple[kind]())
    elif kind == "missing":
        return folder / "x_missing.npy"
    elif kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        np.save(path, good)
        path.write_bytes(path.read_bytes()[:100])
    elif kind == "random":
        path.write_bytes(rng.integers(0, 256, 512, dtype=np.uint8).tobytes())
    elif kind == "wrong_ext":
        path = folder / "x.csv"
        np.savetxt(path, good, delimiter=",")
    elif kind == "pickled_object":
        np.save(path, np.array([{"x": 1}, None, Marker()], dtype=object), allow_pickle=True)
    elif kind == "corrupt_npz":
        path = folder / "x_corrupt.npz"
        np.savez(path, pixels=good)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "npz_wrong_names":
        path = folder / "x_names.npz"
        np.savez(path, a=good, b=good)
    elif kind == "float64_overflow":  # finite in float64, inf once cast to float32
        np.save(path, np.full((3, FEATURES), 1e300))
    elif kind == "absurd_shape":  # the header's shape overflows numpy's size arithmetic
        _npy_with_header(path, f"({2**62}, {2**62})")
    elif kind == "huge_shape":  # too large for a C long
        _npy_with_header(path, f"({2**70}, {FEATURES})")
    else:  # pragma: no cover
        raise AssertionError(kind)
    return path


def _put(array: np.ndarray, index: tuple, value) -> np.ndarray:
    array = array.copy()
    array[index] = value
    return array


def _npy_with_header(path: Path, shape: str) -> None:
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': %s, }" % shape
    header += " " * ((64 - (len(header) + 11) % 64) % 64) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little")
                     + header.encode("latin1") + bytes(64))


def seeded(kind: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(kind.encode()))


class Marker:
    """A picklable object: loading it would need allow_pickle=True."""
