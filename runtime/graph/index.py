"""A graph index built once per pass: who makes and who reads each tensor.

``edit.consumers`` walks every node per call; called once per weight, that
grows as weights x nodes, which a language model makes visible. Like
onnxruntime's ``ONNXModel`` (``input_name_to_nodes`` / ``output_name_to_node``),
:class:`GraphIndex` maps each name to its producer and readers once; the edit
helpers of :mod:`.edit` take ``index=`` and keep it correct as they edit, so a
pass builds it at its start and uses it throughout.

:func:`match_parent_path` is onnxruntime's ``match_parent_path``: follow a
node's inputs up through a chain of expected op types.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import onnx

from .edit import subgraphs, used_names

__all__ = ["GraphIndex", "match_parent_path", "only_consumer"]


class GraphIndex:
    """Producers, readers, initializers by name and subgraph reads of one graph (main graph nodes).

    Attributes:
        graph: the indexed graph.
        initializers: name -> initializer.
        outputs: the graph's output names.
        subgraph_reads: names read by subgraphs (``If``/``Loop`` bodies: their nodes and outputs), at any depth.
    """

    def __init__(self, graph: onnx.GraphProto):

        self.graph = graph
        self.initializers = {i.name: i for i in graph.initializer}
        self.outputs = {o.name for o in graph.output}
        self._producers: dict[str, onnx.NodeProto] = {}
        self._readers: dict[str, dict[int, onnx.NodeProto]] = {}
        for node in graph.node:
            self.add_node(node)
        self.subgraph_reads = {name for node in graph.node for sub in subgraphs(node) for name in used_names(sub)}

    def add_node(self, node: onnx.NodeProto) -> None:
        """Index a node that was just added to the graph."""
        for name in node.output:
            if name:
                self._producers[name] = node
        for name in node.input:
            if name:
                self._readers.setdefault(name, {})[id(node)] = node

    def drop_node(self, node: onnx.NodeProto) -> None:
        """Forget a node that is being removed from the graph."""
        for name in node.output:
            if self._producers.get(name) is node:
                del self._producers[name]
        for name in node.input:
            self._readers.get(name, {}).pop(id(node), None)

    def producer(self, name: str) -> onnx.NodeProto | None:
        """The node that makes ``name``, or None (an initializer, a graph input)."""
        return self._producers.get(name)

    def consumers(self, name: str) -> list[onnx.NodeProto]:
        """Nodes of the main graph that read ``name``, in graph order of indexing."""
        return list(self._readers.get(name, {}).values())

    def is_read(self, name: str) -> bool:
        """Whether a node (subgraphs included) or a graph output reads ``name``."""
        return bool(self._readers.get(name)) or name in self.subgraph_reads or name in self.outputs

    def is_taken(self, name: str) -> bool:
        """Whether ``name`` already names a tensor of the graph (a new name must avoid it)."""
        return (name in self.initializers or name in self._producers or name in self._readers
                or name in self.subgraph_reads or name in self.outputs
                or any(i.name == name for i in self.graph.input))

    def fresh_name(self, base: str, taken: set[str]) -> str:
        """``base``, or ``base_1``, ``base_2``...: the first name neither the graph nor ``taken`` holds.

        ``taken`` collects the names handed out for tensors not yet in the graph
        (several are named before their nodes are added); the new name joins it.
        """
        name, i = base, 1
        while name in taken or self.is_taken(name):
            name, i = f"{base}_{i}", i + 1
        taken.add(name)
        return name


def match_parent_path(index: GraphIndex, node: onnx.NodeProto, path: Sequence[tuple[str, int]],
                      ) -> list[onnx.NodeProto] | None:
    """Follow ``node``'s inputs up a chain: ``[(op_type, input_index), ...]``.

    Step ``k`` takes input ``input_index`` of the node reached so far and
    requires its producer to be an ``op_type`` node. Returns the parents found,
    nearest first, or None if any step does not match.

    Example:
        ``match_parent_path(index, matmul, [("Transpose", 1)])`` is
        ``[transpose]`` when ``matmul``'s input 1 is made by a Transpose.
    """
    found, current = [], node
    for op_type, position in path:
        if position >= len(current.input):
            return None
        parent = index.producer(current.input[position])
        if parent is None or parent.op_type != op_type:
            return None
        found.append(parent)
        current = parent
    return found


def only_consumer(index: GraphIndex, name: str, op_types: Iterable[str]) -> onnx.NodeProto | None:
    """The single main-graph reader of ``name`` when it is of one of ``op_types`` and nothing else reads
    ``name`` (no other node, subgraph or graph output); else None."""
    readers = index.consumers(name)
    if len(readers) != 1 or readers[0].op_type not in set(op_types) or name in index.outputs \
            or name in index.subgraph_reads:
        return None
    return readers[0]
