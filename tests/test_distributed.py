"""Batch scoring on Ray Data: same bytes as the single-process run, in the input's row order.

The Ray tests share one small local Ray instance (2 CPUs, no dashboard) that is
shut down after the module; each run_ray call spends most of its time starting
the two actors.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from tiedonnx.runtime import load  # noqa: E402
from tiedonnx.runtime.distributed import run_ray  # noqa: E402
from tiedonnx.runtime.testing import tied_autoencoder  # noqa: E402
from tiedonnx.runtime.errors import InputError, OutputExistsError, UsageError  # noqa: E402

FEATURES, HIDDEN = 64, 8


def _tied_ae(path, *, with_code: bool):
    """FEATURES -> HIDDEN -> FEATURES, decoder reads the encoder's W through a Transpose."""
    onnx.save(tied_autoencoder(FEATURES, HIDDEN, seed=1, batch="n", biases=False, output_name="out",
                               expose_code=with_code), path)
    return path


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def files(tmp_path):
    x = np.random.default_rng(2).random((2500, FEATURES), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    return {
        "x": x, "x_path": tmp_path / "x.npy",
        "two": _tied_ae(tmp_path / "two.onnx", with_code=True),
        "one": _tied_ae(tmp_path / "one.onnx", with_code=False),
    }


@pytest.mark.slow  # starts a local Ray cluster
def test_ray_equals_single_process_in_row_order(ray_local, files, tmp_path):
    # 2500 rows in chunks of 512: four full chunks and a short last one.
    report = run_ray(files["two"], files["x_path"], tmp_path / "y.npz", batch_size=512)

    expected = load(files["two"], providers="cpu").run(files["x"], batch_size=512)
    with np.load(tmp_path / "y.npz") as got:
        assert sorted(got.files) == ["h", "out"]
        for name in ("out", "h"):
            # Same chunk boundaries as the single-process run, so bit-for-bit equal
            # (random rows: any reordering of rows would fail this).
            np.testing.assert_array_equal(got[name], expected[name])
    assert report.rows == 2500 and report.chunks == 5 and report.workers == 2
    assert report.outputs == {"out": [2500, FEATURES], "h": [2500, HIDDEN]}
    assert 0 < report.first_result_seconds <= report.seconds
    # No temporary file or folder is left beside the output.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.onnx", "two.onnx", "x.npy",
                                                          "y.npz"]


@pytest.mark.slow  # starts a local Ray cluster
def test_npy_output_force_and_lean_memory(ray_local, files, tmp_path):
    out = tmp_path / "y.npy"
    np.save(out, np.zeros(3))
    with pytest.raises(OutputExistsError, match="already exists"):
        run_ray(files["one"], files["x_path"], out, batch_size=1000)
    # One chunk of 2500 rows: the pool of 2 asked for shrinks to 1 (no idle actor).
    report = run_ray(files["one"], files["x_path"], out, batch_size=4096, force=True,
                     memory="lean", num_workers=2)
    got = np.load(out)
    expected = load(files["one"], providers="cpu", memory="lean").run(files["x"])
    np.testing.assert_array_equal(got, expected["out"])
    assert report.workers == 1 and report.chunks == 1


@pytest.mark.slow  # starts a local Ray cluster
def test_bad_rows_raise_input_error_and_leave_no_output(ray_local, files, tmp_path):
    x = files["x"].copy()
    x[1700, 5] = np.nan
    np.save(tmp_path / "bad.npy", x)
    out = tmp_path / "y.npy"
    with pytest.raises(InputError, match=r"NaN or inf \(first at row 176\).*count from input "
                                         r"row 1524"):
        run_ray(files["one"], tmp_path / "bad.npy", out, batch_size=762)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npy", "one.onnx", "two.onnx",
                                                          "x.npy"]


@pytest.mark.parametrize("kwargs, output, error, message", [
    ({"batch_size": 0}, "y.npy", UsageError, r"batch_size must be a positive integer. Received: "
                                             r"batch_size=0"),
    ({"num_workers": 0}, "y.npy", UsageError, r"num_workers must be a positive integer"),
    ({"providers": "gpu"}, "y.npy", UsageError, r"providers must be one of .*'gpu'"),
    ({}, "y.csv", UsageError, r"output must be a \.npy or \.npz path"),
    ({}, "y.npy", UsageError, r"The model has 2 outputs \['out', 'h'\].*\.npz"),
])
def test_bad_arguments_are_refused_before_ray_starts(files, tmp_path, kwargs, output, error,
                                                      message):
    pytest.importorskip("ray")
    with pytest.raises(error, match=message):
        run_ray(files["two"], files["x_path"], tmp_path / output, **kwargs)


def test_input_that_does_not_fit_is_refused_before_ray_starts(files, tmp_path):
    pytest.importorskip("ray")
    np.save(tmp_path / "narrow.npy", np.zeros((10, FEATURES - 1), np.float32))
    with pytest.raises(InputError, match=r"Input 'x' expects shape \(n, 64\)"):
        run_ray(files["one"], tmp_path / "narrow.npy", tmp_path / "y.npy")
    np.savez(tmp_path / "x.npz", x=files["x"])
    with pytest.raises(UsageError, match=r"one memory-mapped \.npy input"):
        run_ray(files["one"], tmp_path / "x.npz", tmp_path / "y.npy")


def test_without_ray_says_how_to_install(files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    with pytest.raises(UsageError, match=r'pip install -e "\.\[ray\]"'):
        run_ray(files["one"], files["x_path"], tmp_path / "y.npy")


def test_importing_the_module_does_not_import_ray():
    code = ("import sys, tiedonnx.runtime.distributed as d; "
            "assert 'ray' not in sys.modules, 'ray imported'; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
