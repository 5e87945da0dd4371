"""Find initializers that are bit-exact copies or axis permutations of another.

Equality is checked on the raw bits (NaN and -0.0 included), never inferred
from names or shapes. Candidates are grouped first by dtype, element count,
sorted shape and an order-independent fingerprint, so the full comparisons
run only between tensors that can possibly match.

Tensors under :data:`MIN_DUPLICATE_BYTES` are not candidates (a one-byte zero
point, an index constant or a captured scalar that equals another by chance is
not a tie, and the node that would replace it costs more than it saves),
except float matrices: a tied 2x1 kernel is 8 bytes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["MIN_DUPLICATE_BYTES", "Duplicate", "find_duplicates", "find_permutations_of", "initializer_arrays"]

#: Smaller tensors (float matrices excepted) are never reported as copies. Measured (``python
#: scripts/small_duplicates.py``): in the fp32/fp16/int8/int4 files of tiny QwenMoe,
#: Qwen3Moe, GPT-2, BERT and DeBERTaV3 models the only equal pairs left are two
#: uint8 [1, 1] int4 zero points (1 byte, the QwenMoe pair that broke the tie proof);
#: the smallest real tie in the tests and the README is a 4x2 float32 kernel, 32 bytes.
MIN_DUPLICATE_BYTES = 16


@dataclass(frozen=True)
class Duplicate:
    """``copy`` equals ``np.transpose(source, perm)`` bit for bit, or, when ``cast``
    is set, ``np.transpose(source.astype(cast), perm)``.

    ``perm`` is the identity for an exact copy (relation ``"identity"``). A
    cast copy (relation ``"cast"``, possibly transposed too) is what a
    ``mixed_float16`` model leaves: the float32 variable for one use and a
    constant-folded float16 (transposed) copy for the other.
    """

    source: str
    copy: str
    perm: tuple[int, ...]
    cast: str | None = None

    @property
    def relation(self) -> str:
        if self.cast:
            return "cast"
        return "identity" if self.perm == tuple(range(len(self.perm))) else "transpose"

    @property
    def transposed(self) -> bool:
        return self.perm != tuple(range(len(self.perm)))


# Casts folded back into one tensor: float32/float64 -> float16, which numpy and
# ONNX ``Cast`` both round to nearest even (bit-identical). bfloat16 is left
# out: onnxruntime's float -> bfloat16 rounding has changed between releases.
_CAST_SOURCES = (np.dtype(np.float32), np.dtype(np.float64))
_CAST_TARGETS = (np.dtype(np.float16),)
# Below this many elements a float16 copy (128 bytes) is smaller than the Cast
# node that would replace it: mixed-precision graphs keep small fp16 constants.
MIN_CAST_ELEMENTS = 64


def initializer_arrays(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Name -> numpy array for every initializer of ``graph`` (main graph only)."""
    return {init.name: numpy_helper.to_array(init) for init in graph.initializer}


_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _bits(array: np.ndarray) -> np.ndarray:
    """A view of the array's raw bits, so comparison is bitwise (NaN == NaN, -0 != 0)."""
    array = np.ascontiguousarray(array)
    if array.dtype == object:  # ONNX string tensors
        return array
    uint = _UINT.get(array.dtype.itemsize)
    if uint is None:  # complex128 and other wide types: compare bytes per element
        return array.view(np.uint8).reshape(*array.shape, array.dtype.itemsize)
    return array.view(uint)


def _fingerprint(array: np.ndarray) -> tuple:
    """Order-independent summary: equal for any axis permutation of the same data."""
    flat = _bits(array).reshape(array.size, -1) if array.size else np.zeros((0, 1), np.uint8)
    if flat.dtype == object:
        return (hash(tuple(sorted(map(str, flat.reshape(-1))))),)
    words = flat.astype(np.uint64)
    with np.errstate(over="ignore"):
        return (int(words.sum(dtype=np.uint64)), int((words * words).sum(dtype=np.uint64)))


def _permutation_between(src: np.ndarray, dst: np.ndarray) -> tuple[int, ...] | None:
    """The axis permutation ``perm`` with ``np.transpose(src, perm)`` equal to ``dst``
    bit for bit (identity first), or None."""
    for perm in itertools.permutations(range(src.ndim)):
        if tuple(src.shape[p] for p in perm) == dst.shape and \
                np.array_equal(_bits(np.transpose(src, perm)), _bits(dst)):
            return perm
    return None


def _shape_key(array: np.ndarray) -> tuple:
    """What any axis permutation keeps, read without touching the data."""
    return (array.dtype.str, array.size, tuple(sorted(array.shape)))


def _candidate_groups(arrays: dict[str, np.ndarray]) -> list[list[str]]:
    """Names that may be permutations of each other, in graph order (groups of 2+).

    Grouped by shape first; only tensors that share a shape key pay for the
    fingerprint, a full pass over their data.
    """
    by_shape: dict[tuple, list[str]] = {}
    for name, array in arrays.items():
        by_shape.setdefault(_shape_key(array), []).append(name)
    groups: list[list[str]] = []
    for names in by_shape.values():
        if len(names) < 2:
            continue
        by_print: dict[tuple, list[str]] = {}
        for name in names:
            by_print.setdefault(_fingerprint(arrays[name]), []).append(name)
        groups += [g for g in by_print.values() if len(g) > 1]
    return groups


