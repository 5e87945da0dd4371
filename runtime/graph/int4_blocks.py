"""Block-wise 4-bit tensors in onnxruntime's MatMulNBits layout: quantize, read back, find copies.

The layout (``com.microsoft.MatMulNBits`` input B): a float matrix ``O`` of
shape ``[N, K]`` is cut along its last axis into blocks of ``block_size``
values (the last block zero-padded); each block has one float scale and, when
asymmetric, one 4-bit zero point (symmetric blocks use the implied zero point
8). Codes are packed two per byte, low nibble first: ``packed`` is uint8
``[N, blocks, block_size / 2]``, ``scales`` ``[N, blocks]``, zero points uint8
``[N, ceil(blocks / 2)]``. Value ``O[n, k] = (code - zero_point) * scale``.

Quantization is onnxruntime's own round-to-nearest kernel
(``quantize_matmul_4bits``, what ``MatMulNBitsQuantizer``'s default algorithm
calls), reached through the onnxruntime wheel alone: the quantizer's Python
module also needs ``onnx_ir``, which the runtime does not install.

Also here, for the passes and the export proof: the model-local function that
dequantizes such a tensor with standard ONNX ops (:func:`dequantize_function`),
and :func:`find_4bit_copies`, which reads every 4-bit tensor of a graph back to
float and reports any other tensor that holds the same weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import ConversionError
from .duplicates import Duplicate
from .edit import FP16_MAX, attribute, producers

__all__ = ["Blocks", "DEQUANTIZE_OP", "FUNCTION_DOMAIN", "dequantize_function", "find_4bit_copies",
           "packed_tensors", "quantize_blocks", "scale_dtype"]

#: Domain and name of the model-local function that reads a packed tensor as float.
FUNCTION_DOMAIN = "tiedonnx"
DEQUANTIZE_OP = "DequantizeNBits"

# float16 keeps ~11 significant bits: a scale rounded to it moves a value
# (code - zero point) * scale by at most 15 * scale * 2**-11, a hundredth of the
# half step that rounding to 4 bits already costs. Below float16's smallest
# normal number precision falls off, so such scales stay float32.
_FP16_MIN_NORMAL = float(np.finfo(np.float16).tiny)
# What a faithful value may differ from its source, in steps (|scale|), beyond
# the float16 scale rounding above (15 * 2**-11): asymmetric blocks round to
# nearest (half a step); symmetric ones map the largest magnitude to -8 steps,
# so the other sign reaches only 7 and is clipped by up to one step (measured
# 0.9993 on the digits-trained 784-256 AE).
_SCALE_ROUNDING_STEPS = 15 * 2.0 ** -11
FAITHFUL_STEPS = {"asymmetric": 0.5 + _SCALE_ROUNDING_STEPS, "symmetric": 1.0 + _SCALE_ROUNDING_STEPS}


@dataclass
class Blocks:
    """One 4-bit tensor: ``packed`` codes, ``scales`` and optional packed ``zero_points``.

    Attributes:
        k: the logical length of the blocked (last) axis, before padding.
    """

    packed: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    k: int

    @property
    def shape(self) -> tuple[int, int]:
        """The logical float shape ``[N, K]``."""
        return (self.packed.shape[0], self.k)

    @property
    def block_size(self) -> int:
        return 2 * self.packed.shape[2]

    def codes(self) -> np.ndarray:
        """Unpacked codes ``[N, blocks, block_size]`` (0..15)."""
        p = self.packed
        return np.stack([p & 15, p >> 4], axis=-1).reshape(p.shape[0], p.shape[1], -1)

    def dequantize(self) -> np.ndarray:
        """Float32 ``[N, K]``: ``(code - zero point) * scale``, as onnxruntime computes it."""
        n, blocks = self.scales.shape
        if self.zero_points is None:
            zero = np.full((n, blocks), 8, np.float32)
        else:
            z = self.zero_points
            zero = np.stack([z & 15, z >> 4], axis=-1).reshape(n, -1)[:, :blocks].astype(np.float32)
        scales = self.scales.astype(np.float32)
        values = (self.codes().astype(np.float32) - zero[..., None]) * scales[..., None]
        return values.reshape(n, -1)[:, :self.k]

    def steps(self) -> np.ndarray:
        """Float32 ``[N, K]``: the quantization step (``|scale|``) of each value's block."""
        return np.repeat(np.abs(self.scales.astype(np.float32)), self.block_size, axis=1)[:, :self.k]

    def check_faithful(self, rows: np.ndarray, *, what: str, steps: float | None = None) -> None:
        """Raise unless every value is within :data:`FAITHFUL_STEPS` (or ``steps``) of ``rows`` (``[N, K]``).

        Catches a tensor quantized in the wrong layout (a square matrix
        transposed by mistake has the right shape and the wrong values).
        """
        if rows.shape != self.shape:
            raise ConversionError(f"{what}: the 4-bit tensor reads as shape {list(self.shape)}, its "
                                  f"source has {list(rows.shape)}; please report this model.")
        scheme = "symmetric" if self.zero_points is None else "asymmetric"
        bound = FAITHFUL_STEPS[scheme] if steps is None else steps
        excess = np.abs(self.dequantize() - rows) - bound * self.steps()
        worst = float(excess.max(initial=-np.inf))
        if worst > 1e-6 * max(1.0, float(np.abs(rows).max(initial=0.0))):
            raise ConversionError(f"{what}: the 4-bit tensor is not a rounding of its source (one "
                                  f"value is {worst:.3g} past the {scheme} rounding bound of "
                                  f"{bound:.3f} steps); please report this model.")


