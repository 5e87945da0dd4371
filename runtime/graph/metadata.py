"""The tie record kept in an ONNX file's ``metadata_props``.

Key ``tiedonnx.ties`` holds a JSON list, one entry per stored tied tensor::

    {"initializer": "W", "shape": [784, 256], "dtype": "float32",
     "uses": [{"relation": "transpose", "perm": [1, 0], "output": "W__T"}],
     "keras": {"decoder": "dec", "tied_to": "enc", "variable": "enc/kernel"}}

``uses`` lists the *extra* uses that read the stored tensor through a graph op
(``output`` is that op's output name); the direct use is implied. ``keras`` is
present when the tie came from :func:`tiedonnx.converter.find_ties`.
"""

from __future__ import annotations

import json
import logging

import onnx

logger = logging.getLogger(__name__)

TIES_KEY = "tiedonnx.ties"
VERSION_KEY = "tiedonnx.version"
VERSIONS_KEY = "tiedonnx.versions"


def read_ties(model: onnx.ModelProto) -> list[dict]:
    """Return the tie record of ``model`` (empty when it has none or it is unreadable)."""
    for prop in model.metadata_props:
        if prop.key == TIES_KEY:
            try:
                ties = json.loads(prop.value)
            except json.JSONDecodeError:
                logger.warning("metadata %s is not valid JSON; ignoring it", TIES_KEY)
                return []
            return ties if isinstance(ties, list) else []
    return []


def write_metadata(model: onnx.ModelProto, entries: dict[str, str]) -> None:
    """Set (replace) metadata keys on ``model`` in place."""
    kept = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)


def ties_json(ties: list[dict]) -> str:
    return json.dumps(ties, sort_keys=True, separators=(",", ":"))
