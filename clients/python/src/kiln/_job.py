"""Submitted jobs and their results."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Literal

import nats.errors
import numpy as np

from . import _data
from ._errors import JobGone, KilnError, ResultTimeout, job_failed
from ._wire import UNKNOWN_KIND, ObjectRef

if TYPE_CHECKING:
    from ._client import Client

log = logging.getLogger("kiln")

#: What `Job.status()` answers.
JobState = Literal[
    "succeeded", "failed", "running", "cancel_requested", "queued", "gone", "pending"
]

#: The output each kind's `Result.array()` gives when no name is asked for.
DEFAULT_OUTPUT = {
    "vector_add": "c",
    "matmul": "c",
    "conv2d": "image",
    "mlp_predict": "probabilities",
}
#: Inline outputs that hold integers.
INTEGER_OUTPUTS = frozenset({"classes"})

_FRACTION = re.compile(r"(\.\d{6})\d+")

#: How far apart this client's clock and the NATS server's may be, in seconds, when a result's
#: `enqueued_at` (the server's clock) is compared with when this client published its job (its
#: own clock). Generous on purpose: an earlier job under the same id that the server did not
#: drop as a duplicate was sent over 10 minutes before (or without a `Nats-Msg-Id`).
CLOCK_GRACE_S = 60.0


def _time(value: Any) -> datetime | None:
    """An RFC 3339 time from a result (nanoseconds cut to microseconds)."""
    if not isinstance(value, str):
        return None
    text = _FRACTION.sub(r"\1", value.strip())
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _utc(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=timezone.utc)


# How long `Job.result` asks for a stored result before it waits for one, and after its
# timeout passed.
LOOKUP_S = 5.0
LAST_LOOKUP_S = 1.0
# While `Job.result` waits, how long before it first asks whether the job is `gone` (will
# never be answered), and the longest between two such asks (the gap doubles).
GONE_CHECK_S = 30.0
GONE_CHECK_MAX_S = 600.0


@dataclass(frozen=True)
class JobError:
    """Why a job failed: `kind` (`invalid_input`, `too_large`, `out_of_memory`, `timeout`,
    `cancelled`, `internal`) and the worker's `message`."""

    kind: str
    message: str


