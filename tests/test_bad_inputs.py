"""Bad input through every CLI command that reads files: exit 2, one line, nothing written.

For each command and each kind of bad file that applies, ``tiedonnx.runtime.cli.main``
is called in-process and must:

* return exit code 2;
* print exactly one stderr line, ``tiedonnx <cmd>: error: ...``, and no traceback
  (an exception escaping ``main`` is what the console script would show as one);
* create no output file (the output folder stays empty: no temporary files either);
* with ``--force`` and existing outputs, leave those files byte for byte as they were.

The valid inputs (a tiny tied model as ``.keras`` and ``.onnx``, and an input ``.npy``)
are built once per module.
"""

from __future__ import annotations

import pickle
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from tiedonnx.runtime.graph.ort_format import config_path_for  # noqa: E402
from tiedonnx.runtime.cli import main  # noqa: E402

from . import models  # noqa: E402

FEATURES = 8
SENTINEL = b"existing output: must survive a failed command\n"


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> Path:
    """good.keras, good.onnx (exported by tiedonnx), x.npy (5 rows) in one folder."""
    from tiedonnx.converter.export import export

    folder = tmp_path_factory.mktemp("valid")
    model = models.dense_ae(features=FEATURES, hidden=4)
    model.save(folder / "good.keras")
    export(model, folder / "good.onnx", verify=False)
    np.save(folder / "x.npy", np.random.default_rng(0).random((5, FEATURES), dtype=np.float32))
    return folder


# ---------------------------------------------------------------- bad files


def _bad_model(kind: str, good: Path, folder: Path) -> Path:
    """A bad model file of ``kind`` with ``good``'s suffix (or another, for wrong_ext)."""
    suffix = good.suffix
    path = folder / f"bad_{kind}{suffix}"
    data = good.read_bytes()
    rng = np.random.default_rng(zlib.crc32(kind.encode()))
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
        path.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
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
    elif kind == "bad_config":  # a Keras archive whose config.json is not JSON
        _rewrite_member(good, path, "config.json", b"{not json")
    elif kind == "bad_weights":  # a Keras archive whose weights are not HDF5
        _rewrite_member(good, path, "model.weights.h5", b"garbage" * 100)
    else:  # pragma: no cover
        raise AssertionError(kind)
    return path


def _decodable_cut(data: bytes) -> int:
    """A prefix length at a top-level field boundary: the prefix still decodes as a
    ModelProto (with its graph) but has lost ``opset_import``, which protobuf writes
    after the graph. onnx.checker and onnxruntime both refuse such a file."""
    import onnx

    for cut in range(len(data) - 1, 0, -1):
        try:
            proto = onnx.ModelProto.FromString(data[:cut])
        except Exception:
            continue
        if proto.HasField("graph") and not proto.opset_import:
            return cut
    raise AssertionError("no decodable truncation without opset_import")  # pragma: no cover


def _rewrite_member(src: Path, dst: Path, member: str, data: bytes) -> None:
    with zipfile.ZipFile(src) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    assert member in files, sorted(files)
    files[member] = data
    with zipfile.ZipFile(dst, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)


def _bad_array(kind: str, folder: Path) -> Path:
    """A bad input file for a model taking float32 (batch, FEATURES)."""
    path = folder / f"x_{kind}.npy"
    rng = np.random.default_rng(1)
    good = rng.random((4, FEATURES), dtype=np.float32)
    if kind == "missing":
        return folder / "x_missing.npy"
    if kind == "directory":
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
    elif kind == "wrong_shape":
        np.save(path, good[:, :-1])
    elif kind == "rank1":
        np.save(path, good[0])
    elif kind == "rank3":
        np.save(path, good[:, :, None])
    elif kind == "dtype_int":
        np.save(path, (good * 10).astype(np.int64))
    elif kind == "dtype_complex":
        np.save(path, good.astype(np.complex64))
    elif kind == "dtype_str":
        np.save(path, good.astype(str))
    elif kind == "empty_batch":
        np.save(path, good[:0])
    elif kind == "nan":
        good[2, 3] = np.nan
        np.save(path, good)
    elif kind == "inf":
        good[1, 0] = -np.inf
        np.save(path, good)
    elif kind == "pickled_object":
        np.save(path, np.array([{"x": 1}, None, _Marker()], dtype=object), allow_pickle=True)
    elif kind == "corrupt_npz":
        path = folder / "x_corrupt.npz"
        np.savez(path, pixels=good)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "npz_wrong_names":
        path = folder / "x_names.npz"
        np.savez(path, a=good, b=good)
    else:  # pragma: no cover
        raise AssertionError(kind)
    return path


class _Marker:
    """A picklable object: loading it would need allow_pickle=True."""


# ------------------------------------------------------------- the commands


