"""Error messages name each surface's own spelling: parameters in Python, flags in the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from tiedonnx.runtime.atomic import check_output_path
from tiedonnx.runtime.cli import main
from tiedonnx.runtime.errors import OutputExistsError, api_text, cli_text, short_error


def test_dual_hints_render_per_surface():
    message = "Pass force=True (CLI: --force) to overwrite, or another name (CLI: --name)."
    assert api_text(message) == "Pass force=True to overwrite, or another name."
    assert cli_text(message) == "Pass --force to overwrite, or another name (--name)."


def test_library_error_names_the_parameter_and_the_cli_the_flag(tmp_path, capsys):
    target = tmp_path / "y.npy"
    target.write_bytes(b"keep")
    with pytest.raises(OutputExistsError) as info:
        check_output_path(target)
    assert "force=True" in str(info.value) and "--force" not in str(info.value)

    from tiedonnx.runtime.testing import tied_autoencoder
    import onnx

    onnx.save(tied_autoencoder(), str(tmp_path / "ae.onnx"))
    np.save(tmp_path / "x.npy", np.zeros((2, 8), np.float32))
    assert main(["run", str(tmp_path / "ae.onnx"), "-i", str(tmp_path / "x.npy"),
                 "-o", str(target)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--force" in line and "force=True" not in line
    assert target.read_bytes() == b"keep"


def test_short_error_is_one_bounded_line():
    assert short_error(ValueError("first\nsecond")) == "first"
    assert short_error(ValueError("")) == "ValueError"
    assert len(short_error(ValueError("x" * 500), 50)) == 50


def test_a_text_file_named_npy_is_called_what_it_is(tmp_path, capsys):
    from tiedonnx.runtime.errors import InputError
    from tiedonnx.runtime.inputs import load_array_file

    (tmp_path / "x.npy").write_text("1,2,3\n")
    with pytest.raises(InputError, match=r"is not a \.npy file: it is a file starting with b'1,2,3"):
        load_array_file(tmp_path / "x.npy")
    (tmp_path / "x.npz").write_bytes(b"")
    with pytest.raises(InputError, match=r"is not a \.npz file: it is an empty file"):
        load_array_file(tmp_path / "x.npz")
