"""Mixture-of-experts LMs (QwenMoe, Qwen3Moe with tied embeddings) at every precision.

Tiny configurations (2 layers, hidden 32, 4 experts of width 32, vocabulary 97,
seeded random weights; nothing is downloaded). The experts' kernels are one
stacked ``[4, 32, 32]`` weight read by a 3-D ``MatMul``: int8 per-channel once
wrote a ``MatMulInteger`` with zero points onnxruntime refuses, and int4 once
failed its own tie proof on two equal one-byte zero points.
"""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
keras_hub = pytest.importorskip("keras_hub", reason="KerasHub is not installed (pip install 'keras-hub>=0.32')")
onnx = pytest.importorskip("onnx")

from tiedonnx.converter.export import export  # noqa: E402
from tiedonnx.runtime.graph import read_ties  # noqa: E402
from tiedonnx.runtime.graph.duplicates import MIN_DUPLICATE_BYTES, find_duplicates  # noqa: E402
from tiedonnx.runtime.graph.inspect import inspect_model  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:You are using a softmax over axis")

VOCAB, HIDDEN, EXPERTS = 97, 32, 4


def _moe(kind: str):
    keras.utils.set_random_seed(0)
    m = keras_hub.models
    common = dict(vocabulary_size=VOCAB, num_layers=2, num_query_heads=2, num_key_value_heads=1,
                  hidden_dim=HIDDEN, intermediate_dim=32, moe_intermediate_dim=32, num_experts=EXPERTS,
                  top_k=2, tie_word_embeddings=True)
    if kind == "qwen_moe":
        return m.QwenMoeCausalLM(m.QwenMoeBackbone(shared_expert_intermediate_dim=16, **common),
                                 preprocessor=None)
    return m.Qwen3MoeCausalLM(m.Qwen3MoeBackbone(head_dim=8, **common), preprocessor=None)


def _stacked(proto) -> set[str]:
    """The experts' kernels, [experts, 32, 32] (int4's packed uint8 MatMulNBits weights are 3-D too)."""
    return {i.name for i in proto.graph.initializer if list(i.dims) == [EXPERTS, 32, 32]}


def _full_range_ok() -> bool:
    """Full-range int8 weights are for CPUs with VNNI or ARM (README): without them onnxruntime's
    u8s8 kernels saturate (measured here on an AVX2-only EPYC: logits 0.055-0.070 off, over the bound)."""
    from tiedonnx.runtime.providers import cpu_has_int8_dot

    return cpu_has_int8_dot() is True


OPTIONS = {
    "int8 per-channel": dict(precision="int8", per_channel=True,
                             reduce_range=False if _full_range_ok() else None),
    "int4": dict(precision="int4"),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["qwen_moe", "qwen3_moe"])
@pytest.mark.parametrize("variant", list(OPTIONS))
def test_moe_exports_verified_with_one_tie(kind, variant, tmp_path):
    report = export(_moe(kind), tmp_path / "moe.onnx", **OPTIONS[variant])  # default verification
    assert report.parity.ok
    proto = onnx.load(tmp_path / "moe.onnx")
    info = inspect_model(proto)
    assert info.ties_ok and not info.untied_duplicates
    (tie,) = [t for t in read_ties(proto) if t.keras]
    assert tie.keras["variable"].endswith("token_embedding/embeddings")
    stacked = _stacked(proto)
    assert stacked, "the experts' stacked kernels are in the file"
    # They stay float32, read by a plain MatMul (onnxruntime's integer kernels take 2-D weights).
    readers = {n.op_type for n in proto.graph.node if set(n.input) & stacked}
    assert readers == {"MatMul"}
    assert {i.data_type for i in proto.graph.initializer if i.name in stacked} == {onnx.TensorProto.FLOAT}
    if variant == "int4":  # the 2-D weights around them are 4-bit
        assert any(n.op_type == "MatMulNBits" for n in proto.graph.node)
    else:
        assert any(n.op_type == "MatMulInteger" for n in proto.graph.node)


def test_tiny_equal_constants_are_not_duplicates():
    one_byte = {"zp_a": np.array([[135]], np.uint8), "zp_b": np.array([[135]], np.uint8)}
    assert find_duplicates(one_byte) == []  # the MoE int4 pair: not a tie
    assert [d.copy for d in find_duplicates(one_byte, min_bytes=0)] == ["zp_b"]
    # The smallest real tie (a 4x2 float32 kernel, 32 bytes) is still found.
    kernel = np.arange(8, dtype=np.float32).reshape(4, 2)
    assert [d.relation for d in find_duplicates({"w": kernel, "wt": kernel.T.copy()})] == ["transpose"]
    assert kernel.nbytes >= MIN_DUPLICATE_BYTES > one_byte["zp_a"].nbytes
