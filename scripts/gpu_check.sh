#!/usr/bin/env bash
# GPU check for tiedonnx.runtime, for a machine with an NVIDIA GPU and CUDA 12.
# Installs the GPU extra into a fresh virtual environment, runs the GPU tests
# (which must pass there, not skip) and a short CUDA benchmark.
#
#   bash scripts/gpu_check.sh            # creates .venv-gpu
#   SKIP_INSTALL=1 bash scripts/gpu_check.sh   # reuse the current python
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  python3 -m venv .venv-gpu
  . .venv-gpu/bin/activate
  python -m pip install -q --upgrade pip
  # onnxruntime and onnxruntime-gpu ship the same module: install the GPU one
  # alone, then the package without its CPU onnxruntime dependency.
  python -m pip install -q "onnxruntime-gpu>=1.20" "numpy>=1.24" "onnx>=1.21" "pytest>=8"
  python -m pip install -q --no-deps -e .
fi
python - <<'PY'
import onnxruntime as ort
print("onnxruntime", ort.__version__, "device", ort.get_device(), ort.get_available_providers())
assert "CUDAExecutionProvider" in ort.get_available_providers(), "onnxruntime-gpu not active"
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
TIEDONNX_REQUIRE_GPU=1 python -m pytest -q -m gpu -p no:cacheprovider tests/test_runtime_gpu.py
python scripts/bench_runtime.py --provider cuda --no-keras --min-time 0.2
