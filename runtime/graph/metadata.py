"""The tie record kept in an ONNX file's ``metadata_props``: one type, one reader, one writer.

Key ``tiedonnx.ties`` holds a compact JSON list, one :class:`TieRecord` per
stored tied tensor (shape and dtype are read from the initializer itself)::

    {"initializer": "W",
     "uses": [{"relation": "transpose", "perm": [1, 0], "output": "W__T"}],
     "keras": {"decoder": "dec", "tied_to": "enc", "variable": "enc/kernel"}}

``uses`` lists the uses that read the stored tensor through a graph op
(``output`` is that op's output name); the direct use is implied. ``keras``
is present when the tie's Keras layers and variable are known.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, fields

import onnx

logger = logging.getLogger(__name__)

__all__ = ["PRECISION_KEY", "TIES_KEY", "MalformedRecord", "read_precision", "TieRecord", "TieUse", "parse_ties",
           "read_ties", "write_metadata", "write_ties"]

TIES_KEY = "tiedonnx.ties"
VERSIONS_KEY = "tiedonnx.versions"
PRECISION_KEY = "tiedonnx.precision"
#: Tensors an fp16 file keeps in float32 (a JSON list), written by :mod:`.fp16`.
KEPT_FP32_KEY = "tiedonnx.fp16.kept_fp32"


class MalformedRecord(ValueError):
    """A tiedonnx metadata value that is not what tiedonnx writes (readers turn it into one error line)."""


def _compact(obj) -> dict:
    """Dataclass fields as a dict, without the ones left at None."""
    return {f.name: getattr(obj, f.name) for f in fields(obj) if getattr(obj, f.name) is not None}


@dataclass
class TieUse:
    """One use of a stored tied tensor through a graph op.

    Attributes:
        relation: ``"transpose"``, ``"identity"``, ``"cast"`` or ``"dequantize"``.
        output: the name the use reads (the op's output).
        perm: the axis permutation, for transposes.
        kernel: ``"integer"`` or ``"float"`` (quantized files).
        to: the cast's target dtype (fp16 files).
    """

    relation: str
    output: str
    perm: list[int] | None = None
    kernel: str | None = None
    to: str | None = None

    def as_dict(self) -> dict:
        return _compact(self)


@dataclass
class TieRecord:
    """One tie: the tensor stored once, and every use that reads it through an op.

    Attributes:
        initializer: the stored tensor.
        shape, dtype: of the stored tensor.
        uses: the uses through graph ops (the direct use is implied).
        keras: ``{"decoder", "tied_to", "variable"}`` when the Keras side is known.
        source: the float tensor's name before fp16/int8 storage.
        scale, zero_point, axis: quantization parameters (int8).
    """

    initializer: str
    shape: list[int] = field(default_factory=list)
    dtype: str = ""
    uses: list[TieUse] = field(default_factory=list)
    keras: dict | None = None
    source: str | None = None
    scale: str | None = None
    zero_point: str | None = None
    axis: int | None = None

    def as_dict(self, *, stored: bool = False) -> dict:
        """JSON-friendly form. ``stored``: the compact form written into the file,
        without ``shape`` and ``dtype`` (the graph's initializer holds them)."""
        d = _compact(self)
        d["uses"] = [u.as_dict() for u in self.uses]
        if stored:
            d.pop("shape", None)
            d.pop("dtype", None)
        return d

    @classmethod
    def from_dict(cls, data) -> TieRecord:
        """Build from one metadata entry, validated; raises :class:`MalformedRecord` on a bad one."""
        from .metadata_check import check_entry

        check_entry(data, "record")
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        uses = kwargs.pop("uses", None) or []
        use_keys = {f.name for f in fields(TieUse)}
        return cls(**kwargs, uses=[TieUse(**{k: v for k, v in u.items() if k in use_keys}) for u in uses])

    def members(self) -> dict[str, tuple[int, ...]]:
        """Float tensor names of this tie -> the permutation of the stored tensor that gives them."""
        ndim = len(self.shape) or 2
        found = {self.initializer: tuple(range(ndim))}
        for use in self.uses:
            if use.relation == "transpose" and use.perm is not None:
                found[use.output] = tuple(use.perm)
        return found

    def add_use(self, use: TieUse) -> None:
        if use not in self.uses:
            self.uses.append(use)


def parse_ties(text: str) -> list[TieRecord]:
    """The tie records in ``text`` (a :data:`TIES_KEY` value), every entry validated.

    Raises:
        MalformedRecord: not JSON, not a list of records, a field of the wrong
            type or size, or records that contradict each other (see
            :mod:`.metadata_check`).
    """
    from .metadata_check import check_references, load_json

    entries = load_json(text, TIES_KEY)
    if not isinstance(entries, list):
        raise MalformedRecord(f"{TIES_KEY} must be a JSON list of records; received a "
                              f"{type(entries).__name__}")
    ties = []
    for i, entry in enumerate(entries):
        try:
            ties.append(TieRecord.from_dict(entry))
        except MalformedRecord as exc:
            raise MalformedRecord(f"{TIES_KEY} entry {i}: {exc}") from None
    check_references(ties)
    return ties


def read_ties(model: onnx.ModelProto) -> list[TieRecord]:
    """The tie record of ``model`` (empty when it has none).

    Files are validated when read (:func:`tiedonnx.runtime.model_file.read_model`
    refuses a malformed record); an in-memory model with a malformed record is
    treated as having none, with one warning.
    """
    for prop in model.metadata_props:
        if prop.key != TIES_KEY:
            continue
        try:
            ties = parse_ties(prop.value)
        except MalformedRecord as exc:
            logger.warning("ignoring the malformed tie record: %s", exc)
            return []
        _fill_from_graph(model.graph, ties)
        return ties
    return []


def _fill_from_graph(graph: onnx.GraphProto, ties: list[TieRecord]) -> None:
    """Shape and dtype of each stored tensor, from its initializer (the file stores them once)."""
    inits = {i.name: i for i in graph.initializer}
    for tie in ties:
        init = inits.get(tie.initializer)
        if init is None:
            continue
        if not tie.shape:
            tie.shape = list(init.dims)
        if not tie.dtype:
            try:
                tie.dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).name
            except KeyError:
                tie.dtype = onnx.TensorProto.DataType.Name(init.data_type).lower()


def write_ties(model: onnx.ModelProto, ties: list[TieRecord]) -> None:
    """Store ``ties`` as the model's tie record (in place); removes the key when empty."""
    if ties:
        text = json.dumps([t.as_dict(stored=True) for t in ties], sort_keys=True, separators=(",", ":"))
        write_metadata(model, {TIES_KEY: text})
    else:
        write_metadata(model, {TIES_KEY: None})


def write_metadata(model: onnx.ModelProto, entries: dict[str, str | None]) -> None:
    """Set (replace) metadata keys on ``model`` in place; a value of None removes the key."""
    from .edit import replace_repeated

    kept = [p for p in model.metadata_props if p.key not in entries]
    replace_repeated(model.metadata_props, kept)
    for key, value in entries.items():
        if value is not None:
            model.metadata_props.add(key=key, value=value)


def read_precision(model: onnx.ModelProto) -> str:
    """The weight precision recorded in ``model``'s metadata (``"fp32"`` when none is)."""
    for prop in model.metadata_props:
        if prop.key == PRECISION_KEY:
            return prop.value
    return "fp32"
