"""tiedonnx.runtime.load / TiedModel.run: results, input checking, providers, threads."""

from __future__ import annotations

import logging
import sys
import threading

import numpy as np
import onnxruntime as ort
import pytest

from tiedonnx.runtime import InputError, ProviderError, TiedModel, UsageError, load
from tiedonnx.runtime.providers import resolve_providers
from tests.graphs import (
    REFERENCE_ATOL, int_model, save, tied_ae, tied_reference, total_sum, two_inputs,
)


@pytest.fixture
def ae_path(tmp_path):
    return save(tied_ae(), tmp_path / "ae.onnx")


@pytest.fixture
def ae(ae_path) -> TiedModel:
    return load(ae_path, providers="cpu")


def test_load_describes_inputs_outputs_and_providers(ae):
    assert [(s.name, s.shape, s.dtype) for s in ae.inputs] == [("x", ("batch", 8), np.float32)]
    assert [(s.name, s.shape) for s in ae.outputs] == [("y", ("batch", 8))]
    assert ae.providers == ["CPUExecutionProvider"]
    assert "inputs=[x(batch, 8)]" in repr(ae)


def test_run_matches_the_numpy_reference(ae, rng):
    x = rng.random((5, 8), dtype=np.float32)
    out = ae.run(x)
    assert list(out) == ["y"] and out["y"].dtype == np.float32
    np.testing.assert_allclose(out["y"], tied_reference(x), atol=REFERENCE_ATOL)
    np.testing.assert_array_equal(ae.run({"x": x})["y"], out["y"])


def test_float64_is_cast_to_the_model_dtype(ae, rng):
    x = rng.random((3, 8))
    np.testing.assert_array_equal(ae.run(x)["y"], ae.run(x.astype(np.float32))["y"])
    assert ae.run(x.tolist())["y"].shape == (3, 8)


@pytest.mark.parametrize("inputs, match", [
    ({"pixels": np.zeros((1, 8), np.float32)}, r"Missing: \['x'\]; unexpected: \['pixels'\]"),
    (np.zeros(8, np.float32),
     r"Input 'x' expects shape \(batch, 8\) \(rank 2\); received shape \(8,\) \(rank 1\)\. Add a batch axis"),
    (np.zeros((2, 7), np.float32),
     r"Input 'x' expects shape \(batch, 8\); received shape \(2, 7\) \(axis 1 is 7, expected 8\)"),
    (np.zeros((2, 8), np.int64), r"Input 'x' expects dtype float32; received int64\. Convert it"),
    (np.zeros((0, 8), np.float32), r"Input 'x' is an empty batch \(received shape \(0, 8\)\)"),
    ("text", r"Input 'x' expects shape \(batch, 8\) \(rank 2\); received shape \(\) \(rank 0\)"),
])
def test_bad_inputs_raise_input_error_naming_input_and_shapes(ae, inputs, match):
    with pytest.raises(InputError, match=match) as info:
        ae.run(inputs)
    assert isinstance(info.value, ValueError)


def test_nonfinite_inputs_are_refused_unless_allowed(ae):
    x = np.zeros((4, 8), np.float32)
    x[2, 5] = np.nan
    with pytest.raises(InputError, match=r"'x' contains NaN or inf \(first at row 2\).*allow_nonfinite=True"):
        ae.run(x)
    x[2, 5] = np.inf
    with pytest.raises(InputError, match="first at row 6"):  # row counted across chunks
        ae.run(np.concatenate([np.zeros((4, 8), np.float32), x]), batch_size=3)
    assert np.isnan(ae.run(np.full((1, 8), np.nan, np.float32), allow_nonfinite=True)["y"]).all()


def test_several_inputs_by_name_and_their_errors(tmp_path, rng):
    model = load(save(two_inputs(), tmp_path / "two.onnx"), providers="cpu")
    a, b = rng.random((3, 4), dtype=np.float32), rng.random((3, 4), dtype=np.float32)
    out = model.run({"a": a, "b": b})
    np.testing.assert_array_equal(out["sum"], a + b)
    np.testing.assert_array_equal(out["prod"], a * b)
    with pytest.raises(InputError, match=r"takes 2 inputs \['a', 'b'\]; received one ndarray"):
        model.run(a)
    with pytest.raises(InputError, match=r"different batch sizes: \{'a': 3, 'b': 2\}"):
        model.run({"a": a, "b": b[:2]})
    with pytest.raises(InputError, match=r"'a' expects shape.*; Input 'b' expects dtype"):
        model.run({"a": a[:, :3], "b": b.astype(np.int32)})  # every problem in one message


