"""kiln's wire contract as the Python client speaks it: subjects, ids, keys, references, and
how a job's parameters become JSON (inline values or uploaded objects)."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

STREAM_JOBS = "KILN_JOBS"
STREAM_RESULTS = "KILN_RESULTS"
BUCKET_DATA = "KILN_DATA"
BUCKET_CANCEL = "KILN_CANCEL"
BUCKET_STATE = "KILN_STATE"
BUCKET_WORKERS = "KILN_WORKERS"

#: The device classes a job can be submitted to.
CLASSES = ("gpu", "cpu", "auto")
#: The kinds kiln runs today (the worker answers any other with `invalid_input`).
KINDS = ("vector_add", "matmul", "conv2d", "train_mlp", "mlp_predict")
#: The kind a worker answers a job of a kind it does not run under, on
#: `results.unknown.<id>` (its error message names the kind the job asked for).
UNKNOWN_KIND = "unknown"
#: Where a job's output goes.
OUTPUTS = ("auto", "object", "npy", "safetensors", "png")
OutputMode = Literal["auto", "object", "npy", "safetensors", "png"]

#: Parameters that take a tensor, inline or by reference.
TENSOR_PARAMS = frozenset({"a", "b", "image", "x"})
#: Tensor parameters each kind takes flat (a vector); inline, they are sent flat.
FLAT_PARAMS = {"vector_add": frozenset({"a", "b"})}
#: The dimensions a tensor parameter has inline, by kind; an array of other dimensions goes
#: as an object, whose shapes the worker reads more freely (conv2d: [H, W], [C, H, W] or
#: [B, C, H, W]).
INLINE_DIMS = {"conv2d": {"image": 3}, "matmul": {"a": 2, "b": 2}, "mlp_predict": {"x": 2}}
#: The dimensions a tensor parameter of kiln's kinds may have at all (inline or as an object),
#: and how the kind reads them: an array of other dimensions is refused before anything is
#: sent (the worker would refuse it once uploaded).
TENSOR_DIMS: dict[str, dict[str, tuple[tuple[int, ...], str]]] = {
    "conv2d": {"image": ((2, 3, 4), "[H, W], [C, H, W] or [B, C, H, W]")},
    "matmul": {"a": ((2,), "[m, k]"), "b": ((2,), "[k, n]")},
    "mlp_predict": {"x": ((2,), "[rows, features]")},
}
#: The kinds that take a `dtype`, and the dtypes only GPU workers compute (CPU workers
#: compute f32).
GPU_DTYPE_KINDS = frozenset({"matmul", "conv2d"})
GPU_ONLY_DTYPES = ("tf32", "bf16", "f16")
#: Parameters that only take a reference; a plain string names the object.
REFERENCE_PARAMS = frozenset({"dataset", "model"})
#: Inline JSON of one tensor parameter above this many bytes is uploaded instead.
INLINE_LIMIT = 256 * 1024

MAX_ID_LEN = 128
#: Longest object name kiln reads or stores, in bytes (`kiln_data::store::MAX_OBJECT_NAME`).
MAX_OBJECT_NAME = 1024
JOB_ID_RULE = (
    "a job id is 1 to 128 ASCII letters, digits, '-' and '_' (no dots, spaces or wildcards)"
)
_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_KEY = re.compile(r"[A-Za-z0-9_=.-]+")


def valid_job_id(job_id: str) -> bool:
    """Whether `job_id` is one kiln accepts (the same grammar as `kiln_proto::valid_job_id`)."""
    return isinstance(job_id, str) and _ID.fullmatch(job_id) is not None


def check_job_id(job_id: str) -> str:
    """`job_id`, or a ValueError saying what a job id is."""
    if not isinstance(job_id, str):
        raise TypeError(f"a job id is a str, got {type(job_id).__name__}")
    if not valid_job_id(job_id):
        shown = job_id if len(job_id) <= 40 else job_id[:40] + "..."
        raise ValueError(f"invalid job id {shown!r}: {JOB_ID_RULE}")
    return job_id


#: Ids kiln gives jobs sent without one (`seq-<stream sequence>`); no job is submitted
#: under one (everyone knows them in advance, and a job sent under one first would answer
#: the id-less job with its own result).
ASSIGNED_ID_PREFIX = "seq-"


def check_submitted_id(job_id: str) -> str:
    """`check_job_id`, refusing kiln's own `seq-<sequence>` ids too."""
    check_job_id(job_id)
    if job_id.startswith(ASSIGNED_ID_PREFIX):
        raise ValueError(
            f"job id {job_id!r} cannot be submitted: ids starting with "
            f"{ASSIGNED_ID_PREFIX!r} are kiln's own, given to jobs sent without an id"
        )
    return job_id


