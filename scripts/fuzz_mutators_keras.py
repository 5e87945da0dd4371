"""Mutators for scripts/fuzz_loaders.py: how a valid ``.keras`` archive becomes a hostile one.

Config objects (class names, modules, values, lambdas), registered names and
modules that try to vouch for each other, deep JSON (below, at and far beyond
the scan's nesting cap), archive tricks (duplicate names, path-like names,
thousands of members, highly compressible members), weights and metadata.
Scripts only: the package never imports this.
"""

from __future__ import annotations

import io
import json
import random
import zipfile

from fuzz_mutators import BYTE_MUTATORS, Case

# Layer sizes the config mutator may write: large enough to matter, small enough
# (<= 16 x 10**5 float32 = 6.4 MB) not to exhaust a shared machine's memory.
SIZES = [-5, -1, 0, 1, 3, 10**5, "7", None, 2.5]


# --------------------------------------------------------- .keras mutations


def members_of(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def zip_members(members: list[tuple[str, bytes]]) -> bytes:
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile: "Duplicate name"
        with zipfile.ZipFile(buf, "w") as archive:
            for name, data in members:
                archive.writestr(name, data)
    return buf.getvalue()


def _objects(node, found):
    if isinstance(node, dict):
        if "class_name" in node:
            found.append(node)
        for value in node.values():
            _objects(value, found)
    elif isinstance(node, list):
        for value in node:
            _objects(value, found)
    return found


def _config(members) -> tuple[int, dict]:
    index = next(i for i, (name, _) in enumerate(members) if name == "config.json")
    return index, json.loads(members[index][1])


def k_config(members, rnd):
    index, config = _config(members)
    obj = rnd.choice(_objects(config, []))
    choice = rnd.choice(["class_name", "module", "value", "drop_key", "lambda", "json"])
    if choice == "class_name":
        obj["class_name"] = rnd.choice(["Dense", "Lambda", "__lambda__", "system", "DenseTied", "Foo", ""])
    elif choice == "module":
        obj["module"] = rnd.choice(["builtins", "os", "subprocess", "keras.layers", "keras.src.saving", None])
    elif choice == "value" and isinstance(obj.get("config"), dict) and obj["config"]:
        key = rnd.choice(sorted(obj["config"]))
        obj["config"][key] = rnd.choice(SIZES + ["enc", [], {}, {"class_name": "Foo"}])
        choice = f"config[{key!r}] = {obj['config'][key]!r}"
    elif choice == "drop_key" and obj:
        key = rnd.choice(sorted(obj))
        del obj[key]
        choice = f"drop {key!r}"
    elif choice == "lambda":
        obj["class_name"], obj["module"] = "Lambda", "keras.layers"
        code = {"code": "YWJj", "defaults": None, "closure": None}
        obj["config"] = {"name": "lam", "function": {"class_name": "__lambda__", "config": code}}
    else:
        text = members[index][1]
        members[index] = ("config.json", text[: rnd.randrange(len(text))])
        return "config.json truncated"
    members[index] = ("config.json", json.dumps(config).encode())
    return f"config {obj.get('class_name', '?')}: {choice}"


def k_names(members, rnd):
    """Registered names, modules and marker names that try to vouch for each other."""
    index, config = _config(members)
    obj = rnd.choice(_objects(config, []))
    edit = rnd.choice([
        {"registered_name": ["tiedonnx>DenseTied"]}, {"registered_name": {"a": 1}}, {"registered_name": 5},
        {"registered_name": "tiedonnx>DenseTied", "module": "os"},
        {"registered_name": "tiedonnx>DenseTied", "module": None},
        {"class_name": "__keras_tensor__", "module": "os"}, {"class_name": "__system__", "module": "os"},
        {"class_name": "__typespec__", "module": "keras.layers"}, {"class_name": "__numpy__", "module": None},
        {"class_name": ["Dense"]}, {"module": ["keras"]}, {"class_name": None},
    ])
    obj.update(edit)
    members[index] = ("config.json", json.dumps(config).encode())
    return f"object edit {edit}"


def k_deep(members, rnd):
    """config.json nested deeply: below, at and far beyond the scan's cap of 100."""
    index, config = _config(members)
    depth = rnd.choice([50, 99, 101, 150, 990, 5000, 200_000])
    if rnd.random() < 0.5:
        text = b'{"a":' * depth + b"1" + b"}" * depth
        members[index] = ("config.json", text)
        return f"config.json is {depth} nested objects"
    inner = b"[" * depth + b"]" * depth
    text = json.dumps(config).encode()
    members[index] = ("config.json", text[:-1] + b', "deep": ' + inner + b"}")
    return f"config.json gains a list nested {depth} deep"


def k_members(members, rnd):
    """Archive tricks: duplicate names, path-like names, many members, a huge stored member."""
    choice = rnd.choice(["duplicate_config", "duplicate_weights", "dotdot", "absolute", "many", "long_name",
                         "zeros"])
    if choice == "duplicate_config":
        members.append(("config.json", b'{"class_name": "Foo", "module": "os", "config": {}}'))
    elif choice == "duplicate_weights":
        name, data = next(m for m in members if m[0].endswith(".h5"))
        members.extend([(name, data)] * rnd.choice([1, 5]))
    elif choice == "dotdot":
        members.append(("../../escape.txt", b"x"))
    elif choice == "absolute":
        members.append(("/tmp/absolute.txt", b"x"))
    elif choice == "many":
        members.extend((f"pad/{i}", b"") for i in range(5000))
    elif choice == "long_name":
        members.append(("a" * 60000, b"x"))
    else:  # 20 MB of zeros, deflated to a few KB on disk
        members.append(("zeros.bin", bytes(20 * 1024**2)))
    return f"members: {choice}"


def k_weights(members, rnd):
    index = next((i for i, (n, _) in enumerate(members) if n.endswith(".h5")), None)
    if index is None:
        return "no weights member"
    data, what = rnd.choice(BYTE_MUTATORS)(members[index][1], rnd)
    members[index] = (members[index][0], data)
    return f"{members[index][0]}: {what}"


def k_metadata(members, rnd):
    value = rnd.choice([b"", b"{", b'{"keras_version": "1.0.0"}', b'{"keras_version": 5}', b"null"])
    members[:] = [m for m in members if m[0] != "metadata.json"] + [("metadata.json", value)]
    return f"metadata.json = {value!r}"


def k_drop(members, rnd):
    index = rnd.randrange(len(members))
    name = members.pop(index)[0]
    return f"drop member {name}"


ZIP_MUTATORS = [k_config, k_config, k_names, k_names, k_deep, k_members, k_weights, k_metadata, k_drop]


def mutate_keras(seed: dict, rnd: random.Random) -> Case:
    data = seed["files"]["model.keras"]
    if rnd.random() < 0.2:
        data, what = rnd.choice(BYTE_MUTATORS)(data, rnd)
        return Case("keras", f"zip bytes: {what}", {"model.keras": data}, "model.keras")
    members = members_of(data)
    mutator = rnd.choice(ZIP_MUTATORS)
    what = mutator(members, rnd)
    return Case("keras", f"{mutator.__name__[2:]}: {what}", {"model.keras": zip_members(members)},
                "model.keras")