def test_integer_inputs_are_cast_only_when_values_fit(tmp_path):
    from onnx import TensorProto

    model = load(save(int_model(TensorProto.INT32), tmp_path / "int.onnx"), providers="cpu")
    out = model.run(np.array([[1, 2, 3]], np.int64))["out"]
    assert out.dtype == np.int32 and out.tolist() == [[2, 3, 4]]
    with pytest.raises(InputError, match=r"expects int32; received int64 values from 1 to 4294967296"):
        model.run(np.array([[1, 2, 2**32]], np.int64))
    with pytest.raises(InputError, match="expects dtype int32; received float32"):
        model.run(np.zeros((1, 3), np.float32))


def test_batch_size_chunks_into_one_preallocated_output(ae, rng):
    x = rng.random((10, 8), dtype=np.float32)
    calls = []
    chunked = ae.run(x, batch_size=4, progress=lambda done, total: calls.append((done, total)))
    np.testing.assert_array_equal(chunked["y"], ae.run(x)["y"])
    assert calls == [(4, 10), (8, 10), (10, 10)]
    out = np.full((10, 8), -1.0, np.float32)
    result = ae.run(x, batch_size=3, out={"y": out})
    assert result["y"] is out
    np.testing.assert_array_equal(out, chunked["y"])


def test_memory_mapped_npy_streams_in_chunks(ae, tmp_path, rng):
    x = rng.random((50, 8))  # float64 on disk: each chunk is cast, never the whole file
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    out = ae.run(mapped, batch_size=16)["y"]
    np.testing.assert_allclose(out, tied_reference(x), atol=REFERENCE_ATOL)


def test_bad_batch_size_and_unchunkable_outputs(ae, tmp_path, rng):
    x = rng.random((4, 8), dtype=np.float32)
    for bad in (0, -1, 2.5):
        with pytest.raises(UsageError, match=f"batch_size must be a positive integer or None. Received: batch_size={bad}"):
            ae.run(x, batch_size=bad)
    with pytest.raises(UsageError, match=r"cannot be written into an array of shape \(3, 8\) and dtype float32 for 4 rows"):
        ae.run(x, out={"y": np.empty((3, 8), np.float32)})
    with pytest.raises(UsageError, match=r"dtype float32; it cannot be written into an array of shape \(4, 8\) and dtype float64"):
        ae.run(x, out={"y": np.empty((4, 8), np.float64)})
    with pytest.raises(UsageError, match="into nothing for 4 rows"):
        ae.run(x, out={})
    summed = load(save(total_sum(), tmp_path / "sum.onnx"), providers="cpu")
    assert summed.run(np.ones((4, 4), np.float32))["s"] == 16
    with pytest.raises(UsageError, match="without a leading batch axis cannot be chunked"):
        summed.run(np.ones((4, 4), np.float32), batch_size=2)


def test_load_option_errors(ae_path):
    with pytest.raises(UsageError, match=r"memory must be one of \['fast', 'lean'\]; received 'small'"):
        load(ae_path, memory="small")
    with pytest.raises(UsageError, match="threads must be a positive integer or None. Received: threads=0"):
        load(ae_path, threads=0)
    assert load(ae_path, threads=1, providers="cpu").run(np.zeros((1, 8)))["y"].shape == (1, 8)


def test_provider_names_are_normalized_in_one_place():
    available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers("auto", available=available) == (available, [])
    assert resolve_providers("auto", available=["CPUExecutionProvider"]) == (["CPUExecutionProvider"], [])
    assert resolve_providers("cuda", available=available) == (available, ["CUDAExecutionProvider"])
    assert resolve_providers(["cpu", ("cuda", {"device_id": 0})], available=available) == (
        ["CPUExecutionProvider", ("CUDAExecutionProvider", {"device_id": 0})],
        ["CPUExecutionProvider", "CUDAExecutionProvider"])
    with pytest.raises(UsageError, match=r"Unknown provider 'gpu'. Choose one of \['auto', 'cpu', 'cuda', 'tensorrt'\]"):
        resolve_providers("gpu", available=available)
    with pytest.raises(UsageError, match="name or a \\(name, options\\) pair; received 3"):
        resolve_providers([3], available=available)
    with pytest.raises(UsageError, match="empty list"):
        resolve_providers([], available=available)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="has CUDA")
