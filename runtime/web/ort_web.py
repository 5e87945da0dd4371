"""The onnxruntime-web files a tiedonnx page needs, from one pinned npm package.

The wasm backend of onnxruntime-web loads three files out of its 148 MB
``node_modules``: the ES module ``ort.wasm.min.mjs`` (the JavaScript API), the
Emscripten glue ``ort-wasm-simd-threaded.mjs`` and the binary
``ort-wasm-simd-threaded.wasm`` (about 14 MB, 3.7 MB gzipped).

The package is installed with npm into a fixed cache folder (never
downloaded by tiedonnx itself)::

    npm install --prefix ~/.cache/tiedonnx/onnxruntime-web/1.30.0 onnxruntime-web@1.30.0

(``$XDG_CACHE_HOME`` replaces ``~/.cache`` when set, as for any cache.) Every
file read from it is checked against the SHA-384 published for the pinned
version below, so a local page and a CDN page run the same bytes, and the CDN
page's subresource-integrity hashes are exactly the ones checked here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..options import RUNTIME_MODES  # noqa: F401  (one home, shared with the CLI)

PACKAGE = "onnxruntime-web"
VERSION = "1.30.0"
CDN_BASE = f"https://cdn.jsdelivr.net/npm/{PACKAGE}@{VERSION}/dist/"

#: The module the page imports as ``onnxruntime-web`` (wasm backend only).
MODULE_FILE = "ort.wasm.min.mjs"
WASM_FILE = "ort-wasm-simd-threaded.wasm"

#: File -> SHA-384 (SRI form) of onnxruntime-web 1.30.0's ``dist/`` files,
#: computed from the npm tarball (itself checked by npm against the registry's
#: sha512). A file that differs is refused: a CDN page built from it would
#: fail its own integrity check in the browser.
FILES = {
    MODULE_FILE: "sha384-SfFfy/pvthiOsgaw3KX0bV5TfQ6Iq+oY9KutMe4SxIuHH4cl+DCSD4rTsYOoG1tJ",
    "ort-wasm-simd-threaded.mjs":
        "sha384-XcXA/MtAf0WpB8e023xQH9CM7RIjiugakT7x99DIwpFf7k56BIFFcAPerIF7FDad",
    WASM_FILE: "sha384-vjBJ1z7qrhkTyYsNqKeF6c7N+nOJSU94czEo+tvZcu8G75JparGq9kB+kTnEUNVM",
}


@dataclass(frozen=True)
class RuntimeFile:
    """One onnxruntime-web file as the page loads it."""

    name: str
    url: str        # relative to the site (local) or absolute (cdn)
    bytes: int
    integrity: str  # SRI string, "sha384-..."

    def as_dict(self) -> dict:
        return {"name": self.name, "url": self.url, "bytes": self.bytes,
                "integrity": self.integrity}


def cache_dir() -> Path:
    """Where the pinned package is expected: ``~/.cache/tiedonnx/onnxruntime-web/<version>``."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "tiedonnx" / PACKAGE / VERSION


def install_command(prefix: Path | None = None) -> str:
    """The one npm command that installs the pinned package where tiedonnx looks."""
    prefix = cache_dir() if prefix is None else prefix
    return (f"npm install --prefix {prefix} --no-save --no-audit --no-fund --ignore-scripts "
            f"{PACKAGE}@{VERSION}")


def dist_dir(prefix: str | os.PathLike | None = None) -> Path:
    """The checked ``dist/`` folder of the pinned package.

    Args:
        prefix: the npm ``--prefix`` the package was installed into; default
            :func:`cache_dir`.

    Raises:
        UsageError: the package is missing, another version, or a file in it is
            missing or differs from the pinned release (one line, with the
            command that installs it).
    """
    prefix = cache_dir() if prefix is None else Path(prefix)
    package = prefix / "node_modules" / PACKAGE
    fix = f"Install it with: {install_command(prefix)}"
    if shutil.which("npm") is None and not package.is_dir():
        fix += " (npm is not on PATH: install Node.js 18+ and npm first, e.g. apt-get install -y npm)"
    manifest = package / "package.json"
    if not manifest.is_file():
        raise UsageError(f"{PACKAGE} {VERSION} is not installed in {str(prefix)!r} "
                         f"(no {PACKAGE}/package.json under node_modules). {fix}")
    try:
        found = json.loads(manifest.read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError) as exc:
        raise UsageError(f"Could not read {str(manifest)!r} ({exc}). {fix}") from exc
    if found != VERSION:
        raise UsageError(f"{PACKAGE} in {str(prefix)!r} is version {found!r}; tiedonnx pins "
                         f"{VERSION} (its files' hashes are checked). {fix}")
    dist = package / "dist"
    for name, expected in FILES.items():
        path = dist / name
        if not path.is_file():
            raise UsageError(f"{PACKAGE} {VERSION} in {str(prefix)!r} lacks dist/{name}. {fix}")
        if sri(path.read_bytes()) != expected:
            raise UsageError(f"dist/{name} in {str(prefix)!r} differs from {PACKAGE} {VERSION}'s "
                             f"published file (SHA-384 mismatch): a damaged or edited install. "
                             f"Remove {str(prefix)!r}, then reinstall. {fix}")
    return dist


def sri(data: bytes) -> str:
    """Subresource-integrity string of ``data`` (SHA-384, base64)."""
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode("ascii")


def runtime_files(mode: str, *, prefix: str | os.PathLike | None = None,
                  folder: str = "ort") -> tuple[list[RuntimeFile], Path]:
    """The three files the page loads, and the checked ``dist/`` they come from.

    Args:
        mode: ``"local"`` (files copied into ``folder`` of the site) or ``"cdn"``
            (pinned jsDelivr URLs with integrity hashes).
        prefix: npm prefix of the pinned package (default :func:`cache_dir`).
        folder: the site's sub-folder for local files.

    Raises:
        UsageError: unknown mode, or the package is missing or damaged.
    """
    if mode not in RUNTIME_MODES:
        raise UsageError(f"Unknown runtime. Received: runtime={mode!r}. "
                         f"Use one of {', '.join(RUNTIME_MODES)}.")
    dist = dist_dir(prefix)
    files = []
    for name, integrity in FILES.items():
        url = f"{folder}/{name}" if mode == "local" else CDN_BASE + name
        files.append(RuntimeFile(name, url, (dist / name).stat().st_size, integrity))
    return files, dist


def import_map(files: list[RuntimeFile]) -> dict:
    """The page's import map: ``onnxruntime-web`` -> the wasm-only module.

    Absolute (CDN) URLs also get ``integrity`` entries, which the browser
    checks on every module import of that URL, including onnxruntime-web's own
    dynamic import of the Emscripten glue. The ``.wasm`` binary is not a
    module: ``tiedonnx.mjs`` fetches it with its integrity (``wasmIntegrity``).
    """
    by_name = {f.name: f for f in files}
    module = by_name[MODULE_FILE].url
    # Import-map values must be URLs: a bare "ort/..." would read as a package name.
    imports = {PACKAGE: module if module.startswith("https://") else "./" + module}
    integrity = {f.url: f.integrity for f in files
                 if f.url.startswith("https://") and f.name.endswith(".mjs")}
    return {"imports": imports, **({"integrity": integrity} if integrity else {})}
