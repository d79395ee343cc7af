"""kiln's Python client: submit GPU/CPU jobs to kiln over NATS JetStream, wait for their
results, and move tensors, images, datasets and models through the KILN_DATA object store.

    import asyncio, numpy as np, kiln

    async def main():
        async with kiln.connect() as client:          # NATS_URL, default nats://127.0.0.1:4222
            a, b = np.arange(4, dtype=np.float32), np.ones(4, dtype=np.float32)
            job = await client.submit("vector_add", "cpu", a=a, b=b)
            result = await job.result(timeout=30)
            print(await result.array())               # [1. 2. 3. 4.]

    asyncio.run(main())
"""

from ._client import Client, Connecting, connect
from ._errors import (
    Cancelled,
    ConnectError,
    Internal,
    InvalidInput,
    JobFailed,
    JobGone,
    KilnError,
    NoAnswer,
    ObjectCorrupt,
    ObjectNotFound,
    OutOfMemory,
    ResultTimeout,
    SubmitError,
    Timeout,
    TooLarge,
)
from ._job import Job, JobError, JobState, Result
from ._wire import (
    CLASSES,
    INLINE_LIMIT,
    JOB_ID_RULE,
    KINDS,
    ObjectInfo,
    ObjectRef,
    job_key,
    new_job_id,
    valid_job_id,
)

__version__ = "0.1.0"

__all__ = [
    "CLASSES",
    "INLINE_LIMIT",
    "JOB_ID_RULE",
    "KINDS",
    "Cancelled",
    "Client",
    "ConnectError",
    "Connecting",
    "Internal",
    "InvalidInput",
    "Job",
    "JobError",
    "JobFailed",
    "JobGone",
    "JobState",
    "KilnError",
    "NoAnswer",
    "ObjectInfo",
    "ObjectCorrupt",
    "ObjectNotFound",
    "ObjectRef",
    "OutOfMemory",
    "Result",
    "ResultTimeout",
    "SubmitError",
    "Timeout",
    "TooLarge",
    "connect",
    "job_key",
    "new_job_id",
    "valid_job_id",
]