def test_provider_asked_by_name_and_missing_raises(ae_path):
    with pytest.raises(ProviderError, match=r"\['CUDAExecutionProvider'\] was asked for but is not available.*onnxruntime-gpu"):
        load(ae_path, providers="cuda")
    with pytest.raises(ProviderError, match="TensorrtExecutionProvider"):
        load(ae_path, providers=["tensorrt"])


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_provider_inactive_after_session_creation_is_never_a_silent_fallback(ae_path, monkeypatch):
    # Pretend CUDA is installed: onnxruntime then creates a CPU-only session
    # (its own silent fallback), which load() must refuse.
    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real])
    if "CUDAExecutionProvider" in real:
        pytest.skip("CUDA really is available here")
    with pytest.raises(ProviderError, match=r"not active after session creation \(active: \['CPUExecutionProvider'\]\).*Refusing to fall back"):
        load(ae_path, providers="cuda")


def test_auto_logs_which_provider_runs(ae_path, caplog):
    with caplog.at_level(logging.INFO, logger="tiedonnx.runtime.session"):
        model = load(ae_path)
    assert f"running {ae_path} on {model.providers[0]}" in caplog.text


def test_io_binding_path_gives_the_same_results(ae, rng):
    # On CUDA the model runs through I/O binding; the same code binds CPU
    # buffers here, so it is exercised without a GPU.
    x = rng.random((6, 8), dtype=np.float32)
    expected = ae.run(x)["y"]
    ae._io_binding = True
    np.testing.assert_array_equal(ae.run(x, batch_size=4)["y"], expected)


def test_one_model_shared_between_threads_matches_single_threaded(tmp_path, rng):
    model = load(save(tied_ae(64, 16), tmp_path / "ae.onnx"), providers="cpu", threads=1)
    batches = [rng.random((int(rng.integers(1, 40)), 64), dtype=np.float32) for _ in range(64)]
    expected = [model.run(b)["y"] for b in batches]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(k, len(batches), 8):
                results[i] = model.run(batches[i], batch_size=16)["y"] if i % 2 else model.run(batches[i])["y"]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(results) == list(range(len(batches)))
    for i, want in enumerate(expected):
        np.testing.assert_array_equal(results[i], want)


def test_fast_path_skips_the_full_check_only_when_nothing_needs_doing(ae, rng, monkeypatch):
    import tiedonnx.runtime.session as session

    x = rng.random((4, 8), dtype=np.float32)
    expected = ae.run(x)["y"]
    calls = []
    real = session.check_inputs
    monkeypatch.setattr(session, "check_inputs", lambda *a: calls.append(1) or real(*a))
    np.testing.assert_array_equal(ae.run(x)["y"], expected)
    assert calls == []  # float32, C-contiguous, right shape: fast path
    np.testing.assert_array_equal(ae.run(np.asfortranarray(x))["y"], expected)
    np.testing.assert_array_equal(ae.run(x.astype(np.float64))["y"], expected)
    assert len(calls) == 2  # a copy or a cast: full path
    with pytest.raises(InputError, match="NaN or inf"):
        ae.run(np.full((1, 8), np.inf, np.float32))


@pytest.mark.filterwarnings("error")  # and without RuntimeWarnings
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("rows", [2, 10_000])  # the small (vdot) and the large (sum) path
def test_all_finite_survives_overflowing_sums(dtype, rows):
    from tiedonnx.runtime.inputs import all_finite

    big = np.full((rows, 8), np.finfo(dtype).max, dtype)  # sums past the max, yet all finite
    assert all_finite(big) and all_finite(big[:, :3])  # contiguous and strided
    big[1, 3] = np.nan
    assert not all_finite(big)
    big[1, 3] = -np.inf
    assert not all_finite(big)
    big[0, 0] = np.inf  # inf and -inf: a NaN sum
    assert not all_finite(big) and not all_finite(big[:, :1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_rss_grows_with_touched_memory_and_is_none_for_a_gone_process():
    from tiedonnx.runtime.rss import rss_bytes

    before = rss_bytes()
    block = np.ones(64 * 2**20, np.uint8)  # 64 MiB, every page touched
    assert rss_bytes() - before >= 48 * 2**20
    del block
    assert rss_bytes(2**22 + 12345) is None  # above Linux's default pid_max (4194304)
