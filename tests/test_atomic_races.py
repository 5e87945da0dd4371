"""Racing writers without --force: exactly one wins (issue 13, case 14).

A check-then-rename publish lets two writers both see "no file" and both
rename; ``atomic_path`` publishes with ``os.link`` of the finished temporary
file, which fails if anything exists at the target. Writers run in separate
processes released together by a barrier, one fresh target per round.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tiedonnx.runtime.testing import tied_autoencoder

REPO = Path(__file__).resolve().parents[1]
WRITERS = 4
ROUNDS = 60


def _writer(folder: str, me: int, barrier, results, no_hard_links: bool) -> None:
    """One writer process: in every round, try to create ``t<round>`` with its own bytes."""
    import errno

    from tiedonnx.runtime import atomic
    from tiedonnx.runtime.errors import OutputExistsError

    if no_hard_links:  # a file system without hard links: the O_EXCL fallback publishes
        def refuse(*args, **kwargs):
            raise OSError(errno.EPERM, "Operation not permitted")
        atomic.os.link = refuse
    wins = []
    for round_ in range(ROUNDS):
        barrier.wait()
        try:
            atomic.write_bytes_atomic(Path(folder) / f"t{round_}", f"writer {me}\n".encode() * 1000)
        except OutputExistsError:
            continue
        wins.append(round_)
    results.put((me, wins))


@pytest.mark.parametrize("no_hard_links", [False, True], ids=["link", "no_hard_links"])
def test_exactly_one_writer_wins(no_hard_links, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(WRITERS), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), me, barrier, results, no_hard_links))
             for me in range(WRITERS)]
    for proc in procs:
        proc.start()
    wins = dict(results.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    for round_ in range(ROUNDS):
        winners = [me for me, won in wins.items() if round_ in won]
        assert len(winners) == 1, f"round {round_}: writers {winners} all reported success"
        content = (tmp_path / f"t{round_}").read_bytes()
        assert content == f"writer {winners[0]}\n".encode() * 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"t{r}" for r in range(ROUNDS))


def test_racing_cli_runs(tmp_path):
    """The same race through ``tiedonnx run -o`` in separate processes."""
    model = tmp_path / "m.onnx"
    model.write_bytes(tied_autoencoder(64, 16).SerializeToString())
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((2000, 64), dtype=np.float32))
    for round_ in range(3):
        out = tmp_path / f"y{round_}.npy"
        procs = [subprocess.Popen([sys.executable, "-m", "tiedonnx.runtime.cli", "run", str(model),
                                   "-i", str(tmp_path / "x.npy"), "-o", str(out), "--batch-size", "100"],
                                  cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(3)]
        outcomes = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
        codes = sorted(code for code, _ in outcomes)
        assert codes == [0, 2, 2], outcomes
        for code, err in outcomes:
            if code == 2:
                assert len(err.splitlines()) == 1, err
                assert "already exists" in err or "appeared while writing" in err, err
        assert np.load(out).shape == (2000, 64)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers
