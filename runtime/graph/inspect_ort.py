"""``inspect`` for ORT-format (``.ort``) files: the same report as for ``.onnx``.

An ``.ort`` file keeps the model's metadata (the tie record) and its
initializers as raw bytes. Ties are re-checked by value: the stored tensor
must be there, and no other initializer may hold the same multiset of values
(a copy or a transpose, as onnxruntime's own constant folding would write).
The file is read with :func:`.ort_format.read_ort_model` (size caps, declared
tensor sizes) before anything else.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from .inspect import InspectReport, copied_bytes, dtype_name
from .metadata import TIES_KEY, parse_ties
from .metadata_check import drop_malformed
from .ort_format import ort_initializers, ort_schema, read_ort_metadata, read_ort_model

__all__ = ["inspect_ort_file"]

def _model(data: bytes):
    return ort_schema().InferenceSession.InferenceSession.GetRootAsInferenceSession(bytearray(data), 0).Model()


def _value_key(entry: dict):
    """What a copy or any permutation of a tensor keeps: dtype and the sorted raw values."""
    width = max(1, entry["bytes"] // max(1, int(np.prod(entry["dims"] or [1]))))
    values = entry["raw"].view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}.get(width, np.uint8))
    return entry["data_type"], np.sort(values).tobytes()


def _io(path: str) -> tuple[list[dict], list[dict]]:
    from ..session import load

    model = load(path, providers="cpu")
    describe = lambda specs: [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype.name}  # noqa: E731
                              for s in specs]
    return describe(model.inputs), describe(model.outputs)


def _read_flatbuffer(data: bytes, path) -> tuple:
    """Metadata (validated), initializers, opsets, producer and IR version, or one ModelFileError.

    :func:`.ort_format.read_ort_model` has walked the tensors; a crafted buffer
    can still point a name or an opset past the end of the file, which the
    flatbuffers reader reports as any of several exceptions.
    """
    from ..errors import ModelFileError, short_error

    try:
        meta = read_ort_metadata(data, path, check=False)  # the record is checked once the file loads
        model = _model(data)
        inits = ort_initializers(data, with_data=True)
        opsets = {model.OpsetImport(i).Domain().decode() or "ai.onnx": model.OpsetImport(i).Version()
                  for i in range(model.OpsetImportLength())}
        producer = f"{(model.ProducerName() or b'').decode()} {(model.ProducerVersion() or b'').decode()}"
        return meta, inits, opsets, producer.strip(), model.IrVersion()
    except ModelFileError:
        raise
    except Exception as exc:  # IndexError, struct.error, UnicodeDecodeError, ... from a crafted buffer
        raise ModelFileError(f"{str(path)!r} is not a readable ORT-format model ({short_error(exc)}): "
                             "the file is corrupt. Write it again with `tiedonnx ort`.") from None


def inspect_ort_file(path: str | os.PathLike, *, max_bytes: int | None = None) -> InspectReport:
    """Describe an ``.ort`` file like :func:`~.inspect.inspect_model` describes an ``.onnx``."""
    from ..model_file import DEFAULT_MAX_BYTES

    data = read_ort_model(path, max_bytes=max_bytes or DEFAULT_MAX_BYTES)
    meta, inits, opsets, producer, ir_version = _read_flatbuffer(data, path)
    # onnxruntime verifies the whole file first: a file it refuses is one error line, with no
    # warning about its tie record before it.
    inputs, outputs = _io(str(path))
    for key in drop_malformed(meta, path):
        del meta[key]
    groups: dict = {}
    for entry in inits:
        groups.setdefault(_value_key(entry), []).append(entry["name"])
    copies = {n: names[0] for names in groups.values() if len(names) > 1 for n in names[1:]}
    by_name = {e["name"]: e for e in inits}
    ties, extra = [], 0
    for tie in parse_ties(meta[TIES_KEY]) if TIES_KEY in meta else []:  # validated by read_ort_model
        stored = by_name.get(tie.initializer)
        problems = [] if stored else [f"stored tensor {tie.initializer!r} is not in the file"]
        twins = [n for n, src in copies.items() if tie.initializer in (n, src)]
        if twins:
            problems.append(f"stored more than once ({', '.join(sorted(set(twins)))})")
        if stored and not tie.shape:
            tie.shape = list(stored["dims"])
        extra += copied_bytes(tie, (stored or {"bytes": 0})["bytes"])  # cast copies at their own dtype
        ties.append({**tie.as_dict(), "status": "ok" if not problems else "; ".join(problems)})
    size = Path(path).stat().st_size
    return InspectReport(
        bytes=size, untied_bytes=size + extra, opset=opsets, ir_version=ir_version,
        producer=producer, inputs=inputs, outputs=outputs,
        initializers=[{"name": e["name"], "shape": e["dims"], "bytes": e["bytes"],
                       "dtype": dtype_name(e["data_type"])} for e in inits],
        ties=ties,
        untied_duplicates=[{"source": src, "copy": n, "relation": "copy or transpose"}
                           for n, src in copies.items()],
        metadata={k: v for k, v in meta.items() if k != TIES_KEY} | {"format": "ORT"},
    )
