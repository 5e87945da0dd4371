"""Dynamic axes get symbolic names a reader can use, not tf2onnx's ``unk__N``.

Axis 0 is ``batch``; axis 1 of per-token inputs (``token_ids``, ``padding_mask``)
is ``sequence``, the same name on every input that has it and on every output
axis that follows it; any other open axis is ``<input>_axis<i>``.
"""

from __future__ import annotations

import pytest

keras = pytest.importorskip("keras")
onnx = pytest.importorskip("onnx")
pytest.importorskip("tf2onnx")

from tiedonnx.converter.export import export  # noqa: E402
from tiedonnx.converter.signature import InputSpec, axis_names  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:You are using a softmax over axis")


def _dims(value) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def _io_dims(path) -> dict[str, list]:
    graph = onnx.load(path).graph
    return {v.name: _dims(v) for v in [*graph.input, *graph.output]}


def test_per_token_inputs_share_one_sequence_name_per_prefix():
    specs = [InputSpec("token_ids", (None, None), "int32"), InputSpec("padding_mask", (None, None), "int32"),
             InputSpec("encoder_token_ids", (None, None), "int32"),
             InputSpec("encoder_padding_mask", (None, None), "bool"),
             InputSpec("decoder_token_ids", (None, None), "int32"),
             InputSpec("frames", (None, None, 8), "float32"), InputSpec("x/0", (None, 5, None), "float32")]
    assert axis_names(specs) == {
        "token_ids": ["batch", "sequence"], "padding_mask": ["batch", "sequence"],
        "encoder_token_ids": ["batch", "encoder_sequence"],
        "encoder_padding_mask": ["batch", "encoder_sequence"],
        "decoder_token_ids": ["batch", "decoder_sequence"],
        # Keras does not say whether other open axes are shared: one name each.
        "frames": ["batch", "frames_axis1", None], "x/0": ["batch", None, "x_0_axis2"],
    }


def _masked_tagger():
    """{token_ids, padding_mask}[batch, sequence] -> tags[batch, sequence, 3] and pooled[batch, 3]."""
    ids = keras.Input((None,), dtype="int32", name="token_ids")
    mask = keras.Input((None,), dtype="int32", name="padding_mask")
    h = keras.layers.Embedding(11, 4)(ids) * keras.ops.expand_dims(keras.ops.cast(mask, "float32"), -1)
    tags = keras.layers.Dense(3, name="tags")(h)
    pooled = keras.layers.Dense(3, name="pooled")(keras.layers.GlobalAveragePooling1D()(h))
    return keras.Model({"token_ids": ids, "padding_mask": mask}, [tags, pooled])


def test_exported_sequence_model_names_its_axes(tmp_path):
    keras.utils.set_random_seed(0)
    export(_masked_tagger(), tmp_path / "m.onnx")
    dims = _io_dims(tmp_path / "m.onnx")
    assert dims == {"token_ids": ["batch", "sequence"], "padding_mask": ["batch", "sequence"],
                    "tags": ["batch", "sequence", 3], "pooled": ["batch", 3]}


def test_an_output_axis_that_follows_no_input_keeps_a_name_of_its_own(tmp_path):
    """frames[batch, n, 4] -> twice[batch, 2n, 4]: open, but not the input's axis."""
    keras.utils.set_random_seed(0)
    frames = keras.Input((None, 4), name="frames")
    twice = keras.layers.Dense(4, name="twice")(keras.layers.Concatenate(axis=1)([frames, frames]))
    same = keras.layers.Dense(2, name="same")(frames)
    export(keras.Model(frames, [twice, same]), tmp_path / "f.onnx")
    dims = _io_dims(tmp_path / "f.onnx")
    assert dims == {"frames": ["batch", "frames_axis1", 4], "twice": ["batch", "twice_axis1", 4],
                    "same": ["batch", "frames_axis1", 2]}


def test_keras_hub_lm_inputs_and_logits_share_the_sequence_axis(tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(0)
    m = keras_hub.models
    lm = m.GPT2CausalLM(m.GPT2Backbone(vocabulary_size=97, num_layers=1, num_heads=2, hidden_dim=8,
                                       intermediate_dim=16, max_sequence_length=64), preprocessor=None)
    export(lm, tmp_path / "lm.onnx", verify=False)
    dims = _io_dims(tmp_path / "lm.onnx")
    assert dims["token_ids"] == dims["padding_mask"] == ["batch", "sequence"]
    (logits,) = [v for k, v in dims.items() if k not in ("token_ids", "padding_mask")]
    assert logits == ["batch", "sequence", 97]


def test_only_rank_2_per_token_inputs_share_the_sequence_name():
    """A [batch, q, k] attention mask is not per token: claiming ``sequence`` for its axis 1 would
    say it must match token_ids' length."""
    specs = [InputSpec("token_ids", (None, None), "int32"),
             InputSpec("attention_mask", (None, None, None), "int32")]
    assert axis_names(specs) == {"token_ids": ["batch", "sequence"],
                                 "attention_mask": ["batch", "attention_mask_axis1", "attention_mask_axis2"]}


def test_an_output_axis_0_that_is_not_the_batch_is_not_called_batch(tmp_path):
    """Concatenating along axis 0 doubles the rows: the output's axis 0 follows no input axis."""
    x = keras.Input((4,), name="x")
    y = keras.layers.Dense(3, name="d")(keras.layers.Concatenate(axis=0)([x, x]))
    export(keras.Model(x, y), tmp_path / "m.onnx")
    dims = _io_dims(tmp_path / "m.onnx")
    assert dims["x"] == ["batch", 4]
    assert dims[next(n for n in dims if n != "x")][0] not in ("batch", 0)
