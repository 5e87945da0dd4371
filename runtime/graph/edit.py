"""The one home for ONNX graph surgery: every pass edits graphs through these.

Each helper edits in place and knows about subgraphs (``If``/``Loop``/``Scan``
bodies may read outer values), so no pass can rename or drop a tensor that a
subgraph still reads. Modelled on onnxruntime's quantizer, which edits graphs
only through its ``ONNXModel`` wrapper.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import onnx
from onnx import helper

__all__ = [
    "consumers", "iter_graphs", "prepend_nodes", "producers", "remove_initializers",
    "gathers_rows", "main_opset", "relative_perm", "rename_uses", "replace_repeated", "subgraphs", "transpose_perm", "used_names",
]


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
    """Nodes of ``graph`` itself (not subgraphs) that read ``name``."""
    return [n for n in graph.node if name in n.input]


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Output name -> the node of ``graph`` that produces it."""
    return {out: node for node in graph.node for out in node.output}


def rename_uses(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    """Make every reader of ``old`` read ``new`` instead, subgraphs included.

    A graph output cannot simply be renamed (callers know it by name): it keeps
    its name through an ``Identity`` of the new tensor.
    """
    if not renames:
        return
    for g in iter_graphs(graph):
        for node in g.node:
            for i, name in enumerate(node.input):
                if name in renames:
                    node.input[i] = renames[name]
    for output in graph.output:
        if output.name in renames:
            graph.node.append(helper.make_node(
                "Identity", [renames[output.name]], [output.name],
                name=f"tiedonnx/identity/{output.name}"))


def remove_initializers(graph: onnx.GraphProto, names: set[str] | Callable[[onnx.TensorProto], bool]) -> int:
    """Drop initializers (and graph inputs of the same name); return how many went.

    ``names`` is a set of names or a predicate over the initializer.
    """
    drop = names if callable(names) else (lambda init: init.name in names)
    gone = {i.name for i in graph.initializer if drop(i)}
    if gone:
        replace_repeated(graph.initializer, [i for i in graph.initializer if i.name not in gone])
        replace_repeated(graph.input, [i for i in graph.input if i.name not in gone])
    return len(gone)


def prepend_nodes(graph: onnx.GraphProto, nodes: Iterable[onnx.NodeProto]) -> None:
    """Put ``nodes`` first: only for nodes that read initializers alone."""
    replace_repeated(graph.node, [*nodes, *graph.node])


def transpose_perm(node: onnx.NodeProto, rank: int) -> list[int]:
    """A ``Transpose`` node's permutation; an absent ``perm`` reverses the axes (ONNX spec)."""
    for attr in node.attribute:
        if attr.name == "perm":
            return list(attr.ints)
    return list(reversed(range(rank)))


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
            and next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0) == 0)


def int64_constant(graph: onnx.GraphProto, values: list[int], name: str) -> str:
    """An int64 initializer holding ``values``: an existing equal one (the export's duplicate check
    refuses two), else a new one named ``name``."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    for init in graph.initializer:
        if (init.data_type == TensorProto.INT64 and list(init.dims) == [len(values)]
                and numpy_helper.to_array(init).tolist() == values):
            return init.name
    graph.initializer.append(numpy_helper.from_array(np.array(values, np.int64), name))
    return name
