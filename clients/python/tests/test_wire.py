"""The client's side of the wire contract, without a server: ids, keys, parameter encoding,
result parsing, and the PNG decoder."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone

import numpy as np
import pytest
from pngs import SIGNATURE, write_png

import kiln
from kiln import _data, _wire


def test_job_ids_follow_kilns_grammar() -> None:
    for good in ["a", "job-1", "JOB_2", "x" * 128, "x-61"]:
        assert kiln.valid_job_id(good), good
        assert _wire.check_job_id(good) == good
    for bad in ["wedge.", ".a", "a..b", "a.b", "*", ">", "a:b", "", "x" * 129, "has space", "é"]:
        assert not kiln.valid_job_id(bad), bad
        with pytest.raises(ValueError, match="invalid job id.*1 to 128 ASCII letters"):
            _wire.check_job_id(bad)
    with pytest.raises(TypeError):
        _wire.check_job_id(12)  # type: ignore[arg-type]
    # kiln's own ids are looked up, never submitted under.
    assert _wire.check_job_id("seq-7") == "seq-7"
    with pytest.raises(ValueError, match="kiln's own"):
        _wire.check_submitted_id("seq-7")
    assert _wire.check_submitted_id("sequence-7") == "sequence-7"


def test_fresh_ids_are_valid_and_distinct() -> None:
    ids = {kiln.new_job_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(kiln.valid_job_id(i) for i in ids)


def test_job_keys_match_kiln_proto() -> None:
    # The cases of kiln_proto::workers::tests, and an id starting with x-.
    assert kiln.job_key("job-1.a") == "job-1.a"
    assert kiln.job_key("a:b") == "x-613a62"
    assert kiln.job_key("x-61") == "x-" + b"x-61".hex()
    assert kiln.job_key("x-61") != "x-61"
    assert kiln.job_key("plain_id-7") == "plain_id-7"


def test_small_tensors_go_inline_large_or_non_finite_ones_are_uploaded() -> None:
    small = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert _wire.plan_tensor("a", small, None) == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert _wire.plan_tensor("a", [[1, 2]], None) == [[1, 2]]
    forced = _wire.plan_tensor("a", small, True)
    assert isinstance(forced, _wire.Upload) and forced.param == "a"
    np.testing.assert_array_equal(forced.array, small)
    big = np.zeros(_wire.INLINE_LIMIT, dtype=np.float32)
    assert isinstance(_wire.plan_tensor("b", big, None), _wire.Upload)
    # 20,000 float32 values of ~19 characters each pass 256 KiB only once written out.
    medium = np.random.default_rng(0).random(20_000).astype(np.float32)
    assert isinstance(_wire.plan_tensor("x", medium, None), _wire.Upload)
    assert isinstance(_wire.plan_tensor("x", medium[:1000], None), list)
    nan = np.array([1.0, np.nan], dtype=np.float32)
    assert isinstance(_wire.plan_tensor("x", nan, None), _wire.Upload)
    # Far past the limit by a sample, it is not written out whole to find out (100,000
    # floats took 60-90 ms, on the event loop).
    written: list[int] = []
    real_dumps = _wire.json.dumps

    def dumps(value: object, *args: object, **kwargs: object) -> str:
        written.append(len(value) if isinstance(value, list) else 0)
        return real_dumps(value, *args, **kwargs)  # type: ignore[arg-type]

    try:
        _wire.json.dumps = dumps  # type: ignore[assignment]
        many = np.random.default_rng(1).random(100_000).astype(np.float32)
        assert isinstance(_wire.plan_tensor("x", many, None), _wire.Upload)
    finally:
        _wire.json.dumps = real_dumps  # type: ignore[assignment]
    assert max(written) <= 1024, written
    # Near the limit, the values are measured whole: 12,000 floats of 21 characters fit.
    near = np.full(12_000, 0.1, dtype=np.float32)
    assert isinstance(_wire.plan_tensor("x", near, None), list)
    with pytest.raises(ValueError, match="NaN or infinite"):
        _wire.plan_tensor("x", nan, False)
    assert len(_wire.plan_tensor("b", big, False)) == _wire.INLINE_LIMIT
    with pytest.raises(TypeError, match="must hold numbers"):
        _wire.plan_tensor("a", np.array(["x"]), None)


def test_ragged_lists_and_huge_integers_are_refused_saying_so() -> None:
    with pytest.raises(TypeError, match="'a' is not a rectangular array of numbers"):
        _wire.plan_tensor("a", [[1.0, 2.0], [3.0]], None)
    with pytest.raises(TypeError, match="integers past 64 bits"):
        _wire.plan_tensor("a", [2**70, 1], None)
    with pytest.raises(TypeError, match="'a' holds complex numbers"):
        _wire.plan_tensor("a", np.array([1j, 1.0]), None)


def test_inline_bools_go_as_numbers_and_flat_params_go_flat() -> None:
    mask = np.array([[True, False], [False, True]])
    assert _wire.plan_tensor("a", mask, None) == [[1, 0], [0, 1]]
    assert _wire.plan_tensor("a", mask, False, flat=True) == [1, 0, 0, 1]
    grid = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert _wire.plan_tensor("a", grid, None, flat=True) == grid.ravel().tolist()
    assert _wire.plan_tensor("a", grid, False, flat=True) == grid.ravel().tolist()
    assert _wire.plan_tensor("a", [[1, 2], [3, 4]], None, flat=True) == [1, 2, 3, 4]
    # An upload keeps the array as it is (the worker takes a stored tensor flat itself).
    forced = _wire.plan_tensor("a", grid, True, flat=True)
    assert isinstance(forced, _wire.Upload) and forced.array.shape == (3, 4)
    # Only vector_add's a and b are taken flat; matmul's matrices stay nested.
    assert _wire.FLAT_PARAMS == {"vector_add": frozenset({"a", "b"})}
    assert kiln.Client._param("vector_add", "a", grid, None) == grid.ravel().tolist()
    assert kiln.Client._param("matmul", "a", grid, None) == grid.tolist()
    assert kiln.Client._param("conv2d", "image", grid[None], None) == grid[None].tolist()
    # Dimensions the kind does not read inline go as an object, or are refused inline.
    batch = np.zeros((2, 3, 4, 4), dtype=np.float32)
    assert isinstance(kiln.Client._param("conv2d", "image", batch, None), _wire.Upload)
    assert isinstance(kiln.Client._param("conv2d", "image", grid, None), _wire.Upload)
    # Dimensions the kind never reads are refused before anything is sent (the worker refused
    # a 1-D x once it was uploaded).
    with pytest.raises(ValueError, match=r"shape \(4,\), but is read as \[rows, features\]; "
                       r"for one row, pass x.reshape\(1, -1\)"):
        kiln.Client._param("mlp_predict", "x", grid[0], None)
    with pytest.raises(ValueError, match=r"'a' has shape \(2, 3, 4, 4\), but is read as \[m, k"):
        kiln.Client._param("matmul", "a", batch, True)
    with pytest.raises(ValueError, match=r"read as \[H, W\], \[C, H, W\] or \[B, C, H, W\]"):
        kiln.Client._param("conv2d", "image", batch[None], None)
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4, 4\), but goes inline only with 3"):
        kiln.Client._param("conv2d", "image", batch, False)
    with pytest.raises(ValueError, match="must be an array, got the single number"):
        kiln.Client._param("vector_add", "a", np.float32(2), None)


def test_a_str_names_a_stored_object_and_a_reference_param_takes_no_array() -> None:
    # A str for a tensor parameter went as a str, which the worker could not read.
    for kind, name in [("conv2d", "image"), ("matmul", "a"), ("mlp_predict", "x")]:
        assert kiln.Client._param(kind, name, "py/img.png", None) == {"object": "py/img.png"}
    assert kiln.Client._param("train_mlp", "dataset", "d.csv", None) == {"object": "d.csv"}
    # Another kind's parameter of that name is its own business.
    assert kiln.Client._param("my_kind", "image", "text", None) == "text"
    # An array for a dataset or model said "expected a string" from the worker.
    with pytest.raises(TypeError, match="dataset takes a stored object .* not ndarray"):
        kiln.Client._param("train_mlp", "dataset", np.zeros((3, 3)), None)
    with pytest.raises(TypeError, match="model takes a stored object"):
        kiln.Client._param("mlp_predict", "model", [1, 2], None)
    # No dataset: null, which trains on generated points.
    assert kiln.Client._param("train_mlp", "dataset", None, None) is None


def test_npy_bytes_are_c_order_whatever_the_arrays_layout() -> None:
    a = np.arange(12, dtype=np.float64).reshape(3, 4)
    for array in [a.T, np.asfortranarray(a), a[:, ::2], a]:
        data = _wire.npy_bytes(array)
        assert b"'fortran_order': False" in data[:128]
        loaded = np.load(io.BytesIO(data))
        assert loaded.shape == array.shape and loaded.dtype == array.dtype
        np.testing.assert_array_equal(loaded, array)
    scalar = np.load(io.BytesIO(_wire.npy_bytes(np.array(2.5))))
    assert scalar.shape == () and scalar == 2.5


def test_the_envelope_has_exactly_kilns_fields() -> None:
    body = _wire.encode_job(
        "j-1",
        {"a": [1.0], "n": np.int64(3), "m": kiln.ObjectRef("in/m", sha256="ab")},
        seed=7,
        timeout_ms=None,
        output="npy",
    )
    assert json.loads(body) == {
        "id": "j-1",
        "params": {"a": [1.0], "n": 3, "m": {"object": "in/m", "sha256": "ab"}},
        "seed": 7,
        "output": "npy",
    }
    with_timeout = json.loads(_wire.encode_job("j", {}, seed=0, timeout_ms=500, output="auto"))
    assert with_timeout["timeout_ms"] == 500
    ref = kiln.ObjectRef("model.safetensors", tensor="w")
    assert ref.to_json() == {"object": "model.safetensors", "tensor": "w"}
    info = kiln.ObjectInfo(name="d.csv", size=3, sha256="00ff")
    assert info.ref().to_json() == {"object": "d.csv", "sha256": "00ff"}


def _event(**overrides: object) -> dict[str, object]:
    event: dict[str, object] = {
        "id": "j-1",
        "kind": "vector_add",
        "status": "succeeded",
        "device": "cpu",
        "class": "cpu",
        "worker": "w",
        "attempt": 1,
        "enqueued_at": "2026-11-27T09:58:00.123456789Z",
        "started_at": "2026-11-27T09:58:00.5Z",
        "finished_at": "2026-11-27T09:58:01Z",
        "queue_ms": 1.5,
        "compute_ms": 2.0,
        "total_ms": 3.5,
        "output": {"c": [1.0, 2.0]},
    }
    event.update(overrides)
    return event


async def test_results_parse_times_outputs_and_failures() -> None:
    result = kiln.Result(_event())
    assert result.enqueued_at == datetime(2026, 11, 27, 9, 58, 0, 123456, tzinfo=timezone.utc)
    assert result.finished_at == datetime(2026, 11, 27, 9, 58, 1, tzinfo=timezone.utc)
    assert (result.device_class, result.attempt, result.total_ms) == ("cpu", 1, 3.5)
    np.testing.assert_array_equal(await result.array(), np.array([1.0, 2.0], dtype=np.float32))
    with pytest.raises(kiln.KilnError, match="no output 'image'"):
        await result.array("image")

    kinds = {
        "invalid_input": kiln.InvalidInput,
        "too_large": kiln.TooLarge,
        "out_of_memory": kiln.OutOfMemory,
        "timeout": kiln.Timeout,
        "cancelled": kiln.Cancelled,
        "internal": kiln.Internal,
    }
    for kind, cls in kinds.items():
        failed = kiln.Result(
            _event(status="failed", output={}, error={"kind": kind, "message": "why"})
        )
        with pytest.raises(cls) as caught:
            await failed.array()
        assert isinstance(caught.value, kiln.JobFailed)
        assert (caught.value.kind, caught.value.message) == (kind, "why")
        assert caught.value.result is failed


def test_a_results_job_is_told_by_kind_unknown_answers_and_submit_time() -> None:
    from datetime import timedelta

    from kiln._job import CLOCK_GRACE_S, answers, enqueued_before

    ours = kiln.Result(_event())
    assert answers("vector_add", ours) and answers(None, ours)
    assert not answers("matmul", ours)
    # A worker answers a kind it does not run under `unknown`, its message naming the kind.
    unknown = kiln.Result(
        _event(
            kind="unknown",
            status="failed",
            error={"kind": "invalid_input", "message": 'unknown job kind "matmull"; known ...'},
        )
    )
    assert answers("matmull", unknown) and answers(None, unknown)
    assert not answers("conv2dd", unknown) and not answers("matmul", unknown)
    # One that does not name it answers a job this client published since (give or take the
    # clock grace), not an earlier one.
    submitted = ours.enqueued_at
    assert submitted is not None
    assert answers("conv2dd", unknown, since=submitted + timedelta(seconds=CLOCK_GRACE_S - 1))
    assert not answers("conv2dd", unknown, since=submitted + timedelta(seconds=CLOCK_GRACE_S + 1))
    assert not enqueued_before(ours, submitted + timedelta(seconds=CLOCK_GRACE_S - 1))
    assert enqueued_before(ours, submitted + timedelta(seconds=CLOCK_GRACE_S + 1))
    assert not enqueued_before(kiln.Result(_event(enqueued_at=None)), submitted)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png_decoder_reads_every_filter(channels: int) -> None:
    rng = np.random.default_rng(channels)
    pixels = rng.integers(0, 256, size=(9, 7, channels), dtype=np.uint8)
    png = write_png(pixels, filters=(0, 1, 2, 3, 4))
    assert png.startswith(SIGNATURE)
    expected = pixels.transpose(2, 0, 1).astype(np.float32) / 255
    decoded = _data._decode_png("test.png", png)
    assert decoded.shape == (channels, 9, 7)
    np.testing.assert_array_equal(decoded, expected)
    # Through Pillow too, where it is installed.
    np.testing.assert_array_equal(_data.decode_png("test.png", png), expected)
