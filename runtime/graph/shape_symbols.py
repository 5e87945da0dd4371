"""What a graph's shape arithmetic computes, as symbols: the reading half of the shape-chain pass.

tf2onnx writes every Keras ``einsum``/``Tensordot`` with its own copy of
``Shape -> Cast -> Gather/Slice -> Concat -> Cast`` to rebuild the output's
shape. :class:`ShapeSymbols` evaluates those chains without running them: each
small int tensor becomes a tuple of *atoms*, an atom being either a known int
or a dimension ``Dim(tensor, axis)`` of some tensor, canonicalised so that
equal dimensions compare equal:

* a dimension that onnx shape inference knows to be static is that int;
* a dimension of ``Unsqueeze(x)``, ``Transpose(x)``, ``Cast(x)``,
  ``Identity(x)``, ``LayerNormalization(x)`` or an elementwise unary op of
  ``x`` is the matching dimension of ``x`` (those ops keep, permute or insert
  axes only), and one of ``Concat(x, y, ...)`` off the joined axis is any
  input's (they are equal: a static one, else one of a graph input's);
* through ``Reshape(x, c)`` with a constant ``c``: a ``0`` code copies
  ``x``'s dimension, a positive code is that int; ``MatMul(a, W)`` with a
  2-D ``W`` has ``a``'s leading dimensions then ``W``'s last (of two
  operands of one rank: ``a``'s rows, ``b``'s columns, batch axes broadcast); ``Gather(W, i)``
  on axis 0 has ``i``'s dimensions then ``W``'s trailing ones;
* a dimension of an elementwise op with broadcasting (``Add``, ``Mul``,
  ``Where``...) is its inputs' dimension there when all of them that are not
  a static 1 have the same canonical dimension (numpy broadcasting: the
  output takes the one that is not 1); ``Expand`` broadcasts with its
  shape's atoms the same way.

Only ops whose output is fully determined by their inputs' atoms are read:
``Shape`` (with ``start``/``end``), int32/int64 ``Cast`` (dimensions fit in
int32), ``Gather`` and ``Slice`` with constant indices on axis 0, ``Concat``,
``Squeeze``/``Unsqueeze`` between a scalar and a 1-element vector,
``ReduceProd`` of known ints, and int initializers. Anything else is unknown
(``None``), so every rewrite built on these symbols is as safe as this
evaluation is exact.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["Dim", "ShapeSymbols"]

_INTS = (onnx.TensorProto.INT32, onnx.TensorProto.INT64)
#: Ops whose output has their first input's shape (a dim of the output is that dim of the input).
_SAME_SHAPE = {"Cast", "Identity", "LayerNormalization", "Relu", "Tanh", "Neg", "Sqrt", "Exp", "Erf",
               "Sigmoid", "Softmax", "Not", "Abs", "Reciprocal"}

#: Elementwise ops with numpy broadcasting (each output dimension is its inputs' one, or they are 1).
_BROADCAST = {"Expand", "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where", "Equal", "Less", "Greater", "LessOrEqual",
              "GreaterOrEqual", "And", "Or", "Xor"}


class Dim(NamedTuple):
    """Dimension ``axis`` of tensor ``tensor`` (its size only known at run time)."""

    tensor: str
    axis: int


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


class ShapeSymbols:
    """Atoms of each int tensor of ``graph`` (see the module doc), evaluated on demand and cached."""

    def __init__(self, graph: onnx.GraphProto, shapes: dict[str, list]):
        self.shapes = shapes  # tensor -> dims from shape inference (int when static)
        self.producer = {o: n for n in graph.node for o in n.output}
        self.inputs = {i.name for i in graph.input}
        self.constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer
                          if i.data_type in _INTS and int(np.prod(i.dims, dtype=np.int64)) <= 64}
        for overridable in graph.input:  # an initializer that is also an input can be fed: not a constant
            self.constants.pop(overridable.name, None)
        self._cache: dict[str, tuple | None] = {}
        self._dims: dict[tuple[str, int], int | Dim] = {}

    def rank(self, tensor: str) -> int | None:
        shape = self.shapes.get(tensor)
        return None if shape is None else len(shape)

    def dim(self, tensor: str, axis: int) -> int | Dim:
        """Dimension ``axis`` of ``tensor``: an int when static, else its canonical :class:`Dim`."""
        key = (tensor, axis)
        if key not in self._dims:
            try:
                self._dims[key] = self._walk(tensor, axis)
            except RecursionError:  # a very deep chain of broadcasts: known only as itself
                self._dims[key] = Dim(tensor, axis)
        return self._dims[key]

    def _broadcast(self, node: onnx.NodeProto, tensor: str, axis: int) -> int | Dim | None:
        """An elementwise op's output dimension: its inputs' one, when they agree (1s broadcast);
        ``Expand(x, shape)`` broadcasts ``x`` with the shape's value."""
        rank = self.rank(tensor)
        inputs = node.input[:1] if node.op_type == "Expand" else node.input
        ranks = [self.rank(n) for n in inputs]
        if rank is None or None in ranks:
            return None
        found = {self.dim(n, axis - rank + r) for n, r in zip(inputs, ranks) if axis - rank + r >= 0}
        if node.op_type == "Expand":
            shape = self.atoms(node.input[1])
            if shape is None or shape[1] or len(shape[0]) > rank:
                return None
            if axis - rank + len(shape[0]) >= 0:
                found.add(shape[0][axis - rank + len(shape[0])])
        found.discard(1)
        return 1 if not found else next(iter(found)) if len(found) == 1 else None

    def _batch_axis(self, node: onnx.NodeProto, axis: int) -> bool:
        """``axis`` is a batch axis of a ``MatMul`` of two operands of one rank (> 2): it broadcasts."""
        ranks = [self.rank(n) for n in node.input]
        return ranks[0] is not None and ranks[0] == ranks[1] and axis < ranks[0] - 2

    def _walk(self, tensor: str, axis: int) -> int | Dim:
        for _ in range(10_000):  # a chain of shape-keeping ops; bounded against malformed cycles
            shape = self.shapes.get(tensor)
            if shape is not None and axis < len(shape) and isinstance(shape[axis], int) and shape[axis] > 0:
                return shape[axis]
            node = self.producer.get(tensor)
            if node is None or node.domain not in ("", "ai.onnx") or not node.input:
                break
            if node.op_type in _SAME_SHAPE:
                tensor = node.input[0]
                continue
            if node.op_type in _BROADCAST or node.op_type == "MatMul" and self._batch_axis(node, axis):
                found = self._broadcast(node, tensor, axis)
                return Dim(tensor, axis) if found is None else found
            if node.op_type == "Transpose" and self.rank(node.input[0]) is not None:
                perm = _attr(node, "perm") or list(reversed(range(self.rank(node.input[0]))))
                tensor, axis = node.input[0], perm[axis]
                continue
            if node.op_type == "Concat" and self.rank(tensor) is not None:
                joined = _attr(node, "axis")
                if joined is None or axis == joined % self.rank(tensor):
                    break
                # off the joined axis every input has the output's dimension: take the most resolved one
                found = [self.dim(n, axis) for n in node.input]
                return min(found, key=lambda d: (not isinstance(d, int), d.tensor not in self.inputs
                                                 if isinstance(d, Dim) else False))
            moved = self._through(node, axis)
            if moved is not None:
                tensor, axis = moved
                if isinstance(tensor, int):
                    return tensor
                continue
            if node.op_type != "Unsqueeze":
                break
            axes = self.ints(node.input[1]) if len(node.input) > 1 else _attr(node, "axes")
            rank = self.rank(tensor)
            if axes is None or rank is None:
                break
            axes = sorted(a + rank if a < 0 else a for a in axes)
            if axis in axes:
                return 1
            axis -= sum(1 for a in axes if a < axis)
            tensor = node.input[0]
        return Dim(tensor, axis)

    def _through(self, node: onnx.NodeProto, axis: int) -> tuple | None:
        """``(tensor, axis)`` whose dimension equals ``node``'s output's dimension ``axis``
        (``(int, None)`` when it is that int), for a ``Reshape`` by a constant, a ``MatMul`` by a
        matrix, or a ``Gather`` of rows; None for anything else."""
        if node.op_type == "Reshape" and not _attr(node, "allowzero", 0):
            codes = self.ints(node.input[1]) if node.input[1] in self.constants else None
            if codes is None or axis >= len(codes) or codes[axis] < 0:
                return None
            return (node.input[0], axis) if codes[axis] == 0 else (codes[axis], None)
        ranks = [self.rank(n) for n in node.input]
        if node.op_type == "MatMul" and ranks[1] == 2 and ranks[0] is not None and ranks[0] >= 2:
            return (node.input[0], axis) if axis < ranks[0] - 1 else (node.input[1], 1)
        if node.op_type == "MatMul" and ranks[0] is not None and ranks[0] == ranks[1] and ranks[0] >= 2:
            if axis >= ranks[0] - 2:  # rows of a, columns of b; the batch axes broadcast (_broadcast)
                return (node.input[0], axis) if axis == ranks[0] - 2 else (node.input[1], axis)
        if node.op_type == "Gather" and _attr(node, "axis", 0) == 0 and ranks[1] is not None:
            return (node.input[1], axis) if axis < ranks[1] else (node.input[0], axis - ranks[1] + 1)
        return None

    def ints(self, name: str) -> list[int] | None:
        """``name``'s value when it is a known list of ints (a constant, or atoms that are all ints)."""
        atoms = self.atoms(name)
        if atoms is None or not all(isinstance(a, int) for a in atoms[0]):
            return None
        return list(atoms[0])

    def atoms(self, name: str) -> tuple[tuple, bool] | None:
        """``(atoms, scalar)`` of a 0-D or 1-D int tensor, or None when not known."""
        if name not in self._cache:
            self._cache[name] = None  # cycles in a malformed graph read as unknown
            self._cache[name] = self._evaluate(name)
        return self._cache[name]

    def _evaluate(self, name: str) -> tuple[tuple, bool] | None:
        if name in self.constants:
            value = self.constants[name]
            return (tuple(int(v) for v in value.reshape(-1)), value.ndim == 0) if value.ndim <= 1 else None
        node = self.producer.get(name)
        if node is None or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
            return None
        method = getattr(self, f"_{node.op_type.lower()}", None)
        return None if method is None else method(node)

    def _shape(self, node):
        rank = self.rank(node.input[0])
        if rank is None:
            return None
        start, end = _attr(node, "start", 0), _attr(node, "end", rank)
        axes = range(rank)[slice(start, end)]  # ONNX clamps start/end as Python slicing does
        return tuple(self.dim(node.input[0], a) for a in axes), False

    def _cast(self, node):
        return self.atoms(node.input[0]) if _attr(node, "to") in _INTS else None

    def _gather(self, node):
        source, indices = self.atoms(node.input[0]), self.constants.get(node.input[1])
        if source is None or source[1] or indices is None or _attr(node, "axis", 0) != 0:
            return None
        size = len(source[0])
        if not all(-size <= int(i) < size for i in indices.reshape(-1)):
            return None
        picked = tuple(source[0][int(i)] for i in indices.reshape(-1))
        return picked, indices.ndim == 0

    def _slice(self, node):
        source = self.atoms(node.input[0])
        parts = [self.constants.get(n) if n else None for n in [*node.input[1:], "", "", "", ""][:4]]
        starts, ends, axes, steps = parts
        if source is None or source[1] or starts is None or ends is None or starts.size != 1 or ends.size != 1:
            return None
        if (axes is not None and int(axes.reshape(-1)[0]) not in (0, -1)) or (
                steps is not None and int(steps.reshape(-1)[0]) != 1):
            return None
        given = [bool(n) for n in [*node.input[3:5], "", ""][:2]]
        if (given[0] and axes is None) or (given[1] and steps is None):
            return None  # axes or steps given but not constant
        start, end = int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0])
        return source[0][start:end], False  # ONNX's clamping of start/end (step 1) is Python's

    def _concat(self, node):
        parts = [self.atoms(n) for n in node.input]
        if _attr(node, "axis") not in (0, -1) or any(p is None or p[1] for p in parts):
            return None
        return tuple(a for p in parts for a in p[0]), False

    def _squeeze(self, node):
        source = self.atoms(node.input[0])
        axes = self.ints(node.input[1]) if len(node.input) > 1 else _attr(node, "axes")
        if source is None or source[1] or len(source[0]) != 1 or axes not in (None, [0], [-1]):
            return None
        return source[0], True

    def _unsqueeze(self, node):
        source = self.atoms(node.input[0])
        axes = self.ints(node.input[1]) if len(node.input) > 1 else _attr(node, "axes")
        if source is None or not source[1] or axes not in ([0], [-1]):
            return None
        return source[0], False

    def _reduceprod(self, node):
        source = self.atoms(node.input[0])
        if (source is None or source[1] or len(node.input) > 1 or _attr(node, "axes") not in (None, [0])
                or _attr(node, "noop_with_empty_axes", 0)
                or not all(isinstance(a, int) for a in source[0])):
            return None
        return (int(np.prod(source[0], dtype=np.int64)),), not _attr(node, "keepdims", 1)
