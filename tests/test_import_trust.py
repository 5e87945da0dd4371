"""What ``--import PACKAGE`` trusts: the classes *that* package registered, judged as Keras resolves them.

Keras looks an object up by its registry key first (``registered_name``, else
``class_name``; a ``"function"``'s ``config``), and turns any plain string that
is a registry key into the registered object, whatever ``module`` says. Each
test writes throwaway packages: ``pkga`` (named with ``--import``) imports
``pkgb``, which registers ``pkgb>Evil`` (a Dense whose constructor writes a
marker file) and ``pkgb>evil_fn``. The control test shows that Keras really
builds ``Evil`` from such a file when ``pkgb`` is named, so every refusal
below is the scan's doing, not a file Keras could not load anyway.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

keras = pytest.importorskip("keras")

from tiedonnx.converter import keras_io  # noqa: E402

from . import models  # noqa: E402
from .hostile import assert_clean_failure, call  # noqa: E402

_COUNTER = itertools.count()


@pytest.fixture
def packages(tmp_path, monkeypatch):
    """Fresh ``pkga_N`` -> ``pkgb_N`` packages; registry, modules and records restored afterwards."""
    n = next(_COUNTER)
    a, b = f"trust_pkga_{n}", f"trust_pkgb_{n}"
    marker = tmp_path / "evil_ran"
    src = tmp_path / "src"
    src.mkdir()
    (src / f"{a}.py").write_text(f"import {b}\n")
    (src / f"{b}.py").write_text(textwrap.dedent(f"""
        import pathlib
        import keras

        @keras.saving.register_keras_serializable(package="pkgb")
        class Evil(keras.layers.Dense):
            def __init__(self, *args, **kwargs):
                pathlib.Path({str(marker)!r}).write_text("constructor ran")
                super().__init__(*args, **kwargs)

        @keras.saving.register_keras_serializable(package="pkgb")
        def evil_fn(x):
            pathlib.Path({str(marker)!r}).write_text("function ran")
            return x
    """))
    (src / "raises_at_import.py").write_text("raise RuntimeError('broken at import')\n")
    (src / "exits_at_import.py").write_text("import sys\nsys.exit(7)\n")
    monkeypatch.syspath_prepend(str(src))
    registry = keras.saving.get_custom_objects()
    before = dict(registry)
    yield {"a": a, "b": b, "marker": marker}
    for key in set(registry) - set(before):
        keras.src.saving.object_registration.GLOBAL_CUSTOM_NAMES.pop(registry.pop(key), None)
    for name in (a, b, "raises_at_import", "exits_at_import"):
        sys.modules.pop(name, None)


def _keras_file(folder: Path, name: str, edit) -> Path:
    """An untied model's .keras file with ``edit`` applied to its second layer's config."""
    plain = folder / "plain.keras"
    if not plain.exists():
        models.untied_model().save(plain)
    with zipfile.ZipFile(plain) as z:
        files = {n: z.read(n) for n in z.namelist()}
    config = json.loads(files["config.json"])
    edit(config["config"]["layers"][1])
    files["config.json"] = json.dumps(config).encode()
    path = folder / f"{name}.keras"
    with zipfile.ZipFile(path, "w") as z:
        for member, data in files.items():
            z.writestr(member, data)
    return path


# Each edit makes Keras resolve pkgb's Evil (or evil_fn) from the Dense layer at index 1.
DISGUISES = {
    "honest": lambda layer: layer.update(module="pkgb_module", class_name="Evil",
                                         registered_name="pkgb>Evil"),
    "keras_module_registered_name": lambda layer: layer.update(registered_name="pkgb>Evil"),
    "keras_module_class_name_only": lambda layer: (layer.pop("registered_name"),
                                                   layer.update(class_name="pkgb>Evil")),
    "plain_string_activation": lambda layer: layer["config"].update(activation="pkgb>evil_fn"),
    "function_object": lambda layer: layer["config"].update(activation={
        "module": "keras.activations", "class_name": "function", "config": "pkgb>evil_fn",
        "registered_name": "relu"}),
}


@pytest.mark.parametrize("kind", DISGUISES)
def test_class_registered_by_an_unnamed_package_is_refused(kind, packages, tmp_path, capsys):
    def edit(layer):
        DISGUISES[kind](layer)
        if kind == "honest":
            layer["module"] = packages["b"]
    model = _keras_file(tmp_path, kind, edit)
    out = tmp_path / "out"
    out.mkdir()
    line = assert_clean_failure(["export", str(model), "-o", str(out / "m.onnx"), "--import", packages["a"]],
                                [out / "m.onnx"], out, capsys)
    assert "Refusing to load" in line and ("pkgb>" in line or packages["b"] in line), line
    assert not packages["marker"].exists(), "the unnamed package's code ran"


@pytest.mark.parametrize("kind", [k for k in DISGUISES if k != "plain_string_activation"])
def test_control_keras_safe_mode_alone_runs_the_class(kind, packages, tmp_path):
    """Without our scan, Keras's own safe mode builds Evil (or calls evil_fn) from each file above."""
    __import__(packages["a"])
    model = _keras_file(tmp_path, kind, lambda layer: (DISGUISES[kind](layer), kind == "honest"
                                                       and layer.update(module=packages["b"])))
    try:
        loaded = keras.saving.load_model(model, compile=False, safe_mode=True)
        loaded(keras.ops.ones((1, 12)))
    except Exception:  # noqa: BLE001  (weights may not match Evil; its constructor has run by then)
        pass
    assert packages["marker"].exists(), "this file does not reach pkgb's code, so its refusal proves nothing"