class Result:
    """One finished job, as its worker published it on `results.<kind>.<id>`.

    Attributes mirror the result event: `id`, `kind`, `status` ("succeeded" or "failed"),
    `device` (`cpu`, `cuda:0`), `device_class` (the event's `class`), `worker`, `attempt`,
    `enqueued_at`, `started_at`, `finished_at` (datetimes), `queue_ms`, `compute_ms`,
    `total_ms`, `flops`, `replay`, `routing`, `output` (the kind's output dict), `error`
    (a `JobError` when it failed) and `raw` (the whole event as decoded JSON).
    """

    def __init__(self, event: dict[str, Any], client: Client | None = None) -> None:
        self.raw = event
        self._client = client
        self._object_data: bytes | None = None
        self.id: str = str(event.get("id", ""))
        self.kind: str = str(event.get("kind", ""))
        self.status: str = str(event.get("status", ""))
        self.device: str = str(event.get("device", ""))
        self.device_class: str = str(event.get("class", ""))
        self.worker: str = str(event.get("worker", ""))
        self.attempt: int = int(event.get("attempt") or 0)
        self.enqueued_at = _time(event.get("enqueued_at"))
        self.started_at = _time(event.get("started_at"))
        self.finished_at = _time(event.get("finished_at"))
        self.queue_ms: float = float(event.get("queue_ms") or 0.0)
        self.compute_ms: float = float(event.get("compute_ms") or 0.0)
        self.total_ms: float = float(event.get("total_ms") or 0.0)
        self.flops: float = float(event.get("flops") or 0.0)
        self.replay: int = int(event.get("replay") or 0)
        self.routing: dict[str, Any] | None = event.get("routing")
        output = event.get("output")
        self.output: dict[str, Any] = output if isinstance(output, dict) else {}
        error = event.get("error")
        self.error: JobError | None = (
            JobError(str(error.get("kind", "internal")), str(error.get("message", "")))
            if isinstance(error, dict)
            else None
        )

    def __repr__(self) -> str:
        detail = f", error={self.error.kind}: {self.error.message!r}" if self.error else ""
        return (
            f"Result(id={self.id!r}, kind={self.kind!r}, status={self.status!r}, "
            f"device={self.device!r}{detail})"
        )

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @property
    def failed(self) -> bool:
        return self.status != "succeeded"

    def raise_for_status(self) -> None:
        """Raise the `JobFailed` subclass of this result's error kind when it failed."""
        if self.status == "succeeded":
            return
        error = self.error or JobError("internal", f"status {self.status!r} without an error")
        raise job_failed(error.kind, error.message, self)

    @property
    def object(self) -> dict[str, Any] | None:
        """The stored output's descriptor (`output.object`: bucket, name, format, size,
        sha256, shape, dtype), or None when the output is inline or a summary."""
        obj = self.output.get("object")
        return obj if isinstance(obj, dict) else None

    def ref(self, tensor: str | None = None) -> ObjectRef:
        """A reference to this result's stored output (its digest included), to pass as
        another job's parameter: a trained model to `mlp_predict`, a matrix to `matmul`."""
        self.raise_for_status()
        obj = self.object
        if obj is None:
            raise KilnError(
                f"job {self.id} ({self.kind}) has no stored output to refer to; submit it "
                "with output='npy' (or 'safetensors') to have it stored"
            )
        return ObjectRef(str(obj["name"]), tensor=tensor, sha256=obj.get("sha256"))

    async def object_bytes(self) -> bytes:
        """The stored output object's bytes (a .npy, safetensors or PNG file), fetched from
        KILN_DATA once and checked against its sha256."""
        self.raise_for_status()
        obj = self.object
        if obj is None:
            # A model is a safetensors file: npy is no format for it.
            stored = "'safetensors'" if self.kind == "train_mlp" else "'npy'"
            raise KilnError(
                f"job {self.id} ({self.kind}) has no stored output (its result has no "
                "output.object): its output is inline (see .output) or, for generated "
                f"inputs, a summary; submit with output={stored} to store it"
            )
        if self._object_data is None:
            if self._client is None:
                raise KilnError("this result is not attached to a client; fetch it with one")
            data = await self._client.get(str(obj["name"]))
            expected = obj.get("sha256")
            if expected and hashlib.sha256(data).hexdigest() != str(expected).lower():
                raise KilnError(
                    f"object {obj['name']!r} does not match the sha256 in job {self.id}'s "
                    "result: it was overwritten or corrupted"
                )
            self._object_data = data
        return self._object_data

    async def array(self, name: str | None = None) -> np.ndarray[Any, Any]:
        """An output as a numpy array: `name` (`c`, `image`, `probabilities`, `classes`),
        default the kind's main output. Inline values are converted; a stored output is
        fetched from KILN_DATA on the first call (.npy and safetensors as stored, PNG as
        float32 [channels, height, width] in [0, 1]); an mlp_predict's `classes` past the
        inline limit are the row-wise argmax of its stored probabilities. Raises the job's
        `JobFailed` when it failed, and `KilnError` when the job has no output of that
        name."""
        self.raise_for_status()
        if name is not None and name in self.output and isinstance(self.output[name], list):
            return self._inline(name)
        obj = self.object
        wanted = name or DEFAULT_OUTPUT.get(self.kind)
        if obj is None:
            if wanted is not None and isinstance(self.output.get(wanted), list):
                return self._inline(wanted)
            inline = [k for k, v in self.output.items() if isinstance(v, list) and k != "epochs"]
            raise KilnError(
                f"job {self.id} ({self.kind}) has no output {wanted or '(unnamed)'!r} in its "
                f"result (inline: {inline or 'none'}; nothing stored): jobs on generated "
                "inputs return a summary unless submitted with output='npy'"
            )
        stored = DEFAULT_OUTPUT.get(self.kind)
        # mlp_predict stores its probabilities; its classes are their row-wise argmax (the first
        # largest, as the worker picks them inline).
        if self.kind == "mlp_predict" and wanted == "classes":
            probabilities = await self.array("probabilities")
            classes: np.ndarray[Any, Any] = np.argmax(probabilities, axis=1).astype(np.int64)
            return classes
        if wanted is not None and stored is not None and wanted != stored:
            raise KilnError(
                f"job {self.id} ({self.kind}) stored its output {stored!r}, not {wanted!r}: "
                f".array({stored!r})"
            )
        data = await self.object_bytes()
        what = f"object {obj.get('name')!r}"
        fmt = obj.get("format")
        if fmt == "npy" or data.startswith(_data.NPY_MAGIC):
            return _data.load_npy(what, data)
        if fmt == "png" or data.startswith(_data.PNG_SIGNATURE):
            return _data.decode_png(what, data)
        tensors = _data.load_safetensors(what, data)
        if wanted is not None and wanted in tensors:
            return tensors[wanted]
        if len(tensors) == 1 and (wanted is None or wanted == stored):
            return next(iter(tensors.values()))
        if wanted is None:
            # A train_mlp model: several tensors, and no default among them.
            raise KilnError(
                f"{what} holds several tensors, {sorted(tensors)}: name one "
                f"(.array({sorted(tensors)[0]!r})), or read them all with .model()"
            )
        raise KilnError(
            f"{what} holds tensors {sorted(tensors)}, not {wanted!r}: "
            f".array({sorted(tensors)[0]!r})"
        )

    def _inline(self, name: str) -> np.ndarray[Any, Any]:
        dtype = np.int64 if name in INTEGER_OUTPUTS else np.float32
        return np.asarray(self.output[name], dtype=dtype)

    async def model(self) -> dict[str, np.ndarray[Any, Any]]:
        """A `train_mlp` result's model: its safetensors tensors by name
        (`layers.0.weight` [in, out], `layers.0.bias`, ..., `input.mean`, `input.std`)."""
        data = await self.object_bytes()
        return _data.load_safetensors(f"job {self.id}'s model", data)

    async def model_metadata(self) -> dict[str, str]:
        """A `train_mlp` result's model metadata (`format`, `version`, `features`,
        `classes`, `hidden`, `activation`)."""
        return _data.safetensors_metadata(await self.object_bytes())


