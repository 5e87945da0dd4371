"""CLI: export, inspect, retie, verify. Exit codes 0 / 1 (parity) / 2 (bad input), one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from tiedonnx.runtime.cli import main  # noqa: E402

from . import models  # noqa: E402


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    model = models.dense_ae()
    model.save(folder / "ae.keras")
    other = models.dense_ae()  # same architecture, different random weights
    other.save(folder / "other.keras")
    return folder


def _plain_tf2onnx(model, path):
    import onnx
    import tensorflow as tf
    import tf2onnx

    spec = [tf.TensorSpec((None, 64), tf.float32, name="pixels")]
    fn = tf.function(lambda x: model(x), input_signature=spec)
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=15)
    onnx.save(proto, path)


def test_export_inspect_verify(saved, tmp_path, capsys):
    out = tmp_path / "ae.onnx"
    assert main(["export", str(saved / "ae.keras"), "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["parity"]["ok"] and report["bytes"] == out.stat().st_size
    assert report["bytes"] < report["untied_bytes"]

    assert main(["inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [t["status"] for t in info["ties"]] == ["ok"]
    assert info["ties"][0]["keras"]["tied_to"] == "enc"
    assert info["untied_duplicates"] == []
    assert info["untied_bytes"] - info["bytes"] == 64 * 16 * 4  # the W^T copy a plain exporter stores

    assert main(["verify", str(saved / "ae.keras"), str(out)]) == 0
    said = capsys.readouterr().out
    assert said.startswith("parity ok on random inputs") and "pass --input X.npy" in said
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((4, 64), dtype=np.float32))
    assert main(["verify", str(saved / "ae.keras"), str(out), "--input", str(tmp_path / "x.npy"),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["inputs"] == str(tmp_path / "x.npy")
    assert main(["verify", str(saved / "other.keras"), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tiedonnx verify: error: ONNX model does not match Keras") and err.count("\n") == 1


def test_export_refuses_overwrite_without_force(saved, tmp_path, capsys):
    out = tmp_path / "ae.onnx"
    out.write_bytes(b"keep me")
    assert main(["export", str(saved / "ae.keras"), "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
    assert main(["export", str(saved / "ae.keras"), "-o", str(out), "--force"]) == 0
    assert out.stat().st_size > 1000


def test_export_prints_each_step_on_a_terminal_unless_quiet(saved, tmp_path, capsys, monkeypatch):
    import re

    out = tmp_path / "ae.onnx"
    assert main(["export", str(saved / "ae.keras"), "-o", str(out), "--force"]) == 0
    assert capsys.readouterr().err == ""  # not a terminal: the one result line, on stdout
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["export", str(saved / "ae.keras"), "-o", str(out), "--precision", "int8",
                 "--force"]) == 0
    console = capsys.readouterr()
    lines = console.err.splitlines()
    assert lines and all(re.match(r"\[ *\d+\.\ds\] ", line) for line in lines), console.err
    steps = [line.split("] ", 1)[1] for line in lines if "... still" not in line]
    expected = ["loading TensorFlow", "loading the Keras model", "converting with tf2onnx",
                "storing each tie once", "converting weights to int8", "checking the graph",
                "checking parity against Keras", f"writing {out}"]
    assert [s for s, e in zip(steps, expected) if s.startswith(e)] == steps, steps
    assert len(steps) == len(expected) and console.out.startswith(f"wrote {out}")
    for quiet in ("-q", "--json"):
        assert main(["export", str(saved / "ae.keras"), "-o", str(out), "--force", quiet]) == 0
        assert capsys.readouterr().err == ""


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    (b"", "empty"),
    (b"PK\x03\x04 truncated zip", "not a valid .keras file"),
])
def test_export_bad_keras_file(content, message, tmp_path, capsys):
    src = tmp_path / "m.keras"
    if content is not None:
        src.write_bytes(content)
    assert main(["export", str(src), "-o", str(tmp_path / "o.onnx")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.onnx").exists()


def test_retie_plain_file(saved, tmp_path, capsys):
    model = keras.saving.load_model(saved / "ae.keras")
    _plain_tf2onnx(model, tmp_path / "plain.onnx")
    assert main(["retie", str(tmp_path / "plain.onnx"), "-o", str(tmp_path / "t.onnx"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [f["relation"] for f in report["folded"]] == ["transpose"]
    import onnx

    tied = onnx.load(tmp_path / "t.onnx")
    assert [list(i.dims) for i in tied.graph.initializer if len(i.dims) == 2] == [[64, 16]]
    added = sum(p.ByteSize() for p in tied.metadata_props) + sum(
        n.ByteSize() for n in tied.graph.node if n.op_type == "Transpose")
    # W^T (64*16 float32) is gone; the Transpose node and the tie record cost a little
    # (plus a few bytes of protobuf field tags).
    assert report["bytes_saved"] >= 64 * 16 * 4 - added - 16
    assert main(["retie", str(tmp_path / "t.onnx"), "-o", str(tmp_path / "t2.onnx"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["folded"] == []
    assert main(["verify", str(saved / "ae.keras"), str(tmp_path / "t.onnx")]) == 0


def test_verify_user_input_wrong_shape(saved, tmp_path, capsys):
    out = tmp_path / "ae.onnx"
    assert main(["export", str(saved / "ae.keras"), "-o", str(out)]) == 0
    np.save(tmp_path / "good.npy", np.random.default_rng(0).random((7, 64)).astype("float32"))
    np.save(tmp_path / "bad.npy", np.zeros((7, 63), "float32"))
    capsys.readouterr()
    assert main(["verify", str(saved / "ae.keras"), str(out), "--input", str(tmp_path / "good.npy"),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["batch_sizes"] == [7]
    assert main(["verify", str(saved / "ae.keras"), str(out), "--input", str(tmp_path / "bad.npy")]) == 2
    err = capsys.readouterr().err
    assert "pixels" in err and "(7, 63)" in err and "64" in err
    nan = np.random.default_rng(0).random((7, 64)).astype("float32")
    nan[3, 5] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    assert main(["verify", str(saved / "ae.keras"), str(out), "--input", str(tmp_path / "nan.npy")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    # verify has no --allow-nonfinite: its message must not suggest one
    assert "contains NaN or inf (first at row 3)" in line and "parity needs finite inputs" in line
    assert "allow-nonfinite" not in line


def test_cli_subprocess_no_traceback(tmp_path):
    """A user mistake: one line on stderr, exit 2, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "tiedonnx.runtime.cli", "inspect", str(tmp_path / "nope.onnx")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("tiedonnx inspect: error: Model file not found")
