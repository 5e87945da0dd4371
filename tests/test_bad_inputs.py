"""Bad input through every CLI command that reads files: exit 2, one line, nothing written.

For each command and each kind of bad file that applies, ``tiedonnx.runtime.cli.main``
is called in-process and must keep the promise :func:`tests.hostile.assert_clean_failure`
checks: exit code 2, exactly one stderr line ``tiedonnx <cmd>: error: ...``, no
traceback and no warning, no output or temporary file created, and existing
outputs left byte for byte as they were even with ``--force``.

The valid inputs (a tiny tied model as ``.keras`` and ``.onnx``, and an input ``.npy``)
are built once per module; the bad ones come from :mod:`tests.hostile`.
"""

from __future__ import annotations

import logging
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from tiedonnx.runtime.graph.ort_format import config_path_for  # noqa: E402

from . import models  # noqa: E402
from .hostile import (  # noqa: E402
    FEATURES,
    TIE_KINDS,
    assert_clean_failure,
    bad_array,
    bad_model,
    bad_ort,
    call,
)

REPO = Path(__file__).resolve().parents[1]


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


# ------------------------------------------------------------- the commands


def _onnx_command(cmd: str, model: Path, valid: Path, out: Path, x: Path | None = None):
    """argv for ``cmd`` reading ``model`` as its ONNX input, and the files it would write."""
    x = str(x or valid / "x.npy")
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
    if cmd in ("run", "run_npz"):
        y = out / ("y.npz" if cmd == "run_npz" else "y.npy")
        return ["run", str(model), "-i", x, "-o", str(y), "--provider", "cpu"], [y]
    if cmd == "triton":
        repo = out / "repo"
        return (["triton", str(model), str(repo), "--name", "m"],
                [repo / "m" / "1" / "model.onnx", repo / "m" / "config.pbtxt"])
    raise AssertionError(cmd)  # pragma: no cover


def _keras_command(cmd: str, model: Path, valid: Path, out: Path):
    if cmd == "export":
        return ["export", str(model), "-o", str(out / "o.onnx")], [out / "o.onnx"]
    if cmd == "verify":
        return ["verify", str(model), str(valid / "good.onnx")], []
    if cmd == "bench":
        return ["bench", str(valid / "good.onnx"), "--keras", str(model), "--batch-sizes", "1",
                "--min-time", "0.01", "--provider", "cpu"], []
    raise AssertionError(cmd)  # pragma: no cover


def _input_command(cmd: str, array: Path, valid: Path, out: Path):
    if cmd == "run":
        return (["run", str(valid / "good.onnx"), "-i", str(array), "-o", str(out / "y.npy"),
                 "--provider", "cpu"], [out / "y.npy"])
    if cmd == "verify":
        return ["verify", str(valid / "good.keras"), str(valid / "good.onnx"), "--input", str(array)], []
    raise AssertionError(cmd)  # pragma: no cover


def _case_dirs(tmp_path: Path) -> tuple[Path, Path]:
    bad, out = tmp_path / "in", tmp_path / "out"
    bad.mkdir()
    out.mkdir()
    return bad, out


# ------------------------------------------------------------ ONNX models

ONNX_COMMANDS = ["inspect", "verify", "bench", "retie", "quantize", "ort", "run", "triton"]
ONNX_KINDS = ["missing", "empty", "directory", "truncated", "truncated_at_field", "random",
              "wrong_ext", "npy_as_model",
              # issue 13, case 2: external-data fields that are not what onnx writes
              "ext_offset_text", "ext_length_float", "ext_location_nul", "ext_unknown_key",
              "ext_offset_huge", "ext_location_self", "ext_overlap",
              # case 9: sparse tensors count at their dense size against the byte cap
              "sparse_initializer_bomb", "sparse_constant_bomb"]


# The refusal must be ours (read_model's), not a later library's error that happens
# to be caught: each issue-13 kind names its own message.
EXPECTED = {
    "ext_offset_text": "External data offset of tensor .* received 'abc'",
    "ext_length_float": "External data length of tensor .* received '8.0'",
    "ext_location_nul": "External data location of tensor .* contains a NUL byte",
    "ext_unknown_key": r"has unknown or repeated keys \['__class__'\]",
    "ext_offset_huge": "External data offset of tensor .* must be a non-negative whole number",
    "ext_location_self": "names the model file itself as its external data",
    "ext_overlap": r"Tensors .* share bytes of 'w.bin' \(offsets 0 and 0\)",
    "sparse_initializer_bomb": r"declare \d+ bytes, over the limit .*sparse tensors count at their dense size",
    "sparse_constant_bomb": r"declare \d+ bytes, over the limit .*sparse tensors count at their dense size",
    "registered_name_list": r"malformed object in config.json \(registered_name=\['tiedonnx>DenseTied'\]\)",
    "registered_name_dict": r"malformed object in config.json \(registered_name=\{'name'",
    "deep_config": "config.json nested too deeply to parse",
    "nested_config": "config.json nested more than 100 levels deep",
    "duplicate_members": r"holds several members named \['model.weights.h5'\]",
    "registered_from_os": r"refers to os\.DenseTied, which is neither part of Keras nor a custom object "
                          "registered from that module",
    "marker_from_os": r"refers to os\.__keras_tensor__, which is neither part of Keras",
    "dunder_from_os": r"refers to os\.__system__, which is neither part of Keras",
}