def _onnx_command(cmd: str, model: Path, valid: Path, out: Path) -> tuple[list[str], list[Path]]:
    """argv for ``cmd`` reading ``model`` as its ONNX input, and the files it would write."""
    x = str(valid / "x.npy")
    if cmd == "inspect":
        return ["inspect", str(model)], []
    if cmd == "verify":
        return ["verify", str(valid / "good.keras"), str(model)], []
    if cmd == "bench":
        return ["bench", str(model), "--batch-sizes", "1", "--min-time", "0.01",
                "--provider", "cpu"], []
    if cmd == "retie":
        return ["retie", str(model), "-o", str(out / "o.onnx")], [out / "o.onnx"]
    if cmd == "quantize":
        return (["quantize", str(model), "-o", str(out / "o.onnx"), "--precision", "fp16"],
                [out / "o.onnx"])
    if cmd == "ort":
        return ["ort", str(model), "-o", str(out / "o.ort")], [out / "o.ort", config_path_for(out / "o.ort")]
    if cmd == "run":
        return (["run", str(model), "-i", x, "-o", str(out / "y.npy"), "--provider", "cpu"],
                [out / "y.npy"])
    if cmd == "triton":
        repo = out / "repo"
        return (["triton", str(model), str(repo), "--name", "m"],
                [repo / "m" / "1" / "model.onnx", repo / "m" / "config.pbtxt"])
    raise AssertionError(cmd)  # pragma: no cover


def _keras_command(cmd: str, model: Path, valid: Path, out: Path) -> tuple[list[str], list[Path]]:
    if cmd == "export":
        return ["export", str(model), "-o", str(out / "o.onnx")], [out / "o.onnx"]
    if cmd == "verify":
        return ["verify", str(model), str(valid / "good.onnx")], []
    if cmd == "bench":
        return ["bench", str(valid / "good.onnx"), "--keras", str(model), "--batch-sizes", "1",
                "--min-time", "0.01", "--provider", "cpu"], []
    raise AssertionError(cmd)  # pragma: no cover


def _input_command(cmd: str, array: Path, valid: Path, out: Path) -> tuple[list[str], list[Path]]:
    if cmd == "run":
        return (["run", str(valid / "good.onnx"), "-i", str(array), "-o", str(out / "y.npy"),
                 "--provider", "cpu"], [out / "y.npy"])
    if cmd == "verify":
        return ["verify", str(valid / "good.keras"), str(valid / "good.onnx"), "--input", str(array)], []
    raise AssertionError(cmd)  # pragma: no cover


# ------------------------------------------------------------------- checks


