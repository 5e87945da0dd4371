"""The peers' rows of scripts/bench_generate.py: Optimum and onnxruntime-genai on KerasHub's weights.

The weights travel through KerasHub's own exporter (``lm.export_to_transformers``) into a Hugging
Face folder; each peer then exports and runs that folder in its own virtual environment
(``bash scripts/setup_peers.sh``: Optimum pins transformers < 4.58, onnxruntime-genai 0.18 needs
transformers >= 5) through a driver in scripts/peers/ that prints one JSON line per step:
export (bytes, vocab x hidden initializers), bench (TTFT, tokens/s at batch 1 and 8, greedy tokens)
and probe (RSS growth over loading the model, fresh process). A peer whose venv is missing or whose
step fails is a row with that error in one line.

The Hugging Face config gets what KerasHub's exporter leaves out: ``architectures`` (the genai
builder requires it); ``bos/eos/pad_token_id`` set to an id KerasHub's greedy runs never pick, so no
stop token ends or bends a run (exactly ``--new`` tokens everywhere); and for Qwen
``max_position_embeddings`` = 1024 (Hugging Face's default 32768 would put 2 MiB of rotary tables
in genai's tiny file).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

PEERS = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tiedonnx/peers"
DRIVERS = Path(__file__).resolve().parent / "peers"
ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "qwen": "Qwen2ForCausalLM"}
QWEN_POSITIONS = 1024


def unused_token(vocab: int, runs: list[list[int]]) -> int:
    """The highest id no greedy run picked: the stop id that never stops or bends a run."""
    seen = {t for run in runs for t in run}
    return next(t for t in range(vocab - 1, 0, -1) if t not in seen)


def hf_folder(lm, family: str, folder: Path, stop_id: int) -> Path:
    """KerasHub's ``export_to_transformers`` plus the config keys it leaves out (see the module doc)."""
    lm.export_to_transformers(str(folder))
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(architectures=[ARCHITECTURES[family]], bos_token_id=stop_id, eos_token_id=stop_id,
                  pad_token_id=stop_id)
    if family == "qwen":
        config["max_position_embeddings"] = QWEN_POSITIONS
    path.write_text(json.dumps(config, indent=2))
    return folder


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def run_driver(peer: str, step: str, args: list[str]) -> dict:
    """One step of ``scripts/peers/<peer>_run.py`` in the peer's venv: its JSON, or {"error": one line}."""
    python = PEERS / peer / "bin" / "python"
    if not python.is_file():
        return {"error": f"not run: no venv at {python.parent.parent} (bash scripts/setup_peers.sh {peer})"}
    proc = subprocess.run([str(python), str(DRIVERS / f"{peer}_run.py"), step, *args],
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        return {"error": f"{step} failed: {_last_line(proc.stderr or proc.stdout)}"}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": f"{step} printed no JSON: {_last_line(proc.stdout + proc.stderr)}"}


def peer_row(peer: str, name: str, common: list[str], precision: str) -> dict:
    """Export, time, then measure RSS in a fresh process; the first failing step ends the row."""
    row = {"name": name}
    for step in ("export", "bench", "probe"):
        got = run_driver(peer, step, common + (["--precision", precision] if step == "export" else []))
        if "error" in got:
            row["error"] = got["error"]
            break
        row.update(got)
    return row


def peer_rows(lm, family: str, root: Path, prompts, new: int, rounds: int, precisions: list[str],
              stop_id: int) -> list[dict]:
    """Optimum (fp32, when asked for) and genai (fp32 / int4 among ``precisions``) on the same weights."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        hf = hf_folder(lm, family, root / "hf", stop_id)
    except Exception as exc:  # noqa: BLE001  the exporter's failure is every peer's row, in one line
        return [{"name": "peers", "error": f"export_to_transformers failed: {type(exc).__name__}: {exc}"[:300]}]
    (root / "prompts.json").write_text(json.dumps(prompts))
    args = ["--hf", str(hf), "--prompts", str(root / "prompts.json"), "--new", str(new), "--rounds", str(rounds)]
    rows = []
    if "fp32" in precisions:
        rows.append(peer_row("optimum", "Optimum ORTModelForCausalLM fp32", args + ["--onnx", str(root / "optimum")],
                             "fp32"))
    if family == "gpt2":
        rows.append({"name": "onnxruntime-genai", "error": "not run: its model builder has no GPT-2 architecture"})
        return rows
    for precision in [p for p in ("fp32", "int4") if p in precisions]:
        rows.append(peer_row("genai", f"onnxruntime-genai {precision}",
                             args + ["--onnx", str(root / f"genai-{precision}")], precision))
    return rows
