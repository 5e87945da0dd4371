"""The npm files a tiedonnx page needs: onnxruntime-web and, for text, @huggingface/tokenizers, each pinned.

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
    """One npm file as the page loads it."""

    name: str
    url: str        # relative to the site (local) or absolute (cdn)
    bytes: int
    integrity: str  # SRI string, "sha384-..."

    def as_dict(self) -> dict:
        return {"name": self.name, "url": self.url, "bytes": self.bytes,
                "integrity": self.integrity}


@dataclass(frozen=True)
class PinnedPackage:
    """An npm package at one version whose files are checked against their published SHA-384.

    ``folder`` names the cache sub-folder (``~/.cache/tiedonnx/<folder>/<version>``).
    """

    package: str
    version: str
    folder: str
    files: dict

    @property
    def cdn_base(self) -> str:
        return f"https://cdn.jsdelivr.net/npm/{self.package}@{self.version}/dist/"

    def cache_dir(self) -> Path:
        root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(root) / "tiedonnx" / self.folder / self.version

    def install_command(self, prefix: Path | None = None) -> str:
        prefix = self.cache_dir() if prefix is None else prefix
        return (f"npm install --prefix {prefix} --no-save --no-audit --no-fund --ignore-scripts "
                f"{self.package}@{self.version}")

    def dist_dir(self, prefix: str | os.PathLike | None = None) -> Path:
        """The checked ``dist/`` folder (raises :class:`UsageError` with the install command)."""
        prefix = self.cache_dir() if prefix is None else Path(prefix)
        package = prefix / "node_modules" / self.package
        name = f"{self.package} {self.version}"
        fix = f"Install it with: {self.install_command(prefix)}"
        if shutil.which("npm") is None and not package.is_dir():
            fix += " (npm is not on PATH: install Node.js 18+ and npm first, e.g. apt-get install -y npm)"
        manifest = package / "package.json"
        if not manifest.is_file():
            raise UsageError(f"{name} is not installed in {str(prefix)!r} "
                             f"(no {self.package}/package.json under node_modules). {fix}")
        try:
            found = json.loads(manifest.read_text(encoding="utf-8")).get("version")
        except (OSError, ValueError) as exc:
            raise UsageError(f"Could not read {str(manifest)!r} ({exc}). {fix}") from exc
        if found != self.version:
            raise UsageError(f"{self.package} in {str(prefix)!r} is version {found!r}; tiedonnx pins "
                             f"{self.version} (its files' hashes are checked). {fix}")
        dist = package / "dist"
        for file, expected in self.files.items():
            path = dist / file
            if not path.is_file():
                raise UsageError(f"{name} in {str(prefix)!r} lacks dist/{file}. {fix}")
            if sri(path.read_bytes()) != expected:
                raise UsageError(f"dist/{file} in {str(prefix)!r} differs from {name}'s "
                                 f"published file (SHA-384 mismatch): a damaged or edited install. "
                                 f"Remove {str(prefix)!r}, then reinstall. {fix}")
        return dist

    def runtime_files(self, mode: str, *, prefix: str | os.PathLike | None = None,
                      folder: str) -> tuple[list[RuntimeFile], Path]:
        """The files the page loads (site-relative in ``folder``, or pinned CDN URLs) and their ``dist/``."""
        if mode not in RUNTIME_MODES:
            raise UsageError(f"Unknown runtime. Received: runtime={mode!r}. "
                             f"Use one of {', '.join(RUNTIME_MODES)}.")
        dist = self.dist_dir(prefix)
        files = []
        for name, integrity in self.files.items():
            url = f"{folder}/{name}" if mode == "local" else self.cdn_base + name
            files.append(RuntimeFile(name, url, (dist / name).stat().st_size, integrity))
        return files, dist


ORT_WEB = PinnedPackage(PACKAGE, VERSION, PACKAGE, FILES)
CDN_BASE = ORT_WEB.cdn_base

#: The tokenizer library of the text-generation page: Hugging Face's own JavaScript port
#: (zero dependencies, one 36 KB ES module; transformers.js 4.3.2 uses this version).
TOKENIZERS = PinnedPackage("@huggingface/tokenizers", "0.2.0", "huggingface-tokenizers", {
    "tokenizers.min.mjs": "sha384-Tl2lMbeE3RCGFLOUGQ7LhvaagysxiOw/9dulz2sD6jxNa1MckRJQBbYdVHhOoqEs",
})


def cache_dir() -> Path:
    """Where the pinned package is expected: ``~/.cache/tiedonnx/onnxruntime-web/<version>``."""
    return ORT_WEB.cache_dir()


def install_command(prefix: Path | None = None) -> str:
    """The one npm command that installs the pinned package where tiedonnx looks."""
    return ORT_WEB.install_command(prefix)


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
    return ORT_WEB.dist_dir(prefix)


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
    return ORT_WEB.runtime_files(mode, prefix=prefix, folder=folder)


def import_map(files: list[RuntimeFile], tokenizer_files: list[RuntimeFile] = ()) -> dict:
    """The page's import map: ``onnxruntime-web`` -> the wasm-only module (and, for the
    generation page, ``@huggingface/tokenizers`` -> its one ES module).

    Absolute (CDN) URLs also get ``integrity`` entries, which the browser
    checks on every module import of that URL, including onnxruntime-web's own
    dynamic import of the Emscripten glue. The ``.wasm`` binary is not a
    module: ``tiedonnx.mjs`` fetches it with its integrity (``wasmIntegrity``).
    """
    by_name = {f.name: f for f in files}
    module = by_name[MODULE_FILE].url
    # Import-map values must be URLs: a bare "ort/..." would read as a package name.
    url = lambda u: u if u.startswith("https://") else "./" + u  # noqa: E731
    imports = {PACKAGE: url(module)}
    for f in tokenizer_files:
        imports[TOKENIZERS.package] = url(f.url)
    integrity = {f.url: f.integrity for f in (*files, *tokenizer_files)
                 if f.url.startswith("https://") and f.name.endswith(".mjs")}
    return {"imports": imports, **({"integrity": integrity} if integrity else {})}
