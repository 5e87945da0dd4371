"""The hand-built graphs the runtime tests use are what they claim to be."""

import onnx

from tests.graphs import int_model, tied_ae, total_sum, two_inputs


def test_builders_pass_the_full_checker():
    for model in (tied_ae(), tied_ae(rank=3), two_inputs(), int_model(), total_sum()):
        onnx.checker.check_model(model, full_check=True)


def test_tied_ae_stores_the_tie_once_with_a_transpose_node():
    model = tied_ae()
    assert [i.name for i in model.graph.initializer] == ["W", "b1", "b2"]
    transposes = [n for n in model.graph.node if n.op_type == "Transpose"]
    assert [(n.input[0], n.output[0]) for n in transposes] == [("W", "W__T")]