def quantize_blocks(rows: np.ndarray, *, block_size: int, symmetric: bool) -> Blocks:
    """Quantize ``rows`` (``[N, K]``, blocks along K) with onnxruntime's RTN kernel.

    Raises:
        ConversionError: this onnxruntime lacks the private kernel or changed its arguments.
    """
    quantize_matmul_4bits = _rtn_kernel()
    n, k = rows.shape
    blocks = -(-k // block_size)
    # The kernel reads the MatMul weight [K, N], zero-padded to whole blocks.
    weight = np.zeros((blocks * block_size, n), np.float32)
    weight[:k] = rows.T
    packed = np.zeros((n, blocks, block_size // 2), np.uint8)
    scales = np.zeros((n, blocks), np.float32)
    zero_points = np.zeros((n, (blocks + 1) // 2), np.uint8)
    try:
        quantize_matmul_4bits(packed, weight, scales, zero_points, block_size, n, k, symmetric)
    except TypeError as exc:  # pybind11: "incompatible function arguments"
        raise _kernel_changed(exc) from None
    return Blocks(packed, scales, None if symmetric else zero_points, k)


def _rtn_kernel():
    """onnxruntime's private ``capi._pybind_state.quantize_matmul_4bits``, or a one-line ConversionError."""
    try:
        from onnxruntime.capi._pybind_state import quantize_matmul_4bits
    except ImportError as exc:
        raise _kernel_changed(exc) from None
    return quantize_matmul_4bits


def _kernel_changed(exc: Exception) -> ConversionError:
    import onnxruntime as ort

    return ConversionError(
        f"onnxruntime {ort.__version__} has no usable quantize_matmul_4bits (the 4-bit kernel "
        f"tiedonnx quantizes with: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}). "
        "Install onnxruntime 1.20 to 1.32, or use precision int8.")


def scale_dtype(scales: np.ndarray) -> type:
    """float16 when every non-zero scale is a normal float16 number, else float32."""
    magnitudes = np.abs(scales[scales != 0])
    if magnitudes.size and (magnitudes.min() < _FP16_MIN_NORMAL or magnitudes.max() > FP16_MAX):
        return np.float32
    return np.float16


def dequantize_function(*, symmetric: bool, opset: int) -> onnx.FunctionProto:
    """``DequantizeNBits(packed, scales[, zero_points]) -> float [N, K]`` in standard ONNX ops.

    Attribute ``K`` trims the padded last block. Every op is one onnxruntime
    constant-folds, so a session computes the float matrix once, at start-up.
    """
    mk = helper.make_node

    def const(name: str, value) -> onnx.NodeProto:
        return mk("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name))

    def unpack(src: str) -> list[onnx.NodeProto]:  # uint8 [..., m] -> [..., m, 2], low nibble first
        return [mk("BitShift", [src, "four"], [f"{src}_up"], direction="LEFT"),
                mk("BitShift", [f"{src}_up", "four"], [f"{src}_lo"], direction="RIGHT"),
                mk("BitShift", [src, "four"], [f"{src}_hi"], direction="RIGHT"),
                mk("Unsqueeze", [f"{src}_lo", "last"], [f"{src}_lo1"]),
                mk("Unsqueeze", [f"{src}_hi", "last"], [f"{src}_hi1"]),
                mk("Concat", [f"{src}_lo1", f"{src}_hi1"], [f"{src}_pairs"], axis=-1)]

    k_ref = helper.make_attribute_ref("value_int", onnx.AttributeProto.INT)
    k_ref.ref_attr_name = "K"
    nodes = [const("four", np.uint8(4)), const("last", np.array([-1], np.int64)),
             const("keep2", np.array([0, 0, -1], np.int64)), const("keep1", np.array([0, -1], np.int64)),
             const("zero", np.array([0], np.int64)), const("one", np.array([1], np.int64)),
             mk("Constant", [], ["k"], value_int=0), *unpack("packed"),
             mk("Reshape", ["packed_pairs", "keep2"], ["codes"]),
             mk("Cast", ["codes"], ["codes_f"], to=TensorProto.FLOAT)]
    nodes[6].ClearField("attribute")
    nodes[6].attribute.append(k_ref)
    if symmetric:
        nodes += [const("eight", np.float32(8)), mk("Sub", ["codes_f", "eight"], ["centered"])]
    else:
        nodes += [*unpack("zero_points"), mk("Reshape", ["zero_points_pairs", "keep1"], ["zp_all"]),
                  mk("Shape", ["scales"], ["scale_shape"]),
                  mk("Gather", ["scale_shape", "one"], ["blocks"]),
                  mk("Slice", ["zp_all", "zero", "blocks", "one"], ["zp"]),
                  mk("Unsqueeze", ["zp", "last"], ["zp3"]),
                  mk("Cast", ["zp3"], ["zp_f"], to=TensorProto.FLOAT),
                  mk("Sub", ["codes_f", "zp_f"], ["centered"])]
    nodes += [mk("Unsqueeze", ["scales", "last"], ["scales3"]),
              mk("Mul", ["centered", "scales3"], ["values"]),
              mk("Reshape", ["values", "keep1"], ["padded"]),
              mk("Unsqueeze", ["k", "zero"], ["k1"]),
              mk("Slice", ["padded", "zero", "k1", "one"], ["output"])]
    inputs = ["packed", "scales"] + ([] if symmetric else ["zero_points"])
    return helper.make_function(FUNCTION_DOMAIN, DEQUANTIZE_OP, inputs, ["output"], nodes,
                                [helper.make_opsetid("", opset)], attributes=["K"])


def _initializer_through(name: str, made_by: dict, inits: dict, ops=("Cast", "Reshape")) -> str | None:
    """The initializer ``name`` comes from through Cast/Reshape nodes, or None."""
    while name not in inits and name in made_by and made_by[name].op_type in ops:
        name = made_by[name].input[0]
    return name if name in inits else None


def packed_tensors(graph: onnx.GraphProto) -> dict[str, Blocks]:
    """Every 4-bit tensor the graph reads (MatMulNBits, GatherBlockQuantized, DequantizeNBits).

    Keyed by the packed initializer's name; each is read back with its own
    scales and zero points. Other bit widths and layouts are skipped.
    """
    inits = {i.name: i for i in graph.initializer}
    made_by = producers(graph)
    found: dict[str, Blocks] = {}
    # GatherBlockQuantized has no K: read a tensor through its MatMul/function use first.
    for node in sorted(graph.node, key=lambda n: n.op_type == "GatherBlockQuantized"):
        if node.op_type == "MatMulNBits" and attribute(node, "bits", 4) == 4:
            data, k = node.input[1], attribute(node, "K")
            operands = [node.input[2], node.input[3] if len(node.input) > 3 else ""]
        elif node.op_type == DEQUANTIZE_OP and node.domain == FUNCTION_DOMAIN:
            data, k = node.input[0], attribute(node, "K")
            operands = [node.input[1], node.input[2] if len(node.input) > 2 else ""]
        elif node.op_type == "GatherBlockQuantized" and attribute(node, "bits", 4) == 4:
            data, k = node.input[0], None
            operands = [node.input[2], node.input[3] if len(node.input) > 3 else ""]
        else:
            continue
        source = _initializer_through(data, made_by, inits)
        scales = _initializer_through(operands[0], made_by, inits)
        if source is None or scales is None or source in found or inits[source].data_type != TensorProto.UINT8:
            continue
        zp = _initializer_through(operands[1], made_by, inits) if operands[1] else None
        s = numpy_helper.to_array(inits[scales])
        packed = numpy_helper.to_array(inits[source]).reshape(s.shape[0], s.shape[1], -1)
        found[source] = Blocks(packed, s, numpy_helper.to_array(inits[zp]) if zp else None,
                               k if k is not None else packed.shape[1] * packed.shape[2] * 2)
    return found


def find_4bit_copies(graph: onnx.GraphProto) -> list[Duplicate]:
    """Tensors that hold a 4-bit tensor's weight again: a float initializer, or a second 4-bit tensor.

    A 4-bit tensor is read back to float; another tensor of the same shape, or
    of the transposed shape, within one quantization step of it everywhere is
    a copy (a faithful rounding is within one step, see :data:`FAITHFUL_STEPS`). ``Duplicate.source``
    is the 4-bit tensor, ``copy`` the other one, ``perm`` how it is laid out.
    """
    packed = packed_tensors(graph)
    floats = {i.name: numpy_helper.to_array(i).astype(np.float32) for i in graph.initializer
              if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)
              and len(i.dims) == 2}
    readback = {name: blocks.dequantize() for name, blocks in packed.items()}
    bounds = {name: blocks.steps() * FAITHFUL_STEPS["symmetric"] for name, blocks in packed.items()}
    found = []
    names = list(packed)
    zero = np.float32(0)
    for i, name in enumerate(names):
        values, steps = readback[name], bounds[name]
        # Two roundings of one weight differ by at most the sum of their bounds.
        others = {n: (a, zero) for n, a in floats.items()}
        others |= {n: (readback[n], bounds[n]) for n in names[i + 1:]}
        for other, (array, other_steps) in others.items():
            perm = _copy_layout(values, steps, array, other_steps)
            if perm is not None:
                found.append(Duplicate(source=name, copy=other, perm=perm))
    return found


def _copy_layout(values: np.ndarray, steps: np.ndarray, array: np.ndarray, other_steps) -> tuple[int, int] | None:
    """The layout in which ``array`` is within ``steps + other_steps`` of ``values`` everywhere, or None.

    The first row is compared first: different weights differ there already, so most
    pairs cost one row, not the whole matrix (the proof runs over every pair of 4-bit tensors).
    """
    for perm in ((0, 1), (1, 0)):
        candidate = array.transpose(perm)
        if candidate.shape != values.shape:
            continue
        bound = steps + (other_steps if np.ndim(other_steps) == 0 else other_steps.transpose(perm))
        if np.all(np.abs(candidate[:1] - values[:1]) <= bound[:1]) and np.all(np.abs(candidate - values) <= bound):
            return perm
    return None