def _check_message(kind: str, line: str) -> None:
    if kind in EXPECTED:
        assert re.search(EXPECTED[kind], line), line


@pytest.mark.parametrize("kind", ONNX_KINDS)
@pytest.mark.parametrize("cmd", ONNX_COMMANDS)
def test_bad_onnx_file(cmd, kind, valid, tmp_path, capsys):
    bad, out = _case_dirs(tmp_path)
    model = bad_model(kind, valid / "good.onnx", bad)
    argv, outputs = _onnx_command(cmd, model, valid, out)
    _check_message(kind, assert_clean_failure(argv, outputs, out, capsys))


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
    assert_clean_failure(argv, outputs, out, capsys)


@pytest.mark.parametrize("kind", ["string_output", "sequence_output"])
@pytest.mark.parametrize("cmd", ["run", "run_npz"])
def test_non_tensor_outputs_are_refused_before_writing(cmd, kind, valid, tmp_path, capsys):
    """Case 3: a valid model whose output .npy/.npz cannot hold (strings would need pickles)."""
    bad, out = _case_dirs(tmp_path)
    argv, outputs = _onnx_command(cmd, bad_model(kind, valid / "good.onnx", bad), valid, out)
    line = assert_clean_failure(argv, outputs, out, capsys)
    assert "Output(s) ['y'] of" in line and "are not numeric tensors" in line


@pytest.mark.parametrize("cmd", ["bench", "run"])
def test_huge_declared_input_is_refused_before_allocating(cmd, valid, tmp_path, capsys):
    """Issue 26, case 5: bench allocates synthetic inputs from the declared shape; it must refuse
    [batch, 2**40] as run does (run refuses the x.npy that does not match it)."""
    bad, out = _case_dirs(tmp_path)
    argv, outputs = _onnx_command(cmd, bad_model("huge_fixed_input", valid / "good.onnx", bad), valid, out)
    line = assert_clean_failure(argv, outputs, out, capsys)
    if cmd == "bench":
        # 2**40 float32 values, drawn as float64 then cast: 2**40 * (8 + 4) bytes = 12,288 GiB
        assert re.search(r"batch 1 would take 1.23e\+04 GiB .*over the limit of 4 GiB", line), line


# ------------------------------------------------- tiedonnx metadata, .ort files

TIE_COMMANDS = [*ONNX_COMMANDS, "quantize_int8", "quantize_int4"]


@pytest.mark.parametrize("kind", list(TIE_KINDS))
@pytest.mark.parametrize("cmd", TIE_COMMANDS)
def test_malformed_tie_record_is_skipped_with_one_warning(cmd, kind, valid, tmp_path, capsys, caplog):
    """Issue 26, case 4: one validating reader (graph/metadata_check.py) behind read_model drops a
    record tiedonnx never writes, with one warning line; the command goes on with the graph alone."""
    bad, out = _case_dirs(tmp_path)
    model = bad_model(kind, valid / "good.onnx", bad)
    if cmd.startswith("quantize_"):
        argv = ["quantize", str(model), "-o", str(out / "o.onnx"), "--precision", cmd.removeprefix("quantize_")]
    else:
        argv, _ = _onnx_command(cmd, model, valid, out)
    caplog.set_level(logging.WARNING)
    code, stdout, stderr = call(argv, capsys)
    assert code == 0 and "Traceback" not in stdout + stderr, stderr
    said = [r.getMessage() for r in caplog.records if "which tiedonnx never writes" in r.getMessage()]
    assert len(said) == 1 and re.search(TIE_KINDS[kind], said[0]), said


