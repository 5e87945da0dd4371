"""Cut the shape arithmetic tf2onnx writes around Keras ``einsum``/``Tensordot`` out of a decoder step.

A Keras ``Dense`` on a ``[batch, seq, k]`` input becomes, in tf2onnx's hands::

    y = Reshape(MatMul(Reshape(x, [-1, k]), W), Cast(Concat(Gather(Cast(Shape(x)), [0, 1]), [n])))

and each ``einsum`` projection rebuilds its output shape from ``Shape`` of
its input the same way. In a decoder step of a small language model every
one of those nodes costs about as much as a matrix product (per-node
overhead, ten times worse in onnxruntime-web), and onnxruntime's own
optimizations keep them: the shapes are only partly static. Reading the
chains with :class:`~.shape_symbols.ShapeSymbols` (what each int tensor holds,
as known ints and canonical dimensions), this pass rewrites:

1. **Tensordot**: ``Reshape(MatMul(Reshape(x, [-1, k]), W), s)`` where ``x``
   has rank r >= 2 with static last dimension ``k``, ``W`` has rank 2 and
   static ``[k, n]``, and ``s`` holds ``x``'s first r-1 dimensions then
   ``n``: that is ``MatMul(x, W)`` (MatMul broadcasts a 2-D right operand
   over leading axes, and computes the same dot products). Also when ``k``
   spans several static trailing axes of ``x`` (they are merged by a
   ``Reshape(x, [0, ..., 0, k])``), when ``s`` ends in several static
   dimensions of product ``n`` (the product is reshaped to ``[0, ..., 0,
   those]``), and for ``Gemm(rows, W, transB=1)`` without bias or ``alpha``
   (it becomes a ``MatMul`` of ``W``'s transpose: the initializer itself,
   transposed in place, when only that node reads it, else a ``Transpose``
   node, which onnxruntime folds).
2. **Reshape target**: ``Reshape(x, s)`` (``allowzero`` 0) where ``s`` is
   known as atoms becomes a constant target: an int stays, a dimension equal
   to ``x``'s own dimension at the same position becomes ``0`` (ONNX: copy
   it), and at most one other dimension becomes ``-1`` (ONNX: infer it),
   only when every other entry is a positive int (so the inferred value is
   the original one: ``size / product of the others``).
3. **Reshape then Squeeze**: ``Squeeze(Reshape(x, c), axes)`` with a
   constant ``c`` that is 1 at every squeezed axis, and no ``0`` code after
   the first squeezed axis (it would copy a shifted dimension), is
   ``Reshape(x, c without axes)``.
4. **Unsqueeze into Reshape**: ``Reshape(Unsqueeze(x, axes), c)`` with a
   constant ``c`` whose ``0`` codes all sit before the first inserted axis
   (there ``x`` and its unsqueezed copy have the same dimensions) is
   ``Reshape(x, c)``: same elements, same order.
5. **Known ints**: an int tensor of the shape arithmetic whose value is
   known (every atom an int, e.g. ``Shape`` of statically shaped tensors) is
   a constant.
6. **Same value**: an int tensor of the shape arithmetic whose atoms, scalar
   form and element type equal those of a tensor computed before it (in the
   graph's topological order) is that tensor: tf2onnx recomputes the
   sequence length from ``Shape`` of each projection, and every chain now
   reads the first.
7. **Identity Reshape**: ``Reshape(x, c)`` whose constant ``c`` has ``x``'s
   rank and only ``0`` codes or ``x``'s own static dimensions is ``x``.

Rewritten intermediates are removed when nothing else reads them (nodes of
the default domain whose outputs no node, subgraph or graph output reads),
with the int constants only they read. Outputs are unchanged: rule 1 does the
same products, rules 2-6 compute the same shapes (dimensions are assumed to
fit in int32, which tf2onnx's own int32 casts of shapes already assume).
Edits in place and returns the model and the number of rewrites; idempotent.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

from .edit import int64_constant, remove_initializers, rename_uses, replace_repeated, subgraphs, used_names
from .layer_norm import _without_weights
from .shape_symbols import ShapeSymbols

logger = logging.getLogger(__name__)

__all__ = ["simplify_shape_chains"]

_DEFAULT = ("", "ai.onnx")
#: Rounds of rewrites at most (each runs shape inference again; two suffice for the KerasHub decoders).
_ROUNDS = 4


def _inferred(model: onnx.ModelProto) -> tuple[dict[str, list], dict[str, int]]:
    """Each value's shape (ints where static) and element type, from onnx's shape inference."""
    inferred = onnx.shape_inference.infer_shapes(_without_weights(model), strict_mode=False)
    shapes, types = {}, {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        tensor = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            continue
        types[value.name] = tensor.elem_type
        if tensor.HasField("shape"):
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim]
    for init in model.graph.initializer:
        shapes[init.name], types[init.name] = list(init.dims), init.data_type
    return shapes, types


def _weight_side(node: onnx.NodeProto) -> bool | None:
    """For a product of rows by a 2-D weight: whether the weight is transposed (``Gemm`` with
    ``transB``); None for anything else (a ``Gemm`` with a bias, ``alpha`` or ``transA``)."""
    if node.domain not in _DEFAULT or len(node.input) != 2:
        return None
    if node.op_type == "MatMul":
        return False
    if node.op_type != "Gemm":
        return None
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("alpha", 1.0) != 1.0 or attrs.get("transA", 0):
        return None
    return bool(attrs.get("transB", 0))


def _allows_zero(node: onnx.NodeProto) -> bool:
    return any(a.name == "allowzero" and a.i for a in node.attribute)


class _Pass:
    """One run of the rewrites over ``model`` (indexes built once, kept current by the edits)."""

    def __init__(self, model: onnx.ModelProto):
        self.graph = model.graph
        self.shapes, self.types = _inferred(model)
        self.symbols = ShapeSymbols(self.graph, self.shapes)
        self.producer = self.symbols.producer
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.graph.node:
            for name in dict.fromkeys(node.input):
                self.readers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in self.graph.output}
        # names read inside If/Loop/Scan bodies: never "read by one node only"
        self.sub_reads = {name for node in self.graph.node for sub in subgraphs(node) for name in used_names(sub)}
        self.inits = {i.name for i in self.graph.initializer} - {i.name for i in self.graph.input}
        self.count = 0
        self.dead: set[int] = set()  # ids of nodes a rewrite replaced
        self.seen: dict[tuple, str] = {}  # (atoms, scalar, type) -> the first tensor holding that value
        self.replaced: set[str] = set()  # inputs a rewrite stopped reading
        self.before: dict[int, list[onnx.NodeProto]] = {}  # id of a node -> new nodes to put before it
        self.init_protos = {i.name: i for i in self.graph.initializer}
        self.int_values = {(v.dtype.str, v.shape, v.tobytes()): n for n, v in self.symbols.constants.items()}

    def only_reader(self, name: str, node: onnx.NodeProto) -> bool:
        readers = self.readers.get(name, [])
        return name not in self.outputs and name not in self.sub_reads and len(readers) == 1 and readers[0] is node

    def constant(self, name: str) -> list[int] | None:
        return self.symbols.ints(name) if name in self.inits else None

    def set_input(self, node: onnx.NodeProto, position: int, name: str) -> None:
        old = node.input[position]
        self.readers[old] = [r for r in self.readers.get(old, []) if r is not node or list(node.input).count(old) > 1]
        self.replaced.add(old)
        node.input[position] = name
        self.readers.setdefault(name, []).append(node)
        self.count += 1

    def tensordot(self, reshape: onnx.NodeProto) -> None:
        """Rule 1 (see the module doc)."""
        product = self.producer.get(reshape.input[0])
        if product is None or not self.only_reader(product.output[0], reshape) or _weight_side(product) is None:
            return
        inner = self.producer.get(product.input[0])
        if inner is None or inner.op_type != "Reshape" or _allows_zero(inner):
            return  # other readers of the flattened rows keep them: this product alone reads x instead
        x, weight, transposed = inner.input[0], product.input[1], _weight_side(product)
        rank = self.symbols.rank(x)
        k, n = (self.symbols.dim(weight, a) for a in ((1, 0) if transposed else (0, 1)))
        if (rank is None or rank < 2 or self.symbols.rank(weight) != 2 or not isinstance(k, int)
                or not isinstance(n, int) or self.constant(inner.input[1]) != [-1, k]):
            return
        target = self.symbols.atoms(reshape.input[1])
        split = None if target is None or target[1] else self.split(x, k, target[0])
        if split is None:
            return
        rest = list(target[0][split:])
        if not rest or not all(isinstance(d, int) and d > 0 for d in rest) or int(np.prod(rest)) != n:
            return
        if transposed:
            self.transpose_weight(product)
        if split == rank - 1:
            self.set_input(product, 0, x)
        else:  # rows of k over several trailing axes: merge those axes only, keep the leading ones
            merged = onnx.helper.make_node(
                "Reshape", [x, int64_constant(self.graph, [0] * split + [k], f"{inner.output[0]}/shape_chains_rows")],
                [f"{product.output[0]}/shape_chains_rows"], name=f"{product.name or product.output[0]}/shape_chains_rows")
            self.inits.add(merged.input[1])
            self.before.setdefault(id(product), []).append(merged)
            self.set_input(product, 0, merged.output[0])
        if rest == [n]:
            product.output[0] = reshape.output[0]
            self.producer[product.output[0]] = product
            self.dead.add(id(reshape))
        else:
            codes = [0] * split + rest
            self.set_input(reshape, 1, int64_constant(self.graph, codes, f"{reshape.output[0]}/shape_chains_target"))
            self.inits.add(reshape.input[1])

    def split(self, x: str, k: int, target: tuple) -> int | None:
        """The axis ``j`` where ``x``'s trailing axes ``j..`` hold ``k`` values (all static) and ``target``
        starts with ``x``'s dimensions before ``j``; the last such axis, None when there is none."""
        rank = self.symbols.rank(x)
        dims = [self.symbols.dim(x, a) for a in range(rank)]
        for j in range(rank - 1, 0, -1):
            tail = dims[j:]
            if not all(isinstance(d, int) for d in tail) or int(np.prod(tail)) > k:
                return None
            if int(np.prod(tail)) == k and tuple(target[:j]) == tuple(dims[:j]):
                return j
        return None

    def identity_reshape(self, reshape: onnx.NodeProto) -> None:
        """Rule 7 (see the module doc)."""
        codes, rank = self.constant(reshape.input[1]), self.symbols.rank(reshape.input[0])
        if codes is None or rank != len(codes) or reshape.output[0] in self.outputs or _allows_zero(reshape):
            return
        if all(c == 0 or (c > 0 and self.symbols.dim(reshape.input[0], i) == c) for i, c in enumerate(codes)):
            self.replace(reshape, reshape.input[0])

    def transpose_weight(self, gemm: onnx.NodeProto) -> None:
        """Make ``Gemm(a, W, transB=1)`` a ``MatMul`` of ``W``'s transpose: the initializer itself when
        only this node reads it (no copy), else a ``Transpose`` node (onnxruntime folds it)."""
        weight = gemm.input[1]
        init = self.init_protos.get(weight)
        if (init is not None and weight in self.inits and self.only_reader(weight, gemm)
                and init.data_location != onnx.TensorProto.EXTERNAL):
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).T.copy(), weight))
            self.shapes[weight] = list(init.dims)
        else:
            transpose = onnx.helper.make_node("Transpose", [weight], [f"{gemm.output[0]}/shape_chains_weight_t"],
                                              name=f"{gemm.name or gemm.output[0]}/shape_chains_weight_t",
                                              perm=[1, 0])
            self.before.setdefault(id(gemm), []).append(transpose)
            self.set_input(gemm, 1, transpose.output[0])
        gemm.op_type = "MatMul"
        del gemm.attribute[:]

    def reshape_target(self, reshape: onnx.NodeProto) -> None:
        """Rule 2 (see the module doc)."""
        if _allows_zero(reshape) or reshape.input[1] in self.inits:
            return
        atoms = self.symbols.atoms(reshape.input[1])
        if atoms is None or atoms[1]:
            return
        codes = []
        for position, atom in enumerate(atoms[0]):
            if isinstance(atom, int):
                codes.append(atom)
            elif self.symbols.rank(reshape.input[0]) is not None and position < self.symbols.rank(
                    reshape.input[0]) and self.symbols.dim(reshape.input[0], position) == atom:
                codes.append(0)
            else:
                codes.append(None)
        if None in codes:
            others = [c for c in codes if c is not None]
            if codes.count(None) > 1 or any(c <= 0 for c in others):
                return
            codes[codes.index(None)] = -1
        self.set_input(reshape, 1, int64_constant(self.graph, codes, f"{reshape.output[0]}/shape_chains_target"))
        self.inits.add(reshape.input[1])

    def reshape_squeeze(self, squeeze: onnx.NodeProto) -> None:
        """Rule 3 (see the module doc)."""
        reshape = self.producer.get(squeeze.input[0])
        if reshape is None or reshape.op_type != "Reshape" or _allows_zero(reshape):
            return
        codes, axes = self.constant(reshape.input[1]), (self.constant(squeeze.input[1])
                                                          if len(squeeze.input) > 1 else None)
        if codes is None or not axes or not self.only_reader(reshape.output[0], squeeze):
            return
        axes = sorted({a + len(codes) if a < 0 else a for a in axes})
        if any(not 0 <= a < len(codes) or codes[a] != 1 for a in axes) or 0 in codes[axes[0]:]:
            return
        kept = [c for i, c in enumerate(codes) if i not in axes]
        self.set_input(reshape, 1, int64_constant(self.graph, kept, f"{squeeze.output[0]}/shape_chains_target"))
        self.inits.add(reshape.input[1])
        reshape.output[0] = squeeze.output[0]
        self.producer[reshape.output[0]] = reshape
        self.dead.add(id(squeeze))

    def unsqueeze_reshape(self, reshape: onnx.NodeProto) -> None:
        """Rule 4 (see the module doc)."""
        unsqueeze = self.producer.get(reshape.input[0])
        codes = self.constant(reshape.input[1])
        if unsqueeze is None or unsqueeze.op_type != "Unsqueeze" or codes is None or _allows_zero(reshape):
            return
        axes = self.constant(unsqueeze.input[1]) if len(unsqueeze.input) > 1 else None
        rank = self.symbols.rank(unsqueeze.output[0])
        if not axes or rank is None:
            return
        first = min(a + rank if a < 0 else a for a in axes)
        if 0 not in codes[first:]:
            self.set_input(reshape, 0, unsqueeze.input[0])

    def known_ints(self, node: onnx.NodeProto) -> None:
        """Rule 5 (see the module doc)."""
        if node.op_type not in _SHAPE_OPS or len(node.output) != 1 or self.types.get(node.output[0]) not in _INTS:
            return
        value = self.symbols.ints(node.output[0])
        atoms = self.symbols.atoms(node.output[0])
        if value is None or node.output[0] in self.outputs:
            return
        dtype = np.int64 if self.types[node.output[0]] == onnx.TensorProto.INT64 else np.int32
        array = np.array(value[0] if atoms[1] else value, dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        name = self.int_values.get(key)
        if name is None:  # an equal constant is reused: the export refuses duplicate initializers
            name = self.int_values[key] = f"{node.output[0]}/shape_chains_value"
            self.graph.initializer.append(numpy_helper.from_array(array, name))
            self.inits.add(name)
            self.symbols.constants[name] = array
        self.replace(node, name)

    def replace(self, node: onnx.NodeProto, name: str) -> None:
        """Make every reader of ``node``'s output read ``name``, and drop ``node``."""
        rename_uses(self.graph, {node.output[0]: name})
        for reader in self.readers.pop(node.output[0], []):
            self.readers.setdefault(name, []).append(reader)
        self.dead.add(id(node))
        self.count += 1

    def same_value(self, node: onnx.NodeProto) -> None:
        """Rule 6 (see the module doc)."""
        output = node.output[0] if len(node.output) == 1 else ""
        if node.op_type not in _SHAPE_OPS or output in self.outputs or self.types.get(output) not in _INTS:
            return
        atoms = self.symbols.atoms(output)
        if atoms is None:
            return
        key = (*atoms, self.types[output])
        if key in self.seen:
            self.replace(node, self.seen[key])
        else:
            self.seen[key] = output

    def run(self) -> int:
        for node in list(self.graph.node):
            if id(node) in self.dead or node.domain not in _DEFAULT:
                continue
            if node.op_type == "Reshape":
                self.tensordot(node)
                if id(node) not in self.dead:
                    self.unsqueeze_reshape(node)
                    self.reshape_target(node)
                    self.identity_reshape(node)
            elif node.op_type == "Squeeze":
                self.reshape_squeeze(node)
            if id(node) not in self.dead:
                self.known_ints(node)
            if id(node) not in self.dead:
                self.same_value(node)
        self.was_read = self.replaced | {name for n in self.graph.node if id(n) in self.dead for name in n.input}
        replace_repeated(self.graph.node, [new for n in self.graph.node if id(n) not in self.dead
                                           for new in [*self.before.get(id(n), []), n]])
        return self.count


_INTS = (onnx.TensorProto.INT32, onnx.TensorProto.INT64)
#: Ops of the shape arithmetic (rule 5 folds their outputs when known).
_SHAPE_OPS = {"Shape", "Cast", "Gather", "Slice", "Concat", "Squeeze", "Unsqueeze", "ReduceProd"}


def _remove_dead(graph: onnx.GraphProto, was_read: set[str]) -> int:
    """Drop default-domain nodes nothing reads (repeatedly), and int constants only removed nodes read."""
    removed = 0
    while True:
        read = used_names(graph)
        dead = [n for n in graph.node if n.domain in _DEFAULT and not any(o in read for o in n.output if o)]
        if not dead:
            break
        gone = {id(n) for n in dead}
        was_read.update(name for n in dead for name in n.input)
        replace_repeated(graph.node, [n for n in graph.node if id(n) not in gone])
        removed += len(dead)
    read = used_names(graph)
    inputs = {i.name for i in graph.input}
    remove_initializers(graph, lambda i: i.name in was_read and i.name not in read and i.name not in inputs
                        and i.data_type in _INTS)
    return removed


def simplify_shape_chains(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Rewrite tf2onnx's shape arithmetic (see the module doc); edits in place, returns (model, rewrites)."""
    graph = model.graph
    before = len(graph.node)
    count = 0
    for _ in range(_ROUNDS):  # a rewrite can make a later shape static (a Tensordot's output): go again
        rewrites = _Pass(model)
        done = rewrites.run()
        if not done:
            break
        _remove_dead(graph, rewrites.was_read)
        count += done
    if count:
        logger.info("shape chains: %d rewrites, %d -> %d nodes", count, before, len(graph.node))
    return model, count