def enqueued_before(result: Result, at: datetime) -> bool:
    """Whether `result`'s job was submitted before `at` (this client's clock), by more than
    `CLOCK_GRACE_S`: it is an earlier job's answer than that of a job published at `at`."""
    if result.enqueued_at is None:
        return False
    return _utc(result.enqueued_at) < _utc(at) - timedelta(seconds=CLOCK_GRACE_S)


def answers(kind: str | None, result: Result, since: datetime | None = None) -> bool:
    """Whether `result`, stored or heard under a job id, answers that id's job of `kind`: a
    result of that kind (of any, when `kind` is None), or one of kind `unknown`, which is how
    a worker answers a job of a kind it does not run (on `results.unknown.<id>`), when its
    error names `kind` or, for a job this client published at `since`, when its job was
    submitted since then (give or take `CLOCK_GRACE_S`). No list of kinds is consulted:
    kinds are the workers' to know."""
    if kind is None or result.kind == kind:
        return True
    if result.kind != UNKNOWN_KIND:
        return False
    if result.error is not None and f'"{kind}"' in result.error.message:
        return True
    return since is not None and result.enqueued_at is not None and not enqueued_before(
        result, since
    )


class Job:
    """A job this client submitted (or looked up with `Client.job`)."""

    def __init__(
        self,
        client: Client,
        job_id: str,
        kind: str | None,
        device: str | None,
        future: asyncio.Future[Result],
    ) -> None:
        self._client = client
        self.id = job_id
        self.kind = kind
        self.device = device
        #: True when this submission's result is an earlier job's under the same id (a job
        #: id keeps its first answer): the server dropped it as a duplicate (within its
        #: 10-minute window), or the id had an answer already, so the client did not send it,
        #: or (found when the result comes) the stored answer is a job's submitted before
        #: this one, which ran in vain.
        self.duplicate = False
        #: The job's sequence in KILN_JOBS (the earlier one's for a duplicate the server
        #: dropped; None for a job the client did not send, its id answered already).
        self.sequence: int | None = None
        #: When this client published the job (its own clock); None for a job it did not.
        self._published_at: datetime | None = None
        #: The client made the id for this job (no earlier job's answer can be kept under it).
        self._new_id = False
        self._future = future
        self._looked_up = False

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, kind={self.kind!r}, device={self.device!r})"

    def done(self) -> bool:
        """Whether the result has arrived."""
        return self._future.done()

    async def result(
        self, timeout: float | None = 60.0, *, raise_on_failure: bool = True
    ) -> Result:
        """Wait for the job's result. A failed job raises its `JobFailed` subclass
        (`InvalidInput`, `TooLarge`, ...) unless `raise_on_failure=False`, which returns the
        failed `Result`. Past `timeout` seconds (None: no limit) raises `ResultTimeout`; the
        job goes on, and a later call can still get its result. Raises `ConnectError` when
        the client is closed before the result comes, and `JobGone` when the job will never
        be answered (asked after 30 s of waiting, then at doubling gaps up to 10 min)."""
        self._client._check_loop()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        if not self._future.done() and not self._looked_up:
            # A result stored before this client subscribed (a resubmitted id).
            self._looked_up = await self._look_up(
                LOOKUP_S if timeout is None else min(LOOKUP_S, timeout)
            )
        try:
            result = await self._wait(deadline)
        except asyncio.TimeoutError:
            # One stored while the connection was down reached no subscription. Within a
            # second: the timeout is a deadline (with the server away, the lookup's own 5 s
            # made it 2-6 times what was asked).
            await self._look_up(LAST_LOOKUP_S)
            if not self._future.done():
                raise ResultTimeout(self._no_result_yet(timeout)) from None
            result = self._future.result()
        if raise_on_failure:
            result.raise_for_status()
        return result

    async def _wait(self, deadline: float | None) -> Result:
        """The result, once it comes before `deadline` (the loop's time; None: no limit);
        raises `asyncio.TimeoutError` past it. Every so often it asks whether the job is
        `gone`, and raises `JobGone` if so: such a job is never answered, and a wait
        without a deadline waited for ever."""
        loop = asyncio.get_running_loop()
        gap = GONE_CHECK_S
        while True:
            left = None if deadline is None else max(0.0, deadline - loop.time())
            wait = gap if left is None else min(gap, left)
            try:
                return await asyncio.wait_for(asyncio.shield(self._future), wait)
            except asyncio.TimeoutError:
                if left is not None and left <= gap:
                    raise
            if await self._is_gone():
                raise JobGone(
                    f"job {self.id} ({self.kind or 'any kind'}) will not be answered: it was "
                    "recorded as queued, but KILN_JOBS no longer holds it and it has no "
                    "result (its result dropped from a full KILN_RESULTS, or the job "
                    "purged); resubmit it (`kiln status` says more)"
                )
            gap = min(gap * 2, GONE_CHECK_MAX_S)

    async def _is_gone(self) -> bool:
        """Whether the job is `gone`; False while that cannot be asked (the connection down,
        the server not answering)."""
        if self._future.done() or not self._client._nc.is_connected:
            return False
        try:
            state = await self._client.status(self.id, kind=self.kind)
        except Exception as e:  # a leader election, a record that does not parse: ask later
            log.debug("asking whether %s is gone: %s", self.id, e)
            return False
        return state == "gone" and not self._future.done()

    def _no_result_yet(self, timeout: float | None) -> str:
        """Why `result()` has nothing after `timeout` seconds, as far as this client knows."""
        head = f"job {self.id} ({self.kind or 'any kind'}) has no result after {timeout} s"
        if not self._client._nc.is_connected:
            return (
                f"{head}, and the connection to the NATS server is down (the client keeps "
                "reconnecting): the job goes on, and a later call can still get its result"
            )
        where = f"jobs.{self.device}.{self.kind}" if self.device else "its queue"
        # An auto job waits for a scheduler to route it before any worker can serve it.
        serves = "no `kiln scheduler` routes it" if self.device == "auto" else "no worker serves"
        return (
            f"{head}: it is queued or running (`await job.status()` says which, or `gone` if "
            f"it will not be answered), or {serves} {where}"
        )

    async def _look_up(self, within: float = LOOKUP_S) -> bool:
        """Settle the job with its stored result, if it has one already (asked for `within`
        seconds; not at all while the connection is down); whether it asked."""
        if self._future.done():
            return True
        if not self._client._nc.is_connected:
            return False
        try:
            found = await asyncio.wait_for(
                self._client._lookup(self.kind, self.id, since=self._published_at), within
            )
        except (nats.errors.Error, asyncio.TimeoutError, OSError) as e:
            # The server unreachable: the subscription may still answer. (A missing results
            # stream, KilnError, is raised: `kiln init` has not run.)
            log.debug("looking up %s's result: %s", self.id, e)
            return False
        if found is not None and not self._future.done():
            self._settle(found)
            await self._client._unwatch(self.id, self._future)
        return True

    def _answers(self, result: Result) -> bool:
        """Whether `result` is this job's answer (see `answers`)."""
        return answers(self.kind, result, self._published_at)

    def _settle(self, result: Result) -> None:
        """Complete the job with `result`, its answer; when that is an earlier job's under the
        same id (submitted before this one was published), mark the job a duplicate."""
        if self._future.done():
            return
        if (
            not self.duplicate
            and self._published_at is not None
            and enqueued_before(result, self._published_at)
        ):
            self.duplicate = True
            log.warning(
                "job %s (%s): the answer kept for this id is an earlier job's, submitted at %s, "
                "before this one was (at %s by this client's clock); a job id keeps its first "
                "answer, so this job's own result is refused: job.duplicate is True and its "
                "result is the earlier one's. Submit under a new id to get this job's own",
                self.id,
                self.kind or "any kind",
                result.enqueued_at.isoformat() if result.enqueued_at else "?",
                self._published_at.isoformat(),
            )
        self._future.set_result(result)

    async def status(self) -> JobState:
        """Where the job is: "succeeded" or "failed" (its result is stored), "running" (a
        live worker's heartbeat lists it), "cancel_requested", "queued" (recorded in
        KILN_STATE), "gone" (recorded as queued, but KILN_JOBS holds no job of its kind and
        it has no result: its result was dropped from a full KILN_RESULTS, or the job
        purged; it will not be answered, as `kiln status` says), else "pending" (submitted,
        nothing recorded yet)."""
        if self._future.done() and self._future.exception() is None:
            return "succeeded" if self._future.result().succeeded else "failed"
        # (Closed before the result came: the client's call says it is closed.)
        return await self._client.status(self.id, kind=self.kind)

    async def cancel(self) -> bool:
        """Mark the job cancelled in KILN_CANCEL (as `kiln cancel` does): a worker answers a
        queued job `cancelled` when it takes it, a running one stops at its next checkpoint.
        Returns False, marking nothing, when the job has finished already."""
        if self._future.done() and self._future.exception() is None:
            return False
        # (Closed before the result came: the client's call says it is closed.)
        return await self._client.cancel(self.id, kind=self.kind)
