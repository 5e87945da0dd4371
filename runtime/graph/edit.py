"""The one home for ONNX graph surgery: every pass edits graphs through these.

Each helper edits in place and knows about subgraphs (``If``/``Loop``/``Scan``
bodies may read outer values), so no pass can rename or drop a tensor that a
subgraph still reads. Modelled on onnxruntime's quantizer, which edits graphs
only through its ``ONNXModel`` wrapper. Given ``index=`` (a
:class:`.index.GraphIndex`), a helper keeps it correct, so a pass that looks
readers up per weight builds the index once.

Removals delete by position: rebuilding a repeated field copies every message
kept (weights included) and detaches the nodes a pass holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import onnx
from onnx import helper

if TYPE_CHECKING:  # pragma: no cover
    from .index import GraphIndex

__all__ = [
    "FP16_MAX", "MS_DOMAIN", "add_initializers", "attribute", "consumers", "copy_model", "drop_dead_nodes",
    "drop_unread_chain", "gathers_rows", "insert_after", "iter_graphs", "main_opset", "prepend_nodes",
    "producers", "relative_perm", "remove_initializers", "remove_nodes", "rename_uses", "replace_repeated",
    "set_inputs", "subgraphs", "transpose_perm", "used_names", "value_ranks",
]

#: onnxruntime's contrib-op domain (MatMulNBits, GatherBlockQuantized, QGemm).
MS_DOMAIN = "com.microsoft"
#: The largest finite float16 (65504): weights beyond it cannot be stored as float16.
FP16_MAX = 65504.0


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A deep copy of ``model``: what a pipeline makes once at its entry (see :mod:`.passes`)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def attribute(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """The value of ``node``'s attribute ``name`` (ints as a list, a graph as a GraphProto), or ``default``."""
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


#: onnxruntime's fused ops (no ONNX schema, so shape inference stops there) whose listed outputs have
#: their first input's rank: the generation decoder's normalizations and attention.
SAME_RANK_FUSED_OPS = {"SkipSimplifiedLayerNormalization": (0, 3), "SkipLayerNormalization": (0, 3),
                       "SimplifiedLayerNormalization": (0,), "GroupQueryAttention": (0,)}


def value_ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Rank of every initializer and of every value ONNX shape inference can tell (main graph),
    and of the outputs of :data:`SAME_RANK_FUSED_OPS`."""
    from onnx import shape_inference

    graph = shape_inference.infer_shapes(model).graph
    ranks = {init.name: len(init.dims) for init in graph.initializer}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        tensor = info.type.tensor_type
        if tensor.HasField("shape"):
            ranks[info.name] = len(tensor.shape.dim)
    for node in graph.node:
        rank = ranks.get(node.input[0]) if node.input else None
        if node.op_type in SAME_RANK_FUSED_OPS and rank is not None:
            for i in SAME_RANK_FUSED_OPS[node.op_type]:
                if i < len(node.output) and node.output[i]:
                    ranks.setdefault(node.output[i], rank)
    return ranks


def replace_repeated(field, items: Iterable) -> None:
    """Set a repeated protobuf field (``graph.node``, ``graph.initializer``...) to ``items``."""
    items = list(items)  # may be a generator over the field itself
    del field[:]
    field.extend(items)


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs held by ``node``'s attributes (one level)."""
    found = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            found.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            found.extend(attr.graphs)
    return found


def iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph below it, depth first."""
    yield graph
    for node in graph.node:
        for sub in subgraphs(node):
            yield from iter_graphs(sub)


def used_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name read by a node of ``graph`` or of its subgraphs, and its outputs."""
    names = {o.name for o in graph.output}
    for g in iter_graphs(graph):
        for node in g.node:
            names.update(node.input)
    names.discard("")
    return names


