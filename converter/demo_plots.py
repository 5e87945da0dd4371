"""Figures and the Markdown report of ``tiedonnx demo`` (matplotlib, headless).

Every figure colours a variant the same way (the colours come from the demo's
variant list), and says what its numbers are and on which machine.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from tiedonnx.runtime.atomic import write_bytes_atomic

from .demo import BENCH_ROUNDS, KERAS_PREDICT, ONNX_THREADS, PLAIN

TABLE_HEADER = ["variant", "file bytes", "max |diff| vs Keras", "test MSE", "batch-1 µs",
                "batch-256 rows/s"]
_OFF_SCALE = 5.0  # a batch-1 bar this many times the next slowest is drawn cut off


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    write_bytes_atomic(path, buffer.getvalue(), force=True)


def _pyplot():
    from tiedonnx.runtime.extras import MATPLOTLIB

    matplotlib = MATPLOTLIB.load("The demo's plots")
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    return plt


def draw_reconstructions(path: Path, report, shown: np.ndarray, recon: dict[str, np.ndarray],
                         colors: dict[str, str]) -> None:
    """Columns: one held-out digit per class 0-9 (``shown``). Rows: the digits, then each
    reconstruction in ``recon`` (variant name -> images, in report order), framed in the
    variant's colour, labelled with its MSE over all held-out digits."""
    plt = _pyplot()
    rows = [("held-out digit\n(one per class)", None, shown)] + [
        (v.name, v, recon[v.name]) for v in report.variants if v.name in recon]
    side = int(round(np.sqrt(shown.shape[1])))
    fig, axes = plt.subplots(len(rows), 10, figsize=(11, 1.12 * len(rows) + 0.6), squeeze=False)
    for r, (name, variant, images) in enumerate(rows):
        for c in range(10):
            ax = axes[r, c]
            ax.imshow(images[c].reshape(side, side), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(str(c), fontsize=10)
            if variant is not None:
                for spine in ax.spines.values():
                    spine.set_edgecolor(colors[name])
                    spine.set_linewidth(2.5)
        label = name if variant is None else _row_label(variant)
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9, labelpad=8)
    fig.suptitle(f"Held-out digits and their reconstructions: Keras vs its ONNX files\n"
                 f"({report.model})", fontsize=11)
    fig.text(0.5, 0.02, f"MSE: mean squared error against the held-out digits, over all "
             f"{report.test_rows}; max |diff|: largest pixel difference from Keras's output.",
             ha="center", fontsize=8.5, color="#444444")
    fig.subplots_adjust(wspace=0.08, hspace=0.12, bottom=0.07)
    _save(fig, path)
    plt.close(fig)


def _row_label(variant) -> str:
    label = f"{variant.name}\nMSE {variant.test_mse:.5f}"
    if variant.max_abs_vs_keras:
        label += f"\nmax |diff| {variant.max_abs_vs_keras:.2g}"
    return label


def draw_size_latency(path: Path, report, colors: dict[str, str]) -> None:
    """Three panels, one row per variant, one colour per variant: file size (kB),
    batch-1 latency (µs) and batch-256 throughput (thousand rows/s), linear axes."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    variants = report.variants
    names = [v.name for v in variants]
    bar_colors = [colors[v.name] for v in variants]
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.45 * len(variants) + 2.2), sharey=True)
    _size_panel(axes[0], variants, names, bar_colors)
    _latency_panel(axes[1], variants, names, bar_colors)
    _throughput_panel(axes[2], variants, names, bar_colors)
    axes[0].invert_yaxis()  # shared: table order, top to bottom
    for ax in axes:
        ax.grid(axis="x", color="#dddddd", linewidth=0.8)
        ax.set_axisbelow(True)
        ax.spines[["top", "right"]].set_visible(False)
    noisy = "\nNOISY MACHINE: rounds disagreed (see report.md); compare bars, not absolute speeds" \
        if report.timing_note else ""
    fig.suptitle(f"{report.model}: file size and speed\n"
                 f"times: median of {BENCH_ROUNDS} interleaved rounds (whiskers: fastest to slowest "
                 f"round) on {report.machine}\nonnxruntime: CPU provider, {ONNX_THREADS} thread "
                 f"(steady on a shared machine); Keras: TensorFlow's own thread pools{noisy}",
                 fontsize=11)
    fig.legend(handles=[Patch(color=c, label=v.name) for v, c in zip(variants, bar_colors)],
               loc="lower center", ncol=len(variants), fontsize=8.5, frameon=False,
               bbox_to_anchor=(0.5, -0.06))
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _size_panel(ax, variants, names, bar_colors) -> None:
    kb = [v.bytes / 1e3 if v.bytes else 0.0 for v in variants]
    ax.barh(names, kb, color=bar_colors)
    plain = next((v.bytes for v in variants if v.name == PLAIN.name), None)
    for y, (v, value) in enumerate(zip(variants, kb)):
        if not v.bytes:
            ax.text(0, y, " no ONNX file", va="center", fontsize=8, color="#777777")
            continue
        ratio = f" ({v.bytes / plain:.2f}x plain)" if plain and v.bytes != plain else ""
        ax.text(value, y, f" {value:,.0f} kB{ratio}", va="center", fontsize=8)
    ax.set_xlabel("file size (kB = 1,000 bytes)")
    ax.set_title("Model file size")
    ax.margins(x=0.45)


def _latency_panel(ax, variants, names, bar_colors) -> None:
    us = [v.latency_us.get(1, 0.0) for v in variants]
    # Keras predict pays a per-call set-up hundreds of times the model's own time: cut off
    # its bar (labelled) rather than squash the others or switch to a log axis.
    reference = max((u for v, u in zip(variants, us) if v.name != KERAS_PREDICT.name), default=max(us))
    off = [u > _OFF_SCALE * reference for u in us]
    limit = 1.45 * max(u for u, o in zip(us, off) if not o)
    for y, u in enumerate(us):
        ax.barh(names[y], min(u, limit), color=bar_colors[y], hatch="//" if off[y] else None,
                edgecolor="white" if off[y] else None)
        low, high = variants[y].latency_range_us.get(1, (u, u))
        if not off[y]:
            _whisker(ax, y, u, low, min(high, limit))
        if off[y]:
            ax.text(0.97 * limit, y, f"{u:,.0f} µs (off scale)", va="center", ha="right",
                    fontsize=8, bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.5})
        else:
            ax.text(max(u, min(high, limit)), y, f" {u:,.0f} µs", va="center", fontsize=8)
    ax.set_xlim(0, limit)
    ax.set_xlabel("time per call, batch 1 (µs; lower is better)")
    ax.set_title("Latency, batch 1")


def _throughput_panel(ax, variants, names, bar_colors) -> None:
    rows_k = [256 / v.latency_us[256] * 1e3 if v.latency_us.get(256) else 0.0 for v in variants]
    ax.barh(names, rows_k, color=bar_colors)
    for y, (v, value) in enumerate(zip(variants, rows_k)):
        fastest, slowest = v.latency_range_us.get(256, (0.0, 0.0))
        if fastest and slowest:  # the slowest round is the fewest rows/s
            _whisker(ax, y, value, 256 / slowest * 1e3, 256 / fastest * 1e3)
        ax.text(max(value, 256 / fastest * 1e3 if fastest else 0.0), y, f" {value:,.0f}k",
                va="center", fontsize=8)
    ax.set_xlabel("rows per second at batch 256 (thousands; higher is better)")
    ax.set_title("Throughput, batch 256")
    ax.margins(x=0.2)


def _whisker(ax, y: int, value: float, low: float, high: float) -> None:
    """The spread of a bar's rounds: a line from ``low`` to ``high`` across its end."""
    ax.errorbar([value], [y], xerr=[[max(value - low, 0.0)], [max(high - value, 0.0)]], fmt="none",
                ecolor="#222222", elinewidth=1.0, capsize=3)


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


