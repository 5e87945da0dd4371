"""Each private API tiedonnx calls is guarded: its disappearance is simulated here.

* ``InferenceSession._sess.run`` (runtime/fast_run.py): probed at load, the public ``run`` otherwise;
* ``onnxruntime.capi._pybind_state.quantize_matmul_4bits`` (graph/int4_blocks.py): one ConversionError;
* tf2onnx's ``Node.update_proto``, replaced for large models (converter/_tf2onnx_large.py): pinned
  to 1.17.*, another version passes only if a probe node comes out the same;
* TensorFlow's ``FuncGraph.captures`` (converter/tf_convert.py): one ConversionError if it changes;
* onnx's private ``external_data_helper._get_all_tensors``: no longer called; the tensors
  ``model_file.loaded_tensors`` returns are checked against it while it exists.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tiedonnx.runtime.errors import ConversionError
from tiedonnx.runtime.testing import tied_autoencoder


# --- InferenceSession._sess.run -----------------------------------------------------------

class _ChangedNative:
    """An ``_sess`` whose ``run`` takes other arguments (as pybind11 reports: TypeError)."""

    def __init__(self):
        self.calls = 0

    def run(self, *args):
        self.calls += 1
        raise TypeError("run(): incompatible function arguments")


class _Session:
    """A real session seen through a proxy whose private ``_sess`` is replaced (or gone)."""

    def __init__(self, real, native):
        self._real, self._sess = real, native

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.mark.parametrize("native", [_ChangedNative(), None], ids=["changed", "gone"])
def test_tied_model_runs_through_public_run_when_sess_run_changed(native, rng):
    from tiedonnx.runtime.session import TiedModel

    proto = tied_autoencoder(8, 3)
    real = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    model = TiedModel(_Session(real, native), path="m.onnx", memory="fast")
    for rows in (1, 5):  # one row: the private I/O binding path; five: the plain fast path
        x = rng.random((rows, 8), dtype=np.float32)
        want = real.run(None, {real.get_inputs()[0].name: x})[0]
        np.testing.assert_array_equal(model.run(x)["y"], want)
        np.testing.assert_array_equal(model.run(x, batch_size=2)["y"], want)
    if native is not None:
        assert native.calls == 1  # probed once at load, never called again


def test_the_probe_accepts_the_real_binding():
    from tiedonnx.runtime.fast_run import session_runner

    real = ort.InferenceSession(tied_autoencoder(8, 3).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    assert session_runner(real) != real.run  # the private path is taken where it works


# --- capi._pybind_state.quantize_matmul_4bits ---------------------------------------------

def test_int4_without_the_private_kernel_is_one_conversion_error(monkeypatch):
    from onnxruntime.capi import _pybind_state

    from tiedonnx.runtime.graph.int4_blocks import quantize_blocks

    monkeypatch.delattr(_pybind_state, "quantize_matmul_4bits")
    with pytest.raises(ConversionError, match=r"has no usable quantize_matmul_4bits .*ImportError"
                                              r".*or use precision int8\.$"):
        quantize_blocks(np.ones((4, 32), np.float32), block_size=32, symmetric=True)


def test_int4_with_changed_kernel_arguments_is_one_conversion_error(monkeypatch):
    from onnxruntime.capi import _pybind_state

    from tiedonnx.runtime.graph.int4_blocks import quantize_blocks

    def changed(*args):
        raise TypeError("quantize_matmul_4bits(): incompatible function arguments.\n1. (...)")

    monkeypatch.setattr(_pybind_state, "quantize_matmul_4bits", changed)
    with pytest.raises(ConversionError, match=r"TypeError: quantize_matmul_4bits\(\): incompatible "
                                              r"function arguments\.\)") as info:
        quantize_blocks(np.ones((4, 32), np.float32), block_size=32, symmetric=True)
    assert "\n" not in str(info.value)


# --- tf2onnx Node.update_proto --------------------------------------------------------------

def test_another_tf2onnx_with_the_same_update_proto_passes(monkeypatch):
    pytest.importorskip("tf2onnx")
    import tf2onnx

    from tiedonnx.converter._tf2onnx_large import check_patch

    monkeypatch.setattr(tf2onnx, "__version__", "1.18.0")
    check_patch()  # the probe node comes out the same: no error


def test_another_tf2onnx_whose_update_proto_writes_more_is_refused(monkeypatch):
    pytest.importorskip("tf2onnx")
    import tf2onnx
    from tf2onnx.graph import Node

    from tiedonnx.converter._tf2onnx_large import check_patch

    class NewNode(Node):  # a later update_proto that also writes a field
        def update_proto(self, external_tensor_storage=None):
            Node.update_proto(self, external_tensor_storage)  # the probe node is a plain Node
            self._op.doc_string = "written by a newer tf2onnx"

    monkeypatch.setattr(tf2onnx, "__version__", "1.18.0")
    with pytest.raises(ConversionError, match=r"tf2onnx 1\.18\.0 changed Node\.update_proto.*"
                                              r"pip install 'tf2onnx~=1\.17\.0'"):
        check_patch(NewNode)


def test_a_tf2onnx_node_without_update_proto_is_refused(monkeypatch):
    pytest.importorskip("tf2onnx")
    import tf2onnx
    from tf2onnx.graph import Node

    from tiedonnx.converter._tf2onnx_large import check_patch

    monkeypatch.setattr(tf2onnx, "__version__", "2.0.0")
    monkeypatch.delattr(Node, "update_proto")
    with pytest.raises(ConversionError, match=r"tf2onnx 2\.0\.0 \(AttributeError: .*changed Node"):
        check_patch()


def test_the_replacement_keeps_every_field_update_proto_does_not_rewrite():
    pytest.importorskip("tf2onnx")
    from tf2onnx.graph import Graph

    from tiedonnx.converter._tf2onnx_large import _fresh_update_proto

    node = Graph([], opset=13).make_node("LeakyRelu", ["a"], attr={"alpha": 0.5}, name="n")
    node._op.doc_string, node._op.overload = "doc", "ov"
    node._op.metadata_props.add(key="k", value="v")
    _fresh_update_proto(node)
    assert (node._op.doc_string, node._op.overload) == ("doc", "ov")
    assert [(p.key, p.value) for p in node._op.metadata_props] == [("k", "v")]
    assert [a.name for a in node._op.attribute] == ["alpha"] and list(node._op.input) == ["a"]


# --- FuncGraph.captures ----------------------------------------------------------------------

def test_captured_values_read_the_public_captures():
    tf = pytest.importorskip("tensorflow")

    from tiedonnx.converter.tf_convert import captured_values

    scale = tf.constant([2.0, 3.0])
    concrete = tf.function(lambda x: x * scale).get_concrete_function(tf.TensorSpec([2]))
    (value,) = captured_values(concrete).values()
    np.testing.assert_array_equal(value.numpy(), [2.0, 3.0])


def test_captured_values_without_captures_is_one_conversion_error():
    pytest.importorskip("tensorflow")
    from types import SimpleNamespace

    from tiedonnx.converter.tf_convert import captured_values

    concrete = SimpleNamespace(graph=SimpleNamespace())  # a FuncGraph that lost `captures`
    with pytest.raises(ConversionError, match=r"FuncGraph\.captures is not a list of \(value, "
                                              r"placeholder\) pairs \(AttributeError"):
        captured_values(concrete)


# --- onnx's _get_all_tensors ------------------------------------------------------------------

def _model_with_every_tensor_kind() -> onnx.ModelProto:
    """Initializers, a Constant, a subgraph's Constant, a local function's Constant, a sparse
    initializer and a training graph's initializer: onnx's loader reads the first four kinds."""
    def const(name, value):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(
            np.full(4, value, np.float32), name + "_t"))

    branch = helper.make_graph([const("b", 2.0)], "then", [],
                               [helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])])
    nodes = [const("c", 1.0), helper.make_node("If", ["cond"], ["i"], then_branch=branch,
                                               else_branch=branch),
             helper.make_node("F", ["x"], ["f"], domain="local")]
    function = helper.make_function("local", "F", ["x"], ["y"], [const("k", 3.0),
                                    helper.make_node("Add", ["x", "k"], ["y"])],
                                    [helper.make_opsetid("", 17)])
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.ones(2, np.float32), "s"),
                                       numpy_helper.from_array(np.array([0, 3], np.int64)), [4])
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("f", TensorProto.FLOAT, [4])],
                              [numpy_helper.from_array(np.zeros(4, np.float32), "W"),
                               numpy_helper.from_array(np.array(True), "cond")],
                              sparse_initializer=[sparse])
    model = helper.make_model(graph, functions=[function], opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
    training = model.training_info.add()
    training.initialization.initializer.append(numpy_helper.from_array(np.ones(4, np.float32), "T"))
    return model


def test_loaded_tensors_are_the_tensors_onnx_loader_reads():
    helper_module = pytest.importorskip("onnx.external_data_helper")
    if not hasattr(helper_module, "_get_all_tensors"):
        pytest.skip("onnx no longer has the private list this is checked against")
    from tiedonnx.runtime.model_file import loaded_tensors

    model = _model_with_every_tensor_kind()
    ours = sorted(t.name for t in loaded_tensors(model))
    assert ours == sorted(t.name for t in helper_module._get_all_tensors(model))
    assert ours == ["W", "b_t", "b_t", "c_t", "cond", "k_t"]  # the If has one branch twice
