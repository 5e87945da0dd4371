"""``tiedonnx triton``: write a Triton Inference Server model repository."""

from __future__ import annotations

import argparse
import os

# Import-light (no numpy/onnx): the defaults and choices come from the library.
from ..options import MEMORY_MODES
from ..triton import BACKENDS, DEFAULT_MAX_BATCH_SIZE, DEFAULT_SERVING_MEMORY, SERVER_ENV
from . import _flags

#: The NGC container release printed in the serve command: Triton 24.10 ships server 2.51, the
#: version tests/test_triton_server.py runs (docs/deploy-triton.md). A variable overrides it.
TRITON_TAG = "24.10"
TRITON_SERVER = "2.51"

HELP = "Write a Triton model repository (ONNX Runtime or Python backend) for a tied .onnx file."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL.onnx", help="the tied ONNX file (copied unchanged)")
    parser.add_argument("repo", metavar="REPO_DIR", help="model repository folder")
    parser.add_argument("--name", default=None,
                        help="Triton model name (default: the model file's stem)")
    parser.add_argument("--backend", choices=BACKENDS, default=BACKENDS[0],
                        help="onnxruntime: Triton's ONNX Runtime backend runs the file; python: "
                             "Triton's Python backend serves it with tiedonnx.runtime.load "
                             f"(default: {BACKENDS[0]})")
    parser.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE, metavar="N",
                        help="largest batch the dynamic batcher forms; 0 turns batching off "
                             f"(default: {DEFAULT_MAX_BATCH_SIZE})")
    parser.add_argument("--instances", type=int, default=1, metavar="K",
                        help="model instances per device (default: 1)")
    parser.add_argument("--gpu", action="store_true",
                        help="place the instances on GPUs (KIND_GPU) instead of CPUs")
    parser.add_argument("--python-env", default=None, metavar="DIR",
                        help="--backend python: the Python environment Triton's stub runs in "
                             "(EXECUTION_ENV_PATH): a folder with bin/activate or a conda-pack "
                             f".tar.gz; '{SERVER_ENV}': the server's own Python "
                             "(default: this environment)")
    parser.add_argument("--memory", choices=MEMORY_MODES, default=None,
                        help="--backend python: tiedonnx.runtime.load memory mode "
                             f"(default: {DEFAULT_SERVING_MEMORY})")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="--backend python: onnxruntime threads per instance "
                             "(default: onnxruntime's choice)")
    _flags.add_force(parser)
    _flags.add_json(parser)


def run(args: argparse.Namespace) -> int:
    from ._preflight import refuse_keras_for_onnx

    refuse_keras_for_onnx(args.model, command="triton")  # before the heavier imports
    from ..triton import write_model_repository

    report = write_model_repository(
        args.model, args.repo, name=args.name, backend=args.backend,
        max_batch_size=args.max_batch_size, instances=args.instances, gpu=args.gpu,
        python_env=args.python_env, memory=args.memory, threads=args.threads, force=args.force,
    )
    lines = [f"wrote {path}" for path in report.files]
    for role, specs in (("input", report.inputs), ("output", report.outputs)):
        lines += [f"  {role:6} {t.name}: {t.data_type} dims={list(t.dims)}" for t in specs]
    lines.append(f"  backend={report.backend}  max_batch_size={report.max_batch_size}  "
                 f"instances={report.instances} ({report.kind})")
    repo = os.path.abspath(report.repository)
    if report.backend == "python":
        env = report.execution_env or "the server's own Python"
        lines += [f"  memory={report.memory}  python environment: {env}",
                  f"serve: tritonserver --model-repository={repo} (its Python backend stub "
                  f"must run Python {report.python_version or 'of that environment'})"]
    else:
        gpus = "--gpus=all " if args.gpu else ""
        lines.append(f"serve: docker run --rm {gpus}-p8000:8000 -p8001:8001 -p8002:8002 "
                     f"-v {repo}:/models nvcr.io/nvidia/tritonserver:${{TRITON_TAG:-{TRITON_TAG}}}-py3 "
                     "tritonserver --model-repository=/models")
        lines.append(f"  ({TRITON_TAG}: the release of the Triton server {TRITON_SERVER} this "
                     "project's tests run; set TRITON_TAG to pick another)")
    _flags.emit(report.as_dict(), as_json=args.json, lines=lines)
    return 0