def check_kind(kind: str) -> str:
    if not isinstance(kind, str) or _TOKEN.fullmatch(kind) is None:
        raise ValueError(
            f"invalid job kind {kind!r}: a kind is one subject token; kiln runs {', '.join(KINDS)}"
        )
    return kind


def check_class(device: str) -> str:
    if device not in CLASSES:
        raise ValueError(f"unknown device class {device!r}: use gpu, cpu or auto")
    return device


def check_dtype_class(kind: str, device: str, dtype: Any) -> None:
    """Refuse (ValueError) a job of kiln's that only GPU workers compute, sent to the cpu
    class: a CPU worker would answer it `invalid_input` (as `kiln submit` refuses it)."""
    gpu_only = isinstance(dtype, str) and dtype in GPU_ONLY_DTYPES
    if device == "cpu" and kind in GPU_DTYPE_KINDS and gpu_only:
        raise ValueError(
            f"{kind} with dtype {dtype!r} runs on GPU workers only (CPU workers compute f32): "
            'submit it with device="gpu" or device="auto", or leave dtype out (f32)'
        )


def check_output(output: str) -> str:
    if output not in OUTPUTS:
        raise ValueError(f"unknown output {output!r}: use {', '.join(OUTPUTS)}")
    return output


_counter = itertools.count()
_process_tag = secrets.token_hex(3)


def new_job_id() -> str:
    """A fresh job id: time-ordered, and unique across processes and machines."""
    micros = time.time_ns() // 1000
    return f"{micros:x}-{os.getpid():x}{_process_tag}-{next(_counter):x}"


def job_subject(device: str, kind: str) -> str:
    return f"jobs.{device}.{kind}"


def result_subject(kind: str | None, job_id: str) -> str:
    """`results.<kind>.<id>`; `results.*.<id>` when the kind is not known."""
    return f"results.{kind or '*'}.{job_id}"


def job_key(job_id: str) -> str:
    """The key of job `job_id` in kiln's key-value buckets (`kiln_proto::job_key`): the id
    itself when it only uses the characters keys allow and does not start with `x-`, else
    `x-` and its bytes in hex."""
    if job_id and not job_id.startswith("x-") and _KEY.fullmatch(job_id):
        return job_id
    return "x-" + job_id.encode().hex()


@dataclass(frozen=True)
class ObjectRef:
    """A parameter given by reference to an object in KILN_DATA: `name`, optionally one
    `tensor` of a safetensors file, and the `sha256` (hex) the worker checks."""

    name: str
    tensor: str | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        # As `Client.put` refuses it: a worker answered a longer name invalid_input.
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("an object reference needs a non-empty name")
        if len(self.name.encode()) > MAX_OBJECT_NAME:
            raise ValueError(
                f"object names are at most {MAX_OBJECT_NAME} bytes, not "
                f"{len(self.name.encode())}"
            )

    def to_json(self) -> dict[str, str]:
        out = {"object": self.name}
        if self.tensor is not None:
            out["tensor"] = self.tensor
        if self.sha256 is not None:
            out["sha256"] = self.sha256
        return out


