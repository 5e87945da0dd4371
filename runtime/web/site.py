"""Write static sites that run tied ONNX files in the browser (onnxruntime-web).

A site is a plain folder; any static host serves it (``tiedonnx web --serve``
adds the cross-origin-isolation headers that multi-threaded wasm needs)::

    OUT/
      index.html      the model page, or the digits demo
      tiedonnx.mjs    the JavaScript API: load(url) -> {inputs, outputs, run(feeds)}
      page.mjs | demo.mjs, style.css
      site.json       runtime files (URL, bytes, SRI) and each model's signature
      <model>.onnx    each model, byte for byte
      ort/            the three onnxruntime-web files (``runtime="local"`` only)

Files are checked first (model files with :func:`read_model`, every target
against ``force``), then the site is built in a temporary sibling folder and
published at once (:mod:`.publish`), so a failed run leaves ``OUT`` as it was.
"""

from __future__ import annotations

import functools
import gzip
import html
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from urllib.parse import quote

from ..errors import UsageError
from ..model_file import read_model
from . import ort_web
from .publish import check_targets, publish

logger = logging.getLogger(__name__)

RUNTIME_FOLDER = "ort"
TOKENIZERS_FOLDER = "tokenizers"
_PAGE_ASSETS = {"model": ("page.mjs",), "demo": ("demo.mjs",),
                "generate": ("generate.mjs", "generate-page.mjs")}
_COMMON_ASSETS = ("tiedonnx.mjs", "report-errors.js", "style.css")
#: Each page's index.html is assets/page.html filled in: its title, heading, ``<main>`` content and script.
_PAGES = {"model": ("tiedonnx", "in the browser", "model-main.html", "page.mjs"),
          "demo": ("tiedonnx digits", "digits, in the browser", "demo-main.html", "demo.mjs"),
          "generate": ("tiedonnx", "text generation, in the browser", "generate-main.html", "generate-page.mjs")}


@dataclass
class _Extra:
    """What a page adds to the common site: data files, site.json keys, the tokenizer library."""

    files: dict[str, bytes | Path] = field(default_factory=dict)  # site path -> content, fetched by the page
    copies: dict[str, Path] = field(default_factory=dict)  # site path -> source, for other readers
    site: dict = field(default_factory=dict)
    tokenizer: bool = False
    tokenizer_prefix: str | os.PathLike | None = None


