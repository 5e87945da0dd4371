"""Keep tf2onnx's memory near the model's size while it converts a large model.

Measured on GPT-2 base (500 MB of float32 weights; tf2onnx 1.17, protobuf 7
with its upb backend, scripts/bench_lm.py): plain ``from_function`` grew past
23 GB and was killed on a 24 GB machine. Two causes, both inside tf2onnx's
optimizer loop (about 25 optimizer passes):

1. Before each optimizer it deep-copies the whole graph, weights included, so
   it can roll back an optimizer that fails; the copies are cyclic and wait for
   the garbage collector. Its environment switch ``TF2ONNX_CATCH_ERRORS=FALSE``
   (what its own large-model mode does) runs the optimizers in place; an
   optimizer that fails then fails the conversion instead of being skipped.
2. After each optimizer, ``Node.update_proto`` clears and refills every node's
   ``NodeProto`` attributes. With upb, cleared sub-messages stay in the
   message's arena until the message itself is freed, so every pass leaves one
   more copy of every constant: +320 MB per pass for a 1-layer GPT-2 at
   vocabulary 50257. :func:`_fresh_update_proto` builds a new ``NodeProto``
   instead, so the old one (and its arena) is freed.

:func:`large_model_conversion` applies both for the duration of one
conversion and restores tf2onnx afterwards. It is used only above
:data:`LARGE_MODEL_BYTES` of weights, so small models convert exactly as plain
tf2onnx converts them.
"""

from __future__ import annotations

import contextlib
import logging
import os

logger = logging.getLogger(__name__)

__all__ = ["LARGE_MODEL_BYTES", "large_model_conversion"]

# Below this, the per-pass copies cost less than a second and a few hundred MB.
LARGE_MODEL_BYTES = 64 * 1024**2


def _fresh_update_proto(self, external_tensor_storage=None):
    """tf2onnx 1.17's ``Node.update_proto``, writing a new ``NodeProto`` instead of clearing the old one.

    Every field but the three that update_proto rewrites is carried over as it
    is, so a field onnx adds later is not dropped.
    """
    import onnx

    old = self._op
    op = onnx.NodeProto()
    for field, value in old.ListFields():
        if field.name in _REBUILT:
            continue
        if isinstance(value, (str, bytes)):
            setattr(op, field.name, value)
        else:  # repeated (metadata_props, device_configurations)
            getattr(op, field.name).extend(value)
    op.input.extend(self.input)
    op.output.extend(self.output)
    for attr_name, sub_graph in (self.get_body_graphs() or {}).items():
        graph_proto = sub_graph.make_graph("graph for " + self.name + " " + attr_name,
                                           external_tensor_storage=external_tensor_storage)
        self.set_attr(attr_name, graph_proto)
    attrs = list(self.get_onnx_attrs(external_tensor_storage).values())
    if attrs:
        op.attribute.extend(attrs)
    self._op = op


_REBUILT = ("input", "output", "attribute")


def check_patch(node_class=None, graph_class=None) -> None:
    """Refuse, in one line, a tf2onnx whose ``Node.update_proto`` the replacement would not match.

    tf2onnx 1.17.* is the version the replacement was written from. Another
    version passes if its ``update_proto`` and the replacement write the same
    ``NodeProto`` for a probe node carrying every optional field; anything else
    (a method gone, a field written differently) is a :class:`ConversionError`:
    converting a large model without the fix grew past 23 GB (see the module doc).

    Raises:
        ConversionError: this tf2onnx is not one the replacement is known to match.
    """
    import tf2onnx
    from tf2onnx.graph import Graph, Node

    from .errors import ConversionError

    node_class, graph_class = node_class or Node, graph_class or Graph
    version = getattr(tf2onnx, "__version__", "?")
    try:
        matches = version.startswith("1.17.") or _same_proto(node_class, graph_class)
    except Exception as exc:  # noqa: BLE001 - any failure of the probe means "not known to match"
        matches, version = False, f"{version} ({type(exc).__name__}: {exc})"
    if not matches:
        raise ConversionError(
            f"tf2onnx {version} changed Node.update_proto, which tiedonnx replaces to keep memory "
            "near the model's size while converting a large model. Install tf2onnx 1.17 "
            "(pip install 'tf2onnx~=1.17.0') to convert this model.")


def _same_proto(node_class, graph_class) -> bool:
    """Whether tf2onnx's update_proto and the replacement write the same NodeProto for a probe node."""
    written = []
    for update in (node_class.update_proto, _fresh_update_proto):
        graph = graph_class([], opset=13)
        node = graph.make_node("LeakyRelu", ["a"], attr={"alpha": 0.5}, name="probe")
        fields = {f.name for f in node._op.DESCRIPTOR.fields}
        node._op.doc_string = "doc"
        if "overload" in fields:  # onnx >= 1.16
            node._op.overload = "probe"
        if "metadata_props" in fields:
            node._op.metadata_props.add(key="k", value="v")
        node.input = ["b"]
        update(node)
        written.append(node._op.SerializeToString())
    return written[0] == written[1]


@contextlib.contextmanager
def large_model_conversion():
    """Run one tf2onnx conversion with optimizers in place and fresh node protos (see the module doc)."""
    from tf2onnx import constants
    from tf2onnx.graph import Node

    key = constants.ENV_TF2ONNX_CATCH_ERRORS
    before_env = os.environ.get(key)
    check_patch(Node)
    original = Node.update_proto
    os.environ[key] = "FALSE"
    Node.update_proto = _fresh_update_proto
    logger.info("large model: tf2onnx optimizers run in place, node protos rebuilt (memory)")
    try:
        yield
    finally:
        Node.update_proto = original
        if before_env is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before_env
