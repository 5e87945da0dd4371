"""Mutators for scripts/fuzz_loaders.py: hostile tie records and ``.ort`` files.

Tie records (``tiedonnx.ties``, and the fp16 ``tiedonnx.fp16.kept_fp32`` list)
are mutated as JSON trees: a value replaced by another type (text, fraction,
bool, null, list, object, a huge or deeply nested list), a key deleted, records
duplicated, records naming each other (cycles), permutations that are not
permutations. ``.ort`` files are mutated as bytes (bit flips, truncation,
splices), as flatbuffer offsets (a 4-byte word set to point anywhere), as the
tie record's text edited in place (same length, non-UTF-8 bytes included), and
rebuilt by onnxruntime from an ``.onnx`` whose tie record was mutated.
Scripts only: the package never imports this.
"""

from __future__ import annotations

import copy
import json
import os
import random
import tempfile

from fuzz_mutators import BYTE_MUTATORS, Case

TIES_KEY = "tiedonnx.ties"
KEPT_KEY = "tiedonnx.fp16.kept_fp32"


def _hostile_value(rnd: random.Random):
    return rnd.choice([
        "text", "10", 0.5, -1, True, None, [], {}, [1.5, "x"], {"a": [1]}, 2**70, "\u202e\x1b[31m",
        list(range(rnd.choice([65, 1000, 100_000]))), _nest(rnd.choice([50, 1000, 50_000])),
    ])


def _nest(depth: int):
    node: object = []
    for _ in range(min(depth, 900)):  # deeper ones are written as text, past json.dumps's recursion
        node = [node]
    return node if depth <= 900 else {"__deep_text__": depth}


def _paths(tree, prefix=()):
    """Every (path, value) in a JSON tree, containers included."""
    yield prefix, tree
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from _paths(value, (*prefix, i))


def _set(tree, path, value):
    for step in path[:-1]:
        tree = tree[step]
    tree[path[-1]] = value


def _dumps(tree) -> str:
    text = json.dumps(tree)
    if '{"__deep_text__":' in text:  # a depth json.dumps cannot reach: splice it in as text
        head, _, tail = text.partition('{"__deep_text__": ')
        depth, _, rest = tail.partition("}")
        text = head + "[" * int(depth) + "]" * int(depth) + rest
    return text


def mutate_record(records: list, rnd: random.Random) -> tuple[str, str]:
    """A mutated copy of a tie record list, as (JSON text, what was done)."""
    tree = copy.deepcopy(records)
    choice = rnd.choice(["retype", "retype", "retype", "delete", "duplicate", "cycle", "perm", "self_use"])
    if choice in ("cycle", "self_use", "duplicate") and tree and tree[0].get("uses"):
        first = tree[0]
        if choice == "cycle":
            tree.append({"initializer": first["uses"][0]["output"],
                         "uses": [{"relation": "transpose", "perm": [1, 0], "output": first["initializer"]}]})
        elif choice == "self_use":
            first["uses"].append({"relation": "transpose", "perm": [1, 0], "output": first["initializer"]})
        else:
            tree.append(copy.deepcopy(first))
        return _dumps(tree), choice
    if choice == "perm" and tree and tree[0].get("uses"):
        use = tree[0]["uses"][0]
        use["perm"] = rnd.choice([[0, 0], [1], [2, 0], "10", [1.0, 0.0], [True, False],
                                  list(range(100_000))[::-1]])
        return _dumps(tree), f"perm = {str(use['perm'])[:30]}"
    paths = [p for p, _ in _paths(tree) if p]
    if not paths:
        return _dumps(_hostile_value(rnd)), "whole record replaced"
    path = rnd.choice(paths)
    if choice == "delete" and isinstance(path[-1], str):
        parent = tree
        for step in path[:-1]:
            parent = parent[step]
        del parent[path[-1]]
        return _dumps(tree), f"delete {'/'.join(map(str, path))}"
    value = _hostile_value(rnd)
    _set(tree, path, value)
    return _dumps(tree), f"{'/'.join(map(str, path))} = {str(value)[:30]}"


def m_ties(model, rnd: random.Random) -> str:
    """Mutate ``model``'s tie record (or add a hostile fp16 kept list) in place."""
    props = {p.key: p for p in model.metadata_props}
    if rnd.random() < 0.2:
        prop = props.get(KEPT_KEY) or model.metadata_props.add(key=KEPT_KEY)
        prop.value = rnd.choice(["[1]", "{}", '["a", 2]', "[" * 50_000 + "]" * 50_000, "nope", '["x"]'])
        return f"{KEPT_KEY} = {prop.value[:20]!r}"
    prop = props.get(TIES_KEY)
    if prop is None:
        return "no tie record to mutate"
    text, what = mutate_record(json.loads(prop.value), rnd)
    prop.value = text
    return what


def mutate_ties(seed: dict, rnd: random.Random) -> Case:
    """An ``.onnx`` case whose only change is its tie metadata."""
    import onnx

    files = dict(seed["files"])
    model = onnx.ModelProto.FromString(files["model.onnx"])
    what = m_ties(model, rnd)
    files["model.onnx"] = model.SerializeToString()
    return Case("onnx_ties", f"ties: {what}", files, seed["model"])


# ------------------------------------------------------------------- .ort


def _offset_word(data: bytes, rnd: random.Random) -> tuple[bytes, str]:
    buf = bytearray(data)
    i = rnd.randrange(0, len(buf) - 4, 4)
    value = rnd.choice([0, 1, 4, len(buf), len(buf) + 4096, 2**31 - 1, 2**32 - 1, rnd.randrange(2**32)])
    buf[i:i + 4] = value.to_bytes(4, "little")
    return bytes(buf), f"word at {i} = {value}"


def _record_text(data: bytes, rnd: random.Random) -> tuple[bytes, str]:
    start = data.find(b'[{"initializer"')
    if start < 0:
        return _offset_word(data, rnd)
    buf = bytearray(data)
    n = rnd.choice([1, 2, 8])
    for _ in range(n):
        i = start + rnd.randrange(0, 120)
        buf[i] = rnd.choice([0xFF, 0xC0, 0x00, ord("{"), ord("]"), ord("9"), ord('"')])
    return bytes(buf), f"tie record text: {n} byte(s) replaced"


def _rebuilt(seed: dict, rnd: random.Random) -> tuple[bytes, str]:
    """onnxruntime writes an .ort from the seed's .onnx with a mutated tie record."""
    import onnx
    import onnxruntime as ort

    model = onnx.ModelProto.FromString(seed["onnx"])
    what = m_ties(model, rnd)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.ort")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.optimized_model_filepath = path
        options.add_session_config_entry("session.save_model_format", "ORT")
        options.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        with open(path, "rb") as fh:
            return fh.read(), f"rebuilt with ties: {what}"


def mutate_ort(seed: dict, rnd: random.Random) -> Case:
    """An ``.ort`` case: bytes, offsets, the tie record's text, or a rebuilt file with a hostile record."""
    files = dict(seed["files"])
    roll = rnd.random()
    if roll < 0.3:
        files["model.ort"], what = rnd.choice(BYTE_MUTATORS)(files["model.ort"], rnd)
    elif roll < 0.5:
        files["model.ort"], what = _offset_word(files["model.ort"], rnd)
    elif roll < 0.7:
        files["model.ort"], what = _record_text(files["model.ort"], rnd)
    else:
        files["model.ort"], what = _rebuilt(seed, rnd)
    return Case("ort", f"ort: {what}", files, seed["model"])