def find_duplicates(arrays: dict[str, np.ndarray], *, prefer: list[str] | None = None,
                    min_bytes: int = MIN_DUPLICATE_BYTES) -> list[Duplicate]:
    """Return every initializer that duplicates (or permutes) an earlier one.

    Args:
        arrays: name -> array, in graph order.
        prefer: names to keep as the stored copy when they are part of a group
            (e.g. the initializer whose layout matches the Keras variable).
        min_bytes: tensors with fewer bytes are left out (:data:`MIN_DUPLICATE_BYTES`).

    Returns:
        One :class:`Duplicate` per redundant tensor; each ``source`` is a tensor
        that stays. A group of ``k`` equal tensors yields ``k - 1`` entries.
    """
    prefer = list(prefer or [])
    # A small float *matrix* can still be a real tie (a 2x1 tied kernel, 8 bytes: tests/test_property.py);
    # small scalars, vectors and integer tensors (zero points, T5Gemma's captured scale) are not ties.
    arrays = {k: v for k, v in arrays.items()
              if v.nbytes >= min_bytes or (v.ndim >= 2 and np.issubdtype(v.dtype, np.floating))}
    found = _permutation_duplicates(arrays, prefer)
    return found + _cast_duplicates(arrays, skip={d.copy for d in found})


def _permutation_duplicates(arrays: dict[str, np.ndarray], prefer: list[str]) -> list[Duplicate]:
    found: list[Duplicate] = []
    for names in _candidate_groups(arrays):
        # Preferred names first, then graph order (sorted is stable).
        names = sorted(names, key=lambda n: n not in prefer)
        kept: list[str] = []
        for name in names:
            match = next(((source, perm) for source in kept
                          if (perm := _permutation_between(arrays[source], arrays[name])) is not None), None)
            if match:
                found.append(Duplicate(source=match[0], copy=name, perm=match[1]))
            else:
                kept.append(name)
    return found


def _faithful_cast(array: np.ndarray, dtype: np.dtype) -> np.ndarray | None:
    """``array.astype(dtype)``, or None when a finite value overflows to infinity."""
    with np.errstate(over="ignore"):
        cast = array.astype(dtype)
    if not np.array_equal(np.isfinite(cast), np.isfinite(array)):
        return None
    return cast


def _cast_duplicates(arrays: dict[str, np.ndarray], *, skip: set[str]) -> list[Duplicate]:
    """float16 tensors that are the (transposed) cast of a wider float tensor."""
    narrow: dict[tuple, list[str]] = {}
    for name, array in arrays.items():
        if name not in skip and array.dtype in _CAST_TARGETS and array.size >= MIN_CAST_ELEMENTS:
            narrow.setdefault(_shape_key(array), []).append(name)
    found: list[Duplicate] = []
    if not narrow:
        return found
    prints: dict[str, tuple] = {}
    for name, wide in arrays.items():
        if name in skip or wide.dtype not in _CAST_SOURCES:
            continue
        for dtype in _CAST_TARGETS:
            candidates = narrow.get((dtype.str, wide.size, tuple(sorted(wide.shape))), [])
            cast = _faithful_cast(wide, dtype) if candidates else None
            if cast is None:
                continue
            fingerprint = _fingerprint(cast)
            for copy in list(candidates):
                if prints.setdefault(copy, _fingerprint(arrays[copy])) != fingerprint:
                    continue
                perm = _permutation_between(cast, arrays[copy])
                if perm is not None:
                    found.append(Duplicate(source=name, copy=copy, perm=perm, cast=dtype.name))
                    candidates.remove(copy)  # each copy folds into one source
    return found


def find_permutations_of(target: np.ndarray, arrays: dict[str, np.ndarray], *,
                         casts: bool = False) -> list[tuple[str, tuple[int, ...]]]:
    """Names (and perms) of the arrays equal to some axis permutation of ``target``, bit for bit.

    With ``casts``, an array of a narrower float type (float16) also matches
    when it equals a permutation of ``target`` cast to that type (how a
    ``mixed_float16`` export stores a float32 variable).
    """
    target = np.asarray(target)
    versions = [target]
    if casts and target.dtype in _CAST_SOURCES:
        versions += [c for d in _CAST_TARGETS if (c := _faithful_cast(target, d)) is not None]
    keyed = [(_shape_key(v), _fingerprint(v), v) for v in versions]
    found = []
    for name, array in arrays.items():
        for key, fingerprint, version in keyed:
            # The cheap key first: most arrays differ in shape, and skip the data pass.
            if _shape_key(array) != key or _fingerprint(array) != fingerprint:
                continue
            perm = _permutation_between(version, array)
            if perm is not None:
                found.append((name, perm))
                break
    return found