def test_malformed_tie_record_is_one_stderr_line_in_a_real_process(valid, tmp_path):
    model = bad_model("tie_cycle", valid / "good.onnx", tmp_path)
    done = subprocess.run([sys.executable, "-m", "tiedonnx.runtime.cli", "quantize", str(model), "-o",
                           str(tmp_path / "q.onnx"), "--precision", "int8"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "ignoring its tiedonnx.ties metadata" in lines[0], lines
    assert (tmp_path / "q.onnx").exists()


ORT_KINDS = ["ort_meta_not_utf8", "ort_producer_past_end", "ort_input_name_not_utf8", "ort_dim_not_utf8"]
ORT_EXPECTED = {"ort_meta_not_utf8": "has metadata that is not UTF-8 text",
                "ort_input_name_not_utf8": "has a graph input or output name that is not UTF-8 text",
                "ort_dim_not_utf8": "has a graph input or output whose dimension names are not UTF-8 text",
                # inspect reads the producer name itself; run and bench have onnxruntime verify the file
                "ort_producer_past_end": "is not a readable ORT-format model|ORT model verification failed"}


@pytest.mark.parametrize("kind", ORT_KINDS)
@pytest.mark.parametrize("cmd", ["inspect", "run", "bench"])
def test_bad_ort_file(cmd, kind, valid, tmp_path, capsys):
    """Issue 26, case 3: edited or corrupt .ort metadata is one line, as in .onnx files."""
    bad, out = _case_dirs(tmp_path)
    model = bad_ort(kind, valid / "good.onnx", bad)
    argv, outputs = _onnx_command(cmd, model, valid, out)
    line = assert_clean_failure(argv, outputs, out, capsys)
    expected = ORT_EXPECTED.get(kind) or TIE_KINDS[kind.removeprefix("ort_")]
    assert re.search(expected, line), line


def test_ort_file_metadata_is_checked_by_load(valid, tmp_path):
    from tiedonnx.runtime import load
    from tiedonnx.runtime.errors import ModelFileError

    with pytest.raises(ModelFileError, match=ORT_EXPECTED["ort_meta_not_utf8"]):
        load(bad_ort("ort_meta_not_utf8", valid / "good.onnx", tmp_path))


@pytest.mark.parametrize("kind", ["ort_tie_not_json", "ort_tie_no_initializer", "ort_tie_cycle",
                                  "ort_tie_perm_huge", "ort_kept_fp32_deep"])
def test_ort_malformed_tie_record_is_skipped_by_inspect(kind, valid, tmp_path, capsys, caplog):
    model = bad_ort(kind, valid / "good.onnx", tmp_path)
    caplog.set_level(logging.WARNING)
    code, stdout, stderr = call(["inspect", str(model)], capsys)
    assert code == 0, stderr
    said = [r.getMessage() for r in caplog.records if "which tiedonnx never writes" in r.getMessage()]
    assert len(said) == 1 and re.search(TIE_KINDS[kind.removeprefix("ort_")], said[0]), said


def test_ort_refused_by_onnxruntime_says_one_line_not_a_warning_first(valid, tmp_path, capsys, caplog,
                                                                      monkeypatch):
    """Found by scripts/fuzz_loaders.py (an offset zeroed in a .ort): inspect warned about the tie
    record, then failed on onnxruntime's verification: two lines. The record is checked after the
    file loads. Here onnxruntime's refusal is stood in for, on a file whose record is malformed."""
    from tiedonnx.runtime.errors import ModelFileError
    from tiedonnx.runtime.graph import inspect_ort

    def refuse(path):
        raise ModelFileError(f"onnxruntime cannot load model {path!r}: ORT model verification failed.")

    monkeypatch.setattr(inspect_ort, "_io", refuse)
    bad, out = _case_dirs(tmp_path)
    model = bad_ort("ort_tie_not_json", valid / "good.onnx", bad)
    caplog.set_level(logging.WARNING)
    line = assert_clean_failure(["inspect", str(model)], [], out, capsys)
    assert "ORT model verification failed" in line
    assert not [r for r in caplog.records if "never writes" in r.getMessage()]


def test_onnx_refused_by_the_checker_says_one_line_not_a_warning_first(valid, tmp_path, capsys, caplog):
    """Found by scripts/fuzz_loaders.py (bit flips in the record and the graph): the record is
    checked after every other check, so a refused file gets one error line and no warning."""
    import onnx

    bad, out = _case_dirs(tmp_path)
    proto = onnx.load(bad_model("tie_not_json", valid / "good.onnx", bad))
    nodes = list(proto.graph.node)[::-1]  # no longer topologically sorted: the checker refuses it
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    onnx.save(proto, bad / "unsorted.onnx")
    caplog.set_level(logging.WARNING)
    line = assert_clean_failure(["inspect", str(bad / "unsorted.onnx")], [], out, capsys)
    assert "failed the ONNX checker" in line
    assert not [r for r in caplog.records if "never writes" in r.getMessage()]


# ------------------------------------------------------------ Keras models

KERAS_COMMANDS = ["export", "verify", "bench"]
KERAS_KINDS = ["missing", "empty", "directory", "truncated", "random", "wrong_ext", "h5",
               "no_config", "bad_config", "bad_weights",
               # issue 13, cases 1, 10, 11: the config scan
               "registered_name_list", "registered_name_dict", "deep_config", "nested_config",
               "duplicate_members", "registered_from_os", "marker_from_os", "dunder_from_os",
               "weights_renamed_layer"]  # Keras's own warnings would be extra stderr lines


@pytest.mark.parametrize("kind", KERAS_KINDS)
@pytest.mark.parametrize("cmd", KERAS_COMMANDS)
def test_bad_keras_file(cmd, kind, valid, tmp_path, capsys):
    bad, out = _case_dirs(tmp_path)
    model = bad_model(kind, valid / "good.keras", bad)
    argv, outputs = _keras_command(cmd, model, valid, out)
    _check_message(kind, assert_clean_failure(argv, outputs, out, capsys))


@pytest.mark.parametrize("cmd", ["export", "verify"])
def test_string_input_layer_is_a_conversion_error(cmd, valid, tmp_path, capsys):
    """Case 5: an InputLayer of dtype "string" loads in Keras but cannot be exported or fed."""
    bad, out = _case_dirs(tmp_path)
    argv, outputs = _keras_command(cmd, bad_model("string_input", valid / "good.keras", bad), valid, out)
    line = assert_clean_failure(argv, outputs, out, capsys)
    assert "has input(s) of a non-numeric dtype: 'pixels' (string)" in line


# -------------------------------------------------------------- input data

INPUT_KINDS = ["missing", "empty", "directory", "truncated", "random", "wrong_ext", "wrong_shape",
               "rank1", "rank3", "dtype_int", "dtype_complex", "dtype_str", "empty_batch", "nan",
               "inf", "pickled_object", "corrupt_npz", "npz_wrong_names",
               # issue 13, cases 12 and 13
               "float64_overflow", "absurd_shape", "huge_shape"]


@pytest.mark.parametrize("kind", INPUT_KINDS)
def test_bad_run_input(kind, valid, tmp_path, capsys):
    bad, out = _case_dirs(tmp_path)
    argv, outputs = _input_command("run", bad_array(kind, bad), valid, out)
    assert_clean_failure(argv, outputs, out, capsys)


# verify --input: the file-level kinds, and (case 12) the runtime's value checks.
@pytest.mark.parametrize("kind", ["missing", "empty", "directory", "truncated", "random", "wrong_ext",
                                  "wrong_shape", "rank1", "pickled_object", "corrupt_npz",
                                  "nan", "inf", "float64_overflow", "absurd_shape"])
def test_bad_verify_input(kind, valid, tmp_path, capsys):
    bad, out = _case_dirs(tmp_path)
    argv, outputs = _input_command("verify", bad_array(kind, bad), valid, out)
    line = assert_clean_failure(argv, outputs, out, capsys)
    if kind in ("nan", "inf"):
        assert "contains NaN or inf (first at row" in line
    if kind == "float64_overflow":
        assert "holds float64 values outside float32's range (first at row 0: 1e+300)" in line


@pytest.mark.parametrize("kind", ["float64_overflow", "absurd_shape"])
def test_one_stderr_line_in_a_real_process(kind, valid, tmp_path):
    """Case 13, as a user sees it: numpy warnings would be extra lines on the real stderr."""
    bad, out = _case_dirs(tmp_path)
    argv, _ = _input_command("run", bad_array(kind, bad), valid, out)
    proc = subprocess.run([sys.executable, "-m", "tiedonnx.runtime.cli", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("tiedonnx run: error: "), proc.stderr
    assert list(out.iterdir()) == []


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
        code, _, stderr = call(argv, capsys)
        assert code == 2, stderr
        assert "Object arrays and corrupt files are refused" in stderr
    assert not marker.exists(), "an input file's pickle was loaded"


def test_bad_run_output_suffix(valid, tmp_path, capsys):
    bad, out = _case_dirs(tmp_path)
    argv = ["run", str(valid / "good.onnx"), "-i", str(valid / "x.npy"), "-o", str(out / "y.txt")]
    assert_clean_failure(argv, [], out, capsys)


def test_valid_inputs_succeed(valid, tmp_path, capsys):
    """The matrix's baseline: the same commands on the valid files exit 0 and write their outputs."""
    out = tmp_path / "out"
    out.mkdir()
    for argv, outputs in [_onnx_command(c, valid / "good.onnx", valid, out)
                          for c in ("inspect", "retie", "run", "run_npz", "triton")]:
        code, _, stderr = call(argv, capsys)
        assert code == 0, (argv, stderr)
        assert all(p.is_file() and p.stat().st_size > 0 for p in outputs), argv
    for argv, _ in (_keras_command("verify", valid / "good.keras", valid, out),
                    _input_command("verify", valid / "x.npy", valid, out)):
        code, _, stderr = call(argv, capsys)
        assert code == 0, (argv, stderr)
