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
    """tf2onnx 1.17's ``Node.update_proto``, writing a new ``NodeProto`` instead of clearing the old one."""
    import onnx

    old = self._op
    op = onnx.NodeProto(name=old.name, op_type=old.op_type, domain=old.domain, doc_string=old.doc_string)
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


def _patchable(node_class) -> bool:
    """Whether tf2onnx's Node still has the shape :func:`_fresh_update_proto` relies on."""
    needed = ("update_proto", "get_body_graphs", "get_onnx_attrs", "set_attr", "input", "output")
    return all(hasattr(node_class, name) for name in needed)


@contextlib.contextmanager
def large_model_conversion():
    """Run one tf2onnx conversion with optimizers in place and fresh node protos (see the module doc)."""
    from tf2onnx import constants
    from tf2onnx.graph import Node

    key = constants.ENV_TF2ONNX_CATCH_ERRORS
    before_env = os.environ.get(key)
    original = Node.update_proto
    os.environ[key] = "FALSE"
    patched = _patchable(Node)
    if patched:
        Node.update_proto = _fresh_update_proto
    else:
        logger.warning("tf2onnx's Node changed shape; converting without the node-proto memory fix")
    logger.info("large model: tf2onnx optimizers run in place, node protos rebuilt (memory)")
    try:
        yield
    finally:
        Node.update_proto = original
        if before_env is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before_env
