"""``tiedonnx run`` and ``tiedonnx bench`` through the CLI entry point, plus _term."""

from __future__ import annotations

import io
import json
import re
import sys
import types

import numpy as np
import pytest

from tiedonnx.runtime import load
from tiedonnx.runtime._term import ProgressBar, format_table
from tiedonnx.runtime.cli import main
from tests.graphs import save, tied_ae, two_inputs


@pytest.fixture
def ae_path(tmp_path):
    return save(tied_ae(), tmp_path / "ae.onnx")


@pytest.fixture
def x_path(tmp_path, rng):
    path = tmp_path / "x.npy"
    np.save(path, rng.random((10, 8), dtype=np.float32))
    return str(path)


def _only_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_run_writes_the_outputs(ae_path, x_path, tmp_path, capsys):
    out = tmp_path / "y.npy"
    assert main(["run", ae_path, "--input", x_path, "-o", str(out), "--provider", "cpu"]) == 0
    expected = load(ae_path, providers="cpu").run(np.load(x_path))["y"]
    np.testing.assert_array_equal(np.load(out), expected)
    assert _only_line(capsys.readouterr().out).startswith(f"wrote {out}: y (10, 8) in ")


def test_run_in_chunks_lean_matches(ae_path, x_path, tmp_path):
    out = tmp_path / "y.npy"
    assert main(["run", ae_path, "-i", x_path, "-o", str(out), "--batch-size", "3",
                 "--memory", "lean", "--threads", "1"]) == 0
    expected = load(ae_path, providers="cpu").run(np.load(x_path))["y"]
    np.testing.assert_allclose(np.load(out), expected, atol=1e-6)  # lean vs fast: see test_runtime_lean


