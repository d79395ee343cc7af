"""Storing an object so that a cancelled put leaves nothing behind.

nats-py's `ObjectStore.put` sends the object's chunks, then its metadata, and purges the
chunks sent when one of them fails with an `Exception`; a cancellation (`CancelledError`,
which Ctrl-C under `asyncio.run` becomes) is not one, so the chunks stayed in the store under
no object's name, counting against its size limit until they aged out. Here the put runs
as its own task reading from a `_Stoppable` reader: cancelling the caller stops the reader,
whose next read then fails with an `Exception`, so the put's own failure path purges its
chunks, as `kiln put` does on SIGINT or SIGTERM.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import threading
from pathlib import Path
from typing import Any, BinaryIO

import nats.errors
import nats.js.api
import nats.js.errors
from nats.js.object_store import ObjectStore

from ._errors import ConnectError

log = logging.getLogger("kiln")

# How long a cancelled put is given to purge what it sent, as `kiln put`'s STOP_WITHIN.
STOP_WITHIN_S = 10.0


class _Stopped(Exception):
    """Raised by a stopped reader's next read (an `Exception`, which nats-py's put handles
    by purging the chunks it sent)."""


class _Stoppable(io.RawIOBase):
    """A reader of bytes or of an open file that fails once `stop()` is called, and counts
    and hashes what it read."""

    def __init__(self, source: bytes | BinaryIO) -> None:
        super().__init__()
        self._file = None if isinstance(source, bytes) else source
        self._bytes = memoryview(source) if isinstance(source, bytes) else None
        self._at = 0
        self._stopped = threading.Event()
        self.size = 0
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def stop(self) -> None:
        self._stopped.set()

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._stopped.is_set():
            raise _Stopped("the put was cancelled")
        if self._file is not None:
            n: int = self._file.readinto(buffer)  # type: ignore[attr-defined]
            read = memoryview(buffer)[:n]
        else:
            assert self._bytes is not None
            read = self._bytes[self._at : self._at + len(buffer)]
            n = len(read)
            memoryview(buffer)[:n] = read
            self._at += n
        self.size += n
        self.sha256.update(read)
        return n

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()


async def put(
    bucket: ObjectStore,
    name: str,
    source: bytes | Path,
    description: str | None,
    uploads: dict[asyncio.Future[Any], _Stoppable],
) -> tuple[int, str]:
    """Store `source` (bytes, or the file at a path, read as it is sent) as object `name`;
    returns its size and sha256 (hex). When the caller is cancelled, the chunks sent are
    purged, or the object removed if it was stored whole (unless it replaced one), before
    the cancellation goes on. The put is in `uploads` while it runs: a client that closes
    stops it ([`stop_all`]), so that it purges what it sent while it still can."""
    existed = await _exists(bucket, name)
    loop = asyncio.get_running_loop()
    # Opened off the event loop: a FIFO's open waits for its writer.
    opened = source if isinstance(source, bytes) else await loop.run_in_executor(None, _open, source)
    reader = _Stoppable(opened)
    meta = nats.js.api.ObjectMeta(name=name, description=description)
    task = asyncio.ensure_future(bucket.put(name, reader, meta=meta))  # type: ignore[arg-type]
    uploads[task] = reader
    task.add_done_callback(lambda done: uploads.pop(done, None))
    try:
        await asyncio.shield(task)
    except _Stopped as e:
        raise ConnectError(
            f"the client was closed while object {name} was being stored; what was sent of it "
            "was removed"
        ) from e
    except asyncio.CancelledError:
        reader.stop()
        await _clean_up(bucket, name, task, existed)
        raise
    finally:
        # A put still reading in its thread (a pipe that does not return) is closed when it
        # ends: closing a file while a thread reads it waits for that read, on the event loop.
        if task.done():
            reader.close()
        else:
            task.add_done_callback(lambda _: reader.close())
    return reader.size, reader.sha256.hexdigest()


async def stop_all(uploads: dict[asyncio.Future[Any], _Stoppable]) -> None:
    """Stop the puts in `uploads` and wait (up to `STOP_WITHIN_S`) until each has purged the
    chunks it sent: a client closing under them left those chunks in the store, counting
    against its size limit until they aged out."""
    for reader in list(uploads.values()):
        reader.stop()
    if uploads:
        await asyncio.wait(list(uploads), timeout=STOP_WITHIN_S)


def _open(path: Path) -> BinaryIO:
    return path.open("rb")


async def _exists(bucket: ObjectStore, name: str) -> bool:
    try:
        await bucket.get_info(name)  # a deleted one is not found
    except (nats.js.errors.NotFoundError, nats.js.errors.BadObjectMetaError):
        return False
    return True


async def _clean_up(
    bucket: ObjectStore, name: str, task: asyncio.Future[Any], existed: bool
) -> None:
    """After a cancelled put: let it fail at its next read (it purges its chunks), or remove
    the object it stored whole before the reader stopped it, unless that replaced an object
    (whose chunks the put removed: removing the new one would leave the name with nothing).
    Best effort: a second cancellation, or a put not done within `STOP_WITHIN_S`, leaves
    what it sent to age out."""
    done, _ = await asyncio.wait({task}, timeout=STOP_WITHIN_S)
    if not done:
        log.warning("a cancelled put of %s did not stop in time; what it sent ages out", name)
        return
    if task.cancelled() or task.exception() is not None:
        return  # stopped: nats-py purged the chunks it had sent
    if existed:
        log.info("%s was stored whole, replacing the object there, before the put was cancelled", name)
        return
    try:
        await bucket.delete(name)
    except nats.errors.Error as e:
        log.warning("could not remove %s, stored as its put was cancelled: %s", name, e)
