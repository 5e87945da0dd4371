"""The one validating reader of tiedonnx's metadata values (tie records, the fp16 kept list).

Every command reads ``.onnx`` files through :func:`tiedonnx.runtime.model_file.read_model`,
which calls :func:`drop_malformed`: a tiedonnx metadata value that is not what
tiedonnx writes is removed from the loaded model with one warning line, before
any pass reads it, and the command goes on with the graph alone (``inspect`` of
an ``.ort`` file does the same; nothing else reads an ``.ort`` file's record).
:func:`.metadata.read_ties` skips a malformed record of an in-memory model the same way. What is checked, field by field, is what the writers
produce (:mod:`.metadata`, :mod:`.fp16`, :mod:`.int8_retie`, :mod:`.int4`):

- the text is at most :data:`MAX_VALUE_CHARS` long and is JSON;
- types: names are non-empty strings of at most :data:`MAX_NAME_CHARS`; ``shape``
  and ``perm`` lists of whole numbers (never ``true``), at most :data:`MAX_RANK` long,
  ``perm`` a permutation of ``0..n-1``; ``relation`` one of :data:`RELATIONS`;
  ``axis`` a whole number; ``keras`` an object of names or lists of names;
- sizes: at most :data:`MAX_USES` uses per record (so nothing nests deeper than
  the schema: a record is 4 levels deep);
- references: a tensor is stored by one record only, no use's output is a stored
  tensor (two records naming each other, or one naming itself, is a cycle; only a
  ``direct`` use names its own stored tensor), and no output is claimed twice.

Whether the names exist in the graph is a property of the graph, not of the
record: ``inspect`` reports it per tie (:func:`.inspect.check_tie`).
"""

from __future__ import annotations

import json
import logging

from .metadata import KEPT_FP32_KEY, TIES_KEY, MalformedRecord

logger = logging.getLogger(__name__)

__all__ = ["MAX_NAME_CHARS", "MAX_RANK", "MAX_USES", "MAX_VALUE_CHARS", "RELATIONS", "check_entry",
           "check_metadata", "check_references", "drop_malformed", "load_json"]

# A record of 10,000 ties is about 2 MB of JSON; 64 MiB is far above any real model.
MAX_VALUE_CHARS = 64 * 1024**2
# Tensor names: protobuf allows any length; ours are at most a few hundred characters.
MAX_NAME_CHARS = 4096
# onnxruntime's kernels handle tensors of at most 8 dimensions in practice; 64 leaves room.
MAX_RANK = 64
# A tied tensor read by more uses than this is not something any writer produces.
MAX_USES = 100_000
RELATIONS = frozenset({"transpose", "identity", "cast", "dequantize", "direct"})
# (path, key, problem) already warned about in this process.
_WARNED: set[tuple[str, str, str]] = set()


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_name(v) -> bool:
    return isinstance(v, str) and 0 < len(v) <= MAX_NAME_CHARS


def _optional(check):
    return lambda v: v is None or check(v)


def _is_dims(v) -> bool:
    return isinstance(v, list) and len(v) <= MAX_RANK and all(_is_int(d) and d >= 0 for d in v)


def _is_perm(v) -> bool:
    return (isinstance(v, list) and 1 <= len(v) <= MAX_RANK and all(_is_int(d) for d in v)
            and sorted(v) == list(range(len(v))))


def _is_keras(v) -> bool:
    """What converter/ties.py writes: layer and variable names, and the list of layers."""
    return isinstance(v, dict) and len(v) <= 16 and all(
        _is_name(k) and (x is None or isinstance(x, str)
                         or (isinstance(x, list) and len(x) <= MAX_USES and all(_is_name(n) for n in x)))
        for k, x in v.items())


_USE_FIELDS = {
    "relation": (lambda v: isinstance(v, str) and v in RELATIONS, f"one of {sorted(RELATIONS)}"),
    "output": (_is_name, "a tensor name"),
    "perm": (_optional(_is_perm), f"a permutation of 0..n-1 (1 <= n <= {MAX_RANK}) or null"),
    "kernel": (_optional(_is_name), "a string or null"),
    "to": (_optional(_is_name), "a string or null"),
}
_RECORD_FIELDS = {
    "initializer": (_is_name, "a tensor name"),
    "shape": (_is_dims, f"a list of at most {MAX_RANK} non-negative whole numbers"),
    "dtype": (lambda v: isinstance(v, str) and len(v) <= 64, "a dtype name"),
    "uses": (lambda v: isinstance(v, list) and len(v) <= MAX_USES, f"a list of at most {MAX_USES} uses"),
    "keras": (_optional(_is_keras), "an object of names (or lists of names) or null"),
    "source": (_optional(_is_name), "a tensor name or null"),
    "scale": (_optional(_is_name), "a tensor name or null"),
    "zero_point": (_optional(_is_name), "a tensor name or null"),
    "axis": (_optional(_is_int), "a whole number or null"),
}
_REQUIRED = {"initializer": _RECORD_FIELDS, "relation": _USE_FIELDS, "output": _USE_FIELDS}