@dataclass
class SiteReport:
    """What a site holds and what a visitor downloads.

    Attributes:
        out_dir: the site folder.
        page: ``"model"`` or ``"demo"``.
        runtime: ``"local"`` or ``"cdn"``.
        models: per model: ``label``, ``file``, ``url``, ``bytes``, ``inputs``, ``outputs``.
        runtime_files: per onnxruntime-web file: ``name``, ``url``, ``bytes``, ``integrity``.
        page_bytes: bytes of the page's own files (HTML, JavaScript, CSS, site.json).
        data_files: per other file a visit fetches (a generation page's tokenizer.json,
            tiedonnx.json): ``file``, ``bytes``.
        written: every file written, in order.
    """

    out_dir: str
    page: str
    runtime: str
    models: list[dict]
    runtime_files: list[dict]
    page_bytes: int
    data_files: list[dict] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    _dist: Path | None = field(default=None, repr=False)
    _sources: dict = field(default_factory=dict, repr=False)  # runtime file URL -> its checked source

    @property
    def runtime_bytes(self) -> int:
        return sum(f["bytes"] for f in self.runtime_files)

    @property
    def download_bytes(self) -> int:
        """Everything a first visit fetches: runtime, models, data and page files."""
        return (self.runtime_bytes + sum(m["bytes"] for m in self.models) + self.page_bytes
                + sum(f["bytes"] for f in self.data_files))

    def download_gzip_bytes(self) -> int:
        """The same, gzip-compressed (level 6, what static hosts typically send)."""
        runtime = sum(gzip_size(self._sources.get(f["url"], self._dist / f["name"]))
                      for f in self.runtime_files)
        site = Path(self.out_dir)
        files = sum(gzip_size(site / m["file"]) for m in (*self.models, *self.data_files))
        return runtime + files + self.page_bytes

    def as_dict(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        data.update(runtime_bytes=self.runtime_bytes, download_bytes=self.download_bytes)
        return data


def write_site(model_path: str | os.PathLike, out_dir: str | os.PathLike, *,
               runtime: str = "local", force: bool = False,
               npm_prefix: str | os.PathLike | None = None) -> SiteReport:
    """Write a page that loads ``model_path`` with onnxruntime-web and times it.

    Args:
        model_path: the ``.onnx`` file (fp32, fp16 or int8); copied unchanged.
        out_dir: the site folder (created if its parent exists).
        runtime: ``"local"`` copies the three onnxruntime-web files into
            ``out_dir/ort`` (works offline); ``"cdn"`` loads them from jsDelivr
            at the pinned version, checked by subresource integrity.
        force: overwrite files that exist.
        npm_prefix: where the pinned npm package is installed (default
            :func:`ort_web.cache_dir`).

    Returns:
        A :class:`SiteReport`.

    Raises:
        UsageError: unknown runtime, onnxruntime-web not installed, bad folder.
        ModelFileError: the model is missing, corrupt or fails the checker.
        OutputExistsError: a target file exists and ``force`` is False.

    Example:
        >>> report = write_site("ae.int8.onnx", "site", runtime="local")  # doctest: +SKIP
        >>> report.download_bytes  # doctest: +SKIP
    """
    model_path = Path(model_path)
    model = _describe(model_path, label=model_path.stem)
    return _write(out_dir, "model", [(model_path, model)], runtime=runtime,
                  force=force, npm_prefix=npm_prefix)


def write_demo_site(out_dir: str | os.PathLike, models: dict[str, str | os.PathLike], *,
                    runtime: str = "local", force: bool = False,
                    npm_prefix: str | os.PathLike | None = None) -> SiteReport:
    """Write the digits demo: draw a digit, see each file's reconstruction live.

    Every model must be a digits autoencoder: one float input ``[batch, S*S]``
    (pixels in [0, 1], row-major; S = 8 for scikit-learn's digits, 28 for
    MNIST) and one output of the same shape. S is read from the models.

    Args:
        out_dir: the site folder (created if its parent exists).
        models: label -> ``.onnx`` path, shown side by side in this order,
            e.g. ``{"fp32": "ae.onnx", "int8": "ae.int8.onnx"}``.
        runtime, force, npm_prefix: as for :func:`write_site`.

    Returns:
        A :class:`SiteReport` (``page="demo"``).

    Raises:
        UsageError: no models, two files with one name, a model that is not a
            square-image autoencoder, or sizes that differ between models.
        ModelFileError, OutputExistsError: as for :func:`write_site`.
    """
    if not models:
        raise UsageError("write_demo_site needs at least one model. Received: models={}. "
                         "Pass e.g. {'fp32': 'demo-out/ae.onnx'}.")
    entries = []
    for label, path in models.items():
        if not isinstance(label, str) or not label.strip():
            raise UsageError(f"Model labels must be non-empty strings. Received: {label!r}.")
        entries.append((Path(path), _describe(Path(path), label=label)))
    _check_digits(entries)
    return _write(out_dir, "demo", entries, runtime=runtime, force=force,
                  npm_prefix=npm_prefix)


def _describe(path: Path, *, label: str) -> dict:
    """Check the model file and read its signature."""
    from onnx import helper

    checked = read_model(path)
    if checked.has_external_data:
        raise UsageError(f"{str(path)!r} keeps tensors in external data files; the page loads one "
                         "file. Save it with its tensors inside (onnx.save(model, path, "
                         "save_as_external_data=False); protobuf allows up to 2 GB) and retry.")
    proto = checked.proto
    stored = {t.name for t in proto.graph.initializer}

    def spec(value) -> dict:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                for d in tensor.shape.dim]
        try:
            dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        except Exception:  # not a tensor, or a type numpy has no name for
            dtype = "unknown"
        return {"name": value.name, "shape": dims, "dtype": dtype}

    return {"label": label, "file": path.name, "url": quote(path.name),
            "bytes": path.stat().st_size,
            "inputs": [spec(v) for v in proto.graph.input if v.name not in stored],
            "outputs": [spec(v) for v in proto.graph.output]}


def _check_digits(entries: list[tuple[Path, dict]]) -> None:
    """Every model maps [batch, S*S] floats to the same shape, with one S for all."""
    problems, sizes = [], {}
    for path, model in entries:
        ins, outs = model["inputs"], model["outputs"]
        shape = ins[0]["shape"] if len(ins) == 1 else None
        ok = (shape is not None and len(shape) == 2 and isinstance(shape[1], int)
              and ins[0]["dtype"].startswith("float") and len(outs) == 1
              and outs[0]["shape"][1:] == shape[1:])
        side = math.isqrt(shape[1]) if ok else 0
        if not ok or side * side != shape[1]:
            got = [(s["name"], s["shape"], s["dtype"]) for s in ins]
            problems.append(f"{model['label']!r} ({str(path)!r}) takes {got} -> "
                            f"{[o['shape'] for o in outs]}")
        else:
            sizes[model["label"]] = shape[1]
    if problems:
        raise UsageError("The digits demo needs autoencoders with one float input [batch, S*S] "
                         "(e.g. 64 = 8x8 or 784 = 28x28 pixels) and one output of that shape. "
                         f"Received: {'; '.join(problems)}. Pass the demo's exported files.")
    if len(set(sizes.values())) > 1:
        raise UsageError(f"The demo's models take different image sizes: {sizes}. "
                         "Pass files of one model (e.g. its fp32, fp16 and int8 exports).")