def test_control_keras_turns_a_plain_string_into_the_registered_object(packages):
    """Why plain strings are checked: Keras's deserializer returns the registered object for one
    (an activation name happens to be looked up elsewhere, so that file fails; other fields do not)."""
    __import__(packages["a"])
    found = keras.saving.deserialize_keras_object("pkgb>evil_fn")
    assert callable(found) and found.__module__ == packages["b"]


def test_naming_the_package_trusts_its_classes_under_their_own_module(packages, tmp_path, capsys):
    honest = _keras_file(tmp_path, "honest", lambda layer: (DISGUISES["honest"](layer),
                                                             layer.update(module=packages["b"])))
    disguised = _keras_file(tmp_path, "disguised", DISGUISES["keras_module_registered_name"])
    call(["export", str(honest), "-o", str(tmp_path / "h.onnx"), "--import", packages["b"]], capsys)
    assert packages["marker"].read_text() == "constructor ran"  # the scan let it through
    packages["marker"].unlink()
    code, _, err = call(["export", str(disguised), "-o", str(tmp_path / "d.onnx"), "--import", packages["b"]],
                        capsys)
    assert code == 2 and "Keras would build" in err and not packages["marker"].exists(), err


def test_second_call_in_one_process_still_refuses(packages, tmp_path):
    """In-process a package is imported once; the second call must not trust what the first refused."""
    model = _keras_file(tmp_path, "m", DISGUISES["keras_module_registered_name"])
    for _ in range(2):
        with pytest.raises(keras_io.UnsafeModelError, match=r"pkgb>Evil"):
            keras_io.load_keras_model(model, import_modules=[packages["a"]])
    with pytest.raises(keras_io.UnsafeModelError, match=r"pkgb>Evil"):
        keras_io.load_keras_model(model)  # without --import, what an earlier --import brought in
    assert not packages["marker"].exists()


@pytest.mark.parametrize("package, raised", [("raises_at_import", "RuntimeError"),
                                             ("exits_at_import", "SystemExit")])
def test_import_time_failure_is_one_line(package, raised, packages, tmp_path, capsys):
    model = _keras_file(tmp_path, "plain_copy", lambda layer: None)
    out = tmp_path / "out"
    out.mkdir()
    line = assert_clean_failure(["export", str(model), "-o", str(out / "m.onnx"), "--import", package],
                                [out / "m.onnx"], out, capsys)
    assert f"Importing {package!r} failed: its import-time code raised {raised}" in line, line


@pytest.mark.slow
def test_keras_hub_does_not_vouch_for_tensorflow_text(tmp_path):
    """The issue's real case: `--import keras_hub` registers tensorflow_text's `Text>...` classes
    through its own imports; a file naming one (disguised as a Keras layer) is refused. A fresh
    process: in this one, earlier tests may have imported both packages already."""
    pytest.importorskip("keras_hub")
    model = _keras_file(tmp_path, "text", lambda layer: layer.update(registered_name="Text>WhitespaceTokenizer"))
    done = subprocess.run([sys.executable, "-m", "tiedonnx.runtime.cli", "export", str(model), "-o",
                           str(tmp_path / "t.onnx"), "--import", "keras_hub"],
                          capture_output=True, text=True, timeout=600)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert "'Text>WhitespaceTokenizer'" in lines[0] and "tensorflow_text" in lines[0], lines[0]
    assert not (tmp_path / "t.onnx").exists()