def _check_fields(data, table: dict, where: str) -> None:
    if not isinstance(data, dict):
        raise MalformedRecord(f"{where} must be an object; received {_show(data)}")
    for key, (ok, expected) in table.items():
        if key not in data:
            if _REQUIRED.get(key) is table:
                raise MalformedRecord(f"{where} has no {key!r}")
            continue
        if not ok(data[key]):
            raise MalformedRecord(f"{where}.{key} must be {expected}; received {_show(data[key])}")


def check_entry(data, where: str) -> None:
    """Raise :class:`MalformedRecord` unless ``data`` is one well-formed tie record."""
    _check_fields(data, _RECORD_FIELDS, where)
    for i, use in enumerate(data.get("uses") or []):
        _check_fields(use, _USE_FIELDS, f"{where}.uses[{i}]")
        perm, shape = use.get("perm"), data.get("shape")
        if perm is not None and shape is not None and len(perm) != len(shape):
            raise MalformedRecord(f"{where}.uses[{i}].perm has {len(perm)} axes for a tensor of shape "
                                  f"{_show(shape)}; received {_show(perm)}")


def check_references(ties: list) -> None:
    """Records that contradict each other: a tensor stored twice, a cycle, an output claimed twice."""
    stored: set[str] = set()
    for tie in ties:
        if tie.initializer in stored:
            raise MalformedRecord(f"{TIES_KEY}: {_show(tie.initializer)} is stored by two records")
        stored.add(tie.initializer)
    claimed: set[str] = set()
    for tie in ties:
        for use in tie.uses:
            if use.output in stored and not (use.relation == "direct" and use.output == tie.initializer):
                raise MalformedRecord(
                    f"{TIES_KEY}: the record of {_show(tie.initializer)} has a use whose output "
                    f"{_show(use.output)} is itself a stored tensor (records that name each other "
                    "form a cycle)")
            if use.output in claimed:
                raise MalformedRecord(f"{TIES_KEY}: the output {_show(use.output)} is claimed by two uses")
            claimed.add(use.output)


def load_json(text, key: str):
    """``text`` parsed as JSON, or :class:`MalformedRecord` (too long, not JSON, nested too deep)."""
    if not isinstance(text, str):
        raise MalformedRecord(f"{key} is not text")
    if len(text) > MAX_VALUE_CHARS:
        raise MalformedRecord(f"{key} is {len(text)} characters, over the limit of {MAX_VALUE_CHARS}")
    try:
        return json.loads(text)
    except RecursionError:
        raise MalformedRecord(f"{key} is nested too deeply to parse") from None
    except ValueError as exc:
        raise MalformedRecord(f"{key} is not valid JSON ({exc.__class__.__name__} at char "
                              f"{getattr(exc, 'pos', '?')})") from None


def _check_kept_fp32(text: str) -> None:
    names = load_json(text, KEPT_FP32_KEY)
    if not (isinstance(names, list) and all(_is_name(n) for n in names)):
        raise MalformedRecord(f"{KEPT_FP32_KEY} must be a JSON list of tensor names; received "
                              f"{_show(names)}")


def check_ranks(ties: list, ranks: dict[str, int]) -> None:
    """A transpose order whose length is not its stored tensor's rank (``ranks``: initializer -> rank)."""
    for tie in ties:
        rank = ranks.get(tie.initializer)
        for use in tie.uses:
            if rank is not None and use.perm is not None and len(use.perm) != rank:
                raise MalformedRecord(f"{TIES_KEY}: a use of {_show(tie.initializer)} (rank {rank}) has the "
                                      f"transpose order {_show(use.perm)}")


def check_metadata(entries: dict[str, str], ranks: dict[str, int] | None = None) -> dict[str, str]:
    """The tiedonnx metadata values in ``entries`` (key -> value) that are malformed: key -> problem.

    ``ranks`` (initializer name -> rank), when given, is checked against the tie records' transpose orders.
    """
    from .metadata import parse_ties

    def ties(text: str) -> None:
        parsed = parse_ties(text)
        if ranks:
            check_ranks(parsed, ranks)

    problems = {}
    for key, check in ((TIES_KEY, ties), (KEPT_FP32_KEY, _check_kept_fp32)):
        if key in entries:
            try:
                check(entries[key])
            except MalformedRecord as exc:
                problems[key] = str(exc)
    return problems


def drop_malformed(entries: dict[str, str], path, ranks: dict[str, int] | None = None) -> list[str]:
    """Keys of ``entries`` to drop, each logged as one warning line: the file is used without them.

    A tie record is a description of the graph, not part of it: a file whose
    record was edited by hand still runs, and ``retie``/``quantize`` find its
    ties in the graph itself (:func:`.quantize.ties_in_graph`).
    """
    problems = check_metadata(entries, ranks)
    for key, problem in problems.items():
        said = (str(path), key, problem)
        if said in _WARNED:  # a command that reads its file twice (bench, verify) says it once
            continue
        if len(_WARNED) < 1000:
            _WARNED.add(said)
        logger.warning("%s: ignoring its %s metadata, which tiedonnx never writes (%s); the file was "
                       "edited or is corrupt. Re-export it, or remove that key.", str(path), key, problem)
    return list(problems)


def _show(value) -> str:
    """A received value, short enough for one error line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