def _write(out_dir: Path | str, page: str, entries: list[tuple[Path, dict]], *, runtime: str,
           force: bool, npm_prefix, extra: _Extra | None = None) -> SiteReport:
    extra = extra or _Extra()
    if not os.fspath(out_dir).strip():  # Path("") is ".": the site would land in the current folder
        raise UsageError("The site folder is empty (''). Pass a folder path, e.g. site/.")
    out_dir = Path(out_dir)
    files, dist = ort_web.runtime_files(runtime, prefix=npm_prefix, folder=RUNTIME_FOLDER)
    sources = {f.url: dist / f.name for f in files}
    libs = []
    if extra.tokenizer:
        libs, lib_dist = ort_web.TOKENIZERS.runtime_files(runtime, prefix=extra.tokenizer_prefix,
                                                          folder=TOKENIZERS_FOLDER)
        sources.update({f.url: lib_dist / f.name for f in libs})
    names = [m["file"] for _, m in entries]
    reserved = {*_COMMON_ASSETS, *_PAGE_ASSETS[page], "index.html", "site.json", RUNTIME_FOLDER,
                TOKENIZERS_FOLDER}
    clashes = sorted({n for n in names if names.count(n) > 1 or n in reserved})
    if clashes:
        raise UsageError(f"Model file names must be unique and not page file or folder names "
                         f"({sorted(reserved)}). Received: {clashes}. Rename or copy the files first.")
    site = {"tiedonnx_web": 1, "page": page, "runtime": {
        "mode": runtime, "package": ort_web.PACKAGE, "version": ort_web.VERSION,
        "files": [f.as_dict() for f in files]}, "models": [m for _, m in entries], **extra.site}
    data = [{"file": n, "bytes": len(d) if isinstance(d, bytes) else d.stat().st_size}
            for n, d in extra.files.items()]
    if data:
        site["data_files"] = data
    if libs:
        site["tokenizer_runtime"] = {"package": ort_web.TOKENIZERS.package,
                                     "version": ort_web.TOKENIZERS.version,
                                     "files": [f.as_dict() for f in libs]}
    contents: dict[str, bytes | Path] = dict(_page_files(page, site, files, libs))
    page_bytes = sum(len(d) for d in contents.values())
    contents.update({m["file"]: path for path, m in entries})
    contents.update(extra.files)
    contents.update(extra.copies)
    if runtime == "local":
        contents.update(sources)
    check_targets(out_dir, list(contents), force=force)  # every check before the first byte
    report = SiteReport(out_dir=str(out_dir), page=page, runtime=runtime,
                        models=site["models"], runtime_files=[f.as_dict() for f in (*files, *libs)],
                        page_bytes=page_bytes, _dist=dist, _sources=sources, data_files=data)
    report.written = publish(out_dir, contents, force=force)
    logger.info("wrote %s site to %s (%d files, runtime=%s)", page, out_dir,
                len(report.written), runtime)
    return report


def _page_files(page: str, site: dict, files: list, libs: list = ()) -> dict[str, bytes]:
    """index.html (import map filled in), the scripts, the stylesheet and site.json."""
    assets = resources.files(__package__).joinpath("assets")
    # "</" inside a <script> element would end it early; JSON allows "<\/".
    importmap = json.dumps(ort_web.import_map(files, libs), indent=2).replace("</", "<\\/")
    title = " | ".join(m["label"] for m in site["models"])
    template = _page_template(assets, page)
    index = template.replace("__IMPORT_MAP__", importmap).replace("__TITLE__", html.escape(title))
    out = {"index.html": index.encode("utf-8"),
           "site.json": json.dumps(site, indent=2).encode("utf-8")}
    for name in (*_COMMON_ASSETS, *_PAGE_ASSETS[page]):
        out[name] = assets.joinpath(name).read_bytes()
    return out


def _page_template(assets, page: str) -> str:
    """``page``'s index.html before the import map and title go in: the shared page.html around its content."""
    page_title, heading, main, script = _PAGES[page]
    shell = assets.joinpath("page.html").read_text(encoding="utf-8")
    content = assets.joinpath(main).read_text(encoding="utf-8").rstrip("\n")
    return (shell.replace("__PAGE_TITLE__", page_title).replace("__HEADING__", heading)
            .replace("__SCRIPT__", script).replace("__MAIN__", content))


@functools.lru_cache(maxsize=32)
def _gzip_size(path: str, size: int, mtime_ns: int) -> int:
    return len(gzip.compress(Path(path).read_bytes(), compresslevel=6))


def gzip_size(path: str | os.PathLike) -> int:
    """Bytes of ``path`` gzip-compressed at level 6 (cached per file version)."""
    st = Path(path).stat()
    return _gzip_size(str(path), st.st_size, st.st_mtime_ns)
