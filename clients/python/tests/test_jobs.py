"""The client against a real nats-server, kiln worker (CPU) and aggregator (conftest.py)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import subprocess
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import nats.js.errors
import numpy as np
import pytest
from conftest import Stack
from pngs import SIGNATURE, write_png

import kiln

RESULT_TIMEOUT = 60.0


def correlate_same(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Each channel of `image` [C, H, W] cross-correlated with `kernel` (odd, square), zero
    padding, same size: what kiln's conv2d computes."""
    k = kernel.shape[0]
    r = k // 2
    c, h, w = image.shape
    padded = np.zeros((c, h + 2 * r, w + 2 * r), dtype=np.float64)
    padded[:, r : r + h, r : r + w] = image
    out = np.zeros((c, h, w), dtype=np.float64)
    for i in range(k):
        for j in range(k):
            out += kernel[i, j] * padded[:, i : i + h, j : j + w]
    return out


SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)


async def test_vector_add_with_inline_arrays_returns_their_sum(client: kiln.Client) -> None:
    a = np.arange(10, dtype=np.float32) * 0.5
    b = np.linspace(-1, 1, 10, dtype=np.float32)
    job = await client.submit("vector_add", "cpu", a=a, b=b)
    result = await job.result(timeout=RESULT_TIMEOUT)
    assert (result.id, result.kind, result.status) == (job.id, "vector_add", "succeeded")
    assert (result.device, result.device_class, result.worker) == ("cpu", "cpu", "pytest-cpu")
    assert result.object is None, "10 values come back inline"
    assert isinstance(result.output["c"], list)
    np.testing.assert_array_equal(await result.array(), a + b)
    assert result.total_ms >= result.compute_ms >= 0
    assert result.finished_at is not None and result.enqueued_at is not None
    assert result.finished_at >= result.enqueued_at
    assert not job.duplicate
    assert await job.status() == "succeeded"
    assert await client.status(job.id) == "succeeded"


async def stored_input(client: kiln.Client, job_id: str, param: str) -> bytes:
    """The bytes the client uploaded for `param` of job `job_id`
    (`inputs/<id>/<submission>/<param>`)."""
    bucket = await client._bucket()
    names = [
        info.name
        for info in await bucket.list()
        if info.name.startswith(f"inputs/{job_id}/") and info.name.endswith(f"/{param}")
    ]
    assert len(names) == 1, names
    return await client.get(names[0])


async def test_matmul_of_uploaded_matrices_matches_numpy(client: kiln.Client) -> None:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((300, 200)).astype(np.float32)
    b = rng.standard_normal((200, 100)).astype(np.float32)
    job = await client.submit("matmul", "cpu", a=a, b=b, upload=True)
    # Both inputs went to KILN_DATA as .npy files under the job's id.
    stored = np.load(io.BytesIO(await stored_input(client, job.id, "a")))
    np.testing.assert_array_equal(stored, a)
    result = await job.result(timeout=RESULT_TIMEOUT)
    assert result.object is not None and result.object["format"] == "npy"
    assert result.object["shape"] == [300, 100]
    c = await result.array()
    assert c.shape == (300, 100)
    np.testing.assert_allclose(c, a @ b, rtol=1e-4, atol=1e-4)


async def test_the_readme_matmul_example_holds_for_float32_and_float64_inputs(
    client: kiln.Client,
) -> None:
    # README.md's example: a.npy (300x200) and b.npy (200x100) saved with numpy, the product
    # checked with allclose. kiln computes in float32; entries near 0 carry the rounding of
    # 200-term sums, which numpy's own float32 product has as well.
    rng = np.random.default_rng(11)
    for dtype in (np.float64, np.float32):
        a = rng.standard_normal((300, 200)).astype(dtype)
        b = rng.standard_normal((200, 100)).astype(dtype)
        job = await client.submit("matmul", "cpu", a=a, b=b)
        c = await (await job.result(timeout=RESULT_TIMEOUT)).array()
        assert c.shape == (300, 100) and c.dtype == np.float32
        assert np.allclose(c, a @ b, rtol=1e-4, atol=1e-3), np.abs(c - a @ b).max()


async def test_fortran_order_and_transposed_arrays_upload_in_c_order(
    client: kiln.Client,
) -> None:
    rng = np.random.default_rng(7)
    # a.T is 200x300 in Fortran order; its JSON passes 256 KiB, so it goes as an object.
    a = rng.standard_normal((300, 200)).astype(np.float32)
    b = rng.standard_normal((300, 100)).astype(np.float32)
    job = await client.submit("matmul", "cpu", a=a.T, b=b)
    stored = np.load(io.BytesIO(await stored_input(client, job.id, "a")))
    assert stored.shape == (200, 300) and stored.flags.c_contiguous
    np.testing.assert_array_equal(stored, a.T)
    c = await (await job.result(timeout=RESULT_TIMEOUT)).array()
    np.testing.assert_allclose(c, a.T @ b, rtol=1e-4, atol=1e-4)

    small = np.asfortranarray(rng.standard_normal((6, 4)))
    right = rng.standard_normal((4, 3))
    job = await client.submit("matmul", "cpu", a=small, b=right, upload=True)
    c = await (await job.result(timeout=RESULT_TIMEOUT)).array()
    np.testing.assert_allclose(c, small @ right, rtol=1e-4, atol=1e-4)
    # put stores one in C order too.
    name = f"test/{kiln.new_job_id()}.npy"
    info = await client.put(name, small)
    job = await client.submit("matmul", "cpu", a=info, b=right)
    c = await (await job.result(timeout=RESULT_TIMEOUT)).array()
    np.testing.assert_allclose(c, small @ right, rtol=1e-4, atol=1e-4)


async def test_inline_bool_arrays_are_sent_as_numbers(client: kiln.Client) -> None:
    a = np.eye(3) > 0
    b = np.array([[True, True, False], [False, True, True], [True, False, True]])
    job = await client.submit("matmul", "cpu", a=a, b=b)
    result = await job.result(timeout=RESULT_TIMEOUT)
    assert result.object is None, "9 values go and come back inline"
    np.testing.assert_array_equal(await result.array(), a.astype(np.float32) @ b)
    u = np.array([True, False, True, False])
    v = np.array([True, True, False, False])
    for upload in (None, False):
        job = await client.submit("vector_add", "cpu", a=u, b=v, upload=upload)
        c = await (await job.result(timeout=RESULT_TIMEOUT)).array()
        np.testing.assert_array_equal(c, u.astype(np.float32) + v.astype(np.float32))


async def test_vector_add_takes_inline_arrays_of_any_shape_flat(client: kiln.Client) -> None:
    rng = np.random.default_rng(8)
    a = rng.random((3, 4), dtype=np.float32)
    b = rng.random((3, 4), dtype=np.float32)
    for upload in (None, False, True):
        job = await client.submit("vector_add", "cpu", a=a, b=b, upload=upload)
        c = await (await job.result(timeout=RESULT_TIMEOUT)).array()
        np.testing.assert_array_equal(c.ravel(), (a + b).ravel())
    nested = [[[1.0, 2.0], [3.0, 4.0]]]
    job = await client.submit("vector_add", "cpu", a=nested, b=nested)
    c = await (await job.result(timeout=RESULT_TIMEOUT)).array()
    np.testing.assert_array_equal(c, [2.0, 4.0, 6.0, 8.0])


async def test_a_large_vector_add_output_comes_back_as_an_object(client: kiln.Client) -> None:
    rng = np.random.default_rng(2)
    a = rng.random(5000, dtype=np.float32)
    b = rng.random(5000, dtype=np.float32)
    result = await (await client.submit("vector_add", a=a, b=b)).result(timeout=RESULT_TIMEOUT)
    assert "c" not in result.output, "5,000 values are over the worker's inline limit of 4,096"
    assert result.object is not None
    assert (result.object["bucket"], result.object["format"]) == ("KILN_DATA", "npy")
    assert result.object["shape"] == [5000]
    c = await result.array()
    np.testing.assert_array_equal(c, a + b)
    assert len(await result.object_bytes()) == result.object["size"]


