"""kiln's exceptions: one base class, one per job failure kind."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._job import Job, Result


class KilnError(Exception):
    """Base class of every error this package raises (besides ValueError/TypeError for bad
    arguments)."""


class ConnectError(KilnError):
    """The NATS server could not be reached, refused the credentials or TLS, or runs
    without JetStream, or this client was closed."""


class NoAnswer(ConnectError, asyncio.TimeoutError):
    """The NATS server did not answer a request in time: unreachable (the client keeps
    reconnecting) or overloaded. Also an `asyncio.TimeoutError`."""


class SubmitError(KilnError):
    """The server refused a job: no stream takes its subject (run `kiln init`), the
    KILN_JOBS stream is full, the job is over the server's max_payload, or its id was
    submitted within the last 10 minutes as a job of another kind (the server dropped it
    as that one's duplicate).

    From `submit_many`, `jobs` holds the jobs that were accepted and `refused` maps each
    refused job id to why.
    """

    def __init__(
        self,
        message: str,
        *,
        jobs: list[Job] | None = None,
        refused: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.jobs: list[Job] = jobs or []
        self.refused = refused or {}


class ObjectNotFound(KilnError):
    """No object of that name in the KILN_DATA object store."""


class ObjectCorrupt(KilnError):
    """An object of KILN_DATA that cannot be read as it is: its entry does not parse, its
    chunks are gone or are not what its entry says, or it is a link kiln does not follow."""


class ResultTimeout(KilnError, asyncio.TimeoutError):
    """A job's result did not arrive in time (also an `asyncio.TimeoutError`). The job may
    still finish: call `job.result()` again, or `job.status()` to see where it is."""


class JobGone(KilnError):
    """A job will not be answered: recorded as queued, but no longer in KILN_JOBS and
    without a result (its result dropped from a full KILN_RESULTS, or the job purged), as
    `job.status()` and `kiln status` say `gone`. Resubmit it (under a new id, or the same
    one once the server's 10-minute duplicate window has passed)."""


class JobFailed(KilnError):
    """A job ended with status "failed". `kind` is the machine-readable error kind
    (`invalid_input`, `too_large`, `out_of_memory`, `timeout`, `cancelled`, `internal`),
    `message` the worker's sentence, `result` the whole result."""

    kind: str = "internal"

    def __init__(self, kind: str, message: str, result: Result) -> None:
        super().__init__(f"job {result.id} ({result.kind}) failed: {kind}: {message}")
        self.kind = kind
        self.message = message
        self.result = result


class InvalidInput(JobFailed):
    """The job's parameters or data were wrong; resubmitting it unchanged cannot help."""


class TooLarge(JobFailed):
    """The job asked for more than the worker's limits allow."""


class OutOfMemory(JobFailed):
    """The device ran out of memory running the job."""


class Timeout(JobFailed):
    """The job ran past its `timeout_ms`."""


class Cancelled(JobFailed):
    """The job was cancelled (`job.cancel()`, `kiln cancel`)."""


class Internal(JobFailed):
    """Something went wrong inside kiln (after its retries)."""


_BY_KIND: dict[str, type[JobFailed]] = {
    "invalid_input": InvalidInput,
    "too_large": TooLarge,
    "out_of_memory": OutOfMemory,
    "timeout": Timeout,
    "cancelled": Cancelled,
    "internal": Internal,
}


def job_failed(kind: str, message: str, result: Result) -> JobFailed:
    """The exception for a failure of `kind` (an unknown kind is a plain `JobFailed`)."""
    cls = _BY_KIND.get(kind, JobFailed)
    return cls(kind, message, result)
