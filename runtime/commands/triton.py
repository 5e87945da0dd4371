"""``tiedonnx triton``: write a Triton Inference Server model repository."""

from __future__ import annotations

import argparse
import os

HELP = "write a Triton model repository (ONNX Runtime backend) for a tied .onnx file"

# Mirrors tiedonnx.runtime.triton.DEFAULT_MAX_BATCH_SIZE; a test keeps them equal
# (importing the library here would make building the parser heavier).
DEFAULT_MAX_BATCH_SIZE = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL.onnx", help="the tied ONNX file (copied unchanged)")
    parser.add_argument("repo", metavar="REPO_DIR", help="model repository folder")
    parser.add_argument("--name", default=None,
                        help="Triton model name (default: the model file's stem)")
    parser.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE, metavar="N",
                        help="largest batch the dynamic batcher forms; 0 turns batching off "
                             f"(default: {DEFAULT_MAX_BATCH_SIZE})")
    parser.add_argument("--instances", type=int, default=1, metavar="K",
                        help="model instances per device (default: 1)")
    parser.add_argument("--gpu", action="store_true",
                        help="place the instances on GPUs (KIND_GPU) instead of CPUs")
    parser.add_argument("--force", action="store_true", help="overwrite existing model files")


def run(args: argparse.Namespace) -> int:
    from tiedonnx.runtime.triton import write_model_repository

    report = write_model_repository(
        args.model, args.repo, name=args.name, max_batch_size=args.max_batch_size,
        instances=args.instances, gpu=args.gpu, force=args.force,
    )
    print(f"wrote {report['config_path']}")
    print(f"wrote {report['model_path']}")
    for role in ("inputs", "outputs"):
        for spec in report[role]:
            print(f"  {role[:-1]:6} {spec['name']}: {spec['data_type']} dims={spec['dims']}")
    print(f"  max_batch_size={report['max_batch_size']}  instances={report['instances']} "
          f"({report['kind']})")
    gpus = "--gpus=all " if args.gpu else ""
    print(f"serve: docker run --rm {gpus}-p8000:8000 -p8001:8001 -p8002:8002 "
          f"-v {os.path.abspath(report['repository'])}:/models "
          "nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models")
    return 0