async def test_conv2d_of_an_npy_image_matches_a_numpy_sobel(client: kiln.Client) -> None:
    image = np.random.default_rng(3).random((3, 24, 40), dtype=np.float32)
    job = await client.submit("conv2d", "cpu", image=image, filter="sobel", upload=True)
    result = await job.result(timeout=RESULT_TIMEOUT)
    out = await result.array()
    assert out.shape == (3, 24, 40)
    gx = correlate_same(image, SOBEL_X)
    gy = correlate_same(image, SOBEL_X.T)
    np.testing.assert_allclose(out, np.sqrt(gx**2 + gy**2), rtol=1e-4, atol=1e-5)


async def test_conv2d_of_a_batch_array_filters_each_image(client: kiln.Client) -> None:
    # A [B, C, H, W] array goes inline with no dimensions the kind reads there: it is sent as
    # an object without being asked to.
    batch = np.random.default_rng(6).random((2, 3, 12, 10), dtype=np.float32)
    job = await client.submit("conv2d", "cpu", image=batch, filter="sobel")
    out = await (await job.result(timeout=RESULT_TIMEOUT)).array()
    assert out.shape == (2, 3, 12, 10)
    for image, filtered in zip(batch, out):
        gx = correlate_same(image, SOBEL_X)
        gy = correlate_same(image, SOBEL_X.T)
        np.testing.assert_allclose(filtered, np.sqrt(gx**2 + gy**2), rtol=1e-4, atol=1e-5)


async def test_conv2d_of_a_png_returns_a_png_of_the_filtered_image(client: kiln.Client) -> None:
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    name = f"images/{kiln.new_job_id()}.png"
    await client.put(name, write_png(pixels, filters=(0, 1, 2, 3, 4)))
    job = await client.submit(
        "conv2d", "cpu", image=kiln.ObjectRef(name), filter="box", output="png"
    )
    result = await job.result(timeout=RESULT_TIMEOUT)
    assert result.object is not None and result.object["format"] == "png"
    png = await result.object_bytes()
    assert png.startswith(SIGNATURE)
    decoded = await result.array()
    assert decoded.shape == (3, 20, 30)
    expected = correlate_same(pixels.transpose(2, 0, 1) / 255.0, np.full((3, 3), 1 / 9))
    # The PNG holds each value rounded to 8 bits.
    np.testing.assert_allclose(decoded, np.clip(expected, 0, 1), atol=0.5 / 255 + 1e-6)