@dataclass(frozen=True)
class ObjectInfo:
    """An object stored in KILN_DATA (what `Client.put` returns)."""

    name: str
    size: int
    sha256: str
    bucket: str = BUCKET_DATA

    def ref(self, tensor: str | None = None) -> ObjectRef:
        """The reference a job names this object by, with its digest for the worker to
        check."""
        return ObjectRef(self.name, tensor=tensor, sha256=self.sha256)


def npy_bytes(array: np.ndarray[Any, Any]) -> bytes:
    """`array` as a .npy file, in C order (kiln refuses Fortran-order files)."""
    import io

    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def tensor_array(name: str, value: Any) -> np.ndarray[Any, Any]:
    """`value` (an array or nested lists of numbers) as a numeric numpy array."""
    try:
        array = np.asarray(value)
    except (ValueError, OverflowError) as e:
        # numpy refuses ragged nesting outright ("inhomogeneous shape").
        raise TypeError(
            f"parameter {name!r} is not a rectangular array of numbers ({e}): every row "
            "needs as many values as the others"
        ) from e
    if array.dtype.kind == "c":
        raise TypeError(
            f"parameter {name!r} holds complex numbers ({array.dtype}), which kiln's kinds do "
            "not compute with: send real values (x.real, or np.abs(x))"
        )
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"parameter {name!r} must hold numbers, got an array of {array.dtype} "
            f"(shape {array.shape}): ragged lists, and integers past 64 bits, cannot be sent"
        )
    return array


@dataclass
class Upload:
    """A tensor parameter to store as `.npy` before the job is published."""

    param: str
    array: np.ndarray[Any, Any]


def inline_values(array: np.ndarray[Any, Any], flat: bool = False) -> Any:
    """`array` as inline JSON values: nested lists, one list when `flat`, bools as 0 and 1
    (kiln reads inline numbers only)."""
    if array.dtype.kind == "b":
        array = array.astype(np.uint8)
    return (array.ravel() if flat else array).tolist()


def plan_tensor(
    name: str,
    value: Any,
    upload: bool | None,
    *,
    flat: bool = False,
    dims: int | None = None,
    allowed: tuple[tuple[int, ...], str] | None = None,
) -> Any:
    """What tensor parameter `name` becomes: its inline JSON value (nested lists, or one list
    when `flat`), or an `Upload`. `upload`: True always uploads, False never does, None
    uploads when the inline JSON would pass `INLINE_LIMIT`, the values are not all finite
    (JSON has no NaN) or the array has other dimensions than `dims`, the ones the kind reads
    inline. `allowed`: the dimensions the kind reads at all, and how (`TENSOR_DIMS`)."""
    array = tensor_array(name, value)
    if array.ndim == 0:
        raise ValueError(f"parameter {name!r} must be an array, got the single number {value!r}")
    if allowed is not None and array.ndim not in allowed[0]:
        hint = ""
        if array.ndim == 1 and allowed[0] == (2,):
            hint = f"; for one row, pass {name}.reshape(1, -1)"
        raise ValueError(
            f"parameter {name!r} has shape {array.shape}, but is read as {allowed[1]}{hint}"
        )
    other_dims = dims is not None and array.ndim != dims
    if upload is False:
        if other_dims:
            raise ValueError(
                f"parameter {name!r} has shape {array.shape}, but goes inline only with {dims} "
                "dimensions: leave upload unset (or True) to send it as a .npy object"
            )
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ValueError(
                f"parameter {name!r} holds NaN or infinite values, which JSON cannot carry "
                "inline: leave upload unset (or True) to send it as a .npy object"
            )
        return inline_values(array, flat)
    if upload is True or other_dims:
        return Upload(name, array)
    # Each value takes at least two characters ("0,"): past that many, no need to measure.
    if array.size * 2 > INLINE_LIMIT:
        return Upload(name, array)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        return Upload(name, array)
    # Measured on a sample first: writing out 100,000 floats took 60-90 ms on the event loop,
    # and many submits gathered at once timed out each other's requests.
    if sampled_json_size(array) > INLINE_LIMIT * 5 // 4:
        return Upload(name, array)
    inline = inline_values(array, flat)
    if len(json.dumps(inline)) > INLINE_LIMIT:
        return Upload(name, array)
    return inline


