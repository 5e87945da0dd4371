"""Subclassed models that declare no keras.Input: export says what it inferred and takes input_spec."""

from __future__ import annotations

import logging

import numpy as np
import pytest

keras = pytest.importorskip("keras")
onnx = pytest.importorskip("onnx")
pytest.importorskip("tf2onnx")

from tiedonnx.converter.errors import UsageError  # noqa: E402
from tiedonnx.converter.export import export  # noqa: E402
from tiedonnx.converter.input_specs import parse_input_spec  # noqa: E402
from tiedonnx.converter.signature import InputSpec  # noqa: E402
from tiedonnx.runtime.cli import main  # noqa: E402
from tiedonnx.runtime.graph import read_ties  # noqa: E402

from .models import dense_ae  # noqa: E402

VOCAB, DIM = 50, 8


class SubclassedTiedLM(keras.Model):
    """Embeds token ids and projects with the transposed embedding, in call()."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.emb = keras.layers.Embedding(VOCAB, DIM, name="emb")
        self.mix = keras.layers.Dense(DIM, activation="tanh", name="mix")

    def call(self, token_ids):
        return keras.ops.matmul(self.mix(self.emb(token_ids)), keras.ops.transpose(self.emb.embeddings))


def _lm(called: bool = True):
    keras.utils.set_random_seed(0)
    model = SubclassedTiedLM(name="sub_lm")
    if called:
        model(np.zeros((2, 5), "int32"))
    return model


def _dims(value) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_parse_input_spec():
    assert parse_input_spec("token_ids:int32:batch,sequence") == InputSpec(
        "token_ids", (None, None), "int32", axes=("batch", "sequence"))
    assert parse_input_spec("x:float32:n,28,28").shape == (None, 28, 28)
    for bad, match in [("token_ids:int32", "NAME:DTYPE:AXES"), ("t:str:batch", "non-numeric dtype"),
                       ("t:int32:1,sequence", "Axis 0 .* is the batch"), ("t:int32:batch,-3", "Axis '-3'"),
                       ("9t:int32:batch", "must start with a letter")]:
        with pytest.raises(UsageError, match=match):
            parse_input_spec(bad)


def test_inferred_inputs_are_reported(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="tiedonnx.converter.tf_convert"):
        export(_lm(), tmp_path / "m.onnx", verify=False)
    (line,) = [r.getMessage() for r in caplog.records if "declares no keras.Input" in r.getMessage()]
    assert "input float32 [batch, 5]" in line and "--input-spec input:int32:batch,sequence" in line


@pytest.mark.parametrize("called", [True, False], ids=["built-by-a-call", "never-called"])
def test_input_spec_declares_dtype_and_open_axes_for_export_and_parity(called, tmp_path, caplog):
    model = _lm(called)
    with caplog.at_level(logging.WARNING):
        report = export(model, tmp_path / "m.onnx", input_spec="token_ids:int32:batch,sequence")
    assert not [r for r in caplog.records if "declares no keras.Input" in r.getMessage()]
    proto = onnx.load(tmp_path / "m.onnx")
    (value,) = proto.graph.input
    assert (value.name, value.type.tensor_type.elem_type) == ("token_ids", onnx.TensorProto.INT32)
    assert _dims(value) == ["batch", "sequence"]
    # Parity ran on int32 ids at several lengths (the file takes any length now).
    assert report.parity.ok and report.parity.sequence_lengths == (1, 7, 33)
    (tie,) = read_ties(proto)
    assert [u.relation for u in tie.uses] == ["transpose"]


def test_verify_takes_the_inputs_from_the_file_for_a_model_that_declares_none(tmp_path):
    from tiedonnx.converter.parity import verify

    model = _lm()
    export(model, tmp_path / "m.onnx", input_spec="token_ids:int32:batch,sequence", verify=False)
    report = verify(model, str(tmp_path / "m.onnx"))  # no input_spec: int32 ids at lengths 1/7/33
    assert report.ok and report.sequence_lengths == (1, 7, 33)


def test_input_spec_count_must_match(tmp_path):
    with pytest.raises(UsageError, match=r"takes 1 input\(s\).*declares 2"):
        export(_lm(), tmp_path / "m.onnx", input_spec=["a:int32:batch,s", "b:int32:batch,s"])
    assert not (tmp_path / "m.onnx").exists()


def test_cli_refuses_a_malformed_input_spec_in_one_line(tmp_path, capsys):
    dense_ae().save(tmp_path / "model.keras")
    code = main(["export", str(tmp_path / "model.keras"), "-o", str(tmp_path / "m.onnx"),
                 "--input-spec", "pixels:float32"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "NAME:DTYPE:AXES" in err
    assert not (tmp_path / "m.onnx").exists()