def blobs(rng: np.random.Generator, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    centres = np.array([[0.0, 0.0], [6.0, 0.0], [3.0, 5.0]])
    x = np.concatenate([c + 0.6 * rng.standard_normal((per_class, 2)) for c in centres])
    y = np.repeat(np.arange(3), per_class)
    return x, y


async def test_train_mlp_on_a_csv_then_mlp_predict_classifies_new_points(
    client: kiln.Client,
) -> None:
    rng = np.random.default_rng(5)
    x, y = blobs(rng, 100)
    rows = "\n".join(f"{a:.5f},{b:.5f},{label}" for (a, b), label in zip(x, y))
    dataset = await client.put(
        f"datasets/{kiln.new_job_id()}.csv", f"x1,x2,label\n{rows}\n".encode()
    )
    job = await client.submit(
        "train_mlp", "cpu", dataset=dataset, epochs=40, hidden=[16], validation_split=0.2
    )
    trained = await job.result(timeout=RESULT_TIMEOUT)
    out = trained.output
    assert out["samples"] == 300 and out["validation_samples"] == 60
    assert out["final_accuracy"] >= 0.95, out["epochs"][-1]
    assert out["final_val_accuracy"] >= 0.95, out["epochs"][-1]
    assert len(out["epochs"]) == 40
    assert trained.object is not None and trained.object["format"] == "safetensors"
    model = await trained.model()
    with pytest.raises(kiln.KilnError, match=r"holds several tensors.*\.model\(\)"):
        await trained.array()
    assert model["layers.0.weight"].shape == (2, 16)
    assert model["layers.1.weight"].shape == (16, 3)
    assert model["input.mean"].shape == (2,)
    np.testing.assert_allclose(model["input.mean"], x.mean(axis=0), atol=0.5)
    metadata = await trained.model_metadata()
    assert (metadata["format"], metadata["classes"]) == ("kiln-mlp", "3")

    points = np.array([[0.2, -0.1], [5.8, 0.3], [3.1, 4.7], [-0.3, 0.4], [6.2, -0.2], [2.8, 5.3]])
    predict = await client.submit("mlp_predict", "cpu", model=trained, x=points)
    predicted = await predict.result(timeout=RESULT_TIMEOUT)
    np.testing.assert_array_equal(await predicted.array("classes"), [0, 1, 2, 0, 1, 2])
    probabilities = await predicted.array()
    assert probabilities.shape == (6, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)

    # Past the 4,096 values kept inline the probabilities are stored; the classes asked for
    # are still the classes (the row-wise argmax), never the probabilities in their place.
    many = np.tile(points, (700, 1))
    predict = await client.submit("mlp_predict", "cpu", model=trained, x=many, upload=True)
    predicted = await predict.result(timeout=RESULT_TIMEOUT)
    assert "classes" not in predicted.output and predicted.object is not None
    classes = await predicted.array("classes")
    assert classes.dtype == np.int64 and classes.shape == (4200,)
    np.testing.assert_array_equal(classes, np.tile([0, 1, 2, 0, 1, 2], 700))
    assert (await predicted.array("probabilities")).shape == (4200, 3)
    with pytest.raises(kiln.KilnError, match="stored its output 'probabilities', not 'c'"):
        await predicted.array("c")


async def test_a_missing_object_fails_with_invalid_input_naming_it(client: kiln.Client) -> None:
    missing = kiln.ObjectRef(f"missing/{kiln.new_job_id()}.npy")
    job = await client.submit("vector_add", "cpu", a=missing, b=missing)
    with pytest.raises(kiln.InvalidInput) as caught:
        await job.result(timeout=RESULT_TIMEOUT)
    failure = caught.value
    assert failure.kind == "invalid_input"
    assert missing.name in failure.message
    assert failure.result.status == "failed" and failure.result.id == job.id
    # Without raising, the failed result itself; its arrays raise the same.
    result = await job.result(timeout=RESULT_TIMEOUT, raise_on_failure=False)
    assert result.error is not None and result.error.kind == "invalid_input"
    with pytest.raises(kiln.InvalidInput):
        await result.array()
    assert await job.status() == "failed"


async def test_put_of_a_path_that_is_no_file_says_how_to_store_text(
    client: kiln.Client,
) -> None:
    with pytest.raises(FileNotFoundError, match=r"no such file; to store text itself, pass bytes"):
        await client.put("notes", "x,y\n1,0\n")


async def test_a_local_path_as_a_parameter_says_to_put_it_first(client: kiln.Client) -> None:
    with pytest.raises(TypeError, match=r"a=PosixPath\('a.npy'\): a job names a stored object"):
        await client.submit("vector_add", "cpu", a=Path("a.npy"), b=[1.0])


async def test_errors_about_an_object_put_from_a_file_name_the_file(
    client: kiln.Client, tmp_path: Path
) -> None:
    path = tmp_path / "waves.npy"
    np.save(path, np.array([1 + 2j, 3 + 4j], dtype=np.complex64))
    name = f"waves/{kiln.new_job_id()}"
    await client.put(name, path)
    ref = kiln.ObjectRef(name)
    job = await client.submit("vector_add", "cpu", a=ref, b=ref)
    with pytest.raises(kiln.InvalidInput) as caught:
        await job.result(timeout=RESULT_TIMEOUT)
    assert f"object {name} (file waves.npy) has dtype \"<c8\"" in caught.value.message


async def test_objects_lists_what_a_prefix_names_with_sizes_and_digests(
    client: kiln.Client,
) -> None:
    prefix = f"listed/{kiln.new_job_id()}/"
    assert await client.objects(prefix) == []
    b = await client.put(prefix + "b.npy", np.arange(3, dtype=np.float32))
    a = await client.put(prefix + "a.bin", b"hello")
    await client.put(prefix + "gone", b"x")
    await client.delete(prefix + "gone")
    listed = await client.objects(prefix)
    assert listed == [a, b]
    assert listed[0].sha256 == hashlib.sha256(b"hello").hexdigest()
    assert listed[1].size > 12  # the .npy header and three float32s
    assert all(o.name.startswith(prefix) for o in listed)
    everything = [o.name for o in await client.objects()]
    assert prefix + "a.bin" in everything and prefix + "gone" not in everything
    # Entries another client wrote that do not parse are left out, and end no listing early
    # nor make it wait (nats-py's own list() waits for ever when the newest one is such).
    js = client._js
    name = base64.urlsafe_b64encode((prefix + "z-bad").encode()).decode()
    await js.publish(f"$O.KILN_DATA.M.{name}", b"not json")
    assert await asyncio.wait_for(client.objects(prefix), 20) == [a, b]


def _entry_subject(name: str) -> str:
    return "$O.KILN_DATA.M." + base64.urlsafe_b64encode(name.encode()).decode()


async def _link(client: kiln.Client, name: str, to: dict[str, Any]) -> None:
    """An entry for `name` that links to `to`, as another client may write one."""
    entry = {"name": name, "bucket": "KILN_DATA", "nuid": "", "size": 0, "chunks": 0}
    entry["options"] = {"link": to}
    await client._js.publish(_entry_subject(name), json.dumps(entry).encode())


async def test_get_reads_big_objects_whole_and_checks_them(client: kiln.Client) -> None:
    name = f"get/{kiln.new_job_id()}.bin"
    data = np.random.default_rng(5).bytes(3 * 128 * 1024 + 17)  # several chunks
    await client.put(name, data)
    assert await client.get(name) == data
    # A link to it, as the nats CLI makes one, is followed once.
    await _link(client, name + ".link", {"bucket": "KILN_DATA", "name": name})
    assert await client.get(name + ".link") == data


async def test_get_of_an_object_whose_chunks_are_gone_fails_at_once(
    client: kiln.Client,
) -> None:
    name = f"get/{kiln.new_job_id()}.bin"
    await client.put(name, b"x" * 300_000)
    js = client._js
    entry = json.loads((await js.get_last_msg("OBJ_KILN_DATA", _entry_subject(name))).data)
    await js.purge_stream("OBJ_KILN_DATA", subject=f"$O.KILN_DATA.C.{entry['nuid']}")
    # nats-py's own reader waited for the chunks for ever.
    with pytest.raises(kiln.ObjectCorrupt, match="none of its 3 chunks is stored"):
        await asyncio.wait_for(client.get(name), 10)


async def test_get_follows_one_link_within_the_bucket_and_names_what_is_wrong(
    client: kiln.Client,
) -> None:
    target = f"get/{kiln.new_job_id()}.bin"
    await client.put(target, b"hello")
    one, two, loop, out, gone = (f"{target}.{n}" for n in ("one", "two", "loop", "out", "gone"))
    await _link(client, one, {"bucket": "KILN_DATA", "name": target})
    await _link(client, two, {"bucket": "KILN_DATA", "name": one})
    await _link(client, loop, {"bucket": "KILN_DATA", "name": loop})
    await _link(client, out, {"bucket": "OTHER"})
    await _link(client, gone, {"bucket": "KILN_DATA", "name": target + ".missing"})
    assert await client.get(one) == b"hello"
    for name in (two, loop):
        # A link to itself overflowed nats-py's reader's stack (RecursionError).
        with pytest.raises(kiln.ObjectCorrupt, match="kiln follows one link"):
            await asyncio.wait_for(client.get(name), 10)
    with pytest.raises(kiln.ObjectCorrupt, match="a link to the whole bucket 'OTHER', not to an object"):
        await client.get(out)
    with pytest.raises(kiln.ObjectNotFound, match=r"is a link to .*\.missing', which is not"):
        await client.get(gone)
    # An entry that does not parse is named so, not "no object".
    await client._js.publish(_entry_subject(target + ".bad"), b'{"size": -5}')
    with pytest.raises(kiln.ObjectCorrupt, match="does not parse"):
        await client.get(target + ".bad")
    # And removed, as `kiln rm` removes it (nats-py's BadObjectMetaError escaped).
    await client.delete(target + ".bad")
    with pytest.raises(kiln.ObjectNotFound):
        await client.get(target + ".bad")
    for options in ('"x"', '{"link": "abc"}'):
        bad = f'{{"nuid": "n1", "size": 1, "chunks": 1, "options": {options}}}'
        await client._js.publish(_entry_subject(target + ".opt"), bad.encode())
        with pytest.raises(kiln.ObjectCorrupt, match="does not parse"):
            await client.get(target + ".opt")
    # A digest that does not match the bytes.
    entry = json.loads(
        (await client._js.get_last_msg("OBJ_KILN_DATA", _entry_subject(target))).data
    )
    other = hashlib.sha256(b"other").digest()
    entry["digest"] = "SHA-256=" + base64.urlsafe_b64encode(other).decode()
    await client._js.publish(_entry_subject(target), json.dumps(entry).encode())
    with pytest.raises(kiln.ObjectCorrupt, match="do not match its stored SHA-256"):
        await client.get(target)


async def test_an_object_the_client_deleted_is_not_found_by_jobs(client: kiln.Client) -> None:
    name = f"gone/{kiln.new_job_id()}.npy"
    await client.put(name, np.arange(3, dtype=np.float32))
    await client.delete(name)
    with pytest.raises(kiln.ObjectNotFound):
        await client.get(name)
    with pytest.raises(kiln.ObjectNotFound):
        await client.delete(name)
    # A name no object can have is refused alike by get and delete (get asked the server).
    for bad in ["", "x" * 1025, None]:
        for call in (client.get, client.delete):
            with pytest.raises(ValueError, match="an object name is 1 to 1024 bytes"):
                await call(bad)  # type: ignore[arg-type]
    # nats-py marks the object deleted in a form async-nats does not parse ("mtime": ""): the
    # worker says not found, as for an object deleted by kiln rm or the nats CLI.
    ref = kiln.ObjectRef(name)
    job = await client.submit("vector_add", "cpu", a=ref, b=ref)
    with pytest.raises(kiln.InvalidInput) as caught:
        await job.result(timeout=RESULT_TIMEOUT)
    assert f'object "{name}" not found in KILN_DATA' in caught.value.message


async def test_a_bad_job_id_is_refused_before_anything_is_published(
    client: kiln.Client,
) -> None:
    jobs_stream = await client.nats.jetstream().stream_info("KILN_JOBS")
    for bad in ["has space", "a.b", "", "x" * 129, "*", "wild>"]:
        with pytest.raises(ValueError, match="invalid job id"):
            await client.submit("vector_add", "cpu", id=bad, len=4)
    with pytest.raises(ValueError, match="invalid job id"):
        await client.submit_many(
            [{"kind": "vector_add", "len": 4}, {"kind": "vector_add", "id": "a b"}]
        )
    with pytest.raises(ValueError, match="unknown device class"):
        await client.submit("vector_add", "tpu", len=4)
    # A seed of 1.7 ran as seed 1; one past u64 was sent, and refused by the worker.
    for seed in (1.7, "3", True):
        with pytest.raises(TypeError, match="seed must be a whole number"):
            await client.submit("vector_add", "cpu", len=4, seed=seed)
    for seed in (-1, 2**64):
        with pytest.raises(ValueError, match="seed must be from 0 to 2"):
            await client.submit("vector_add", "cpu", len=4, seed=seed)
    with pytest.raises(TypeError, match="timeout_ms must be a whole number"):
        await client.submit("vector_add", "cpu", len=4, timeout_ms=2.5)
    after = await client.nats.jetstream().stream_info("KILN_JOBS")
    assert after.state.last_seq == jobs_stream.state.last_seq


async def test_cancel_marks_a_queued_job_in_kiln_cancel(client: kiln.Client) -> None:
    # No GPU worker runs here, so a gpu job stays queued.
    job = await client.submit("vector_add", "gpu", len=4)
    with pytest.raises(kiln.ResultTimeout) as caught:
        await job.result(timeout=0.5)
    assert isinstance(caught.value, asyncio.TimeoutError)
    assert await job.status() == "queued"
    assert await job.cancel() is True
    kv = await client.nats.jetstream().key_value("KILN_CANCEL")
    mark = json.loads((await kv.get(job.id)).value or b"")
    assert mark["id"] == job.id and mark["requested_at"]
    assert await job.status() == "cancel_requested"
    # An id starting with x- is stored under its hex key, as kiln_proto::job_key does.
    other = await client.submit("vector_add", "gpu", id=f"x-{kiln.new_job_id()}", len=4)
    assert await other.cancel() is True
    entry = await kv.get(kiln.job_key(other.id))
    assert kiln.job_key(other.id) == "x-" + other.id.encode().hex()
    assert json.loads(entry.value or b"")["id"] == other.id


async def test_a_replayed_job_is_queued_again_not_its_failed_run(
    client: kiln.Client, kiln_stack: Stack
) -> None:
    # A gpu job given up by its last worker: its failed result and its dead letter, as a
    # worker writes them (no GPU worker runs here, so the replay stays queued).
    job_id = kiln.new_job_id()
    js = client.nats.jetstream()
    now = "2026-12-04T00:00:00Z"
    failed = {
        "id": job_id, "kind": "vector_add", "status": "failed", "device": "cuda:0",
        "class": "gpu", "worker": "gone", "attempt": 5, "enqueued_at": now,
        "started_at": now, "finished_at": now, "queue_ms": 0.0, "compute_ms": 0.0,
        "total_ms": 0.0, "output": {}, "flops": 0.0,
        "error": {"kind": "internal", "message": "kernel panicked: boom"},
    }
    await js.publish(f"results.vector_add.{job_id}", json.dumps(failed).encode())
    letter = await js.publish(
        "dlq.vector_add",
        json.dumps({"id": job_id, "params": {"len": 4}}).encode(),
        headers={
            "Nats-Msg-Id": f"dlq-{job_id}",
            "Kiln-Dlq-Reason": "internal: kernel panicked: boom",
            "Kiln-Dlq-Subject": "jobs.gpu.vector_add",
            "Kiln-Job-Id": job_id,
        },
    )
    assert await client.status(job_id) == "failed"
    replay = await asyncio.create_subprocess_exec(
        kiln_stack.kiln, "--nats-url", kiln_stack.url, "dlq", "replay", str(letter.seq),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await replay.communicate()
    assert replay.returncode == 0, out.decode()
    assert await client.status(job_id) == "queued"
    # And it can be cancelled: the mark is for the replay, not refused as finished.
    assert await client.cancel(job_id) is True
    assert await client.status(job_id) == "cancel_requested"


async def test_cancel_of_a_finished_job_marks_nothing(client: kiln.Client) -> None:
    job = await client.submit("vector_add", "cpu", len=8)
    await job.result(timeout=RESULT_TIMEOUT)
    assert await job.cancel() is False
    assert await client.cancel(job.id) is False
    kv = await client.nats.jetstream().key_value("KILN_CANCEL")
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await kv.get(job.id)


async def test_a_cancel_before_the_job_is_sent_does_not_cancel_it(client: kiln.Client) -> None:
    job_id = kiln.new_job_id()
    # Marked, in case a job without a record waits in the queue.
    assert await client.cancel(job_id) is True
    assert await client.status(job_id) == "cancel_requested"
    # Past the second of slack for clocks: a job sent now is a later one.
    await asyncio.sleep(1.5)
    job = await client.submit("vector_add", "cpu", id=job_id, a=[1.0], b=[2.0])
    assert await client.status(job_id) in ("queued", "running", "succeeded")
    result = await job.result(timeout=RESULT_TIMEOUT)
    np.testing.assert_array_equal(await result.array(), [3.0])
    assert await client.status(job_id) == "succeeded"


async def test_submit_many_answers_all_200_jobs(client: kiln.Client) -> None:
    rng = np.random.default_rng(6)
    inputs = [
        (rng.random(8, dtype=np.float32), rng.random(8, dtype=np.float32)) for _ in range(200)
    ]
    jobs = await client.submit_many({"kind": "vector_add", "a": a, "b": b} for a, b in inputs)
    assert len(jobs) == 200 and len({j.id for j in jobs}) == 200
    results = await asyncio.gather(*(j.result(timeout=RESULT_TIMEOUT) for j in jobs))
    for (a, b), job, result in zip(inputs, jobs, results):
        assert result.id == job.id
        np.testing.assert_array_equal(await result.array(), a + b)


async def test_a_resubmitted_id_gets_the_stored_result(client: kiln.Client) -> None:
    job_id = kiln.new_job_id()
    first = await (await client.submit("vector_add", id=job_id, a=[1.0, 2.0], b=[3.0, 4.0])).result(
        timeout=RESULT_TIMEOUT
    )
    again = await client.submit("vector_add", id=job_id, a=[1.0, 2.0], b=[3.0, 4.0])
    assert again.duplicate
    second = await again.result(timeout=5.0)
    assert (second.id, second.finished_at, second.worker) == (
        first.id,
        first.finished_at,
        first.worker,
    )
    # A handle on the id from another client finds it too, kind known or not.
    async with kiln.connect(client.nats.connected_url.geturl()) as other:
        found = await (await other.job(job_id)).result(timeout=5.0)
        np.testing.assert_array_equal(await found.array(), [4.0, 6.0])
        assert (await other.result(job_id, "matmul")) is None


async def test_an_id_used_again_for_another_kind_is_refused(client: kiln.Client) -> None:
    job_id = kiln.new_job_id()
    await (await client.submit("vector_add", id=job_id, a=[1.0], b=[2.0])).result(
        timeout=RESULT_TIMEOUT
    )
    # The id is the message id: the server drops the matmul, which would never be answered.
    with pytest.raises(kiln.SubmitError, match="submitted as a vector_add job") as caught:
        await client.submit("matmul", id=job_id, a=[[1.0]], b=[[2.0]])
    assert list(caught.value.refused) == [job_id]
    assert "submit it under another id" in caught.value.refused[job_id]


async def test_an_id_used_again_with_other_parameters_is_refused(client: kiln.Client) -> None:
    job_id = kiln.new_job_id()
    first = await client.submit("vector_add", id=job_id, a=[1.0, 2.0, 3.0], b=[1.0, 1.0, 1.0])
    np.testing.assert_array_equal(
        await (await first.result(timeout=RESULT_TIMEOUT)).array(), [2.0, 3.0, 4.0]
    )
    # Other inputs under the id were answered with the first job's sum, as succeeded.
    with pytest.raises(kiln.SubmitError, match="used for a job with other parameters") as caught:
        await client.submit("vector_add", id=job_id, a=[10.0, 20.0, 30.0], b=[5.0, 5.0, 5.0])
    assert list(caught.value.refused) == [job_id]
    # So is another seed or output mode; the same job again (arrays or lists) is the same.
    with pytest.raises(kiln.SubmitError, match="other parameters"):
        await client.submit(
            "vector_add", id=job_id, a=[1.0, 2.0, 3.0], b=[1.0, 1.0, 1.0], output="object"
        )
    again = await client.submit(
        "vector_add",
        id=job_id,
        a=np.array([1.0, 2.0, 3.0], dtype=np.float32),
        b=[1, 1, 1],
    )
    assert again.duplicate
    np.testing.assert_array_equal(
        await (await again.result(timeout=5.0)).array(), [2.0, 3.0, 4.0]
    )


async def test_concurrent_submits_of_one_id_with_other_inputs_are_refused(
    client: kiln.Client,
) -> None:
    job_id = kiln.new_job_id()

    async def submit(c: kiln.Client, value: float) -> kiln.Job:
        return await c.submit(
            "vector_add", id=job_id, a=np.full(3, value, np.float32), b=np.zeros(3, np.float32)
        )

    # All but one were answered with that one's sum, as duplicates, without a word.
    outcomes = await asyncio.gather(
        *(submit(client, float(i)) for i in range(6)), return_exceptions=True
    )
    jobs = [o for o in outcomes if isinstance(o, kiln.Job)]
    refused = [o for o in outcomes if isinstance(o, kiln.SubmitError)]
    assert len(jobs) == 1 and len(refused) == 5, outcomes
    assert all("other parameters" in str(e) for e in refused), refused
    (kept,) = jobs
    value = float((await (await kept.result(timeout=RESULT_TIMEOUT)).array())[0])
    # The same job again is a resubmission; the kept one's own inputs give its own sum.
    assert (await submit(client, value)).duplicate

    # Two clients at once: the one whose job the server dropped says so.
    other_id = kiln.new_job_id()
    async with kiln.connect(client.nats.connected_url.geturl()) as other:
        outcomes = await asyncio.gather(
            *(
                c.submit("vector_add", id=other_id, a=[v], b=[0.0])
                for c, v in ((client, 1.0), (other, 2.0))
            ),
            return_exceptions=True,
        )
    jobs = [o for o in outcomes if isinstance(o, kiln.Job)]
    refused = [o for o in outcomes if isinstance(o, kiln.SubmitError)]
    assert len(jobs) == 1 and len(refused) == 1, outcomes
    assert "at the same time for a job with other parameters" in str(refused[0])


async def test_an_id_kiln_submit_used_is_refused(
    client: kiln.Client, kiln_stack: Stack
) -> None:
    job_id = kiln.new_job_id()
    submit = await asyncio.create_subprocess_exec(
        kiln_stack.kiln, "--nats-url", kiln_stack.url, "submit", "vector_add", "--id", job_id,
        "-p", "a=[1,2,3]", "-p", "b=[1,1,1]", "--wait",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await submit.communicate()
    assert submit.returncode == 0, out.decode()
    # Other inputs under the id came back with the CLI job's sum, as a duplicate.
    with pytest.raises(kiln.SubmitError, match="by `kiln submit`, whose record"):
        await client.submit("vector_add", id=job_id, a=[10.0, 20.0, 30.0], b=[0.0, 0.0, 0.0])


async def test_a_batch_with_an_id_used_for_another_job_sends_the_others(
    client: kiln.Client,
) -> None:
    job_id = kiln.new_job_id()
    await (await client.submit("vector_add", id=job_id, a=[1.0], b=[2.0])).result(
        timeout=RESULT_TIMEOUT
    )
    specs = [{"kind": "vector_add", "a": [float(i)], "b": [1.0]} for i in range(5)]
    specs.insert(2, {"kind": "vector_add", "id": job_id, "a": [9.0], "b": [9.0]})
    with pytest.raises(kiln.SubmitError, match="used for a job with other parameters") as caught:
        await client.submit_many(specs)
    assert list(caught.value.refused) == [job_id]
    # The five others were sent, in order, and are answered.
    jobs = caught.value.jobs
    assert len(jobs) == 5 and job_id not in [j.id for j in jobs]
    for i, job in enumerate(jobs):
        result = await job.result(timeout=RESULT_TIMEOUT)
        np.testing.assert_array_equal(await result.array(), [i + 1.0])


async def test_the_same_values_written_otherwise_are_the_same_job(client: kiln.Client) -> None:
    job_id = kiln.new_job_id()
    a = np.array([0.1, 0.2, 0.3], dtype=np.float32)
    first = await client.submit("vector_add", id=job_id, a=a, b=a)
    await first.result(timeout=RESULT_TIMEOUT)
    # float32 values as float64 lists (0.10000000149011612…), and uploaded, not inline.
    for again in [
        await client.submit("vector_add", id=job_id, a=a.tolist(), b=a.astype(np.float64)),
        await client.submit("vector_add", id=job_id, a=a, b=a, upload=True),
    ]:
        assert again.duplicate
        np.testing.assert_array_equal(await (await again.result(timeout=5.0)).array(), a + a)


async def test_an_id_answered_before_is_not_sent_again_and_keeps_its_first_answer(
    client: kiln.Client,
) -> None:
    job_id = kiln.new_job_id()
    js = client.nats.jetstream()
    # The first job under the id goes without a Nats-Msg-Id, as if sent longer ago than the
    # server's 10-minute duplicate window: the server would not drop a second as a duplicate.
    handle = await client.job(job_id, "vector_add")
    body = {"id": job_id, "params": {"a": [1.0, 1.0], "b": [1.0, 1.0]}}
    await js.publish("jobs.cpu.vector_add", json.dumps(body).encode())
    first = await handle.result(timeout=RESULT_TIMEOUT)
    assert not handle.duplicate
    np.testing.assert_array_equal(await first.array(), [2.0, 2.0])
    stored_jobs = (await js.stream_info("KILN_JOBS")).state.last_seq

    # The id keeps its first answer: the job is not sent (it would run, and its result would
    # be refused), and says that its result is the earlier job's.
    again = await client.submit("vector_add", "cpu", id=job_id, a=[5.0, 5.0], b=[5.0, 5.0])
    assert again.duplicate and again.sequence is None and again.done()
    result = await again.result(timeout=5.0)
    np.testing.assert_array_equal(await result.array(), [2.0, 2.0])
    assert (result.id, result.enqueued_at) == (job_id, first.enqueued_at)
    assert await again.status() == "succeeded"
    jobs = await client.submit_many(
        [
            {"kind": "vector_add", "id": job_id, "a": [7.0], "b": [7.0]},
            {"kind": "vector_add", "a": [1.0], "b": [2.0]},
        ]
    )
    assert [j.duplicate for j in jobs] == [True, False]
    np.testing.assert_array_equal(await (await jobs[0].result(timeout=5.0)).array(), [2.0, 2.0])
    np.testing.assert_array_equal(
        await (await jobs[1].result(timeout=RESULT_TIMEOUT)).array(), [3.0]
    )
    # Only the fresh job was sent.
    assert (await js.stream_info("KILN_JOBS")).state.last_seq == stored_jobs + 1
    # The same id as another kind is another job, answered on its own.
    # (The first had no Nats-Msg-Id: the server drops none as its duplicate.)
    other = await client.submit("matmul", "cpu", id=job_id, a=[[2.0]], b=[[3.0]])
    assert not other.duplicate
    product = await (await other.result(timeout=RESULT_TIMEOUT)).array()
    np.testing.assert_array_equal(product, [[6.0]])


async def test_an_answer_that_is_an_earlier_jobs_marks_the_job_a_duplicate(
    client: kiln.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kiln")
    # No GPU worker runs here: the job stays queued, unanswered.
    job_id = kiln.new_job_id()
    job = await client.submit("vector_add", "gpu", id=job_id, a=[5.0, 5.0], b=[5.0, 5.0])
    assert not job.duplicate and job.sequence is not None
    # Meanwhile an earlier job under the same id, submitted an hour ago (before the server's
    # duplicate window), is answered: its answer is the one the id keeps, and this job's
    # result, when it runs, will be refused.
    hour_ago = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    earlier = {
        "id": job_id, "kind": "vector_add", "status": "succeeded", "device": "cpu",
        "class": "cpu", "worker": "elsewhere", "attempt": 1, "enqueued_at": hour_ago,
        "started_at": hour_ago, "finished_at": hour_ago, "queue_ms": 0.1, "compute_ms": 0.1,
        "total_ms": 0.2, "flops": 2.0, "output": {"len": 2, "c": [2.0, 2.0]},
    }
    await client.nats.jetstream().publish(
        f"results.vector_add.{job_id}", json.dumps(earlier).encode()
    )
    result = await job.result(timeout=RESULT_TIMEOUT)
    assert job.duplicate
    assert (result.worker, result.enqueued_at) == ("elsewhere", datetime.fromisoformat(hour_ago))
    np.testing.assert_array_equal(await result.array(), [2.0, 2.0])
    assert f"job {job_id} (vector_add): the answer kept for this id is an earlier job's" in (
        caplog.text
    )
    # A handle that submitted nothing takes the stored answer as the id's, as it is.
    async with kiln.connect(client.nats.connected_url.geturl()) as other:
        handle = await other.job(job_id, "vector_add")
        assert (await handle.result(timeout=5.0)).worker == "elsewhere"
        assert not handle.duplicate


async def test_a_kind_no_worker_runs_is_answered_invalid_input_on_results_unknown(
    client: kiln.Client,
) -> None:
    job = await client.submit("matmull", "cpu", n=3)
    # Its status comes from results.unknown.<id>, where the worker answers it.
    state = await job.status()
    for _ in range(300):
        if state not in ("pending", "queued"):
            break
        await asyncio.sleep(0.1)
        state = await job.status()
    assert state == "failed"
    with pytest.raises(kiln.InvalidInput) as caught:
        await job.result(timeout=RESULT_TIMEOUT)
    failure = caught.value
    assert failure.kind == "invalid_input"
    assert failure.message.startswith('unknown job kind "matmull"'), failure.message
    assert (failure.result.id, failure.result.kind, failure.result.status) == (
        job.id,
        "unknown",
        "failed",
    )
    assert not job.duplicate
    assert await client.status(job.id, kind="matmull") == "failed"
    stored = await client.result(job.id, "matmull")
    assert stored is not None and stored.error is not None
    assert stored.error.message == failure.message
    # Another client's handle finds it under the kind asked for, not under another one.
    async with kiln.connect(client.nats.connected_url.geturl()) as other:
        with pytest.raises(kiln.InvalidInput, match='unknown job kind "matmull"'):
            await (await other.job(job.id, "matmull")).result(timeout=5.0)
        assert await other.result(job.id, "conv2dd") is None
        assert await other.result(job.id, "vector_add") is None

    # Waited for straight away too: the answer comes while the job waits, not by timing out.
    waited = await client.submit("no_such_kind", "cpu", id=f"odd-{kiln.new_job_id()}")
    with pytest.raises(kiln.InvalidInput, match='unknown job kind "no_such_kind"'):
        await waited.result(timeout=RESULT_TIMEOUT)
    assert await waited.status() == "failed"


async def test_a_kind_no_worker_runs_is_answered_in_a_batch_past_a_thousand_jobs(
    client: kiln.Client,
) -> None:
    specs: list[dict[str, object]] = [{"kind": "vector_add", "len": 2} for _ in range(1000)]
    specs.insert(500, {"kind": "matmull", "n": 3})
    jobs = await client.submit_many(specs)
    results = await asyncio.gather(
        *(j.result(timeout=RESULT_TIMEOUT, raise_on_failure=False) for j in jobs)
    )
    odd = results.pop(500)
    assert (odd.id, odd.kind, odd.status) == (jobs[500].id, "unknown", "failed")
    assert odd.error is not None and odd.error.kind == "invalid_input"
    assert 'unknown job kind "matmull"' in odd.error.message
    assert {r.status for r in results} == {"succeeded"}
    await asyncio.sleep(0.1)
    assert client._by_kind == {} and client._watching == {}


async def test_a_single_number_for_a_tensor_parameter_is_refused_before_anything_is_sent(
    client: kiln.Client,
) -> None:
    js = client.nats.jetstream()
    stored_jobs = (await js.stream_info("KILN_JOBS")).state.last_seq
    with pytest.raises(ValueError, match="parameter 'a' must be an array, got the single number"):
        await client.submit("vector_add", "cpu", a=1.0, b=2.0)
    refused: list[tuple[str, dict[str, object]]] = [
        ("vector_add", {"a": [1.0, 2.0], "b": 3}),
        ("vector_add", {"a": np.float32(1.0), "b": [1.0]}),
        ("matmul", {"a": 2, "b": [[1.0]]}),
        ("conv2d", {"image": 0.5, "filter": "box"}),
        ("mlp_predict", {"model": "models/m.safetensors", "x": 1.0}),
    ]
    for kind, params in refused:
        with pytest.raises(ValueError, match="must be an array, got the single number"):
            await client.submit(kind, "cpu", **params)
    # Which spec of the batch, named.
    with pytest.raises(ValueError, match=r"^spec 1 \(matmul\): .*must be an array"):
        await client.submit_many([{"kind": "vector_add", "len": 4}, {"kind": "matmul", "a": 1}])
    # A parameter given twice, beside 'kind' and under 'params': one was dropped unseen.
    with pytest.raises(ValueError, match=r"^spec 0 \(vector_add\): 'a' given both beside"):
        await client.submit_many(
            [{"kind": "vector_add", "a": [1.0], "b": [2.0], "params": {"a": [5.0]}}]
        )
    assert (await js.stream_info("KILN_JOBS")).state.last_seq == stored_jobs
    # A kind kiln does not run may take a number by such a name: the client sends it, and
    # this worker, which does not know the kind, answers.
    job = await client.submit("my_kind", "cpu", a=1.0)
    with pytest.raises(kiln.InvalidInput, match='unknown job kind "my_kind"'):
        await job.result(timeout=RESULT_TIMEOUT)


async def test_a_dtype_only_gpus_compute_is_refused_for_the_cpu_before_anything_is_sent(
    client: kiln.Client,
) -> None:
    js = client.nats.jetstream()
    stored_jobs = (await js.stream_info("KILN_JOBS")).state.last_seq
    for kind, params in [
        ("matmul", {"n": 8, "dtype": "bf16"}),
        ("matmul", {"a": [[1.0]], "b": [[2.0]], "dtype": "tf32"}),
        ("conv2d", {"height": 8, "width": 8, "dtype": "f16"}),
    ]:
        with pytest.raises(ValueError, match="runs on GPU workers only") as caught:
            await client.submit(kind, **params)  # device "cpu", the default
        assert 'device="gpu" or device="auto"' in str(caught.value)
        assert f"{kind} with dtype {params['dtype']!r}" in str(caught.value)
    with pytest.raises(ValueError, match=r"^spec 1 \(conv2d\): conv2d with dtype 'bf16'"):
        await client.submit_many(
            [{"kind": "vector_add", "len": 4}, {"kind": "conv2d", "dtype": "bf16"}]
        )
    assert (await js.stream_info("KILN_JOBS")).state.last_seq == stored_jobs
    # f32 runs on the CPU; the GPU and auto classes take every dtype (no GPU worker here:
    # the jobs wait, and are removed).
    done = await client.submit("matmul", n=4, dtype="f32")
    assert (await done.result(timeout=RESULT_TIMEOUT)).status == "succeeded"
    for device in ("gpu", "auto"):
        job = await client.submit("matmul", device, n=4, dtype="bf16")
        assert job.sequence is not None
        await js.delete_msg("KILN_JOBS", job.sequence)


async def test_put_and_get_round_trip_and_a_missing_object_raises(client: kiln.Client) -> None:
    array = np.arange(12, dtype=np.int32).reshape(3, 4)
    name = f"test/{kiln.new_job_id()}.npy"
    info = await client.put(name, array)
    assert info.ref().to_json() == {"object": name, "sha256": info.sha256}
    np.testing.assert_array_equal(np.load(io.BytesIO(await client.get(name))), array)
    big = bytes(range(256)) * 2000  # several object-store chunks
    await client.put("test/big.bin", big)
    assert await client.get("test/big.bin") == big
    with pytest.raises(kiln.ObjectNotFound, match="no object 'test/nothing'"):
        await client.get("test/nothing")
    # A name the server would close the connection over is refused before it is sent.
    with pytest.raises(ValueError, match="at most 1024 bytes"):
        await client.put("x" * 4000, big)
    assert await client.get("test/big.bin") == big


async def test_a_job_over_max_payload_raises_submit_error(client: kiln.Client) -> None:
    a = np.ones(300_000, dtype=np.float32)
    with pytest.raises(kiln.SubmitError, match="max_payload") as caught:
        await client.submit("vector_add", "cpu", a=a, b=a, upload=False)
    assert "leave upload=False out" in str(caught.value)


async def test_submitting_where_kiln_has_no_streams_raises_submit_error(bare_nats: str) -> None:
    async with kiln.connect(bare_nats) as bare:
        with pytest.raises(kiln.SubmitError, match="kiln init") as caught:
            await bare.submit("vector_add", "cpu", len=4, id="nowhere-1")
        assert list(caught.value.refused) == ["nowhere-1"]


async def test_a_full_queue_is_refused_at_once_with_the_servers_reason(bare_nats: str) -> None:
    from conftest import kiln_binary

    init = [kiln_binary(), "--nats-url", bare_nats, "init", "--max-queued-jobs", "3"]
    subprocess.run(init, check=True, capture_output=True, timeout=60)
    async with kiln.connect(bare_nats) as c:
        # No GPU worker runs: the jobs stay queued, and the fourth finds the queue full.
        specs = [{"kind": "vector_add", "len": 4, "id": f"full-{i}"} for i in range(4)]
        with pytest.raises(kiln.SubmitError, match="maximum messages exceeded") as caught:
            await c.submit_many(specs, device="gpu")
        assert [job.id for job in caught.value.jobs] == ["full-0", "full-1", "full-2"]
        assert list(caught.value.refused) == ["full-3"]
        assert "KILN_JOBS stream is full" in caught.value.refused["full-3"]
        with pytest.raises(kiln.SubmitError, match="the server refused job full-4"):
            await c.submit("vector_add", "gpu", len=4, id="full-4")


async def test_connecting_to_nothing_raises_connect_error() -> None:
    from conftest import free_port

    with pytest.raises(kiln.ConnectError, match="could not reach NATS at nats://127.0.0.1"):
        await kiln.connect(f"nats://127.0.0.1:{free_port()}", connect_timeout=0.5)
    # Credentials in the URL are never shown (they were, in full), as the CLI shows none.
    with pytest.raises(kiln.ConnectError) as caught:
        await kiln.connect(f"nats://alice:s3cretpw@127.0.0.1:{free_port()}", connect_timeout=0.5)
    assert "s3cretpw" not in str(caught.value) and "alice" not in str(caught.value)
    assert "could not reach NATS at nats://***@127.0.0.1:" in str(caught.value)


async def test_connect_reads_nats_url_from_the_environment(
    kiln_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NATS_URL", kiln_stack.url)
    async with kiln.connect() as client:
        assert client.nats.connected_url is not None
        assert client.nats.connected_url.port == int(kiln_stack.url.rsplit(":", 1)[1])


async def test_submit_many_past_a_thousand_jobs_shares_one_subscription(
    client: kiln.Client,
) -> None:
    jobs = await client.submit_many(
        {"kind": "vector_add", "len": 2, "seed": i % 10} for i in range(1001)
    )
    results = await asyncio.gather(*(j.result(timeout=RESULT_TIMEOUT) for j in jobs))
    assert [r.id for r in results] == [j.id for j in jobs]
    assert {r.status for r in results} == {"succeeded"}
    # Generated inputs: a summary, the same for the same seed, another for another.
    summaries = [r.output["summary"]["checksum"] for r in results]
    assert summaries[5] == summaries[15] != summaries[6]
    # Every job answered, the kind's one subscription is gone.
    await asyncio.sleep(0.1)
    assert client._by_kind == {} and client._watching == {}


async def test_a_job_cancelled_once_sent_is_answered_cancelled(client: kiln.Client) -> None:
    # Marked after it was sent, whether a worker holds it yet or not: cancelled where it is
    # (a mark put before a job is sent is for an earlier job under the id: see
    # test_a_cancel_before_the_job_is_sent_does_not_cancel_it; a job marked before any
    # worker takes it is the Rust tests' a_job_cancelled_before_any_worker_started_…).
    job = await client.submit(
        "train_mlp", "cpu", samples=20_000, hidden=[256, 256], epochs=10_000, batch_size=64
    )
    assert await client.cancel(job.id) is True
    with pytest.raises(kiln.Cancelled) as caught:
        await job.result(timeout=RESULT_TIMEOUT)
    assert caught.value.kind == "cancelled"
    assert caught.value.result.status == "failed"
    assert await job.status() == "failed"


async def test_outputs_stored_as_safetensors_read_back(client: kiln.Client) -> None:
    a = np.arange(6, dtype=np.float32)
    job = await client.submit("vector_add", a=a, b=a, output="safetensors")
    result = await job.result(timeout=RESULT_TIMEOUT)
    assert result.object is not None and result.object["format"] == "safetensors"
    np.testing.assert_array_equal(await result.array(), 2 * a)
    np.testing.assert_array_equal(await result.array("c"), 2 * a)


async def test_a_running_job_is_seen_running_and_stops_when_cancelled(
    client: kiln.Client,
) -> None:
    # Far more training than the test waits for: it only ends by being cancelled.
    job = await client.submit(
        "train_mlp", "cpu", samples=20_000, hidden=[256, 256], epochs=10_000, batch_size=64
    )
    state = await job.status()
    for _ in range(300):  # the worker's heartbeat lists its jobs every 2 s
        if state == "running":
            break
        assert state in ("pending", "queued"), state
        await asyncio.sleep(0.1)
        state = await job.status()
    assert state == "running"
    assert await job.cancel() is True
    with pytest.raises(kiln.Cancelled) as caught:
        await job.result(timeout=RESULT_TIMEOUT)
    assert caught.value.result.worker == "pytest-cpu"
    assert await job.status() == "failed"


async def test_inputs_stored_for_a_job_the_server_drops_are_removed(client: kiln.Client) -> None:
    # No GPU worker runs here: the first job stays queued, holding its inputs.
    job_id = kiln.new_job_id()
    a = np.arange(8, dtype=np.float32)
    first = await client.submit("vector_add", "gpu", id=job_id, a=a, b=a, upload=True)
    assert not first.duplicate
    # The same job again inside the duplicate window: the server drops it, and the inputs
    # stored for it are removed (the kept job reads its own).
    again = await client.submit("vector_add", "gpu", id=job_id, a=a, b=a, upload=True)
    assert again.duplicate

    bucket = await client._bucket()
    names = sorted(
        info.name
        for info in await bucket.list(ignore_deletes=True)
        if info.name.startswith(f"inputs/{job_id}/")
    )
    assert len(names) == 2, names
    assert len({name.rsplit("/", 2)[1] for name in names}) == 1, names


async def test_submit_many_of_nothing_submits_nothing(client: kiln.Client) -> None:
    # It raised RuntimeError (a StopIteration out of a coroutine).
    assert await client.submit_many([]) == []


async def test_a_queued_job_purged_from_the_stream_is_gone(client: kiln.Client) -> None:
    # No GPU worker runs here: the job stays queued until the stream is purged.
    job = await client.submit("vector_add", "gpu", len=4)
    assert await job.status() == "queued"
    await client.nats.jetstream().purge_stream("KILN_JOBS", subject="jobs.gpu.>")
    # It said "queued" for ever; `kiln status` says gone.
    assert await job.status() == "gone"
    assert await client.status(job.id) == "gone"


async def test_a_deleted_job_is_gone_while_others_of_its_kind_wait(client: kiln.Client) -> None:
    # No GPU worker runs here: both stay queued, the kept one hid that the other was gone.
    kept = await client.submit("vector_add", "gpu", len=4)
    deleted = await client.submit("vector_add", "gpu", len=4)
    assert deleted.sequence is not None
    await client.nats.jetstream().delete_msg("KILN_JOBS", deleted.sequence)
    assert await deleted.status() == "gone"
    assert await kept.status() == "queued"


async def test_a_wait_without_timeout_ends_when_the_job_is_gone(
    client: kiln.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kiln._job, "GONE_CHECK_S", 0.2)
    job = await client.submit("vector_add", "gpu", len=4)
    waiting = asyncio.ensure_future(job.result(timeout=None))
    await asyncio.sleep(0.5)
    assert not waiting.done()  # queued: it waits on
    await client.nats.jetstream().purge_stream("KILN_JOBS", subject="jobs.gpu.>")
    # It waited for ever: nothing will answer a purged job.
    with pytest.raises(kiln.JobGone, match=f"job {job.id} \\(vector_add\\) will not be"):
        await asyncio.wait_for(waiting, 10)
    # Within a deadline too, past the first ask.
    with pytest.raises(kiln.JobGone):
        await job.result(timeout=5)


async def _chunk_subjects(client: kiln.Client) -> set[str]:
    """The subjects of KILN_DATA's chunks: one per object stored or being stored."""
    js = client.nats.jetstream()
    info = await js.stream_info("OBJ_KILN_DATA", subjects_filter="$O.KILN_DATA.C.>")
    return set((info.state.subjects or {}).keys())


async def _cancel_once(
    client: kiln.Client, task: asyncio.Future[Any], ready: Callable[[], Awaitable[bool]]
) -> None:
    """Cancel `task` once `ready()` says so, and see it cancelled."""
    deadline = asyncio.get_running_loop().time() + RESULT_TIMEOUT
    while not await ready():
        assert not task.done(), f"it finished before it could be cancelled: {task}"
        assert asyncio.get_running_loop().time() < deadline, "never ready"
        await asyncio.sleep(0.002)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def _names(client: kiln.Client, prefix: str) -> list[str]:
    """The objects in KILN_DATA whose names start with `prefix`."""
    bucket = await client._bucket()
    try:
        infos = await bucket.list(ignore_deletes=True)
    except nats.js.errors.NotFoundError:  # an empty bucket
        return []
    return sorted(info.name for info in infos if info.name.startswith(prefix))


async def test_a_cancelled_put_leaves_nothing_in_the_store(client: kiln.Client) -> None:
    # nats-py purges the chunks of a put that fails, not of one cancelled (Ctrl-C under
    # asyncio.run): they stayed, under no object's name, counting against the store's size.
    before = await _chunk_subjects(client)
    name = f"test/{kiln.new_job_id()}.bin"
    put = asyncio.ensure_future(client.put(name, bytes(128 * 1024 * 1024)))

    async def chunks_arrived() -> bool:
        return bool(await _chunk_subjects(client) - before)

    await _cancel_once(client, put, chunks_arrived)
    assert await _chunk_subjects(client) == before
    with pytest.raises(kiln.ObjectNotFound):
        await client.get(name)


async def test_a_cancelled_submission_removes_the_inputs_it_stored(
    client: kiln.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = await _chunk_subjects(client)
    job_id = kiln.new_job_id()
    # Stored as objects, a then b. The submission is cancelled once a is stored whole and b's
    # put has begun; b's put is held there, so that no loaded machine finishes the submission
    # first (with b merely larger, one in ten runs of the suite sent the job before the
    # cancel). The store itself is real: a is stored, and must be removed.
    put = client.put
    b_begun = asyncio.Event()

    async def held_at_b(name: str, data: Any) -> Any:
        if name.endswith("/b"):
            b_begun.set()
            await asyncio.Event().wait()  # until cancelled
        return await put(name, data)

    monkeypatch.setattr(client, "put", held_at_b)
    a = np.ones((2048, 4096), dtype=np.float32)
    b = np.ones((4096, 64), dtype=np.float32)
    submit = asyncio.ensure_future(
        client.submit("matmul", "gpu", id=job_id, a=a, b=b, upload=True)
    )

    async def b_begun_after_a() -> bool:
        if not b_begun.is_set():
            return False
        assert [n.rsplit("/", 1)[1] for n in await _names(client, f"inputs/{job_id}/")] == ["a"]
        return True

    await _cancel_once(client, submit, b_begun_after_a)
    assert await _chunk_subjects(client) == before
    assert await _names(client, f"inputs/{job_id}/") == []
    assert await client.status(job_id) == "pending"  # nothing known of it


async def test_closing_the_client_wakes_its_waiters_and_its_errors_are_kilns(
    kiln_stack: Stack,
) -> None:
    # No GPU worker runs here: the job stays queued.
    client = await kiln.connect(kiln_stack.url)
    job = await client.submit("vector_add", "gpu", len=4)
    waiting = asyncio.ensure_future(job.result(timeout=None))
    # A second handle on the same job shares the first's answer, and its end.
    again = await client.job(job.id, kind="vector_add")
    waiting_again = asyncio.ensure_future(again.result(timeout=None))
    await asyncio.sleep(0.2)
    await client.close()
    # It waited for ever for a result the closed client no longer receives.
    for each in (waiting, waiting_again):
        with pytest.raises(kiln.ConnectError, match="the client was closed before job"):
            await asyncio.wait_for(each, 5)
    # Not "finished already" (False): closed, said as the client's calls say it (not that
    # the result did not arrive).
    # nats-py's "connection closed" is a kiln error, saying what to do.
    for call in (
        job.cancel(),
        job.status(),
        client.submit("vector_add", "cpu", len=4),
        client.status(job.id),
        client.get("anything"),
    ):
        with pytest.raises(kiln.ConnectError, match="this client is closed"):
            await call


async def test_a_connection_closed_under_the_client_wakes_its_waiters(kiln_stack: Stack) -> None:
    client = await kiln.connect(kiln_stack.url)
    # It reconnects for as long as it lives, as kiln's roles do: after nats-py's 60 tries (two
    # minutes of outage) it closed under its user, and `result(timeout=None)` waited for ever.
    assert client.nats.options["max_reconnect_attempts"] == -1
    job = await client.submit("vector_add", "gpu", len=4)
    waiting = asyncio.ensure_future(job.result(timeout=None))
    await asyncio.sleep(0.2)
    # Closed by nats-py itself (as after its reconnection attempts), not by client.close().
    await client.nats.close()
    with pytest.raises(kiln.ConnectError, match="the connection to the server was closed before"):
        await asyncio.wait_for(waiting, 5)
    with pytest.raises(kiln.ConnectError, match="the connection to the server was closed"):
        await client.status(job.id)


async def test_closing_the_client_stops_its_puts_and_they_leave_nothing(
    kiln_stack: Stack,
) -> None:
    client = await kiln.connect(kiln_stack.url)
    before = await _chunk_subjects(client)
    name = f"test/{kiln.new_job_id()}.bin"
    put = asyncio.ensure_future(client.put(name, bytes(128 * 1024 * 1024)))
    deadline = asyncio.get_running_loop().time() + RESULT_TIMEOUT
    while not await _chunk_subjects(client) - before:
        assert not put.done(), f"it finished before the client closed: {put}"
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.002)
    await client.close()
    # Its chunks stayed, under no object's name, counting against the store's size.
    with pytest.raises(kiln.ConnectError, match=f"closed while object {name} was being stored"):
        await put
    async with kiln.connect(kiln_stack.url) as again:
        assert await _chunk_subjects(again) == before


async def test_a_client_called_from_another_event_loop_says_so(client: kiln.Client) -> None:
    # nats-py's connection serves the loop it was made on: a call from another thread's
    # `asyncio.run` hung for 25 s, then left the client failing every submit.
    def elsewhere() -> BaseException | None:
        try:
            asyncio.run(client.submit("vector_add", "cpu", a=[1.0], b=[2.0]))
        except BaseException as e:
            return e
        return None

    error = await asyncio.get_running_loop().run_in_executor(None, elsewhere)
    assert isinstance(error, RuntimeError), error
    assert "belongs to the event loop it was connected on" in str(error)
    # So does waiting for a result there.
    job = await client.submit("vector_add", "cpu", a=[1.0], b=[2.0])

    def wait_elsewhere() -> BaseException | None:
        try:
            asyncio.run(job.result(timeout=5))
        except BaseException as e:
            return e
        return None

    error = await asyncio.get_running_loop().run_in_executor(None, wait_elsewhere)
    assert isinstance(error, RuntimeError) and "belongs to the event loop" in str(error), error
    job = await client.submit("vector_add", "cpu", a=[1.0], b=[2.0])
    np.testing.assert_array_equal(await (await job.result(timeout=RESULT_TIMEOUT)).array(), [3.0])


async def test_a_generated_id_used_again_with_other_inputs_is_refused(client: kiln.Client) -> None:
    first = await client.submit("vector_add", a=[1.0], b=[1.0])
    await first.result(timeout=RESULT_TIMEOUT)
    # The id was the client's own: its record had no digest, and other inputs under it were
    # answered with the first job's sum.
    with pytest.raises(kiln.SubmitError, match="used for a job with other parameters"):
        await client.submit("vector_add", id=first.id, a=[7.0], b=[1.0])
    again = await client.submit("vector_add", id=first.id, a=[1.0], b=[1.0])
    assert again.duplicate


def test_an_object_name_too_long_is_refused_as_a_put_refuses_it() -> None:
    with pytest.raises(ValueError, match="at most 1024 bytes"):
        kiln.ObjectRef("x" * 1100)
    assert kiln.ObjectRef("x" * 1024).to_json() == {"object": "x" * 1024}


async def test_a_model_not_stored_says_to_store_it_as_safetensors(client: kiln.Client) -> None:
    job = await client.submit("train_mlp", "cpu", epochs=1, samples=64)
    result = await job.result(timeout=RESULT_TIMEOUT)
    with pytest.raises(kiln.KilnError, match="submit with output='safetensors' to store it"):
        await result.model()
