"""Optional dependencies: one LazyModule per package, one install hint, version floors from metadata."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tiedonnx.runtime import extras
from tiedonnx.runtime.errors import MissingExtraError, OldExtraError, UsageError

REPO = Path(__file__).resolve().parents[1]


def test_a_missing_package_is_one_line_naming_its_extra(monkeypatch):
    lazy = extras.LazyModule("tiedonnx_no_such_package", extra="ray")
    assert not lazy.available
    with pytest.raises(MissingExtraError, match=r'^Scoring needs the \[ray\] extra \(tiedonnx_no_such_package '
                                                r'is not installed\)\. .*pip install -e "\.\[ray\]"$') as info:
        lazy.load("Scoring")
    assert isinstance(info.value, UsageError) and isinstance(info.value, ImportError)


def test_a_missing_submodule_names_itself(monkeypatch):
    monkeypatch.setitem(sys.modules, "json.tiedonnx_gone", None)  # as a package without an optional part
    with pytest.raises(MissingExtraError, match=r"\(json\.tiedonnx_gone is not installed\)"):
        extras.LazyModule("json", extra="ray", submodules=("json.tiedonnx_gone",)).load("It")


def test_a_present_package_is_the_imported_module(monkeypatch):
    lazy = extras.LazyModule("json", extra="ray")
    assert lazy.available and lazy.load("It") is sys.modules["json"]
    monkeypatch.setitem(sys.modules, "json", None)  # gone after a first load: refused, not cached
    with pytest.raises(MissingExtraError, match=r"\(json is not installed\)"):
        lazy.load("It")


def test_every_optional_import_goes_through_one_lazy_module():
    # The runtime and converter packages import optional packages only through runtime/extras.py;
    # a submodule (matplotlib.pyplot, ray.exceptions) after its package's LazyModule.load is fine.
    optional = {lazy.name for group in extras.EXTRAS.values() for lazy in group} - {"tensorflow", "keras", "tf2onnx"}
    pattern = re.compile(r"^\s*(?:import|from) (" + "|".join(map(re.escape, optional)) + r")(?=[ \t]|$)", re.M)
    found = [f"{path.relative_to(REPO)}: {m.group(0).strip()}"
             for folder in ("runtime", "converter") for path in (REPO / folder).rglob("*.py")
             for m in pattern.finditer(path.read_text())]
    assert found == []


@pytest.mark.parametrize("text, expected", [("3.13.2", (3, 13, 2)), ("3.14.0rc1", (3, 14, 0)),
                                            ("3.13.2.dev20250101", (3, 13, 2)), ("2!1.0", (2,))])
def test_version_tuple(text, expected):
    assert extras.version_tuple(text) == expected


@pytest.mark.parametrize("installed, refused", [("3.10.0", True), ("3.13.1", True), ("3.13.2", False),
                                                ("3.15.1", False)])
def test_the_keras_floor_is_checked_from_metadata(monkeypatch, installed, refused):
    from importlib import metadata

    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: installed if name == "keras" else real(name))
    if not refused:
        extras.require("convert", what="tiedonnx export")
        return
    with pytest.raises(OldExtraError, match=rf"^tiedonnx export needs keras >= 3\.13\.2 \(earlier Keras 3 "
                                            rf"releases have safe-mode bypass CVEs\); installed: keras "
                                            rf"{re.escape(installed)}\. Upgrade it with: pip install 'keras>=3\.13\.2'"):
        extras.require("convert", what="tiedonnx export")


def test_importing_the_converter_checks_the_keras_floor_before_tensorflow():
    code = ("import importlib.metadata as m, sys; real = m.version\n"
            "m.version = lambda n: '3.12.0' if n == 'keras' else real(n)\n"
            "try:\n    import tiedonnx.converter\nexcept ImportError as e:\n"
            "    print(type(e).__name__, e); print('tensorflow' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.stdout.splitlines() == [
        "OldExtraError tiedonnx.converter needs keras >= 3.13.2 (earlier Keras 3 releases have safe-mode "
        "bypass CVEs); installed: keras 3.12.0. Upgrade it with: pip install 'keras>=3.13.2' (or pip "
        'install -e ".[convert]" from the tiedonnx checkout).', "False"], out.stderr[-2000:]


def test_the_floors_are_pyprojects():
    text = (REPO / "pyproject.toml").read_text()
    for dist, (floor, _) in extras.FLOORS.items():
        assert re.search(rf'"{re.escape(dist)}>={re.escape(floor)}"', text), f"pyproject.toml lacks {dist}>={floor}"
