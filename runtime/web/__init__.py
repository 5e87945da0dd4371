"""Run tied ONNX files in the browser: static sites on onnxruntime-web (wasm).

Standard library only (``onnx`` is imported lazily when a model is read);
nothing here downloads anything. The onnxruntime-web files come from one
pinned npm package installed by the user (see :mod:`.ort_web`).

Example:
    >>> from tiedonnx.runtime.web import write_site, serve  # doctest: +SKIP
    >>> report = write_site("ae.onnx", "site")               # doctest: +SKIP
    >>> serve("site", port=8000)                              # doctest: +SKIP
"""

from __future__ import annotations

from .ort_web import PACKAGE as ORT_WEB_PACKAGE
from .ort_web import RUNTIME_MODES
from .ort_web import VERSION as ORT_WEB_VERSION
from .ort_web import cache_dir, install_command
from .serve import DEFAULT_PORT, serve, serving
from .generation_site import write_generation_site
from .site import SiteReport, write_demo_site, write_site

__all__ = [
    "DEFAULT_PORT",
    "ORT_WEB_PACKAGE",
    "ORT_WEB_VERSION",
    "RUNTIME_MODES",
    "SiteReport",
    "cache_dir",
    "install_command",
    "serve",
    "serving",
    "write_demo_site",
    "write_generation_site",
    "write_site",
]