def consumers(graph: onnx.GraphProto, name: str) -> list[onnx.NodeProto]:
    """Nodes of ``graph`` itself (not subgraphs) that read ``name``.

    One scan of every node: inside a loop, build a :class:`.index.GraphIndex` once instead.
    """
    return [n for n in graph.node if name in n.input]


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Output name -> the node of ``graph`` that produces it."""
    return {out: node for node in graph.node for out in node.output}


def rename_uses(graph: onnx.GraphProto, renames: dict[str, str], *, index: GraphIndex | None = None) -> None:
    """Make every reader of ``old`` read ``new`` instead, subgraphs included.

    A graph output cannot simply be renamed (callers know it by name): it keeps
    its name through an ``Identity`` of the new tensor.
    """
    if not renames:
        return
    for g in iter_graphs(graph):
        for node in g.node:
            if any(name in renames for name in node.input):
                set_inputs(node, [renames.get(name, name) for name in node.input],
                           index=index if g is graph else None)
    for output in graph.output:
        if output.name in renames:
            graph.node.append(helper.make_node(
                "Identity", [renames[output.name]], [output.name],
                name=f"tiedonnx/identity/{output.name}"))
            if index is not None:
                index.add_node(graph.node[-1])
    if index is not None and index.subgraph_reads & renames.keys():
        index.subgraph_reads = (index.subgraph_reads - renames.keys()) | {
            renames[n] for n in index.subgraph_reads & renames.keys()}


def _delete_where(field, drop: Callable[[Any], bool]) -> list:
    """Delete the items of a repeated field for which ``drop`` is true, by position.

    ``del field[i]`` moves pointers only; rebuilding the field (:func:`replace_repeated`)
    copies every message kept, weights included (1.25 s per rebuild of 340 MB of
    initializers, upb protobuf), and detaches the nodes a pass holds.
    """
    positions = [i for i, item in enumerate(field) if drop(item)]
    gone = [field[i] for i in positions]
    for i in reversed(positions):
        del field[i]
    return gone


def remove_initializers(graph: onnx.GraphProto, names: set[str] | Callable[[onnx.TensorProto], bool], *,
                        index: GraphIndex | None = None) -> int:
    """Drop initializers (and graph inputs of the same name); return how many went.

    ``names`` is a set of names or a predicate over the initializer.
    """
    drop = names if callable(names) else (lambda init: init.name in names)
    gone = {i.name for i in _delete_where(graph.initializer, drop)}
    if gone:
        _delete_where(graph.input, lambda value: value.name in gone)
        if index is not None:
            for name in gone:
                index.initializers.pop(name, None)
    return len(gone)


def remove_nodes(graph: onnx.GraphProto, nodes: Iterable[onnx.NodeProto], *,
                 index: GraphIndex | None = None) -> None:
    """Remove ``nodes`` (node objects of ``graph``) without copying the others."""
    doomed = {id(n): n for n in nodes}
    if doomed:
        _delete_where(graph.node, lambda node: id(node) in doomed)
        if index is not None:
            for node in doomed.values():
                index.drop_node(node)


def prepend_nodes(graph: onnx.GraphProto, nodes: Iterable[onnx.NodeProto], *,
                  index: GraphIndex | None = None) -> None:
    """Put ``nodes`` first: only for nodes that read initializers alone."""
    for position, node in enumerate(list(nodes)):
        graph.node.insert(position, node)
        if index is not None:
            index.add_node(graph.node[position])


def insert_after(graph: onnx.GraphProto, anchor: onnx.NodeProto, node: onnx.NodeProto, *,
                 index: GraphIndex | None = None) -> None:
    """Insert ``node`` right after ``anchor`` (a node of ``graph``)."""
    position = next(i for i, n in enumerate(graph.node) if n is anchor) + 1
    graph.node.insert(position, node)
    if index is not None:
        index.add_node(graph.node[position])


def set_inputs(node: onnx.NodeProto, inputs: Iterable[str], *, index: GraphIndex | None = None) -> None:
    """Make ``node`` read ``inputs`` (the index, if given, follows)."""
    if index is not None:
        index.drop_node(node)
    replace_repeated(node.input, inputs)
    if index is not None:
        index.add_node(node)


def drop_dead_nodes(graph: onnx.GraphProto) -> int:
    """Remove the nodes of ``graph`` that nothing needs: no output is a graph output or read by a needed node
    (control-flow nodes are kept). One sweep from the end reaches the fixed point. Returns how many went."""
    needed = {o.name for o in graph.output}
    dead = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output) or node.op_type in ("If", "Loop", "Scan"):
            needed.update(node.input)
            for sub in subgraphs(node):  # bodies read outer names
                needed.update(used_names(sub))
        else:
            dead.append(node)
    remove_nodes(graph, dead)
    return len(dead)


def drop_unread_chain(index: GraphIndex, name: str) -> None:
    """Remove what computed ``name`` (nodes, then initializers) as far up as nothing else reads it."""
    todo = [name]
    while todo:
        current = todo.pop()
        if index.is_read(current):
            continue
        node = index.producer(current)
        if node is not None and not any(index.is_read(o) for o in node.output if o):
            remove_nodes(index.graph, [node], index=index)
            todo.extend(i for i in node.input if i)
        elif node is None and current in index.initializers:
            remove_initializers(index.graph, {current}, index=index)


def transpose_perm(node: onnx.NodeProto, rank: int) -> list[int]:
    """A ``Transpose`` node's permutation; an absent ``perm`` reverses the axes (ONNX spec)."""
    perm = attribute(node, "perm")
    return list(reversed(range(rank))) if perm is None else list(perm)


def relative_perm(stored: tuple[int, ...], member: tuple[int, ...]) -> list[int]:
    """``perm`` with ``transpose(transpose(S, stored), perm) == transpose(S, member)``."""
    inverse = sorted(range(len(stored)), key=stored.__getitem__)  # argsort of a permutation
    return [inverse[axis] for axis in member]


def main_opset(model: onnx.ModelProto) -> int:
    """The model's default-domain (``ai.onnx``) opset version; 0 when it imports none."""
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def gathers_rows(node: onnx.NodeProto, name: str) -> bool:
    """``node`` is an ONNX ``Gather`` of whole rows (axis 0) of ``name``, read as data only."""
    return (node.op_type == "Gather" and node.domain in ("", "ai.onnx") and len(node.input) == 2
            and node.input[0] == name and node.input[1] != name
            and attribute(node, "axis", 0) == 0)


def add_initializers(graph: onnx.GraphProto, tensors: Iterable[onnx.TensorProto], *,
                     index: GraphIndex | None = None) -> None:
    """Append ``tensors`` to the graph's initializers (the index, if given, follows)."""
    for tensor in tensors:
        graph.initializer.append(tensor)
        if index is not None:
            index.initializers[tensor.name] = graph.initializer[-1]


def int64_constant(graph: onnx.GraphProto, values: list[int], name: str, *,
                   index: GraphIndex | None = None) -> str:
    """An int64 initializer holding ``values``: an existing equal one (the export's duplicate check
    refuses two), else a new one named ``name``."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    for init in (graph.initializer if index is None else index.initializers.values()):
        if (init.data_type == TensorProto.INT64 and list(init.dims) == [len(values)]
                and numpy_helper.to_array(init).tolist() == values):
            return init.name
    add_initializers(graph, [numpy_helper.from_array(np.array(values, np.int64), name)], index=index)
    return name
