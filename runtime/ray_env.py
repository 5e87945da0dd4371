"""Ray plumbing for :mod:`tiedonnx.runtime.distributed`: import, session, pool size, quiet logs."""

from __future__ import annotations

import contextlib
import logging
import os
import re

from .errors import UsageError
from .extras import RAY
from .native_logs import GLOG_PREFIX, filtered_stderr

logger = logging.getLogger(__name__)

GPU_PROVIDERS = ("cuda", "tensorrt")


def import_ray():
    """Ray, with Ray Data (:data:`~tiedonnx.runtime.extras.RAY`), or one MissingExtraError line."""
    return RAY.load("Scoring on Ray (run --ray)")


@contextlib.contextmanager
def ray_session(ray, *, address: str | None, num_workers: int | None):
    """Use this process's Ray connection, or open one for the call and close it after."""
    if ray.is_initialized():
        if address is not None:
            logger.warning("Ray is already initialized in this process; using it, not %s", address)
        yield ray.get_runtime_context().gcs_address
        return
    options = {"address": address, "include_dashboard": False, "log_to_driver": False,
               "logging_level": logging.WARNING}
    if address is None and num_workers:
        # A local instance: room for every actor asked for.
        options["num_cpus"] = max(os.cpu_count() or 1, num_workers)
    try:
        with filtered_stderr(_is_ray_noise):  # Ray's C++ start-up lines, kept behind -v
            ray.init(**options)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise UsageError(f"Could not start or reach Ray at address={address!r} ({exc}). "
                         "Check the address (ray status on the head node), or omit it to "
                         "run on a local Ray instance.") from exc
    try:
        with filtered_stderr(_is_ray_noise):
            yield ray.get_runtime_context().gcs_address
    finally:
        with filtered_stderr(_is_ray_noise):
            ray.shutdown()


def _is_ray_noise(line: str) -> bool:
    """Ray's own native and start-up log lines (``[...] core_worker.cc``, ``(raylet)``...)."""
    return bool(GLOG_PREFIX.match(line) or _RAY_INFO.match(line)) or line.lstrip().startswith(
        ("(raylet)", "(pid=", "(_"))


# Ray's Python-side start-up lines: "2026-11-27 13:00:00,123	INFO worker.py:1843 -- ...".
_RAY_INFO = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(?:INFO|DEBUG|WARNING)\s")


def pool_size(ray, providers: str, num_workers: int | None) -> int:
    """Actors to start: ``num_workers``, or one per CPU (GPU) of the cluster."""
    resources = ray.cluster_resources()
    key = "GPU" if providers in GPU_PROVIDERS else "CPU"
    have = int(resources.get(key, 0))
    if num_workers is not None:
        if num_workers > have:
            logger.warning("%d actors asked for but the Ray cluster has %d %s now; the pool "
                           "waits until the cluster has room for all of them", num_workers,
                           have, key)
        return num_workers
    if have < 1:
        raise UsageError(f"The Ray cluster has no {key} to run actors on "
                         f"(resources: {resources}). Pass providers='cpu' or add nodes.")
    return have


# Ray Data settings for one run, restored after. Progress bars: a library does
# not write to the terminal. raise_original_map_exception: without it Ray Data
# wraps the actor's _ChunkError in its own UserCodeException, which reaches the
# driver as text only, and the caller could not catch InputError.
_DATA_CONTEXT = {"enable_progress_bars": False, "print_on_execution_start": False,
                 "raise_original_map_exception": True}


@contextlib.contextmanager
def data_context(ray):
    """Apply :data:`_DATA_CONTEXT` to the current Ray Data context, then restore it."""
    ctx = ray.data.DataContext.get_current()
    saved = {key: getattr(ctx, key) for key in _DATA_CONTEXT}
    for key, value in _DATA_CONTEXT.items():
        setattr(ctx, key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(ctx, key, value)
