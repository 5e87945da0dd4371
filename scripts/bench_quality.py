"""Quantization scoreboard on trained models: what each precision loses, llama.cpp's columns.

The language model is assets/tiny_lm (scripts/train_tiny_lm.py: a GPT-2-style KerasHub CausalLM with a tied
embedding, trained on Shakespeare; hamlet, tempest and twelfth_night held out). Its plain forward export
(``tiedonnx.converter.export``: token_ids -> logits for a whole window) is scored teacher-forced over
non-overlapping windows of the held-out tokens against Keras fp32's logits: file bytes, perplexity and its
ratio to Keras fp32, mean KL(Keras || variant) of the next-token distribution, its 99th percentile, and the
same-top-token rate (:mod:`tiedonnx.runtime.quality`). Every variant is checked to store its tie once
(``inspect``: one tie, status ok, no untied duplicate; ``find_4bit_copies``: no second copy of a 4-bit
tensor).

The demo autoencoder (784-256 tied, scikit-learn digits, 30 epochs, seed 0) gets the same precisions with
reconstruction MSE on the 297 held-out digits instead of perplexity.

Usage: nice python scripts/bench_quality.py [--windows N] [--only LABEL ...] [--skip-ae] [--skip-lm] [--json PATH]
(``--json`` also writes the figures; tests/test_quality_board.py runs a short version and guards them.)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from machine import describe  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LM_DIR = ROOT / "assets" / "tiny_lm"


def accuracy_level(level: int):
    """A post-pass setting MatMulNBits' accuracy_level (4: int8 activations); not a tiedonnx option."""
    def apply(model):
        for node in model.graph.node:
            if node.op_type == "MatMulNBits":
                node.attribute.append(__import__("onnx").helper.make_attribute("accuracy_level", level))
        return model
    return apply


# (label, precision, options for to_precision[, post-pass]). The first row is the reference file.
VARIANTS = [
    ("fp32", "fp32", {}),
    ("fp16", "fp16", {}),
    ("int8 default", "int8", {}),  # what export/quantize choose: per channel for the LM, per tensor for the AE
    ("int8 per-tensor", "int8", {"per_channel": False}),
    ("int8 per-channel", "int8", {"per_channel": True}),
    ("int8 full-range", "int8", {"per_channel": False, "reduce_range": False}),
    ("int8 per-channel full-range", "int8", {"per_channel": True, "reduce_range": False}),
    *[(f"int4 b{b} {'sym' if s else 'asym'}", "int4", {"block_size": b, "symmetric": s})
      for s in (False, True) for b in (16, 32, 64, 128)],
    *[(f"int4 b{b} asym search", "int4", {"block_size": b, "rounding": "search"}) for b in (16, 32, 64)],
    ("int4 b32 asym acc-level 4", "int4", {"block_size": 32}, accuracy_level(4)),
    *[(f"int4 b{b} asym + int8 tie", "int4", {"block_size": b, "int8_ties": True}) for b in (32, 64, 128)],
    *[(f"int4 b{b} asym search + int8 tie", "int4", {"block_size": b, "int8_ties": True, "rounding": "search"})
      for b in (32, 64, 128)],
]


def variant_files(fp32: Path, folder: Path, variants=VARIANTS):
    """Yield (label, path) for each variant, written from the fp32 export; checks one stored tie each."""
    import onnx

    from tiedonnx.runtime.graph.inspect import inspect_file
    from tiedonnx.runtime.graph.int4_blocks import find_4bit_copies
    from tiedonnx.runtime.graph.quantize import to_precision

    source = onnx.load(fp32)
    for i, (label, precision, options, *post) in enumerate(variants):
        path = folder / f"v{i}.onnx"
        model = to_precision(source, precision, **options)
        onnx.save(post[0](model) if post else model, path)
        report, copies = inspect_file(path), find_4bit_copies(onnx.load(path).graph)
        if len(report.ties) != 1 or not report.ties_ok or copies:
            raise SystemExit(f"{label}: expected one stored tie, inspect says ties={report.ties}, "
                             f"untied duplicates={report.untied_duplicates}, 4-bit copies={copies}")
        yield label, path


def session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def lm_windows(heldout: np.ndarray, length: int, count: int) -> np.ndarray:
    """``count`` non-overlapping (length + 1)-token windows from the start (0: all)."""
    starts = np.arange(0, len(heldout) - length - 1, length)
    return np.stack([heldout[s:s + length + 1] for s in starts[:count or None]]).astype(np.int32)


def lm_logits(run, windows: np.ndarray, batch: int = 16) -> list[np.ndarray]:
    return [run(windows[i:i + batch, :-1]) for i in range(0, len(windows), batch)]


def onnx_runner(path: Path):
    sess = session(path)
    names = {i.name: i.type for i in sess.get_inputs()}

    def run(ids):
        feed = {n: (ids if "token" in n else np.ones_like(ids)).astype(np.int64 if "int64" in t else np.int32)
                for n, t in names.items()}
        return sess.run(None, feed)[0]
    return run


