"""Hostile tiedonnx metadata: hand-edited tie records in ``.onnx`` files, and broken ``.ort`` files.

Part of the hostile-input helpers (re-exported by :mod:`tests.hostile`); not a test module.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx

# Hand-edited tiedonnx metadata (issue 26, case 4); each names the check that must refuse it.
TIE_KINDS = {
    "tie_not_json": "tiedonnx.ties is not valid JSON",
    "tie_no_initializer": "entry 0: record has no 'initializer'",
    "tie_shape_text": r"record.shape must be a list .* received '8,4'",
    "tie_shape_floats": r"record.shape must be a list .* received \[8.0, 4.5\]",
    "tie_relation_number": r"record.uses\[0\].relation must be one of .* received 7",
    "tie_scale_list": r"record.scale must be a tensor name or null; received \['s'\]",
    "tie_perm_text": r"uses\[0\].perm must be a permutation .* received '10'",
    "tie_perm_invalid": r"uses\[0\].perm must be a permutation .* received \[0, 0\]",
    "tie_perm_huge": r"uses\[0\].perm must be a permutation of 0..n-1 \(1 <= n <= 64\)",
    # found by scripts/fuzz_loaders.py: both gave exit 3 (numpy's "axes don't match array") in quantize
    "tie_perm_empty": r"uses\[0\].perm must be a permutation .* received \[\]",
    "tie_perm_rank": r"\(rank 2\) has the transpose order \[2, 0, 1\]",
    "tie_cycle": "records that name each other form a cycle",
    "tie_bool_axis": "record.axis must be a whole number or null; received True",
    "kept_fp32_deep": "tiedonnx.fp16.kept_fp32 is nested too deeply to parse",
    "kept_fp32_numbers": "tiedonnx.fp16.kept_fp32 must be a JSON list of tensor names",
}


def edit_tie_record(proto: onnx.ModelProto, kind: str) -> None:
    """Replace the valid tie record of ``proto`` (or add the fp16 kept list) with a ``kind`` edit."""
    prop = next(p for p in proto.metadata_props if p.key == "tiedonnx.ties")
    records = json.loads(prop.value)
    record, use = records[0], records[0]["uses"][0]
    if kind == "kept_fp32_deep":
        proto.metadata_props.add(key="tiedonnx.fp16.kept_fp32", value="[" * 50_000 + "]" * 50_000)
        return
    if kind == "kept_fp32_numbers":
        proto.metadata_props.add(key="tiedonnx.fp16.kept_fp32", value="[1, 2]")
        return
    if kind == "tie_not_json":
        prop.value = '[{"initializer": '
        return
    edits = {"tie_no_initializer": lambda: record.pop("initializer"),
             "tie_shape_text": lambda: record.update(shape="8,4"),
             "tie_shape_floats": lambda: record.update(shape=[8.0, 4.5]),
             "tie_relation_number": lambda: use.update(relation=7),
             "tie_scale_list": lambda: record.update(scale=["s"]),
             "tie_perm_text": lambda: use.update(perm="10"),
             "tie_perm_invalid": lambda: use.update(perm=[0, 0]),
             "tie_perm_huge": lambda: use.update(perm=list(range(100_000))),
             "tie_perm_empty": lambda: use.update(perm=[]),
             "tie_perm_rank": lambda: use.update(perm=[2, 0, 1]),
             "tie_bool_axis": lambda: record.update(axis=True),
             "tie_cycle": lambda: records.append({"initializer": use["output"], "uses": [
                 {"relation": "transpose", "perm": [1, 0], "output": record["initializer"]}]})}
    edits[kind]()
    prop.value = json.dumps(records)


def bad_ort(kind: str, good: Path, folder: Path) -> Path:
    """An ``.ort`` file made by onnxruntime itself from ``good`` (an .onnx) edited as ``kind``.

    ``ort_*`` kinds reuse the tie edits (``ort_tie_not_json``), or: ``ort_meta_not_utf8``
    (a metadata value that is not UTF-8) and ``ort_producer_past_end`` (the producer
    name's offset pointing past the end of the file, as a bit flip does).
    """
    import onnxruntime as ort

    proto = onnx.load(good)
    base = kind.removeprefix("ort_")
    if base in TIE_KINDS:
        edit_tie_record(proto, base)
    elif kind == "ort_meta_not_utf8":
        proto.metadata_props.add(key="note", value="MARKER-NOT-UTF8")
    elif kind == "ort_input_name_not_utf8":  # found by fuzz_loaders: onnxruntime hands names to Python
        _rename_input(proto, "MARKER-NOT-UTF8")
    elif kind == "ort_dim_not_utf8":  # found by fuzz_loaders: and dimension names too (get_inputs().shape)
        proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "MARKER-NOT-UTF8"
    path = folder / f"bad_{kind}.ort"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.optimized_model_filepath = str(path)
    options.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    data = bytearray(path.read_bytes())
    if kind in ("ort_meta_not_utf8", "ort_input_name_not_utf8", "ort_dim_not_utf8"):
        data = bytearray(bytes(data).replace(b"MARKER-NOT-UTF8", b"\xff\xfe\xfdKER-NOT-UTF8"))
    elif kind == "ort_producer_past_end":
        _point_past_end(data, field_slot=8)  # Model.producer_name in onnxruntime's ort.fbs
    path.write_bytes(bytes(data))
    return path


def _point_past_end(data: bytearray, *, field_slot: int) -> None:
    """Set the offset of a ``Model`` string field so that it points past the end of the buffer."""
    import onnxruntime.tools.ort_format_model  # noqa: F401  (puts the flatbuffers schema on sys.path)
    from ort_flatbuffers_py import fbs

    model = fbs.InferenceSession.InferenceSession.GetRootAsInferenceSession(data, 0).Model()
    slot = model._tab.Offset(field_slot)
    assert slot, "the model has no producer name to corrupt"
    at = model._tab.Pos + slot
    data[at:at + 4] = (len(data) + 1024).to_bytes(4, "little")


def _rename_input(proto: onnx.ModelProto, new: str) -> None:
    old = proto.graph.input[0].name
    proto.graph.input[0].name = new
    for node in proto.graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
