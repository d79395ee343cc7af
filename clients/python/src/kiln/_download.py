"""Reading an object of KILN_DATA by kiln's rules.

nats-py's `ObjectStore.get` waits for ever for chunks that are gone (aged out before their
entry, or purged), follows links without end (a link to itself raised `RecursionError` and
left the client hanging on close), follows links to links, and lets its own errors out
(`DigestMismatchError`, `LinkIsABucketError`). Here, as in kiln's own reader
(`crates/kiln-data/src/store/chunks.rs`): one link is followed, within KILN_DATA; each chunk
is waited for a bounded time; the chunk count, size and SHA-256 are checked against the
object's entry; every failure is a `kiln` error that names the object.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

import nats.errors
import nats.js.api
import nats.js.errors
from nats.js import JetStreamContext

from . import _wire
from ._errors import KilnError, ObjectCorrupt, ObjectNotFound

# How long a read waits for an object's next chunk: a healthy server sends them milliseconds
# apart (kiln's CHUNK_PATIENCE).
CHUNK_PATIENCE_S = 20.0

_STREAM = f"OBJ_{_wire.BUCKET_DATA}"


async def read(js: JetStreamContext, name: str) -> bytes:
    """Object `name`'s bytes, checked against its entry."""
    info = await _entry(js, name)
    link = _link(info)
    if link is None:
        return await _chunks(js, name, info)
    target, bucket = link.get("name"), link.get("bucket")
    if not isinstance(target, str) or not target:
        raise ObjectCorrupt(
            f"object {name!r} is a link to the whole bucket {bucket!r}, not to an object: kiln "
            f"reads one object; name it (in {_wire.BUCKET_DATA})"
        )
    if bucket != _wire.BUCKET_DATA:
        raise ObjectCorrupt(
            f"object {name!r} is a link to {target!r} in bucket {bucket!r}: kiln reads objects "
            f"in {_wire.BUCKET_DATA} only; put the data there and name it"
        )
    try:
        info = await _entry(js, target)
    except ObjectNotFound as e:
        raise ObjectNotFound(
            f"object {name!r} is a link to {target!r}, which is not in {_wire.BUCKET_DATA}"
        ) from e
    if _link(info) is not None:
        raise ObjectCorrupt(
            f"object {name!r} is a link to {target!r}, itself a link: kiln follows one link; "
            "name the object the links lead to"
        )
    return await _chunks(js, target, info)


async def _entry(js: JetStreamContext, name: str) -> dict[str, Any]:
    """Object `name`'s entry, checked for what a read needs."""
    encoded = base64.urlsafe_b64encode(name.encode()).decode()
    try:
        stored = await js.get_last_msg(_STREAM, f"$O.{_wire.BUCKET_DATA}.M.{encoded}")
    except nats.js.errors.NotFoundError as e:
        raise ObjectNotFound(f"no object {name!r} in {_wire.BUCKET_DATA}") from e
    try:
        info = json.loads(stored.data or b"")
    except ValueError:
        info = None
    if isinstance(info, dict) and info.get("deleted"):
        raise ObjectNotFound(f"no object {name!r} in {_wire.BUCKET_DATA} (it was deleted)")
    options = info.get("options") if isinstance(info, dict) else None
    link = options.get("link") if isinstance(options, dict) else None
    well_formed = options is None or (
        isinstance(options, dict) and (link is None or isinstance(link, dict))
    )
    if not isinstance(info, dict) or not well_formed or not (link or _readable(info)):
        raise ObjectCorrupt(
            f"object {name!r}'s entry in {_wire.BUCKET_DATA} does not parse as an object's "
            "info: another client wrote it; put the object again"
        )
    return info


def _link(info: dict[str, Any]) -> dict[str, Any] | None:
    """The link an entry checked by `_entry` holds, if it is one."""
    options = info.get("options")
    link = options.get("link") if isinstance(options, dict) else None
    return link if isinstance(link, dict) else None


def _readable(info: dict[str, Any]) -> bool:
    """Whether `info` names its chunks, their count and size as a read needs them."""
    nuid, size, chunks = info.get("nuid"), info.get("size"), info.get("chunks")
    counts = all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (size, chunks))
    named = isinstance(nuid, str) and nuid != "" and not any(c in nuid for c in ".*> \t\r\n")
    return counts and (named or chunks == 0)


async def _chunks(js: JetStreamContext, name: str, info: dict[str, Any]) -> bytes:
    """The bytes of the object `info` describes (not a link), from its chunks."""
    chunks, size = int(info["chunks"]), int(info["size"])
    if chunks == 0:
        return _checked(name, info, b"", 0)
    subject = f"$O.{_wire.BUCKET_DATA}.C.{info['nuid']}"
    try:
        await js.get_last_msg(_STREAM, subject)
    except nats.js.errors.NotFoundError as e:
        raise ObjectCorrupt(
            f"object {name!r} is corrupt: none of its {chunks} chunks is stored (they aged out, "
            f"were purged, or the object was put again as it was read); {_AGAIN}"
        ) from e
    sub = await js.subscribe(
        subject,
        stream=_STREAM,
        ordered_consumer=True,
        deliver_policy=nats.js.api.DeliverPolicy.ALL,
    )
    data = bytearray()
    read = 0
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=CHUNK_PATIENCE_S)
            except nats.errors.TimeoutError as e:
                raise KilnError(
                    f"object {name!r}: chunk {read + 1} of {chunks} did not come within "
                    f"{CHUNK_PATIENCE_S:.0f} s: the object was put again or deleted as it was "
                    "read, or the server is overloaded; try again"
                ) from e
            data += msg.data
            read += 1
            if read > chunks or len(data) > size:
                raise ObjectCorrupt(
                    f"object {name!r} is corrupt: it holds more than its info says "
                    f"({chunks} chunks of {size} bytes); {_AGAIN}"
                )
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return _checked(name, info, bytes(data), read)


# What to do about a corrupt object: store it again, or, a job's output, run the job again.
_AGAIN = "put it again (a job's stored output: run the job again)"


def _checked(name: str, info: dict[str, Any], data: bytes, read: int) -> bytes:
    """`data`, read in `read` chunks, when it is the object `info` describes."""
    chunks, size = int(info["chunks"]), int(info["size"])
    if read != chunks or len(data) != size:
        raise ObjectCorrupt(
            f"object {name!r} is corrupt: it holds {read} chunks of {len(data)} bytes where its "
            f"info says {chunks} of {size}; {_AGAIN}"
        )
    digest = info.get("digest")
    if digest is not None and _sha256(digest) != hashlib.sha256(data).digest():
        raise ObjectCorrupt(
            f"object {name!r} is corrupt: its bytes do not match its stored SHA-256 digest; "
            f"{_AGAIN}"
        )
    return data


def _sha256(digest: object) -> bytes | None:
    """The 32 bytes a `SHA-256=<base64>` digest holds (URL-safe or standard alphabet)."""
    if not isinstance(digest, str) or not digest.startswith("SHA-256="):
        return None
    encoded = digest.removeprefix("SHA-256=")
    padded = encoded + "=" * (-len(encoded) % 4)
    for decode in (base64.urlsafe_b64decode, base64.standard_b64decode):
        try:
            raw = decode(padded)
        except (binascii.Error, ValueError):
            continue
        if len(raw) == 32:
            return raw
    return None
