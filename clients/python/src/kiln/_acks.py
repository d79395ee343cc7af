"""JetStream publishes with pipelined acknowledgements, whose refusals come back as errors.

nats-py's `publish_async` leaves its future unset when the server refuses a message (its
`APIError.from_error` raises inside the reply handler, nats-py 2.16): a full KILN_JOBS looked
like a 10 s silence instead of the server's "maximum messages exceeded", given at once. This
is the same request on one wildcard inbox, with the reply read here.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import nats.js.api
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

_NO_RESPONDERS = "503"
#: Publishes waiting for their acknowledgement at once, at most (as nats-py's 4,000): past it a
#: publish waits for room, and the replies never outgrow the subscription's pending limits.
MAX_PENDING = 4000


class Acks:
    """Publishes to JetStream on one connection, each returning a future of its `PubAck`."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._prefix: str | None = None
        self._waiting: dict[str, asyncio.Future[nats.js.api.PubAck]] = {}
        self._tokens = itertools.count()
        self._subscribing = asyncio.Lock()
        self._room = asyncio.Semaphore(MAX_PENDING)

    async def publish(
        self, subject: str, body: bytes, headers: dict[str, str] | None = None
    ) -> asyncio.Future[nats.js.api.PubAck]:
        """Publish `body` on `subject`; the future gets the server's `PubAck`, or
        `nats.js.errors.APIError` (a refusal), `NoStreamResponseError` (no stream takes the
        subject). Raises what `Client.publish` raises (`MaxPayloadError`, a closed
        connection)."""
        async with self._subscribing:
            if self._prefix is None:
                prefix = f"{self._nc.new_inbox()}."
                await self._nc.subscribe(f"{prefix}*", cb=self._reply)
                self._prefix = prefix
        await self._room.acquire()
        token = str(next(self._tokens))
        future: asyncio.Future[nats.js.api.PubAck] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        future.add_done_callback(lambda done: self._settled(token, done))
        try:
            await self._nc.publish(subject, body, reply=f"{self._prefix}{token}", headers=headers)
        except BaseException:
            future.cancel()
            raise
        return future

    def _settled(self, token: str, future: asyncio.Future[nats.js.api.PubAck]) -> None:
        # A future given up on (a timeout cancels it) no longer waits for its reply; a refusal
        # nobody awaited (a caller cancelled meanwhile) is not logged as never retrieved.
        self._waiting.pop(token, None)
        self._room.release()
        if not future.cancelled():
            future.exception()

    async def _reply(self, msg: Msg) -> None:
        assert self._prefix is not None
        future = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
            future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            reply: Any = json.loads(msg.data)
        except ValueError:
            future.set_exception(
                nats.js.errors.APIError(description=f"not a JetStream reply: {msg.data[:200]!r}")
            )
            return
        if not isinstance(reply, dict):
            not_ack = f"not a PubAck: {reply!r:.200}"
            future.set_exception(nats.js.errors.APIError(description=not_ack))
        elif "error" in reply:
            future.set_exception(_api_error(reply["error"]))
        else:
            future.set_result(nats.js.api.PubAck.from_response(reply))


def _api_error(error: Any) -> nats.js.errors.APIError:
    """The server's `{"code", "err_code", "description"}` as nats-py's error of its code."""
    if not isinstance(error, dict):
        return nats.js.errors.APIError(description=str(error))
    known = {k: error[k] for k in ("code", "err_code", "description") if k in error}
    kinds: dict[Any, type[nats.js.errors.APIError]] = {
        503: nats.js.errors.ServiceUnavailableError,
        500: nats.js.errors.ServerError,
        404: nats.js.errors.NotFoundError,
        400: nats.js.errors.BadRequestError,
    }
    return kinds.get(known.get("code"), nats.js.errors.APIError)(**known)