def score_lm(reference: list[np.ndarray], logits: list[np.ndarray], windows: np.ndarray, batch: int = 16):
    from tiedonnx.runtime.quality import TokenScores

    scores = TokenScores()
    for i, (ref, got) in enumerate(zip(reference, logits)):
        scores.add(ref, got, windows[i * batch:(i + 1) * batch, 1:])
    return scores.summary()


def lm_board(count: int, variants=VARIANTS) -> list[tuple[str, int, object]]:
    """(label, file bytes, LMQuality) per variant on ``count`` held-out windows of the committed model."""
    import keras
    import keras_hub  # noqa: F401  (registers the KerasHub classes the .keras file names)

    from tiedonnx.converter.export import export

    model = keras.saving.load_model(LM_DIR / "model.keras")
    length = model.backbone.max_sequence_length
    windows = lm_windows(np.load(LM_DIR / "heldout.npy"), length, count)
    reference = lm_logits(lambda ids: model.predict_on_batch({"token_ids": ids, "padding_mask": np.ones_like(ids)}),
                          windows)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "lm.onnx"
        export(model, fp32, verify=False)
        for label, path in variant_files(fp32, Path(tmp), variants):
            rows.append((label, path.stat().st_size, score_lm(reference, lm_logits(onnx_runner(path), windows),
                                                              windows)))
    return rows


def ae_board(variants=VARIANTS) -> list[tuple[str, int, float, float]]:
    """(label, file bytes, held-out MSE, max abs vs Keras) per variant of the 30-epoch demo autoencoder."""
    from tiedonnx.converter.demo import DEFAULT_EPOCHS
    from tiedonnx.converter.demo_data import load_digits_28, train
    from tiedonnx.converter.export import export

    data = load_digits_28()
    model = train(data.x_train, epochs=DEFAULT_EPOCHS)
    keras_out = np.asarray(model.predict(data.x_test, verbose=0))
    rows = [("keras fp32", 0, float(np.mean((keras_out - data.x_test) ** 2)), 0.0)]
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "ae.onnx"
        export(model, fp32, verify=False)
        for label, path in variant_files(fp32, Path(tmp), variants):
            sess = session(path)
            out = sess.run(None, {sess.get_inputs()[0].name: data.x_test})[0]
            rows.append((label, path.stat().st_size, float(np.mean((out - data.x_test) ** 2)),
                         float(np.abs(out - keras_out).max())))
    return rows


def print_lm(rows) -> None:
    fp32 = rows[0][1]
    print(f"\n{'variant':32} {'bytes':>10} {'x fp32':>6} {'ppl':>8} {'ratio':>7} {'mean KL':>8} "
          f"{'KL p99':>8} {'same top':>8}")
    for label, size, q in rows:
        print(f"{label:32} {size:>10,} {size / fp32:>6.3f} {q.perplexity:>8.3f} {q.ratio:>7.4f} "
              f"{q.mean_kl:>8.5f} {q.kl_p99:>8.5f} {q.same_top:>8.2%}")
    print(f"(Keras fp32 perplexity {rows[0][2].reference_perplexity:.3f} over {rows[0][2].tokens:,} tokens)")


def print_ae(rows) -> None:
    keras_mse = rows[0][2]
    fp32 = rows[1][1]
    print(f"\n{'variant':32} {'bytes':>10} {'x fp32':>6} {'MSE':>10} {'vs Keras':>9} {'max abs':>8}")
    for label, size, mse, diff in rows:
        sized = f"{size:>10,} {size / fp32:>6.3f}" if size else f"{'':>17}"
        print(f"{label:32} {sized} {mse:>10.6f} {mse / keras_mse - 1:>+9.2%} {diff:>8.4f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--windows", type=int, default=0, help="held-out windows of 128 tokens (default 0: all)")
    p.add_argument("--skip-ae", action="store_true")
    p.add_argument("--skip-lm", action="store_true")
    p.add_argument("--only", nargs="+", metavar="LABEL", help="these variants only (fp32 always runs)")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    a = p.parse_args()
    variants = [v for v in VARIANTS if v[0] == "fp32" or not a.only or v[0] in a.only]
    if a.only and len(variants) != len(set(a.only) | {"fp32"}):
        p.error(f"--only: unknown label among {a.only}; labels: {[v[0] for v in VARIANTS]}")
    figures = {}
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    print(describe())
    start = time.perf_counter()
    if not a.skip_lm:
        rows = lm_board(a.windows, variants)
        print_lm(rows)
        figures["lm"] = {label: {"bytes": size, **q.as_dict()} for label, size, q in rows}
    if not a.skip_ae:
        rows = ae_board([v for v in variants if "int8 tie" not in v[0]])  # the AE's only weight is its tie
        print_ae(rows)
        figures["ae"] = {label: {"bytes": size, "mse": mse, "max_abs": diff} for label, size, mse, diff in rows}
    if a.json:
        a.json.write_text(__import__("json").dumps(figures, indent=1))
    print(f"\n{time.perf_counter() - start:.0f} s; load: {os.getloadavg()[0]:.1f} (1-min average)")


if __name__ == "__main__":
    main()