def sampled_json_size(array: np.ndarray[Any, Any], sample: int = 1024) -> int:
    """About how many characters `array`'s values take as inline JSON, from up to `sample`
    of them spread across it (exact for arrays no larger)."""
    flat = array.ravel()
    if flat.size <= sample:
        return len(json.dumps(inline_values(flat)))
    taken = flat[:: flat.size // sample][:sample]
    return len(json.dumps(inline_values(taken))) * flat.size // taken.size


def json_default(value: Any) -> Any:
    """json.dumps' fallback for numpy values and kiln references."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, ObjectRef):
        return value.to_json()
    if isinstance(value, ObjectInfo):
        return value.ref().to_json()
    raise TypeError(f"{type(value).__name__} cannot be sent in a job's parameters")


def job_digest(
    kind: str,
    params: Mapping[str, Any],
    uploads: Sequence[Upload],
    *,
    seed: int,
    timeout_ms: int | None,
    output: str,
) -> str:
    """What a job computes, as a SHA-256 of its canonical JSON: its kind, parameters (an
    object reference by its content's SHA-256 where it has one, a tensor by its f32 values),
    seed, timeout and output mode. Recorded in the job's `queued` state as
    `py_digest`, so that an id used again for another job is refused rather than answered
    with the earlier job's result. (`kiln submit` records its own `digest`, serialised by
    Rust; the two are not compared with each other.)"""

    def by_content(value: Any) -> Any:
        if isinstance(value, Mapping):
            by_sha = isinstance(value.get("object"), str) and isinstance(value.get("sha256"), str)
            return {
                str(k): (str(v).lower() if by_sha and k == "sha256" else by_content(v))
                for k, v in value.items()
                if not (by_sha and k == "object")
            }
        if isinstance(value, (list, tuple)):
            return [by_content(v) for v in value]
        return value

    content = {
        name: (
            tensor_content(kind, name, value)
            if name in TENSOR_PARAMS and isinstance(value, (list, tuple, np.ndarray))
            else value
        )
        for name, value in params.items()
    }
    for up in uploads:
        content[up.param] = tensor_content(kind, up.param, up.array)
    what = {
        "kind": kind,
        "params": by_content(content),
        "seed": seed,
        "timeout_ms": timeout_ms,
        "output": output,
    }
    text = json.dumps(what, sort_keys=True, separators=(",", ":"), default=json_default)
    return hashlib.sha256(text.encode()).hexdigest()


def tensor_content(kind: str, name: str, value: Any) -> Any:
    """A tensor parameter by the f32 values the worker reads (and their shape), so that the
    same values count as the same input however they were written: a list or an array, ints
    or floats, float64 or float32, inline or uploaded. Values that are no array stay as
    they are."""
    try:
        array = np.ascontiguousarray(np.asarray(value, dtype="<f4"))
    except (TypeError, ValueError):
        return value
    if name in FLAT_PARAMS.get(kind, ()):
        array = array.ravel()
    return {"f32": hashlib.sha256(array.data).hexdigest(), "shape": list(array.shape)}


def encode_job(
    job_id: str,
    params: Mapping[str, Any],
    *,
    seed: int,
    timeout_ms: int | None,
    output: str,
) -> bytes:
    """The job envelope as JSON bytes."""
    envelope: dict[str, Any] = {"id": job_id, "params": params, "seed": seed, "output": output}
    if timeout_ms is not None:
        envelope["timeout_ms"] = timeout_ms
    try:
        return json.dumps(
            envelope, default=json_default, allow_nan=False, separators=(",", ":")
        ).encode()
    except ValueError as e:
        raise ValueError(
            f"job {job_id}: its parameters hold NaN or infinite numbers, which JSON cannot "
            "carry; pass the values as a numpy array (sent as a .npy object)"
        ) from e