def speed_line(report) -> str:
    """Each tiedonnx file's speed against plain tf2onnx, per batch, with each round's spread."""
    parts = []
    for v in report.variants:
        if v.precision and v.x_vs_plain:
            ratios = ", ".join(f"{r:.2f}x at batch {b}" for b, r in v.x_vs_plain.items())
            parts.append(f"{v.name} {ratios}")
    if not parts:
        return ""
    return ("Speed against plain tf2onnx (its time / the file's, taken within each round, median "
            f"over rounds; > 1: faster): {'; '.join(parts)}.")


def _md_row(cells) -> str:
    # A bare "|" inside a cell would end it: GFM tables need it escaped.
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def write_markdown(path: Path, report) -> None:
    """``report.md``: what was run, the table, the figures, the web page."""
    by_name = {v.name: v for v in report.variants}
    plain = by_name.get(PLAIN.name)
    tied = next((v for v in report.variants if v.precision == "fp32"), None)
    lines = [
        "# tiedonnx demo report", "",
        f"A {report.model} (the decoder reuses the encoder's kernel, transposed), trained for "
        f"{report.epochs} epochs on {report.train_rows:,} of scikit-learn's bundled digits "
        f"(8x8, upscaled); every figure is on the {report.test_rows} held-out digits. Times per "
        f"call are the median of {BENCH_ROUNDS} interleaved rounds (each contender once per round, "
        f"the order rotated; each round a median of calls), on {report.machine}; "
        f"ONNX on onnxruntime's CPU provider with {ONNX_THREADS} intra-op thread (a multi-thread "
        "call on a shared machine waits for its most delayed thread), Keras on TensorFlow's own "
        "thread pools; batch-256 rows/s is 256 divided by the batch-256 time. "
        f"Whole run: {report.seconds:.1f} s. Produced by "
        f"`tiedonnx demo --out {report.out_dir} --epochs {report.epochs}`.", "",
        _md_row(TABLE_HEADER),
        "|---|" + "---:|" * (len(TABLE_HEADER) - 1),
        *(_md_row(row) for row in table_rows(report)), "",
    ]
    if plain and tied and plain.bytes:
        lines += [f"The {tied.name} file is {tied.bytes / plain.bytes:.2f}x the {plain.name} "
                  "file: the tied kernel is stored once.", ""]
    lines += [speed_line(report), ""] if speed_line(report) else []
    if report.timing_note:
        lines += [f"**Noisy machine.** {report.timing_note}.", ""]
    lines += ["![reconstructions](reconstructions.png)", "", "![size and latency](size_latency.png)", ""]
    if report.web_dir:
        lines += [f"`web/`: a page that runs the tiedonnx files in the browser (onnxruntime-web). "
                  f"Serve it with `tiedonnx web --serve {report.web_dir}`.", ""]
    elif report.web_note:
        lines += [report.web_note, ""]
    write_bytes_atomic(path, "\n".join(lines).encode(), force=True)
