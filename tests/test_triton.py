"""Triton model repositories, checked field by field with Triton's own config schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from tests.triton_helpers import mixed_types as _mixed_types, model_config_pb2 as _model_config_pb2, parse as _parse, tied_ae as _tied_ae  # noqa: E402,F401
from tiedonnx.runtime.cli import main  # noqa: E402
from tiedonnx.runtime.errors import ModelFileError, OutputExistsError, UsageError  # noqa: E402
from tiedonnx.runtime.triton import (  # noqa: E402
    DEFAULT_MAX_BATCH_SIZE,
    MAX_QUEUE_DELAY_US,
    write_model_repository,
)


@pytest.fixture(scope="module")
def pb2():
    return _model_config_pb2()


def test_repository_layout_and_every_config_field(tmp_path, pb2):
    model = _tied_ae(tmp_path / "ae.onnx")
    report = write_model_repository(model, tmp_path / "repo", max_batch_size=128, instances=3)

    model_dir = tmp_path / "repo" / "ae"
    assert sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*")) == [
        "1", "1/model.onnx", "config.pbtxt"]
    # The tied file is copied byte for byte: still one initializer + a Transpose.
    assert (model_dir / "1" / "model.onnx").read_bytes() == model.read_bytes()
    copied = onnx.load(model_dir / "1" / "model.onnx")
    assert [t.name for t in copied.graph.initializer] == ["W"]
    assert [n.op_type for n in copied.graph.node].count("Transpose") == 1

    config = _parse(pb2, model_dir / "config.pbtxt")
    assert config.name == "ae"
    assert config.backend == "onnxruntime"
    assert config.platform == ""
    assert config.max_batch_size == 128
    assert config.default_model_filename == "model.onnx"
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("pixels", pb2.TYPE_FP32, [784])]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("out", pb2.TYPE_FP32, [784]), ("code", pb2.TYPE_FP32, [32])]
    assert not any(t.HasField("reshape") for t in [*config.input, *config.output])
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert config.dynamic_batching.max_queue_delay_microseconds == MAX_QUEUE_DELAY_US
    assert [(g.count, g.kind) for g in config.instance_group] == [
        (3, pb2.ModelInstanceGroup.KIND_CPU)]
    assert report.config_path == str(model_dir / "config.pbtxt")
    assert report.model_path == str(model_dir / "1" / "model.onnx")
    assert report.files == (report.model_path, report.config_path)  # config.pbtxt last
    assert report.kind == "KIND_CPU" and report.backend == "onnxruntime"
    assert report.execution_env is None and report.memory is None
    as_dict = report.as_dict()
    assert as_dict["inputs"] == [{"name": "pixels", "data_type": "TYPE_FP32", "dims": [784]}]
    assert as_dict["files"] == list(report.files) and as_dict["config"] == report.config
    json.dumps(as_dict)  # plain data, for --json


def test_gpu_name_and_defaults(tmp_path, pb2):
    model = _tied_ae(tmp_path / "ae.onnx")
    write_model_repository(model, tmp_path / "repo", name="tied-ae.v2", gpu=True)
    config = _parse(pb2, tmp_path / "repo" / "tied-ae.v2" / "config.pbtxt")
    assert config.name == "tied-ae.v2"
    assert config.max_batch_size == DEFAULT_MAX_BATCH_SIZE
    assert [(g.count, g.kind) for g in config.instance_group] == [
        (1, pb2.ModelInstanceGroup.KIND_GPU)]


def test_dtypes_ranks_and_rank1_reshape(tmp_path, pb2):
    write_model_repository(_mixed_types(tmp_path / "mixed.onnx"), tmp_path / "repo")
    config = _parse(pb2, tmp_path / "repo" / "mixed" / "config.pbtxt")
    got = {t.name: (t.data_type, list(t.dims), t.HasField("reshape"), list(t.reshape.shape))
           for t in [*config.input, *config.output]}
    assert got == {
        # [batch] -> dims [1] reshaped to [] (Triton needs non-empty dims).
        "ids": (pb2.TYPE_INT64, [1], True, []),
        "ids_out": (pb2.TYPE_INT64, [1], True, []),
        "mask": (pb2.TYPE_BOOL, [5], False, []),
        "mask_f16": (pb2.TYPE_FP16, [5], False, []),
        "img": (pb2.TYPE_UINT8, [3, -1, 8], False, []),
        "img_out": (pb2.TYPE_UINT8, [3, -1, 8], False, []),
    }


def test_unbatched_keeps_full_dims_and_no_batcher(tmp_path, pb2):
    model = _tied_ae(tmp_path / "ae.onnx", batch=1)
    write_model_repository(model, tmp_path / "repo", max_batch_size=0)
    config = _parse(pb2, tmp_path / "repo" / "ae" / "config.pbtxt")
    assert config.max_batch_size == 0
    assert [list(i.dims) for i in config.input] == [[1, 784]]
    assert [list(o.dims) for o in config.output] == [[1, 784], [1, 32]]
    assert config.WhichOneof("scheduling_choice") is None


def test_fixed_batch_dimension_needs_max_batch_size_zero(tmp_path):
    model = _tied_ae(tmp_path / "ae.onnx", batch=1)
    with pytest.raises(UsageError, match=r"input 'pixels' has shape \[1, 784\].*pass max_batch_size=0 to serve it unbatched"):
        write_model_repository(model, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_existing_files_need_force_and_are_not_touched(tmp_path):
    model = _tied_ae(tmp_path / "ae.onnx")
    write_model_repository(model, tmp_path / "repo", max_batch_size=8)
    config_path = tmp_path / "repo" / "ae" / "config.pbtxt"
    before = config_path.read_text()
    with pytest.raises(OutputExistsError, match=r"already exist.*force"):
        write_model_repository(model, tmp_path / "repo", max_batch_size=16)
    assert config_path.read_text() == before
    write_model_repository(model, tmp_path / "repo", max_batch_size=16, force=True)
    assert "max_batch_size: 16" in config_path.read_text()
    assert not list((tmp_path / "repo").rglob("*.tmp"))


@pytest.mark.parametrize("kwargs, message", [
    ({"max_batch_size": -1}, r"max_batch_size must be an integer >= 0.*Received: max_batch_size=-1"),
    ({"instances": 0}, r"instances must be a positive integer. Received: instances=0"),
    ({"name": "../escape"}, r"model name must start.*Received: name='../escape'"),
    ({"name": ".hidden"}, r"Received: name='.hidden'"),
])
def test_bad_options(tmp_path, kwargs, message):
    model = _tied_ae(tmp_path / "ae.onnx")
    with pytest.raises(UsageError, match=message):
        write_model_repository(model, tmp_path / "repo", **kwargs)


def test_bad_model_files(tmp_path):
    with pytest.raises(ModelFileError, match="Model file not found"):
        write_model_repository(tmp_path / "missing.onnx", tmp_path / "repo")
    (tmp_path / "junk.onnx").write_bytes(b"\xff\x00not a model")
    with pytest.raises(ModelFileError, match="not a readable ONNX model"):
        write_model_repository(tmp_path / "junk.onnx", tmp_path / "repo")
    # Decodes as protobuf but has no opset_import (onnxruntime would refuse it): refused too.
    graph = helper.make_graph([helper.make_node("Identity", ["a"], ["b"])], "g",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 2])],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", 2])])
    model = helper.make_model(graph)
    del model.opset_import[:]
    (tmp_path / "no_opset.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(ModelFileError,
                       match=r"parsed but is not an ONNX model \(no IR version, graph or opset\)"):
        write_model_repository(tmp_path / "no_opset.onnx", tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_names_with_quotes_round_trip(tmp_path, pb2):
    graph = helper.make_graph(
        [helper.make_node("Identity", ['in "x"\\'], ["out\u00e9"])], "g",
        [helper.make_tensor_value_info('in "x"\\', TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor_value_info("out\u00e9", TensorProto.FLOAT, ["n", 2])],
    )
    onnx.save(helper.make_model(graph), tmp_path / "q.onnx")
    write_model_repository(tmp_path / "q.onnx", tmp_path / "repo")
    config = _parse(pb2, tmp_path / "repo" / "q" / "config.pbtxt")
    assert [i.name for i in config.input] == ['in "x"\\']
    assert [o.name for o in config.output] == ["out\u00e9"]


def test_config_names_are_what_onnxruntime_serves(tmp_path, pb2):
    """The config's names/types are the ones the ONNX Runtime backend will find."""
    ort = pytest.importorskip("onnxruntime")
    model = _tied_ae(tmp_path / "ae.onnx")
    write_model_repository(model, tmp_path / "repo")
    config = _parse(pb2, tmp_path / "repo" / "ae" / "config.pbtxt")
    session = ort.InferenceSession(str(tmp_path / "repo" / "ae" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    assert [i.name for i in config.input] == [i.name for i in session.get_inputs()]
    assert [o.name for o in config.output] == [o.name for o in session.get_outputs()]
    assert [[-1, *i.dims] for i in config.input] == [
        [-1 if isinstance(d, str) else d for d in i.shape] for i in session.get_inputs()]


def test_cli(tmp_path, pb2, capsys):
    model = _tied_ae(tmp_path / "ae.onnx")
    repo = tmp_path / "repo"
    assert main(["triton", str(model), str(repo), "--name", "ae_cli", "--max-batch-size", "32",
                 "--instances", "2", "--gpu"]) == 0
    out = capsys.readouterr().out
    assert "config.pbtxt" in out and "--gpus=all" in out
    config = _parse(pb2, repo / "ae_cli" / "config.pbtxt")
    assert config.max_batch_size == 32
    assert [(g.count, g.kind) for g in config.instance_group] == [
        (2, pb2.ModelInstanceGroup.KIND_GPU)]
    # A second run without --force is refused with exit code 2 and one line.
    assert main(["triton", str(model), str(repo), "--name", "ae_cli"]) == 2
    assert "already exist" in capsys.readouterr().err


def test_command_module_is_import_light():
    """Building the CLI parser imports the triton command and, through it, the
    library's defaults: neither may pull numpy or onnx."""
    code = ("import sys, tiedonnx.runtime.commands.triton; "
            "print(sorted(m for m in ('numpy', 'onnx', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- CLI: refused cases exit 2 with one line and leave everything as it was --------------------

def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for folders)."""
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def _refused(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


@pytest.mark.parametrize("blocker", ["ae", "ae/1"])
def test_cli_model_or_version_folder_is_a_file(tmp_path, capsys, blocker):
    model = _tied_ae(tmp_path / "ae.onnx")
    repo = tmp_path / "repo"
    (repo / blocker).parent.mkdir(parents=True, exist_ok=True)
    (repo / blocker).write_bytes(b"someone else's file")
    before = _snapshot(repo)
    line = _refused(["triton", str(model), str(repo)], capsys)
    what = "Model folder" if blocker == "ae" else "Version folder"
    assert f"{what} {str(repo / blocker)!r} exists and is not a folder" in line
    assert _snapshot(repo) == before


@pytest.mark.parametrize("link", ["ae", "ae/1"])
def test_cli_refuses_folder_symlinks_inside_the_repository(tmp_path, capsys, link):
    """A model or version folder that is a symbolic link would send the files elsewhere."""
    model = _tied_ae(tmp_path / "ae.onnx")
    repo, elsewhere = tmp_path / "repo", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (repo / link).parent.mkdir(parents=True, exist_ok=True)
    (repo / link).symlink_to(elsewhere, target_is_directory=True)
    line = _refused(["triton", str(model), str(repo), "--force"], capsys)
    what = "Model folder" if link == "ae" else "Version folder"
    assert f"{what} {str(repo / link)!r} is a symbolic link" in line
    assert list(elsewhere.iterdir()) == []


def test_cli_refuses_an_empty_repository_path(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = _tied_ae(tmp_path / "ae.onnx")
    line = _refused(["triton", str(model), ""], capsys)
    assert "The repository folder is empty ('')" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ae.onnx"]


@pytest.mark.parametrize("folder", ["config.pbtxt", "1/model.onnx"])
def test_cli_force_checks_everything_before_writing(tmp_path, capsys, folder):
    """--force over a repository where one target is a folder: refused, and no other
    target was overwritten first."""
    repo = tmp_path / "repo"
    write_model_repository(_tied_ae(tmp_path / "ae.onnx"), repo, max_batch_size=8)
    target = repo / "ae" / folder
    target.unlink()
    target.mkdir()
    before = _snapshot(repo)
    (tmp_path / "other").mkdir()
    other = _tied_ae(tmp_path / "other" / "ae.onnx", batch="B")  # other bytes than the copy
    line = _refused(["triton", str(other), str(repo), "--force", "--max-batch-size", "16"], capsys)
    assert f"Triton model file paths are folders: {target}" in line
    assert _snapshot(repo) == before


@pytest.mark.parametrize("name", ["abc\n", "abc\r\n", "a/b", "\nabc", ""])
def test_cli_name_must_match_entirely(tmp_path, capsys, name):
    model = _tied_ae(tmp_path / "ae.onnx")
    line = _refused(["triton", str(model), str(tmp_path / "repo"), "--name", name], capsys)
    assert f"Received: name={name!r}" in line
    assert not (tmp_path / "repo").exists()


def test_cli_json_report(tmp_path, capsys):
    model = _tied_ae(tmp_path / "ae.onnx")
    assert main(["triton", str(model), str(tmp_path / "repo"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backend"] == "onnxruntime" and report["name"] == "ae"
    assert report["outputs"] == [{"name": "out", "data_type": "TYPE_FP32", "dims": [784]},
                                 {"name": "code", "data_type": "TYPE_FP32", "dims": [32]}]


# -- Python backend repositories ---------------------------------------------------------------

def test_python_backend_layout_config_and_model_py(tmp_path, pb2):
    model = _tied_ae(tmp_path / "ae.onnx")
    report = write_model_repository(model, tmp_path / "repo", backend="python", instances=2)
    model_dir = tmp_path / "repo" / "ae"
    assert sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*")) == [
        "1", "1/model.onnx", "1/model.py", "config.pbtxt"]
    assert report.files == (str(model_dir / "1" / "model.onnx"), str(model_dir / "1" / "model.py"),
                            str(model_dir / "config.pbtxt"))
    assert (model_dir / "1" / "model.onnx").read_bytes() == model.read_bytes()
    config = _parse(pb2, model_dir / "config.pbtxt")
    assert config.backend == "python" and config.default_model_filename == ""
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("pixels", pb2.TYPE_FP32, [784])]
    assert config.dynamic_batching.max_queue_delay_microseconds == MAX_QUEUE_DELAY_US
    assert [(g.count, g.kind) for g in config.instance_group] == [
        (2, pb2.ModelInstanceGroup.KIND_CPU)]
    params = {k: v.string_value for k, v in config.parameters.items()}
    # This environment, explicitly: the stub sources its bin/activate.
    assert params == {"EXECUTION_ENV_PATH": sys.prefix, "tiedonnx_memory": "lean"}
    assert report.execution_env == sys.prefix and report.memory == "lean"
    source = (model_dir / "1" / "model.py").read_text()
    compile(source, "model.py", "exec")
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert f"WRITTEN_FOR = {running!r}" in source
    assert "from tiedonnx.runtime.triton.serving import TritonPythonModel" in source


def test_python_backend_options(tmp_path, pb2):
    model = _tied_ae(tmp_path / "ae.onnx")
    write_model_repository(model, tmp_path / "repo", backend="python", python_env="server",
                           memory="fast", threads=2)
    config = _parse(pb2, tmp_path / "repo" / "ae" / "config.pbtxt")
    assert {k: v.string_value for k, v in config.parameters.items()} == {
        "tiedonnx_memory": "fast", "tiedonnx_threads": "2"}
    assert "WRITTEN_FOR = None" in (tmp_path / "repo" / "ae" / "1" / "model.py").read_text()
    # A venv folder: its pyvenv.cfg gives the Python version model.py checks.
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "activate").write_text("")
    (env / "pyvenv.cfg").write_text("home = /usr/bin\nversion_info = 3.12.4.final.0\n")
    write_model_repository(model, tmp_path / "repo", name="venv", backend="python",
                           python_env=env)
    config = _parse(pb2, tmp_path / "repo" / "venv" / "config.pbtxt")
    assert config.parameters["EXECUTION_ENV_PATH"].string_value == str(env)
    assert "WRITTEN_FOR = '3.12'" in (tmp_path / "repo" / "venv" / "1" / "model.py").read_text()


def test_python_backend_int8_runs_requests_one_by_one(tmp_path, pb2):
    from tiedonnx.runtime.graph.quantize import to_precision

    int8 = tmp_path / "ae_int8.onnx"
    onnx.save(to_precision(onnx.load(_tied_ae(tmp_path / "ae.onnx")), "int8"), int8)
    write_model_repository(int8, tmp_path / "repo", backend="python")
    write_model_repository(int8, tmp_path / "repo", name="ort")
    config = _parse(pb2, tmp_path / "repo" / "ae_int8" / "config.pbtxt")
    assert config.parameters["tiedonnx_merge_requests"].string_value == "false"
    assert "ae" not in [p.name for p in (tmp_path / "repo").iterdir()]
    assert not _parse(pb2, tmp_path / "repo" / "ort" / "config.pbtxt").parameters


@pytest.mark.parametrize("kwargs, message", [
    ({"python_env": "server"}, r"python_env applies to the Python backend only"),
    ({"memory": "lean", "threads": 2},
     r"memory, threads apply to the Python backend only. Received: memory='lean', threads=2"),
    ({"backend": "python", "python_env": "/nonexistent/env"},
     r"python_env must be a folder with bin/activate.*Received: python_env='/nonexistent/env'"),
    ({"backend": "python", "memory": "small", "threads": 0},
     r"threads must be a positive integer or None. Received: threads=0; memory must be one of"),
    ({"backend": "tensorrt"}, r"backend must be one of \['onnxruntime', 'python'\]"),
])
def test_backend_options_refused(tmp_path, kwargs, message):
    model = _tied_ae(tmp_path / "ae.onnx")
    with pytest.raises(UsageError, match=message):
        write_model_repository(model, tmp_path / "repo", **kwargs)
    assert not (tmp_path / "repo").exists()


def test_python_backend_refuses_strings(tmp_path):
    graph = helper.make_graph([helper.make_node("Identity", ["s"], ["t"])], "g",
                              [helper.make_tensor_value_info("s", TensorProto.STRING, ["n"])],
                              [helper.make_tensor_value_info("t", TensorProto.STRING, ["n"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              tmp_path / "s.onnx")
    with pytest.raises(UsageError, match=r"input 's' is TYPE_STRING.*output 't' is TYPE_STRING"):
        write_model_repository(tmp_path / "s.onnx", tmp_path / "repo", backend="python")
    write_model_repository(tmp_path / "s.onnx", tmp_path / "repo")  # the ORT backend takes it


def test_cli_python_backend(tmp_path, capsys):
    model = _tied_ae(tmp_path / "ae.onnx")
    assert main(["triton", str(model), str(tmp_path / "repo"), "--backend", "python",
                 "--memory", "fast"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'repo' / 'ae' / '1' / 'model.py'}" in out
    assert f"python environment: {sys.prefix}" in out and "memory=fast" in out
    line = _refused(["triton", str(model), str(tmp_path / "repo2"), "--threads", "2"], capsys)
    assert "threads applies to the Python backend only" in line


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception), ("", pytest.skip.Exception),
                                         ("false", pytest.skip.Exception)])
def test_a_triton_test_that_cannot_run_fails_under_ci_and_skips_elsewhere(monkeypatch, ci, outcome):
    from tests.triton_helpers import import_or_fail, skip_or_fail

    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="no local Triton server"):
        skip_or_fail("no local Triton server: offline")
    with pytest.raises(outcome, match="no_such_module cannot be imported"):
        import_or_fail("no_such_module", "pip install it")
