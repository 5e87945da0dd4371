"""Helpers shared by the Triton test modules (not a test module): Triton's config schema and a tied AE."""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

import onnx
from onnx import TensorProto, helper
import pytest

from tiedonnx.runtime.testing import tied_autoencoder


def under_ci() -> bool:
    """Whether the tests run in CI (``CI=true``, as GitHub Actions, GitLab and .ci/run set it)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def skip_or_fail(reason: str):
    """Skip locally; fail under CI, where a Triton test that cannot run is a broken setup,
    not a reason to report green."""
    if under_ci():
        pytest.fail(f"{reason} (CI=true: Triton tests must run in CI, not skip)", pytrace=False)
    pytest.skip(reason)


def import_or_fail(module: str, hint: str):
    """``pytest.importorskip`` that fails under CI (see :func:`skip_or_fail`)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        skip_or_fail(f"{module} cannot be imported ({exc}); {hint}")


def model_config_pb2():
    """Triton's ``model_config_pb2`` from the tritonclient package.

    Loaded from its file: ``import tritonclient.grpc`` also needs grpcio, and
    the schema is all this test needs.
    """
    spec = importlib.util.find_spec("tritonclient")
    if spec is None:
        skip_or_fail('tritonclient is not installed (pip install -e ".[triton]")')
    path = Path(spec.submodule_search_locations[0]) / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("_triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def parse(pb2, path: Path):
    from google.protobuf import text_format

    # text_format.Parse is strict: an unknown field or enum value raises.
    return text_format.Parse(path.read_text(), pb2.ModelConfig())


def tied_ae(path: Path, *, batch="N") -> Path:
    """784 -> 32 -> 784 tied autoencoder: one initializer W, decoder reads W^T."""
    onnx.save(tied_autoencoder(784, 32, seed=0, batch=batch, biases=False, input_name="pixels",
                               output_name="out", code_name="code", expose_code=True), path)
    return path


def mixed_types(path: Path) -> Path:
    """Several dtypes and ranks, a rank-1 [batch] tensor and an fp16 output."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["ids"], ["ids_out"]),
         helper.make_node("Cast", ["mask"], ["mask_f16"], to=TensorProto.FLOAT16),
         helper.make_node("Identity", ["img"], ["img_out"])],
        "mixed",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"]),
         helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", 5]),
         helper.make_tensor_value_info("img", TensorProto.UINT8, ["batch", 3, "h", 8])],
        [helper.make_tensor_value_info("ids_out", TensorProto.INT64, ["batch"]),
         helper.make_tensor_value_info("mask_f16", TensorProto.FLOAT16, ["batch", 5]),
         helper.make_tensor_value_info("img_out", TensorProto.UINT8, ["batch", 3, "h", 8])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path