def test_run_refuses_to_overwrite_without_force(ae_path, x_path, tmp_path, capsys):
    out = tmp_path / "y.npy"
    out.write_bytes(b"keep me")
    assert main(["run", ae_path, "-i", x_path, "-o", str(out)]) == 2
    assert "already exists" in _only_line(capsys.readouterr().err)
    assert out.read_bytes() == b"keep me"
    assert main(["run", ae_path, "-i", x_path, "-o", str(out), "--force"]) == 0
    assert np.load(out).shape == (10, 8)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((4, 7), np.float32), r"Input 'x' expects shape \(batch, 8\); received shape \(4, 7\)"),
    (np.full((4, 8), np.nan, np.float32), "contains NaN or inf .*--allow-nonfinite"),
    (np.zeros((0, 8), np.float32), "empty batch"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(ae_path, tmp_path, capsys, bad, match):
    np.save(tmp_path / "bad.npy", bad)
    before = set(tmp_path.iterdir())
    code = main(["run", ae_path, "-i", str(tmp_path / "bad.npy"), "-o", str(tmp_path / "y.npy"),
                 "--batch-size", "2"])
    assert code == 2
    line = _only_line(capsys.readouterr().err)
    assert line.startswith("tiedonnx run: error: ")
    assert re.search(match, line), line
    assert set(tmp_path.iterdir()) == before  # no output, no temp file


def test_allow_nonfinite_runs(ae_path, tmp_path):
    np.save(tmp_path / "nan.npy", np.full((2, 8), np.nan, np.float32))
    assert main(["run", ae_path, "-i", str(tmp_path / "nan.npy"), "-o", str(tmp_path / "y.npy"),
                 "--allow-nonfinite"]) == 0
    assert np.isnan(np.load(tmp_path / "y.npy")).all()


@pytest.mark.parametrize("extra, match", [
    (["-i", "{tmp}/missing.npy"], "Input file not found"),
    (["-i", "{model}"], r"Input file must be .npy or .npz; received '.*ae.onnx'"),
    (["-o", "{tmp}/y.csv"], r"Output must end in .npy or .npz; received '.*y.csv'"),
    (["-o", "{tmp}/nodir/y.npy"], "Output folder does not exist"),
    (["--batch-size", "0"], "--batch-size must be a positive integer; received 0"),
    (["--address", "ray://h:1"], "--address is a Ray cluster address; pass it together with --ray"),
])
def test_usage_errors_exit_2(ae_path, x_path, tmp_path, capsys, extra, match):
    # argparse keeps the last value of a repeated option, so `extra` overrides.
    extra = [e.format(tmp=tmp_path, model=ae_path) for e in extra]
    before = set(tmp_path.iterdir())
    assert main(["run", ae_path, "-i", x_path, "-o", str(tmp_path / "y.npy"), *extra]) == 2
    assert re.search(match, _only_line(capsys.readouterr().err))
    assert set(tmp_path.iterdir()) == before


def test_missing_model_exits_2(x_path, tmp_path, capsys):
    assert main(["run", str(tmp_path / "no.onnx"), "-i", x_path, "-o", str(tmp_path / "y.npy")]) == 2
    assert "Model file not found" in _only_line(capsys.readouterr().err)


def test_several_outputs_need_npz_and_npz_inputs_go_by_name(tmp_path, rng, capsys):
    model = save(two_inputs(), tmp_path / "two.onnx")
    a, b = rng.random((3, 4), dtype=np.float32), rng.random((3, 4), dtype=np.float32)
    np.savez(tmp_path / "ab.npz", a=a, b=b)
    assert main(["run", model, "-i", str(tmp_path / "ab.npz"), "-o", str(tmp_path / "y.npy")]) == 2
    assert "The model has 2 outputs ['sum', 'prod']; a .npy holds one. Pass -o with a .npz" in capsys.readouterr().err
    assert main(["run", model, "-i", str(tmp_path / "ab.npz"), "-o", str(tmp_path / "y.npz")]) == 0
    with np.load(tmp_path / "y.npz") as out:
        assert sorted(out.files) == ["prod", "sum"]
        np.testing.assert_array_equal(out["sum"], a + b)


def test_a_one_array_npz_feeds_a_one_input_model(ae_path, tmp_path, rng):
    x = rng.random((2, 8), dtype=np.float32)
    np.savez(tmp_path / "x.npz", x)  # stored as arr_0
    assert main(["run", ae_path, "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "y.npz")]) == 0
    with np.load(tmp_path / "y.npz") as out:
        np.testing.assert_array_equal(out["y"], load(ae_path).run(x)["y"])


def test_object_arrays_are_refused(ae_path, tmp_path, capsys):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert main(["run", ae_path, "-i", str(tmp_path / "obj.npy"), "-o", str(tmp_path / "y.npy")]) == 2
    assert "Object arrays and corrupt files are refused" in capsys.readouterr().err


def test_ray_flag_calls_the_distributed_runner(ae_path, x_path, tmp_path, monkeypatch, capsys):
    calls = []
    fake = types.ModuleType("tiedonnx.runtime.distributed")
    fake.run_ray = lambda *args, **kwargs: calls.append((args, kwargs)) or types.SimpleNamespace(
        output=args[2], rows=7, chunks=2, workers=2, seconds=0.5)
    monkeypatch.setitem(sys.modules, "tiedonnx.runtime.distributed", fake)
    out = str(tmp_path / "y.npy")
    assert main(["run", ae_path, "-i", x_path, "-o", out, "--ray", "--address", "ray://h:1",
                 "--batch-size", "5", "--force", "--memory", "lean", "--allow-nonfinite"]) == 0
    assert calls == [((ae_path, x_path, out), dict(batch_size=5, address="ray://h:1", force=True,
                                                     providers="auto", memory="lean",
                                                     allow_nonfinite=True))]
    assert "7 rows in 2 chunks on 2 Ray actor(s)" in capsys.readouterr().out


def test_ray_flag_without_ray_is_a_usage_error_naming_the_extra(ae_path, x_path, tmp_path,
                                                               monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as on an install without the [ray] extra
    assert main(["run", ae_path, "-i", x_path, "-o", str(tmp_path / "y.npy"), "--ray"]) == 2
    assert 'pip install -e ".[ray]"' in _only_line(capsys.readouterr().err)
    assert not (tmp_path / "y.npy").exists()


def test_bench_json_and_table(ae_path, capsys):
    assert main(["bench", ae_path, "--batch-sizes", "1,4", "--min-time", "0.01", "--json",
                 "--provider", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["batch"] for r in report["rows"]] == [1, 4]
    assert report["flops_per_row"] == 2 * (8 * 3 + 3 * 8)
    for row in report["rows"]:
        assert row["tiedonnx_s"] > 0 and row["gflops"] > 0 and row["numpy_gflops"] > 0
        assert row["keras_call_s"] is None
    assert main(["bench", ae_path, "--batch-sizes", "2", "--min-time", "0.01"]) == 0
    text = capsys.readouterr().out
    assert "on CPUExecutionProvider (memory=fast)" in text and "numpy GFLOP/s" in text


@pytest.mark.parametrize("sizes", ["", "1,x", "0", "-4"])
def test_bench_bad_batch_sizes_exit_2(ae_path, capsys, sizes):
    assert main(["bench", ae_path, "--batch-sizes", sizes]) == 2
    assert "--batch-sizes must be comma-separated positive integers" in _only_line(capsys.readouterr().err)


def test_progress_bar_draws_only_when_enabled():
    stream = io.StringIO()
    bar = ProgressBar(label="run ", stream=stream, enabled=True, interval=0)
    bar(5, 10)
    bar(10, 10)
    text = stream.getvalue()
    assert "run [###############---------------] 5/10 rows  50.0%" in text
    assert text.endswith("\n") and "10/10 rows 100.0%" in text
    quiet = io.StringIO()
    ProgressBar(stream=quiet)(1, 2)  # StringIO is not a terminal: disabled by default
    assert quiet.getvalue() == ""


def test_format_table_aligns_numbers_right():
    table = format_table(["name", "ms"], [["a", 1.5], ["long", 1234.0], ["c", None]])
    assert table.splitlines() == ["name     ms", "----  -----", "a      1.50",
                                  "long  1,234", "c       n/a"]


def test_a_one_array_npz_under_another_name_is_refused(ae_path, tmp_path, rng, capsys):
    x = rng.random((2, 8), dtype=np.float32)
    np.savez(tmp_path / "x.npz", wrong=x)
    out = tmp_path / "y.npz"
    assert main(["run", ae_path, "-i", str(tmp_path / "x.npz"), "-o", str(out)]) == 2
    line = _only_line(capsys.readouterr().err)
    assert "array named 'wrong', but the model's input is 'x'" in line, line
    assert not out.exists()
    np.savez(tmp_path / "x.npz", x=x)  # under the input's name it runs
    assert main(["run", ae_path, "-i", str(tmp_path / "x.npz"), "-o", str(out)]) == 0


def test_a_missing_provider_is_named_in_cli_words(ae_path, x_path, tmp_path, capsys):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA is available here: --provider cuda is not refused")
    assert main(["run", ae_path, "-i", x_path, "-o", str(tmp_path / "y.npy"), "--provider", "cuda"]) == 2
    line = _only_line(capsys.readouterr().err)
    assert "--provider auto" in line and "--provider cpu" in line and "providers=" not in line, line


def test_version_is_the_installed_distributions(capsys):
    from importlib import metadata

    import tiedonnx.runtime

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"tiedonnx {metadata.version('tiedonnx')}\n"
    assert tiedonnx.runtime.__version__ == metadata.version("tiedonnx")  # pyproject and __init__ agree


def test_version_of_a_source_tree_never_installed(monkeypatch):
    from importlib import metadata

    import tiedonnx.runtime

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert tiedonnx.runtime.installed_version() == "0+unknown"


def test_ort_refuses_an_output_name_onnxruntime_would_not_read_as_ort(ae_path, tmp_path, capsys):
    out = tmp_path / "y.onnx2"
    assert main(["ort", ae_path, "-o", str(out)]) == 2
    line = _only_line(capsys.readouterr().err)
    assert "must name an .ort file" in line and f"-o {tmp_path / 'y.ort'}" in line, line
    assert not out.exists()


def test_run_json_report(ae_path, x_path, tmp_path, capsys):
    out = tmp_path / "y.npy"
    assert main(["run", ae_path, "-i", x_path, "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["output"] == str(out) and report["rows"] == 10 and report["outputs"] == {"y": [10, 8]}


def test_inspect_drops_the_missing_git_hash_tf2onnx_writes(tmp_path, capsys):
    import onnx

    model = onnx.load(save(tied_ae(), tmp_path / "ae.onnx"))
    model.producer_name, model.producer_version = "tf2onnx", "1.17.0 None"  # as tf2onnx 1.17 writes it
    onnx.save(model, tmp_path / "p.onnx")
    assert main(["inspect", str(tmp_path / "p.onnx")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.endswith("producer tf2onnx 1.17.0"), first


def test_triton_serve_command_has_no_placeholder(ae_path, tmp_path, capsys):
    assert main(["triton", ae_path, str(tmp_path / "repo")]) == 0
    serve = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("serve:"))
    assert "<" not in serve and "nvcr.io/nvidia/tritonserver:${TRITON_TAG:-24.10}-py3" in serve
