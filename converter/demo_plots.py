"""Figures and the Markdown report of ``tiedonnx demo`` (matplotlib, headless)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from tiedonnx.runtime.atomic import write_bytes_atomic

N_DIGITS = 10


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    write_bytes_atomic(path, buffer.getvalue(), force=True)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    return plt


def draw_reconstructions(path: Path, x_test: np.ndarray, recon: dict[str, np.ndarray]) -> None:
    """Rows: held-out digits, then each model's reconstruction of them."""
    plt = _pyplot()
    rows = [("held-out digits", x_test)] + [
        (label, recon[key]) for key, label in (
            ("keras", "Keras"), ("tiedonnx fp32", "ONNX fp32"),
            ("tiedonnx fp16", "ONNX fp16"), ("tiedonnx int8", "ONNX int8")) if key in recon]
    fig, axes = plt.subplots(len(rows), N_DIGITS, figsize=(N_DIGITS * 0.9, len(rows) * 1.0))
    for r, (label, images) in enumerate(rows):
        for c in range(N_DIGITS):
            ax = axes[r, c]
            ax.imshow(images[c].reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle("Tied autoencoder on held-out digits: Keras vs its ONNX exports", fontsize=11)
    _save(fig, path)
    plt.close(fig)


def draw_size_latency(path: Path, report) -> None:
    """Left: file bytes per ONNX variant. Right: batch-1 latency per variant (log scale)."""
    plt = _pyplot()
    files = [v for v in report.variants if v.bytes]
    timed = [v for v in report.variants if v.latency_us.get(1)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    colors = ["#bbbbbb" if "plain" in v.name else "#2a7ab9" for v in files]
    bars = left.barh([v.name for v in files], [v.bytes / 1e3 for v in files], color=colors)
    left.bar_label(bars, labels=[f"{v.bytes:,} B" for v in files], padding=3, fontsize=8)
    left.set_xlabel("file size (kB)")
    left.set_title("Model file size")
    left.invert_yaxis()
    left.margins(x=0.35)
    colors = ["#e08a2c" if v.name.startswith("keras") else "#2a7ab9" for v in timed]
    bars = right.barh([v.name for v in timed], [v.latency_us[1] for v in timed], color=colors)
    right.bar_label(bars, labels=[f"{v.latency_us[1]:,.0f} µs" for v in timed], padding=3, fontsize=8)
    right.set_xscale("log")
    right.set_xlabel("median latency, batch 1 (µs, log scale)")
    right.set_title("Latency on this machine's CPU")
    right.invert_yaxis()
    right.margins(x=0.4)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def table_rows(report) -> list[list[str]]:
    """The compact table, one row per variant (used by the console and the Markdown)."""
    rows = []
    for v in report.variants:
        lat = v.latency_us
        rows.append([
            v.name,
            f"{v.bytes:,}" if v.bytes else "-",
            f"{v.max_abs_vs_keras:.2g}" if v.max_abs_vs_keras is not None else "-",
            f"{v.test_mse:.5f}" if v.test_mse is not None else "-",
            f"{lat[1]:,.0f}" if 1 in lat else "-",
            f"{256 / lat[256] * 1e6:,.0f}" if 256 in lat else "-",
        ])
    return rows


TABLE_HEADER = ["variant", "file bytes", "max |diff| vs Keras", "test MSE", "batch-1 µs",
                "batch-256 rows/s"]


def write_markdown(path: Path, report) -> None:
    lines = [
        "# tiedonnx demo report", "",
        f"Tied autoencoder 64 -> 32 -> 64 trained for {report.epochs} epochs on {report.train_rows} "
        f"of scikit-learn's bundled 8x8 digits; figures on the {report.test_rows} held-out digits. "
        f"Whole run: {report.seconds:.1f} s. Produced by `tiedonnx demo --out {report.out_dir} "
        f"--epochs {report.epochs}`.", "",
        "| " + " | ".join(TABLE_HEADER) + " |",
        "|" + "---|" * len(TABLE_HEADER),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    lines += ["", "![reconstructions](reconstructions.png)", "", "![size and latency](size_latency.png)", ""]
    write_bytes_atomic(path, "\n".join(lines).encode(), force=True)
