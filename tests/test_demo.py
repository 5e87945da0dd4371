"""``tiedonnx demo`` end to end on a tiny setting (one epoch)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("keras")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from tiedonnx.converter.errors import OutputExistsError  # noqa: E402
from tiedonnx.runtime.cli import main  # noqa: E402


def test_demo_one_epoch(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "1"]) == 0
    console = capsys.readouterr()
    assert "training a tied autoencoder" in console.err
    assert "tiedonnx int8" in console.out and "batch-1 µs" in console.out

    report = json.loads((out / "report.json").read_text())
    by_name = {v["name"]: v for v in report["variants"]}
    assert report["test_rows"] == 297 and report["train_rows"] == 1500
    assert by_name["tiedonnx fp32"]["bytes"] < by_name["plain tf2onnx fp32"]["bytes"]
    # Bounds from measured figures, independent of the library's tolerances:
    # fp32 3.6e-7, fp16 6.1e-4, int8 0.044 after 30 epochs (README); one epoch is smaller.
    assert by_name["tiedonnx fp32"]["max_abs_vs_keras"] <= 1e-6
    assert by_name["tiedonnx fp16"]["max_abs_vs_keras"] <= 2e-3
    assert by_name["tiedonnx int8"]["max_abs_vs_keras"] <= 0.1
    for v in report["variants"]:  # every variant timed at both batch sizes
        assert set(v["latency_us"]) == {"1", "256"}

    import matplotlib.image as mpimg

    for name in ("reconstructions.png", "size_latency.png"):
        image = mpimg.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400
        assert np.std(image[..., :3]) > 0.05  # not a blank canvas
    assert "| tiedonnx int8 |" in (out / "report.md").read_text()

    before = (out / "model.fp32.onnx").read_bytes()
    assert main(["demo", "--out", str(out), "--epochs", "1"]) == 2
    assert "already holds demo output" in capsys.readouterr().err
    assert (out / "model.fp32.onnx").read_bytes() == before


def test_demo_rejects_bad_epochs(tmp_path):
    from tiedonnx.converter.demo import run_demo
    from tiedonnx.converter.errors import UsageError

    with pytest.raises(UsageError, match=r"Received: epochs=0"):
        run_demo(tmp_path, epochs=0)
    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="--force"):
        run_demo(tmp_path, epochs=1)
