#!/usr/bin/env bash
# Separate environments for scripts/bench_generate.py's peers (never CI, never tiedonnx's own deps):
#   optimum: optimum-onnx (pins transformers<4.58) + torch (CPU) + accelerate, run by ORTModelForCausalLM
#   genai:   onnxruntime-genai + its model builder (transformers>=5, onnx-ir, torch CPU)
# Usage: bash scripts/setup_peers.sh [optimum] [genai]   (default: both)
# Venvs land in ${XDG_CACHE_HOME:-~/.cache}/tiedonnx/peers/<name>; remove that folder to start over.
set -euo pipefail
ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/tiedonnx/peers"
PYTHON="${PYTHON:-python3.11}"
# torch: the CPU wheel (no CUDA libraries); set TORCH to another requirement where none lies in pip's find-links.
TORCH="${TORCH:-torch==2.13.0+cpu}"

make_env() {  # name, packages...
    local name="$1"; shift
    local env="$ROOT/$name"
    if [ ! -x "$env/bin/python" ]; then
        mkdir -p "$ROOT"
        "$PYTHON" -m venv "$env"
    fi
    "$env/bin/pip" install --quiet --upgrade pip
    "$env/bin/pip" install --quiet "$TORCH" "$@"
    echo "$name: $("$env/bin/python" -m pip freeze | grep -iE '^(torch|transformers|optimum.*|onnxruntime.*|accelerate)==' | tr '\n' ' ')"
}

for peer in "${@:-optimum genai}"; do
    for name in $peer; do
        case "$name" in
            optimum) make_env optimum "optimum-onnx[onnxruntime]" accelerate safetensors ;;
            genai) make_env genai onnxruntime-genai "transformers>=5" onnx-ir onnx safetensors ;;
            *) echo "unknown peer '$name' (expected optimum or genai)" >&2; exit 2 ;;
        esac
    done
done
