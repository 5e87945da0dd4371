"""``tiedonnx run``: run a model on a .npy/.npz input and save the outputs."""

from __future__ import annotations

import argparse
import time

from ..errors import UsageError
from ..options import DEFAULT_RUN_BATCH, MEMORY_MODES, PROVIDER_CHOICES

HELP = "Run an ONNX model on X.npy/X.npz and write the outputs to Y.npy (Y.npz for several)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the .onnx file")
    parser.add_argument("-i", "--input", required=True, metavar="X.npy|X.npz",
                        help=".npy (memory-mapped, may exceed RAM) or .npz keyed by input name")
    parser.add_argument("-o", "--output", required=True, metavar="Y.npy|Y.npz",
                        help="output file; .npz is required when the model has several outputs")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_RUN_BATCH, metavar="N",
                        help=f"rows per chunk (default {DEFAULT_RUN_BATCH})")
    parser.add_argument("--provider", choices=PROVIDER_CHOICES, default="auto",
                        help="execution provider (default auto: CUDA if available, else CPU)")
    parser.add_argument("--memory", choices=MEMORY_MODES, default="fast",
                        help="fast: full optimizations; lean: one copy per tied weight")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads")
    parser.add_argument("--force", action="store_true", help="overwrite the output file")
    parser.add_argument("--allow-nonfinite", action="store_true",
                        help="run inputs containing NaN/inf instead of refusing them")
    parser.add_argument("--ray", action="store_true", help="run distributed on a Ray cluster")
    parser.add_argument("--address", default=None, metavar="ADDR",
                        help="Ray cluster address (with --ray; default: start a local one)")


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be a positive integer; received {args.batch_size}.")
    if args.address is not None and not args.ray:
        raise UsageError("--address is a Ray cluster address; pass it together with --ray.")
    if args.ray:
        return _run_ray(args)
    from ..inputs import check_inputs, load_array_file, match_archive
    from ..session import load

    output = _check_output(args.output, force=args.force)
    inputs = load_array_file(args.input)
    model = load(args.model, providers=args.provider, memory=args.memory, threads=args.threads)
    if isinstance(inputs, dict):
        inputs = match_archive(inputs, model.inputs)
    arrays, rows = check_inputs(inputs, model.inputs)
    names = [o.name for o in model.outputs]
    if len(names) > 1 and output.suffix != ".npz":
        raise UsageError(
            f"The model has {len(names)} outputs {names}; a .npy holds one. "
            f"Pass -o with a .npz name (received {args.output!r})."
        )
    start = time.perf_counter()
    shapes = _write(model, arrays, rows, output, args)
    elapsed = time.perf_counter() - start
    described = ", ".join(f"{n} {s}" for n, s in shapes.items())
    print(f"wrote {output}: {described} in {elapsed:.2f} s on {model.providers[0]} "
          f"(memory={model.memory})")
    return 0


def _check_output(path: str, *, force: bool):
    from ..atomic import check_output_path

    output = check_output_path(path, force=force)
    if output.suffix not in (".npy", ".npz"):
        raise UsageError(f"Output must end in .npy or .npz; received {path!r}.")
    return output


def _write(model, arrays, rows: int, output, args) -> dict[str, tuple]:
    """Run into the output file atomically; return output name -> shape."""
    import numpy as np

    from ..atomic import atomic_path
    from .._term import ProgressBar

    bar = ProgressBar(label="tiedonnx run ", enabled=None if rows > args.batch_size else False)
    kwargs = dict(batch_size=args.batch_size, allow_nonfinite=args.allow_nonfinite, progress=bar)
    try:
        with atomic_path(output, force=args.force) as tmp:
            if output.suffix == ".npy":
                # Probe one row for the output's shape, then stream into a
                # memory-mapped .npy so outputs larger than RAM work too.
                head = model.run({k: a[:1] for k, a in arrays.items()},
                                 allow_nonfinite=args.allow_nonfinite)
                probe = next(iter(head.values()))
                target = np.lib.format.open_memmap(tmp, mode="w+", dtype=probe.dtype,
                                                   shape=(rows, *probe.shape[1:]))
                model.run(arrays, out={model.outputs[0].name: target}, **kwargs)
                target.flush()
                shapes = {model.outputs[0].name: target.shape}
                del target
            else:
                results = model.run(arrays, **kwargs)
                with open(tmp, "wb") as fh:
                    np.savez(fh, **results)
                shapes = {n: a.shape for n, a in results.items()}
    finally:
        bar.close()
    return shapes


def _run_ray(args: argparse.Namespace) -> int:
    try:
        from ..distributed import run_ray
    except ModuleNotFoundError as exc:
        missing = "tiedonnx.runtime.distributed" if exc.name.endswith("distributed") else exc.name
        raise UsageError(
            f"Ray support is not available in this install ({missing} is missing). "
            "Install it with: pip install 'tiedonnx[ray]', or run without --ray."
        ) from exc
    report = run_ray(args.model, args.input, args.output, batch_size=args.batch_size,
                     address=args.address, force=args.force, providers=args.provider,
                     memory=args.memory, allow_nonfinite=args.allow_nonfinite)
    print(f"wrote {args.output}: {report.get('rows')} rows in {report.get('chunks')} chunks on "
          f"{report.get('workers')} Ray actor(s)")
    return 0