def _call(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run the CLI in-process; an exception escaping main() fails the test as a traceback."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: usage errors print several lines
        code = exc.code
    except Exception as exc:
        pytest.fail(f"traceback: {' '.join(argv[:1])} raised {type(exc).__name__}: {exc}")
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _listing(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def _assert_clean_failure(argv, outputs, out: Path, capsys) -> None:
    cmd = argv[0]
    # 1. No outputs yet: exit 2, one line, nothing created.
    code, stdout, stderr = _call(argv, capsys)
    assert "Traceback" not in stdout + stderr
    lines = stderr.strip().splitlines()
    assert code == 2, (code, stderr)
    assert len(lines) == 1 and lines[0].startswith(f"tiedonnx {cmd}: error: "), lines
    assert stdout == ""
    assert _listing(out) == {}, f"{cmd} left files behind: {sorted(_listing(out))}"
    if not outputs:
        return
    # 2. Outputs exist and --force is given: they are not clobbered.
    for path in outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(SENTINEL)
    before = _listing(out)
    code, stdout, stderr = _call([*argv, "--force"], capsys)
    lines = stderr.strip().splitlines()
    assert code == 2, (code, stderr)
    assert len(lines) == 1 and lines[0].startswith(f"tiedonnx {cmd}: error: "), lines
    assert _listing(out) == before, f"{cmd} --force changed existing files"


def _case_dirs(tmp_path: Path) -> tuple[Path, Path]:
    bad, out = tmp_path / "in", tmp_path / "out"
    bad.mkdir()
    out.mkdir()
    return bad, out


# --------------------------------------------------------------------- tests

ONNX_COMMANDS = ["inspect", "verify", "bench", "retie", "quantize", "ort", "run", "triton"]
ONNX_KINDS = ["missing", "empty", "directory", "truncated", "truncated_at_field", "random",
              "wrong_ext", "npy_as_model"]

def _onnx_params():
    for cmd in ONNX_COMMANDS:
        for kind in ONNX_KINDS:
            yield pytest.param(cmd, kind, id=f"{cmd}-{kind}")


@pytest.mark.parametrize(("cmd", "kind"), list(_onnx_params()))
def test_bad_onnx_file(cmd, kind, valid, tmp_path, capsys):
    bad, out = _case_dirs(tmp_path)
    model = _bad_model(kind, valid / "good.onnx", bad)
    argv, outputs = _onnx_command(cmd, model, valid, out)
    _assert_clean_failure(argv, outputs, out, capsys)


@pytest.mark.parametrize("cmd", ["run", "bench", "verify", "ort"])
def test_model_onnxruntime_refuses(cmd, valid, tmp_path, capsys):
    """Found by scripts/fuzz_loaders.py: onnx.checker accepts an unreleased opset, onnxruntime does not."""
    import onnx

    bad, out = _case_dirs(tmp_path)
    proto = onnx.load(valid / "good.onnx")
    proto.opset_import[0].version = 10**6
    onnx.checker.check_model(proto, full_check=True)  # the premise: our checks let it through
    model = bad / "future_opset.onnx"
    onnx.save(proto, model)
    argv, outputs = _onnx_command(cmd, model, valid, out)
    _assert_clean_failure(argv, outputs, out, capsys)


KERAS_COMMANDS = ["export", "verify", "bench"]
KERAS_KINDS = ["missing", "empty", "directory", "truncated", "random", "wrong_ext", "h5",
               "no_config", "bad_config", "bad_weights"]
def _keras_params():
    for cmd in KERAS_COMMANDS:
        for kind in KERAS_KINDS:
            yield pytest.param(cmd, kind, id=f"{cmd}-{kind}")


@pytest.mark.parametrize(("cmd", "kind"), list(_keras_params()))
def test_bad_keras_file(cmd, kind, valid, tmp_path, capsys):
    bad, out = _case_dirs(tmp_path)
    model = _bad_model(kind, valid / "good.keras", bad)
    argv, outputs = _keras_command(cmd, model, valid, out)
    _assert_clean_failure(argv, outputs, out, capsys)


INPUT_KINDS = ["missing", "empty", "directory", "truncated", "random", "wrong_ext", "wrong_shape",
               "rank1", "rank3", "dtype_int", "dtype_complex", "dtype_str", "empty_batch", "nan",
               "inf", "pickled_object", "corrupt_npz", "npz_wrong_names"]


@pytest.mark.parametrize("kind", INPUT_KINDS)
def test_bad_run_input(kind, valid, tmp_path, capsys):
    bad, out = _case_dirs(tmp_path)
    argv, outputs = _input_command("run", _bad_array(kind, bad), valid, out)
    _assert_clean_failure(argv, outputs, out, capsys)


# verify --input: the file-level kinds (value checks are the runtime's, tested above).
@pytest.mark.parametrize("kind", ["missing", "empty", "directory", "truncated", "random", "wrong_ext",
                                  "wrong_shape", "rank1", "pickled_object", "corrupt_npz"])
def test_bad_verify_input(kind, valid, tmp_path, capsys):
    bad, out = _case_dirs(tmp_path)
    argv, outputs = _input_command("verify", _bad_array(kind, bad), valid, out)
    _assert_clean_failure(argv, outputs, out, capsys)


class _Trap:
    """Unpickling this creates a folder: proof that a pickle was (not) loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.mkdir, (str(self.marker),)


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_pickled_input_is_refused_not_unpickled(suffix, valid, tmp_path, capsys):
    """An object array's pickle would run code on load; it must be refused unread."""
    bad, out = _case_dirs(tmp_path)
    marker = tmp_path / "unpickled"
    trap = np.array([_Trap(marker)], dtype=object)
    path = bad / f"trap{suffix}"
    if suffix == ".npy":
        np.save(path, trap, allow_pickle=True)
    else:
        np.savez(path, pixels=trap)
    assert pickle.loads(pickle.dumps(_Trap(tmp_path / "probe"))) is None and (tmp_path / "probe").is_dir()
    for argv, _ in (_input_command("run", path, valid, out), _input_command("verify", path, valid, out)):
        code, _, stderr = _call(argv, capsys)
        assert code == 2, stderr
        assert "Object arrays and corrupt files are refused" in stderr
    assert not marker.exists(), "an input file's pickle was loaded"


def test_bad_run_output_suffix(valid, tmp_path, capsys):
    bad, out = _case_dirs(tmp_path)
    argv = ["run", str(valid / "good.onnx"), "-i", str(valid / "x.npy"), "-o", str(out / "y.txt")]
    _assert_clean_failure(argv, [], out, capsys)


def test_valid_inputs_succeed(valid, tmp_path, capsys):
    """The matrix's baseline: the same commands on the valid files exit 0 and write their outputs."""
    out = tmp_path / "out"
    out.mkdir()
    for argv, outputs in [_onnx_command(c, valid / "good.onnx", valid, out)
                          for c in ("inspect", "retie", "run", "triton")]:
        code, _, stderr = _call(argv, capsys)
        assert code == 0, (argv, stderr)
        assert all(p.is_file() and p.stat().st_size > 0 for p in outputs), argv
