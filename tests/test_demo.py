"""``tiedonnx demo`` end to end on a short setting (one epoch), and its parts."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import numpy as np
import pytest

pytest.importorskip("keras")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from tiedonnx.converter.errors import OutputExistsError, UsageError  # noqa: E402
from tiedonnx.runtime.cli import main  # noqa: E402

# The demo's rows, in table order (written out here, not read from the demo).
VARIANTS = ["keras call (tf.function)", "keras predict", "plain tf2onnx fp32",
            "tiedonnx fp32", "tiedonnx fp16", "tiedonnx int8", "tiedonnx int4"]


class _Tables(HTMLParser):
    """Rows of cell texts of each <table> in an HTML page (<thead> row first)."""

    def __init__(self, page: str):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def rendered_tables(markdown: str) -> list[list[list[str]]]:
    """Render ``markdown`` as GitHub does (CommonMark + tables) and read its tables back."""
    from markdown_it import MarkdownIt  # installed with rich, which Keras installs

    return _Tables(MarkdownIt("commonmark").enable("table").render(markdown)).tables


@pytest.mark.slow  # trains, exports five files, benchmarks
def test_demo_one_epoch(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "1"]) == 0
    console = capsys.readouterr()
    assert "training a tied autoencoder 784 -> 256 -> 784" in console.err
    assert "tiedonnx int8" in console.out and "batch-1 µs" in console.out

    report = json.loads((out / "report.json").read_text())
    by_name = {v["name"]: v for v in report["variants"]}
    assert [v["name"] for v in report["variants"]] == VARIANTS
    assert report["test_rows"] == 297 and report["train_rows"] == 1500  # of 1,797 digits
    # Realistic size (issue 16): measured 1,611,072 / 808,715 / 406,022 / 209,452 bytes
    # (a 784x256 fp32 kernel is 802,816 bytes); fp32 stores it once, int8 in a quarter.
    plain = by_name["plain tf2onnx fp32"]["bytes"]
    assert plain > 1_600_000
    assert by_name["tiedonnx fp32"]["bytes"] < 0.51 * plain
    assert by_name["tiedonnx fp16"]["bytes"] < 0.26 * plain
    assert by_name["tiedonnx int8"]["bytes"] < 0.14 * plain
    # int4, block 32: measured 124,850 bytes (the bound for this model: 0.081x plain).
    assert by_name["tiedonnx int4"]["bytes"] < 0.081 * plain
    # Bounds from measured figures, independent of the library's tolerances: after one
    # epoch fp32 2.4e-7, fp16 1.2e-4, int8 0.0095 (30 epochs: 4.2e-7, 3.0e-4, 0.056).
    assert by_name["tiedonnx fp32"]["max_abs_vs_keras"] <= 1e-6
    assert by_name["tiedonnx fp16"]["max_abs_vs_keras"] <= 2e-3
    assert by_name["tiedonnx int8"]["max_abs_vs_keras"] <= 0.15
    # int4 after one epoch: measured 0.047 (30 epochs, scripts/bench_edge.py: 0.132).
    assert by_name["tiedonnx int4"]["max_abs_vs_keras"] <= 0.3
    for v in report["variants"]:  # every variant timed at both batch sizes, with its rounds' range
        assert set(v["latency_us"]) == {"1", "256"} and min(v["latency_us"].values()) > 0
        for batch, (fastest, slowest) in v["latency_range_us"].items():
            assert fastest <= v["latency_us"][batch] <= slowest
        # speed against plain tf2onnx, within rounds, for each tiedonnx file
        assert set(v["x_vs_plain"]) == ({"1", "256"} if v["precision"] else set())
    assert "Speed against plain tf2onnx" in console.out
    assert ("noisy machine" in console.out) == bool(report["timing_note"])
    if report["web_dir"]:
        assert f"next: tiedonnx web --serve {out}/web" in console.out
    else:  # the skip is said in one line, with what to install
        (line,) = [x for x in console.out.splitlines() if "web/" in x and "not written" in x]
        assert "npm install" in line and "--force" in line

    import matplotlib.image as mpimg

    for name in ("reconstructions.png", "size_latency.png"):
        image = mpimg.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 400 and image.shape[1] > 1000
        assert np.std(image[..., :3]) > 0.05  # not a blank canvas

    (table,) = rendered_tables((out / "report.md").read_text())
    assert table[0] == ["variant", "file bytes", "max |diff| vs Keras", "test MSE",
                        "batch-1 µs", "batch-256 rows/s"]
    assert [row[0] for row in table[1:]] == VARIANTS
    assert all(len(row) == 6 for row in table)
    assert table[-1][1] == f"{by_name['tiedonnx int4']['bytes']:,}"

    if report["web_dir"]:  # onnxruntime-web is installed: the browser page was written
        site = json.loads((out / "web" / "site.json").read_text())
        assert [m["label"] for m in site["models"]] == VARIANTS[3:]
        assert (out / "web" / "index.html").is_file()
    else:
        assert "npm install" in report["web_note"]

    before = (out / "model.fp32.onnx").read_bytes()
    assert main(["demo", "--out", str(out), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "Pass --force" in err and "--out" in err and "force=True" not in err
    assert (out / "model.fp32.onnx").read_bytes() == before


def test_demo_api_errors_name_parameters(tmp_path):
    from tiedonnx.converter.demo import run_demo

    with pytest.raises(UsageError, match=r"Received: epochs=0"):
        run_demo(tmp_path, epochs=0)
    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(OutputExistsError, match=r"report\.json\).*Pass force=True") as caught:
        run_demo(tmp_path, epochs=1)
    assert "--" not in str(caught.value)  # the API names parameters, not CLI flags


def test_digits_are_28x28_with_one_pick_per_class():
    from tiedonnx.converter.demo_data import load_digits_28, upscale

    data = load_digits_28()
    assert data.x_train.shape == (1500, 784) and data.x_test.shape == (297, 784)
    picks = data.one_per_class()
    assert list(data.y_test[picks]) == list(range(10))
    image = np.arange(64, dtype=np.float32).reshape(1, 8, 8) / 64
    big = upscale(image).reshape(28, 28)
    assert (big[2:5, 5:8] == image[0, 0, 1]).all() and (big[23:26, 23:26] == image[0, 7, 7]).all()
    assert big[:2].sum() == big[:, 26:].sum() == 0  # the 2-pixel frame


def test_report_table_renders_with_escaped_pipes(tmp_path):
    from tiedonnx.converter.demo import DemoReport, Variant
    from tiedonnx.converter.demo_plots import write_markdown

    report = DemoReport("out", 1, 10, 5, machine="test CPU", seconds=1.0, variants=[
        Variant("a | b", None, None, max_abs_vs_keras=0.0, test_mse=0.5, latency_us={1: 2.0}),
        Variant("c", "c.onnx", 1234, "fp32", 1e-7, 0.5, {1: 3.0, 256: 256.0})])
    write_markdown(tmp_path / "report.md", report)
    (table,) = rendered_tables((tmp_path / "report.md").read_text())
    assert table == [["variant", "file bytes", "max |diff| vs Keras", "test MSE", "batch-1 µs",
                      "batch-256 rows/s"],
                     ["a | b", "-", "0", "0.50000", "2", "-"],
                     ["c", "1,234", "1e-07", "0.50000", "3", "1,000,000"]]


def test_without_onnxruntime_web_the_demo_says_so_in_one_line(tmp_path, monkeypatch):
    from tiedonnx.converter import demo
    from tiedonnx.runtime.commands.demo import render
    from tiedonnx.runtime.web import ort_web

    def missing(prefix=None):
        raise UsageError("onnxruntime-web 1.30.0 is not installed. Install it with: npm install x")

    monkeypatch.setattr(ort_web, "dist_dir", missing)
    report = demo.DemoReport(str(tmp_path), 1, 10, 5)
    demo._write_web(tmp_path, report)
    assert report.web_dir is None and not (tmp_path / "web").exists()
    lines = render(report)
    assert lines[-1] == report.web_note and "npm install x" in lines[-1] and "--force" in lines[-1]
    assert not any("web --serve" in line for line in lines)  # no next step that cannot work
