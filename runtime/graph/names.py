"""Short tensor and node names: the bytes of a small file that are not weights.

tf2onnx names every tensor after its TensorFlow op path
(``gpt2_causal_lm_1/gpt2_backbone_1/transformer_layer_0_1/.../ReadVariableOp:0``);
each name is written once where a tensor is made and again where it is read.
Once the weights are 4-bit, those names are most of a small language model's
file. Measured on the tiny KerasHub LMs of ``scripts/bench_lm_int4.py``
(vocabulary 1000, hidden 64, block 32): GPT-2 int4 182,113 -> 105,115 bytes,
Llama-tied int4 212,043 -> 89,953 bytes with names shortened and node names
cleared; the fp32 files shrink by 11-17%.

:func:`shorten_names` renames every tensor except the graph's inputs and
outputs (callers know those by name) to a short, unique name, clears node
names, and rewrites the tie record so that it names the renamed tensors.
Model-local functions keep their own names (a function's scope is its own).
The graph computes exactly what it did: only names change.
"""

from __future__ import annotations

import json

import onnx

from .edit import iter_graphs
from .metadata import KEPT_FP32_KEY, read_ties, write_ties

__all__ = ["shorten_names"]

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _short(i: int) -> str:
    """``i`` in base 36 after a letter, so a name never looks like a number: t0, t1, ... tz, t10."""
    text = ""
    while True:
        i, digit = divmod(i, len(_DIGITS))
        text = _DIGITS[digit] + text
        if not i:
            return "t" + text


def shorten_names(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]]:
    """Rename internal tensors of ``model`` to short names and clear node names, in place (a pass).

    Returns ``(model, mapping)``: the model and old name -> new name (empty names and the graph's inputs
    and outputs are not in it). Every graph and subgraph is renamed with one
    mapping, so a subgraph's reads of outer values follow, and no new name can
    collide with a kept one. The tie record and the fp16 list of tensors kept
    in float32 are rewritten to the new names.
    """
    graph = model.graph
    kept = {v.name for v in graph.input} | {v.name for v in graph.output}
    mapping: dict[str, str] = {}
    counter = iter(range(1 << 62))

    def new(name: str) -> str:
        if not name or name in kept:
            return name
        if name not in mapping:
            short = _short(next(counter))
            while short in kept:  # a graph input called "t3" keeps it; take the next
                short = _short(next(counter))
            mapping[name] = short
        return mapping[name]

    ties = read_ties(model)
    for g in iter_graphs(graph):
        for init in g.initializer:
            init.name = new(init.name)
        for sparse in g.sparse_initializer:
            sparse.values.name = new(sparse.values.name)
            sparse.indices.name = new(sparse.indices.name)
        for value in [*g.input, *g.output, *g.value_info]:
            value.name = new(value.name)
        for node in g.node:
            node.name = ""
            node.input[:] = [new(n) for n in node.input]
            node.output[:] = [new(n) for n in node.output]
    _rename_metadata(model, ties, mapping)
    return model, mapping


def _rename_metadata(model: onnx.ModelProto, ties: list, mapping: dict[str, str]) -> None:
    """The tie record and the fp16 kept-float32 list, in the new names."""
    rename = lambda name: mapping.get(name, name)  # noqa: E731
    if ties:
        for tie in ties:
            tie.initializer = rename(tie.initializer)  # ``source`` keeps the old name: a record
            tie.scale = tie.scale and rename(tie.scale)
            tie.zero_point = tie.zero_point and rename(tie.zero_point)
            for use in tie.uses:
                use.output = rename(use.output)
        write_ties(model, ties)
    for prop in model.metadata_props:
        if prop.key == KEPT_FP32_KEY:
            try:
                names = json.loads(prop.value)
            except json.JSONDecodeError:
                continue
            if isinstance(names, list):
                prop.value = json.dumps([rename(n) if isinstance(n, str) else n for n in names])
