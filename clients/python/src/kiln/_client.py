"""Connecting to kiln's NATS server, submitting jobs, and the KILN_DATA object store."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import numbers
import os
import re
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

import nats
import nats.errors
import nats.js.api
import nats.js.errors
import numpy as np
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.client import JetStreamContext
from nats.js.object_store import ObjectStore

from . import _context, _download, _upload, _wire
from ._acks import Acks
from ._errors import ConnectError, KilnError, NoAnswer, ObjectNotFound, SubmitError
from ._job import Job, JobState, Result, answers
from ._job import _time as _parse_time

log = logging.getLogger("kiln")

DEFAULT_URL = "nats://127.0.0.1:4222"
#: Seconds to wait for the server's acknowledgement of a published job.
ACK_TIMEOUT = 10.0

# JetStream's error codes for "no message found" and "stream not found".
_NO_MESSAGE = 10037
_NO_STREAM = 10059

#: Up to this many jobs in one submission, each job's result subject is subscribed to (the
#: server sends only those results); past it, every result of the kind (as `kiln submit`).
SUBSCRIBE_EACH_UP_TO = 1000
#: Results heard that the client looks up in KILN_RESULTS at once (each a request to the
#: server, as `kiln submit --wait`): one at a time, a burst of results was read at the pace of
#: those round trips (20,000 small jobs' results took 4.95 s after their submission).
LOOKUPS_AT_ONCE = 64
#: KILN_JOBS' duplicate window in seconds (`kiln_proto::streams::DUPLICATE_WINDOW`).
DUPLICATE_WINDOW_S = 600
# Past this many ids noted by `_claim_ids`, those older than the window are forgotten.
GIVEN_IDS_KEPT = 4096
# How often, and how far apart, a duplicate's missing `queued` record is asked for.
RECORD_TRIES = 5
RECORD_RETRY_S = 0.2

_ENVELOPE_KEYS = frozenset(
    {"kind", "device", "id", "seed", "timeout_ms", "output", "upload", "params"}
)


def connect(
    url: str | None = None,
    *,
    creds: str | os.PathLike[str] | None = None,
    nkey: str | os.PathLike[str] | None = None,
    user: str | None = None,
    password: str | None = None,
    token: str | None = None,
    tls_ca: str | os.PathLike[str] | None = None,
    tls_cert: str | os.PathLike[str] | None = None,
    tls_key: str | os.PathLike[str] | None = None,
    tls_first: bool = False,
    context: str | None = None,
    name: str = "kiln-python",
    connect_timeout: float = 2.0,
) -> Connecting:
    """Connect to the NATS server kiln runs on: `await kiln.connect(...)` gives a `Client`,
    `async with kiln.connect(...) as client:` closes it at the end.

    Each option left out is read from the environment as the `kiln` CLI reads it: `NATS_URL`
    (default nats://127.0.0.1:4222; several URLs comma-separated), `NATS_CREDS` (credentials
    file), `NATS_NKEY` (nkey seed file), `NATS_USER` and `NATS_PASSWORD`, `NATS_TOKEN`,
    `NATS_CA`, `NATS_CERT` and `NATS_KEY` (TLS; `tls_first`: TLS before the NATS protocol,
    for a server with `handshake_first`); what neither gives, from the `nats` CLI's
    context `context` (else `NATS_CONTEXT`, else the one `nats context select` chose, if any:
    `$XDG_CONFIG_HOME/nats/context/<name>.json`, default `~/.config/nats/`). A context that
    does not exist or sets what kiln cannot honour (`jetstream_domain`, ...) raises
    ValueError naming it, as do options that go together given alone.
    """
    env = os.environ.get
    c = _context.load(context or env("NATS_CONTEXT")) or _context.NatsContext("")
    given_url = url or env("NATS_URL")
    # A URL given with its own credentials (nats://user:pass@host) is used with them, as
    # nats.go and the CLI use them: not with the context's user, password or token.
    own = given_url is not None and _has_credentials(given_url)
    options = _Options(
        url=given_url or c.url or DEFAULT_URL,
        creds=_path(creds or env("NATS_CREDS") or c.creds),
        nkey=_path(nkey or env("NATS_NKEY") or c.nkey),
        user=user or env("NATS_USER") or (None if own else c.user),
        password=password or env("NATS_PASSWORD") or (None if own else c.password),
        token=token or env("NATS_TOKEN") or (None if own else c.token),
        tls_ca=_path(tls_ca or env("NATS_CA") or c.ca),
        tls_cert=_path(tls_cert or env("NATS_CERT") or c.cert),
        tls_key=_path(tls_key or env("NATS_KEY") or c.key),
        tls_first=tls_first or c.tls_first,
        context=c.name or None,
        name=name,
        connect_timeout=connect_timeout,
    )
    if (options.user is None) != (options.password is None):
        raise ValueError(
            "user and password go together (NATS_USER, NATS_PASSWORD, or a NATS context's): "
            "give both or neither"
        )
    if (options.tls_cert is None) != (options.tls_key is None):
        raise ValueError(
            "tls_cert and tls_key go together (NATS_CERT, NATS_KEY, or a NATS context's cert "
            "and key): give both or neither"
        )
    return Connecting(options)


def _path(value: str | os.PathLike[str] | None) -> str | None:
    return os.fspath(value) if value else None


@dataclass(frozen=True)
class _Options:
    url: str
    creds: str | None
    nkey: str | None
    user: str | None
    password: str | None
    token: str | None
    tls_ca: str | None
    tls_cert: str | None
    tls_key: str | None
    tls_first: bool
    #: The `nats` CLI context that filled in what was not given, if any.
    context: str | None
    name: str
    connect_timeout: float


class Connecting:
    """What `kiln.connect` returns: await it for a `Client`, or use it in `async with`."""

    def __init__(self, options: _Options) -> None:
        self._options = options
        self._client: Client | None = None

    def __await__(self) -> Generator[Any, None, Client]:
        return self._connect().__await__()

    async def __aenter__(self) -> Client:
        self._client = await self._connect()
        return self._client

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.close()

    async def _connect(self) -> Client:
        o = self._options
        servers = [s.strip() for s in o.url.split(",") if s.strip()]
        if not servers:
            raise ValueError(
                f"{o.url!r} is not a NATS URL: give nats://host:port, comma-separated for several"
            )
        kwargs = _auth_and_tls(o)
        errors: list[Exception] = []
        made: list[Client] = []
        # What errors and logs say the server is: never the credentials a URL holds.
        shown = _redacted(o.url)
        if o.context:
            shown += f" (NATS context {o.context!r})"

        tls_failed = asyncio.Event()

        async def on_error(e: Exception) -> None:
            errors.append(e)
            log.debug("NATS at %s: %s", shown, _redacted(str(e)))
            if isinstance(e, ssl.SSLError):
                tls_failed.set()

        async def on_reconnect() -> None:
            # Results stored while the connection was down reached no subscription.
            for client in made:
                client._look_up_after_reconnect()

        async def on_closed() -> None:
            # Closed by nats-py itself (a server that refuses the credentials on reconnecting):
            # the results waited for will not come on this client.
            for client in made:
                client._connection_closed()

        nc = NATS()
        # One attempt per server (and one retry) for the first connection, so that a server
        # that is not there is reported at once ...
        kwargs.update(
            servers=servers,
            name=o.name,
            connect_timeout=o.connect_timeout,
            allow_reconnect=True,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.1,
            error_cb=on_error,
            reconnected_cb=on_reconnect,
            closed_cb=on_closed,
        )
        connecting = asyncio.ensure_future(nc.connect(**kwargs))
        # ... and at once after a failed TLS handshake with the one server given (a
        # certificate it does not trust), after which nats-py's first connection hung for
        # ever; with several, another may be healthy: within the bound.
        waits: set[asyncio.Future[Any]] = {connecting}
        if len(servers) == 1:
            waits.add(asyncio.ensure_future(tls_failed.wait()))
        bound = 2 * o.connect_timeout * len(servers) + 5.0
        try:
            await asyncio.wait(waits, timeout=bound, return_when=asyncio.FIRST_COMPLETED)
        finally:  # the caller cancelled too: nothing left running, no connection kept
            for waiting in waits:
                if not waiting.done():
                    waiting.cancel()
            if not connecting.done() or connecting.cancelled() or connecting.exception():
                await asyncio.shield(_close_quietly(nc))
        if connecting.cancelled() or connecting.exception() is not None:
            failure = None if connecting.cancelled() else connecting.exception()
            cause = failure or TimeoutError(f"no connection within {bound:.0f} s")
            # The errors nats-py reported say more than its last ("no servers available").
            given = bool(o.creds or o.nkey or o.user or o.token or "@" in o.url)
            raise _connect_error(shown, [cause, *errors], given) from failure
        # ... and a connection lost later is retried for as long as the client lives, 2 s
        # apart, as kiln's own roles do: with nats-py's 60 attempts, a server away for over
        # two minutes closed the client under its user, and `job.result()` waited for ever.
        nc.options["max_reconnect_attempts"] = -1
        nc.options["reconnect_time_wait"] = 2.0
        client = Client(nc)
        made.append(client)
        return client


def _wake(watched: list[tuple[str, _Watch]], why: str) -> None:
    """End the `job.result()` calls still waiting on `watched` with `ConnectError`."""
    for job_id, watch in watched:
        if not watch.job._future.done():
            watch.job._future.set_exception(
                ConnectError(
                    f"{why} before job {job_id}'s result arrived; the job goes on: a new "
                    "client's `await client.job(id)` gets it"
                )
            )
            watch.job._future.exception()  # no "never retrieved" warning if none waits


def _has_credentials(urls: str) -> bool:
    """Whether any of the comma-separated `urls` carries credentials (`user:pass@`)."""
    for one in urls.split(","):
        rest = one.strip().split("://", 1)[-1]
        if "@" in rest.split("/", 1)[0]:
            return True
    return False


def _auth_and_tls(o: _Options) -> dict[str, Any]:
    """nats-py's connect arguments for the credentials and TLS settings of `o`."""
    kwargs: dict[str, Any] = {}
    if o.creds:
        _readable(o.creds, "credentials file (creds, NATS_CREDS)")
        kwargs["user_credentials"] = o.creds
    if o.nkey:
        _readable(o.nkey, "nkey seed file (nkey, NATS_NKEY)")
        kwargs["nkeys_seed"] = o.nkey
    if o.user is not None:
        kwargs["user"], kwargs["password"] = o.user, o.password
    if o.token:
        kwargs["token"] = o.token
    if o.tls_ca or o.tls_cert or o.tls_first:
        # Named here: ssl says only "No such file or directory".
        for path, what in [
            (o.tls_ca, "CA certificate (tls_ca, NATS_CA)"),
            (o.tls_cert, "client certificate (tls_cert, NATS_CERT)"),
            (o.tls_key, "client key (tls_key, NATS_KEY)"),
        ]:
            if path:
                _readable(path, what)
        context = ssl.create_default_context(cafile=o.tls_ca)
        if o.tls_cert and o.tls_key:
            context.load_cert_chain(o.tls_cert, o.tls_key)
        kwargs["tls"] = context
    if o.tls_first:  # TLS before the NATS protocol (a server with handshake_first)
        kwargs["tls_handshake_first"] = True
    return kwargs


async def _close_quietly(nc: NATS) -> None:
    try:
        await nc.close()
    except Exception:  # never connected: nothing to close
        pass


#: A publish no JetStream stream took: none on its subject, or no JetStream at all.
_NO_STREAM_ANSWERED = (nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError)


def _connect_error(shown: str, errors: list[BaseException], given: bool) -> ConnectError:
    """Why the first connection failed, from every error it met: a refusal of the
    credentials (`given`: whether any were) or a TLS failure said as such, even when a later
    error (a connection reset, a timeout) came after it."""
    texts = [_redacted(str(e)) or type(e).__name__ for e in errors]
    for text in texts:
        if not given and ("authorization" in text.lower() or "authentication" in text.lower()):
            return ConnectError(
                f"the NATS server at {shown} requires credentials, and none were given "
                f"({text}): give user/password, nkey, creds or token (NATS_USER, NATS_PASSWORD, "
                "NATS_NKEY, NATS_CREDS, NATS_TOKEN, or a NATS context's: context=, NATS_CONTEXT)"
            )
        if "authorization" in text.lower() or "authentication" in text.lower():
            return ConnectError(
                f"the NATS server at {shown} refused these credentials ({text}): check user/"
                "password, nkey, creds or token (NATS_USER, NATS_PASSWORD, NATS_NKEY, "
                "NATS_CREDS, NATS_TOKEN, or a NATS context's: context=, NATS_CONTEXT)"
            )
    for error, text in zip(errors, texts):
        if isinstance(error, ssl.SSLError) or "certificate" in text.lower():
            return ConnectError(
                f"TLS with the NATS server at {shown} failed ({text}): check tls_ca (and "
                "tls_cert/tls_key for mutual TLS), and that the server's certificate names "
                "the host in the URL"
            )
    return ConnectError(
        f"could not reach NATS at {shown} ({texts[-1]}): start nats-server -js, or point "
        "url / NATS_URL at your server"
    )


def _redacted(text: str) -> str:
    """`text` with the user, password or token of every URL in it replaced by `***`, as the
    `kiln` command shows URLs (`nats://***@host:4222`)."""
    return re.sub(r"(?:(?<=://)|(?<=^)|(?<=[\s,(]))[^\s,/@()]+@", "***@", text)


def _readable(path: str, what: str) -> None:
    # Exists, not "is a file": a pipe (`<(vault read …)`, /dev/fd/N) is read as well.
    if not os.path.exists(path):
        raise ValueError(f"{what} {path!r} does not exist")


@dataclass
class _Watch:
    """A job waiting for its result: its own subscription, or a place on the shared ones of
    `kinds` (its kind's and `unknown`'s)."""

    job: Job
    sub: Subscription | None
    kinds: tuple[str, ...]


@dataclass
class _Prepared:
    """A job checked and encoded, its inputs not yet uploaded."""

    job_id: str
    kind: str
    device: str
    params: dict[str, Any]
    uploads: list[_wire.Upload]
    seed: int
    timeout_ms: int | None
    output: str
    #: Whether the caller named the id (else it is a fresh one, answered by nothing yet).
    given_id: bool
    #: Whether the caller asked for every value inline (`upload=False`).
    inline_only: bool = False
    body: bytes = b""
    #: The objects its inputs were stored as, once stored.
    stored: list[str] = field(default_factory=list)
    #: What it computes (`_wire.job_digest`), for a job whose id the caller gave.
    digest: str = ""


def _whole(name: str, value: Any) -> int:
    """`value` as an int, refused (TypeError) unless it is a whole number: a seed of 1.7 ran
    as seed 1 without a word."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a whole number, got {value!r}")
    return int(value)


def _computes_otherwise(record: Mapping[str, Any], p: _Prepared) -> bool:
    """Whether a `queued` record of `p`'s id is of a job that may compute something else:
    this client's digest of it differs, or only `kiln submit`'s digest is there, which this
    client cannot compare (so `kiln submit` refuses a Python job's id, its result possibly
    for other inputs). A record with neither (a `kiln dlq replay`) says nothing."""
    digest = record.get("py_digest")
    if isinstance(digest, str):
        return digest != p.digest
    return isinstance(record.get("digest"), str)


def _in_window(at: datetime | None) -> bool:
    """Whether `at` lies within the server's duplicate window of now, with a minute's grace
    for clocks (the server's window runs from when it stored the job)."""
    if at is None:
        return False
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return abs((datetime.now(timezone.utc) - at).total_seconds()) <= DUPLICATE_WINDOW_S + 60


def _phase_and_replay(record: Mapping[str, Any]) -> tuple[str | None, int]:
    """The phase and replay number of a KILN_STATE record (None, 0 without)."""
    try:
        return record.get("phase"), int(record.get("replay") or 0)
    except (ValueError, TypeError):
        return None, 0


def _cancels(mark: bytes | None, record: Mapping[str, Any]) -> bool:
    """Whether a KILN_CANCEL mark applies to the job `record` describes: one queued after
    the mark (by more than a second: clocks differ) is a later job under that id, which the
    workers do not cancel either."""
    if mark is None:
        return False
    try:
        requested = _parse_time(json.loads(mark).get("requested_at"))
    except (ValueError, AttributeError):
        return True
    queued = _parse_time(record.get("at")) if record.get("phase") == "queued" else None
    if requested is None or queued is None:
        return True
    return queued <= requested + timedelta(seconds=1)


def _refused(refused: dict[str, str], accepted: list[Job]) -> SubmitError:
    """The error of a submission that refused the jobs `refused` names: the first's reason,
    and how many more."""
    first = next(iter(refused.values()))
    more = f" (and {len(refused) - 1} more job(s))" if len(refused) > 1 else ""
    return SubmitError(f"{first}{more}", jobs=list(accepted), refused=refused)


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _kiln_errors(
    method: Callable[_P, Coroutine[Any, Any, _T]],
) -> Callable[_P, Coroutine[Any, Any, _T]]:
    """nats-py's errors of a closed client, of a request the server did not answer and of a
    server without JetStream, as kiln's (`ConnectError`, `NoAnswer`): they escaped `except
    kiln.KilnError`, saying only "nats: connection closed", "nats: timeout" or
    "ServiceUnavailableError: code=None"."""

    @functools.wraps(method)
    async def translated(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        client = args[0] if args and isinstance(args[0], Client) else None
        if client is not None:
            client._check_loop()
        try:
            return await method(*args, **kwargs)
        except nats.errors.ConnectionClosedError as e:
            why = "client.close(), or its `async with` ended"
            if client is not None and client._closed_why:
                why = client._closed_why
            raise ConnectError(
                f"this client is closed ({why}): connect again with kiln.connect()"
            ) from e
        except nats.errors.TimeoutError as e:
            raise NoAnswer(
                "the NATS server did not answer in time: it is unreachable (the client keeps "
                "reconnecting) or overloaded; try again"
            ) from e
        except nats.js.errors.ServiceUnavailableError as e:
            raise _no_jetstream(client._nc if client is not None else None, e) from e

    return translated


def _no_jetstream(nc: NATS | None, e: nats.js.errors.ServiceUnavailableError) -> ConnectError:
    """What nats-py's `ServiceUnavailableError` means: no JetStream answered the request (the
    server runs without it), or JetStream said it is unavailable for now (its reason)."""
    at = "the NATS server"
    if nc is not None and nc.connected_url is not None:
        at = f"the NATS server at {_redacted(nc.connected_url.geturl())}"
    if e.description:  # JetStream answered: "JetStream system temporarily unavailable", ...
        return ConnectError(
            f"JetStream on {at} is unavailable ({e.description}): a cluster may be electing "
            "a leader, or JetStream is starting; try again in a moment"
        )
    return ConnectError(
        f"{at} runs without JetStream, where kiln keeps its jobs, results and KILN_DATA, and "
        "no JetStream server answered through it: start it with -js (`nats-server -js`), or "
        "add `jetstream {}` to its configuration (then run `kiln init`)"
    )


class Client:
    """A connection to kiln. Make one with `await kiln.connect()`; close it with
    `await client.close()` (or use `async with`)."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        # The event loop it was connected on, which its connection and futures belong to.
        self._loop = asyncio.get_running_loop()
        # Why the connection closed, when nats-py closed it by itself.
        self._closed_why: str | None = None
        # The puts under way, which `close()` stops so that they purge what they sent.
        self._uploads: dict[asyncio.Future[Any], Any] = {}
        self._js: JetStreamContext = nc.jetstream()
        self._acks = Acks(nc)
        self._data: ObjectStore | None = None
        # Jobs waiting for their result: each with its own subscription, or (in batches
        # past SUBSCRIBE_EACH_UP_TO) on one subscription to every result of its kind and one
        # to every result of kind `unknown`.
        self._watching: dict[str, _Watch] = {}
        self._sweep_again = False
        self._by_kind: dict[str, tuple[Subscription, dict[str, Job]]] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self._lookups = asyncio.Semaphore(LOOKUPS_AT_ONCE)
        self._sweep: asyncio.Future[None] | None = None
        # The ids the caller gave that this client submitted, with what each job computes
        # and when (the loop's time): concurrent submits under one id all read no record
        # before any is written, and were each answered with the first one's result.
        self._given: dict[str, tuple[str, str, float]] = {}

    @property
    def nats(self) -> NATS:
        """The underlying nats-py connection."""
        return self._nc

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop waiting for results and close the connection. A `job.result()` still waiting
        raises `ConnectError` (it waited for ever, or until its timeout, for a result this
        client no longer receives)."""
        self._check_loop()
        self._closed_why = self._closed_why or "client.close(), or its `async with` ended"
        if self._sweep is not None:
            self._sweep.cancel()
        watched = list(self._watching.items())
        for job_id, _ in watched:
            await self._unwatch(job_id)
        _wake(watched, "the client was closed")
        await _upload.stop_all(self._uploads)
        if not self._nc.is_closed:
            try:
                await self._nc.close()
            except (OSError, nats.errors.Error) as e:
                # With the server away, nats-py's close fails flushing what it had to send.
                log.debug("closing the connection: %s", e)

    def _check_loop(self) -> None:
        """Refuse a call from another event loop (another thread's `asyncio.run`): nats-py's
        connection serves one loop, and such a call hung for 25 s and left the client broken
        for good."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:  # called outside a loop: asyncio says so itself when awaited
            return
        if running is not self._loop:
            raise RuntimeError(
                "this kiln client belongs to the event loop it was connected on; from another "
                "thread, run its calls on that loop: asyncio.run_coroutine_threadsafe("
                "client.submit(...), loop).result()"
            )

    def _connection_closed(self) -> None:
        """nats-py closed the connection by itself: wake the waits, which nothing else
        would (this client's own `close()` has woken them already)."""
        if not self._closed_why:
            self._closed_why = "the connection to the server was closed"
        watched = list(self._watching.items())
        self._watching.clear()
        self._by_kind.clear()
        _wake(watched, "the connection to the server was closed")

    # -- submitting -----------------------------------------------------------------------

    @_kiln_errors
    async def submit(
        self,
        kind: str,
        device: str = "cpu",
        *,
        id: str | None = None,
        seed: int = 0,
        timeout_ms: int | None = None,
        output: _wire.OutputMode = "auto",
        upload: bool | None = None,
        **params: Any,
    ) -> Job:
        """Submit one job of `kind` to device class `device` (gpu, cpu or auto) and return it
        (the job is stored in KILN_JOBS when this returns; `await job.result()` waits for its
        answer).

        `params` are the kind's parameters. A numpy array (or nested list) for a tensor
        parameter (`a`, `b`, `image`, `x`) is sent inline when its JSON is small, else stored
        in KILN_DATA as `inputs/<id>/<submission>/<param>` and passed by reference; `upload=True`
        always stores, `upload=False` never does. `kiln.ObjectRef`, the `ObjectInfo` from
        `put`, or a `Result` with a stored output pass an object by reference; for `dataset`
        and `model` a plain string names the object.

        An id given that already has an answer of this kind (a job id keeps its first answer,
        however long ago it was given) is not sent again: the job returned has `duplicate`
        true and the earlier job's result, as for a resubmission the server drops within its
        10-minute duplicate window.

        Raises ValueError for a bad id, kind, class or output, a single number for a
        tensor parameter of one of kiln's kinds, or a matmul or conv2d `dtype` only GPU
        workers compute (tf32, bf16, f16) sent to "cpu", before anything is sent, and
        `SubmitError` when the server refuses the job.
        """
        spec: dict[str, Any] = dict(params)
        spec.update(
            kind=kind,
            device=device,
            id=id,
            seed=seed,
            timeout_ms=timeout_ms,
            output=output,
            upload=upload,
        )
        jobs = await self._submit([self._prepare(spec, params)])
        return jobs[0]

    @_kiln_errors
    async def submit_many(
        self,
        specs: Iterable[Mapping[str, Any]],
        *,
        device: str = "cpu",
        upload: bool | None = None,
    ) -> list[Job]:
        """Submit many jobs at once with pipelined acknowledgements. Each spec is a mapping
        with `kind` and the kind's parameters, optionally `device`, `id`, `seed`,
        `timeout_ms`, `output`, `upload` (defaults as in `submit`, `device` and `upload`
        from this call), or the parameters under `params` (each parameter in one place).

        Every spec is checked before anything is sent (ValueError). When the server refuses
        some jobs, raises `SubmitError` after the rest are in: its `jobs` are the accepted
        ones and `refused` says why each other one was not.
        """
        prepared = []
        for n, spec in enumerate(specs):
            if not isinstance(spec, Mapping):
                raise TypeError(
                    f"spec {n}: each job spec is a dict such as {{'kind': 'vector_add', "
                    f"'len': 1024}}, not {type(spec).__name__} {spec!r:.80}"
                )
            if "kind" not in spec:
                raise ValueError(
                    f"spec {n}: a job spec needs a 'kind' ({', '.join(_wire.KINDS)}): "
                    f"{dict(spec)!r:.200}"
                )
            merged: dict[str, Any] = {"device": device, "upload": upload}
            merged.update(spec)
            params = dict(merged.pop("params", None) or {})
            top = {k: v for k, v in merged.items() if k not in _ENVELOPE_KEYS}
            both = sorted(set(top) & set(params))
            if both:
                # One of the two would be dropped without a word (the top level won).
                raise ValueError(
                    f"spec {n} ({spec['kind']}): {', '.join(map(repr, both))} given both "
                    "beside 'kind' and under 'params': give each parameter once"
                )
            params.update(top)
            try:
                prepared.append(self._prepare(merged, params))
            except (ValueError, TypeError) as e:
                # Which of the batch's specs it is (the message named only the parameter).
                again = ValueError if isinstance(e, ValueError) else TypeError
                raise again(f"spec {n} ({spec['kind']}): {e}") from e
        ids = [p.job_id for p in prepared]
        if len(set(ids)) != len(ids):
            repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
            raise ValueError(f"job ids repeat within one submit_many: {', '.join(repeated[:5])}")
        return await self._submit(prepared)

    def _prepare(self, spec: Mapping[str, Any], params: Mapping[str, Any]) -> _Prepared:
        kind = _wire.check_kind(spec["kind"])
        device = _wire.check_class(spec.get("device") or "cpu")
        given_id = spec.get("id")
        job_id = _wire.new_job_id() if given_id is None else _wire.check_submitted_id(given_id)
        output = _wire.check_output(spec.get("output") or "auto")
        seed = _whole("seed", spec.get("seed") or 0)
        if not 0 <= seed < 2**64:
            raise ValueError(f"seed must be from 0 to 2**64 - 1, got {seed}")
        timeout_ms = spec.get("timeout_ms")
        if timeout_ms is not None and _whole("timeout_ms", timeout_ms) < 1:
            raise ValueError(f"timeout_ms must be >= 1, got {timeout_ms}")
        _wire.check_dtype_class(kind, device, params.get("dtype"))
        upload = spec.get("upload")
        encoded: dict[str, Any] = {}
        uploads: list[_wire.Upload] = []
        for name, value in params.items():
            planned = self._param(kind, name, value, upload)
            if isinstance(planned, _wire.Upload):
                uploads.append(planned)
            else:
                encoded[name] = planned
        return _Prepared(
            job_id,
            kind,
            device,
            encoded,
            uploads,
            seed,
            None if timeout_ms is None else int(timeout_ms),
            output,
            given_id is not None,
            inline_only=upload is False,
        )

    @staticmethod
    def _param(kind: str, name: str, value: Any, upload: bool | None) -> Any:
        if isinstance(value, Result):
            return value.ref().to_json()
        if isinstance(value, (_wire.ObjectRef, _wire.ObjectInfo)):
            return _wire.json_default(value)
        # A str names a stored object, for a parameter that takes one (it was sent as a str,
        # which the worker could not read as a tensor).
        tensor = kind in _wire.KINDS and name in _wire.TENSOR_PARAMS
        if (name in _wire.REFERENCE_PARAMS or tensor) and isinstance(value, str):
            return _wire.ObjectRef(value).to_json()
        if isinstance(value, os.PathLike):
            raise TypeError(
                f"{name}={type(value).__name__}({os.fspath(value)!r}): a job names a stored "
                f"object, not a local file: store it first (info = await client.put(name, "
                f"path)) and pass {name}=info, or pass the array itself ({name}=np.load(path))"
            )
        # (None is sent as null: a train_mlp without a dataset trains on generated points.)
        reference = name in _wire.REFERENCE_PARAMS and kind in _wire.KINDS
        if reference and value is not None and not isinstance(value, dict):
            raise TypeError(
                f"{name} takes a stored object (its name, a kiln.ObjectRef, client.put's "
                f"result or a Result), not {type(value).__name__}: store the "
                f"{'dataset (CSV, or safetensors with x and y)' if name == 'dataset' else 'model'}"
                " with client.put first"
            )
        if name in _wire.TENSOR_PARAMS and (
            isinstance(value, (np.ndarray, np.generic, list, tuple))
            # A single number, which plan_tensor refuses: kiln's own kinds take arrays there
            # (another kind's parameter of that name is its own business).
            or (kind in _wire.KINDS and isinstance(value, (int, float)))
        ):
            flat = name in _wire.FLAT_PARAMS.get(kind, ())
            dims = _wire.INLINE_DIMS.get(kind, {}).get(name)
            allowed = _wire.TENSOR_DIMS.get(kind, {}).get(name)
            return _wire.plan_tensor(name, value, upload, flat=flat, dims=dims, allowed=allowed)
        return value

    async def _submit(self, prepared: list[_Prepared]) -> list[Job]:
        if not prepared:  # nothing to send (`submit_many([])`)
            return []
        # With the connection down, the id lookups below would each wait out the outage
        # before the publish waited again (20 s for one job): the submit waits for the
        # connection once, for as long as it would for the acknowledgement.
        if not await self._connected_within(ACK_TIMEOUT):
            raise _refused({p.job_id: self._unsent(p) for p in prepared}, [])
        # An id used for another job (other parameters, inputs, seed, timeout or output) is
        # refused before anything is sent: the server would drop this job as its duplicate, or
        # the id's result is the other job's.
        # The other jobs of the batch go on; the error names these with the accepted ones.
        refused = await self._ids_of_other_jobs(prepared)
        prepared = [p for p in prepared if p.job_id not in refused]
        if not prepared:
            raise _refused(refused, [])
        # An id answered already keeps its answer: the job is not sent (it would run in vain,
        # its result refused), and its result is the earlier one's.
        answered = await self._answered(prepared)
        claimed = self._claim_ids(p for p in prepared if p.job_id not in answered)
        if claimed:
            refused.update(claimed)
            prepared = [p for p in prepared if p.job_id not in claimed]
            if not prepared:
                raise _refused(refused, [])
        # Inputs first, so that a job never names an object not yet stored.
        # Under a name of this submission's own: a later one under the same id (dropped by
        # the server as a duplicate while this one waits) must not replace its inputs.
        submission = _wire.new_job_id()
        jobs: list[Job] = []
        try:
            for p in prepared:
                if p.job_id in answered:
                    continue
                for up in p.uploads:
                    name = f"inputs/{p.job_id}/{submission}/{up.param}"
                    info = await self.put(name, up.array)
                    p.stored.append(info.name)
                    p.params[up.param] = info.ref().to_json()
                p.body = _wire.encode_job(
                    p.job_id, p.params, seed=p.seed, timeout_ms=p.timeout_ms, output=p.output
                )
            # Subscribed before publishing, so that no result can be missed.
            shared = len(prepared) > SUBSCRIBE_EACH_UP_TO
            for p in prepared:
                kept = answered.get(p.job_id)
                if kept is None:
                    watched = self._watch(
                        p.job_id, p.kind, p.device, shared=shared, new_id=not p.given_id
                    )
                    jobs.append(await watched)
                    continue
                done: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
                done.set_result(kept)
                job = Job(self, p.job_id, p.kind, p.device, done)
                job.duplicate = True
                jobs.append(job)
            await self._nc.flush()
        except BaseException:
            # Cancelled or failed before any job was sent: no job will read the inputs
            # stored so far (a cancelled put has removed its own).
            for p in prepared:
                await self._remove_inputs(p)
                self._release_id(p)
            for job in jobs:
                await self._unwatch(job.id, job._future)
            raise
        acks: list[asyncio.Future[Any] | BaseException | None] = []
        for p, job in zip(prepared, jobs):
            if p.job_id in answered:
                acks.append(None)
                continue
            # JSON is what a job without a Content-Type is read as: one header less per job.
            headers = {"Nats-Msg-Id": p.job_id}
            # Before it is stored, by this client's clock: a result enqueued well before
            # this is an earlier job's (Job._settle).
            job._published_at = datetime.now(timezone.utc)
            try:
                acks.append(
                    await self._acks.publish(
                        _wire.job_subject(p.device, p.kind), p.body, headers=headers
                    )
                )
            except Exception as e:  # reported per job below
                acks.append(e)
        accepted: list[Job] = []
        states: list[asyncio.Future[Any]] = []
        duplicates: list[tuple[_Prepared, Job]] = []
        # Acks come in order: once one is overdue, so are the ones after it (no second wait).
        ack_timeout = ACK_TIMEOUT
        no_stream = False
        for p, job, ack in zip(prepared, jobs, acks):
            if ack is None:  # answered already, not sent
                accepted.append(job)
                continue
            try:
                if isinstance(ack, BaseException):
                    raise ack
                pub = await asyncio.wait_for(ack, ack_timeout)
            except Exception as e:  # every refusal is reported, the other jobs go on
                if isinstance(e, asyncio.TimeoutError):
                    ack_timeout = 0
                else:  # refused by the server: no job reads its inputs (unanswered: one may)
                    await self._remove_inputs(p)
                    self._release_id(p)
                refused[p.job_id] = self._refusal(p, e)
                no_stream |= isinstance(e, _NO_STREAM_ANSWERED)
                await self._unwatch(p.job_id, job._future)
                continue
            job.duplicate = bool(getattr(pub, "duplicate", False))
            job.sequence = getattr(pub, "seq", None)
            accepted.append(job)
            if job.duplicate:
                # Dropped: the job the server kept reads its own inputs, never these.
                await self._remove_inputs(p)
                duplicates.append((p, job))
            else:
                states.append(await self._record_queued(p, job.sequence))
        # A duplicate of a job of another kind: the id is the message id, so the server
        # dropped this job for good and no result of its kind will come.
        # So is one of the same kind that, by its record, computes something else (sent by
        # another client at the same time).
        lookups = asyncio.Semaphore(64)

        async def earlier(p: _Prepared) -> tuple[str | None, bool]:
            async with lookups:
                kind = await self._earlier_kind(p.job_id)
                other = kind == p.kind and await self._record_of_other_job(p)
                return kind, other

        found = await asyncio.gather(*(earlier(p) for p, _ in duplicates))
        for (p, job), (kind, other) in zip(duplicates, found):
            if other:
                self._release_id(p)
                refused[p.job_id] = (
                    f"job id {p.job_id} was submitted at the same time for a job with other "
                    "parameters (inputs, seed, timeout or output): the server kept that one "
                    "and dropped this one as its duplicate (the job id is its Nats-Msg-Id), so "
                    "this one will not run; submit it under another id"
                )
            elif kind is None or kind == p.kind:
                continue
            else:
                self._release_id(p)
                what = f"a {kind} job"
                if kind == "unknown":
                    what = "a job of a kind the worker did not know"
                refused[p.job_id] = (
                    f"job id {p.job_id} was submitted as {what} within the last 10 min: the "
                    f"server dropped this {p.kind} job as its duplicate (the job id is its "
                    "Nats-Msg-Id) and it will not run; submit it under another id"
                )
            accepted.remove(job)
            await self._unwatch(p.job_id, job._future)
        # As `kiln submit` does: `kiln status <id>` says "queued" until the result is in. A
        # state not stored only makes status less precise; the jobs are in.
        if states:
            await asyncio.wait(states, timeout=ACK_TIMEOUT)
            for state in states:
                if not state.done():
                    state.cancel()
                elif not state.cancelled() and state.exception() is not None:
                    log.debug("a queued state was not stored: %s", state.exception())
        if refused:
            if no_stream:
                await self._require_jetstream()
            raise _refused(refused, list(accepted))
        return accepted

    async def _require_jetstream(self) -> None:
        """Raise `ConnectError` when no JetStream answers on this server (it runs without
        -js): a publish no stream took said only "run `kiln init`" or "try again"."""
        try:
            await asyncio.wait_for(self._js.account_info(), 2.0)
        except nats.js.errors.ServiceUnavailableError as e:
            raise _no_jetstream(self._nc, e) from e
        except Exception:  # JetStream there (no streams, an election) or unknown: as it was
            pass

    async def _remove_inputs(self, p: _Prepared) -> None:
        """Remove the objects stored for `p`'s inputs, which no job will read: left, they
        would fill KILN_DATA for its whole maximum age, again at every retry. Best effort."""
        for name in p.stored:
            try:
                await self.delete(name)
            except Exception as e:  # it ages out
                log.warning("could not remove input %s, which no job will read: %s", name, e)
        p.stored.clear()

    async def _ids_of_other_jobs(self, prepared: list[_Prepared]) -> dict[str, str]:
        """The given ids whose `queued` record (written by this client when the id was last
        submitted) says they computed something else, each with why it is refused."""
        # Every job's record carries its digest, a generated id's too: one reused with other
        # inputs (`submit(..., id=job.id)`) was answered with the first job's result.
        given = [p for p in prepared if p.given_id]
        loop = asyncio.get_running_loop()
        for p in prepared:
            digest = functools.partial(
                _wire.job_digest,
                p.kind,
                p.params,
                p.uploads,
                seed=p.seed,
                timeout_ms=p.timeout_ms,
                output=p.output,
            )
            # An array to upload is copied as f32 and hashed: off the event loop (a gigabyte
            # held every other task up for seconds).
            p.digest = await loop.run_in_executor(None, digest) if p.uploads else digest()
        lookups = asyncio.Semaphore(64)

        async def taken(p: _Prepared) -> bool:
            """Whether the id's record is of another job that still holds the id: submitted
            within the duplicate window, or answered (a job id keeps its first answer)."""
            async with lookups:
                try:
                    record = await self._state(p.job_id)
                    # Another kind under the id is told apart as such (below, at publishing).
                    if record.get("kind") != p.kind or not _computes_otherwise(record, p):
                        return False
                    if _in_window(_parse_time(record.get("at"))):
                        return True
                    subject = _wire.result_subject(p.kind, p.job_id)
                    return await self._last_result(subject) is not None
                except Exception:  # no bucket, no permission: a plain resubmission
                    return False

        found = await asyncio.gather(*(taken(p) for p in given))
        return {
            p.job_id: (
                f"job id {p.job_id} was used for a job with other parameters (inputs, seed, "
                "timeout or output), or by `kiln submit`, whose record this client cannot "
                "compare (its result may be for other inputs): the id's result is that job's, "
                "and this one would not run; submit it under another id"
            )
            for p, other in zip(given, found)
            if other
        }

    def _claim_ids(self, prepared: Iterable[_Prepared]) -> dict[str, str]:
        """Note the given ids about to be sent; those this client sent within the duplicate
        window for a job that computes something else are refused (each with why). No await
        between the look and the note: concurrent submits of one id see each other."""
        now = asyncio.get_running_loop().time()
        if len(self._given) > GIVEN_IDS_KEPT:
            self._given = {
                i: given
                for i, given in self._given.items()
                if now - given[2] <= DUPLICATE_WINDOW_S
            }
        refused = {}
        for p in prepared:
            if not p.given_id:
                continue
            earlier = self._given.get(p.job_id)
            if earlier is not None and earlier[0] != p.kind:
                continue  # another kind: the server drops it, and it is refused as such
            recent = earlier is not None and now - earlier[2] <= DUPLICATE_WINDOW_S
            if earlier is not None and recent and earlier[1] != p.digest:
                refused[p.job_id] = (
                    f"job id {p.job_id} was used by this client for a job with other "
                    "parameters (inputs, seed, timeout or output) within the last 10 min: the "
                    "server would drop this one as its duplicate, and it would not run; submit "
                    "it under another id"
                )
            else:
                self._given[p.job_id] = (p.kind, p.digest, now)
        return refused

    def _release_id(self, p: _Prepared) -> None:
        """Forget `p`'s id, which the server refused (not stored: the id is free again)."""
        if p.given_id and self._given.get(p.job_id, ("", "", 0.0))[:2] == (p.kind, p.digest):
            del self._given[p.job_id]

    async def _record_of_other_job(self, p: _Prepared) -> bool:
        """Whether the `queued` record of `p`'s id, which the server kept another job under,
        says that job computes something else. The kept job's submitter writes it just after
        its acknowledgement, so a missing one is asked again for up to a second."""
        for _ in range(RECORD_TRIES):
            try:
                record = await self._state(p.job_id)
            except Exception:  # no bucket, no permission: a plain resubmission
                return False
            if record and _in_window(_parse_time(record.get("at"))):
                return record.get("kind") == p.kind and _computes_otherwise(record, p)
            await asyncio.sleep(RECORD_RETRY_S)
        return False

    async def _answered(self, prepared: list[_Prepared]) -> dict[str, Result]:
        """The stored answers of the jobs in `prepared` whose id the caller gave and which
        have one of their kind already (on `results.<kind>.<id>`, where a job sent now would
        have its result refused: a job id keeps its first answer), by id. A lookup that
        fails leaves its job to be sent."""
        lookups = asyncio.Semaphore(64)

        async def answer(p: _Prepared) -> Result | None:
            async with lookups:
                try:
                    if await self._last_result(_wire.result_subject(p.kind, p.job_id)) is None:
                        return None
                    # A replay's result, if any, is the later answer.
                    return await self._lookup(p.kind, p.job_id)
                except Exception:  # no stream (the publish says so), no permission, ...
                    return None

        given = [p for p in prepared if p.given_id]
        found = await asyncio.gather(*(answer(p) for p in given))
        return {p.job_id: result for p, result in zip(given, found) if result is not None}

    async def _connected_within(self, seconds: float) -> bool:
        """Whether the connection is up, or comes back within `seconds` (a closed client is
        left to the call that fails on it)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not (self._nc.is_connected or self._nc.is_closed):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def _unsent(self, p: _Prepared) -> str:
        """Why job `p` was not sent: the connection was down for the whole wait."""
        again = "" if p.given_id else f" (pass id={p.job_id!r}, or let a new id be made)"
        return (
            f"job {p.job_id} was not sent: the connection to the NATS server has been down for "
            f"{ACK_TIMEOUT:.0f} s (the client keeps reconnecting); submit it again once the "
            f"server is back{again}"
        )

    def _refusal(self, p: _Prepared, e: BaseException) -> str:
        subject = _wire.job_subject(p.device, p.kind)
        if isinstance(e, nats.errors.MaxPayloadError):
            how = (
                "leave upload=False out (large arrays are then stored in KILN_DATA "
                "automatically)"
                if p.inline_only
                else "pass large values as numpy arrays (stored in KILN_DATA automatically) "
                "or with upload=True"
            )
            return (
                f"job {p.job_id} is {len(p.body)} bytes, over the NATS server's max_payload "
                f"({self._nc.max_payload} bytes): {how}, or raise max_payload"
            )
        if isinstance(e, _NO_STREAM_ANSWERED):
            return (
                f"no JetStream stream answered on {subject}, so job {p.job_id} was not stored: "
                "either kiln's streams do not exist on this server yet (run `kiln init`; is it "
                "nats-server -js?) or a cluster is electing a new leader for KILN_JOBS (submit "
                "it again in a moment: the same job id is stored at most once)"
            )
        if isinstance(e, asyncio.TimeoutError) and not self._nc.is_connected:
            again = "" if p.given_id else f" (pass id={p.job_id!r}: without one, a new id is made)"
            return (
                f"job {p.job_id}: no acknowledgement from JetStream within {ACK_TIMEOUT:.0f} s "
                f"on {subject}: the connection to the NATS server is down (the client keeps "
                "reconnecting), so it may or may not be stored; once the server is back, submit "
                f"it again under the same job id{again}: the same job id is stored at most once"
            )
        if isinstance(e, asyncio.TimeoutError):
            return (
                f"job {p.job_id}: no acknowledgement from JetStream within {ACK_TIMEOUT:.0f} s on "
                f"{subject}; it may or may not be stored (submit it again: the same job id is "
                "stored at most once); check that the server runs with JetStream (nats-server -js)"
            )
        if isinstance(e, nats.js.errors.APIError):
            return (
                f"the server refused job {p.job_id} on {subject}: {e.description or e} (if the "
                "KILN_JOBS stream is full, wait for workers to catch up or raise its limits)"
            )
        return f"publishing job {p.job_id} on {subject} failed: {e!r}"

    async def _record_queued(self, p: _Prepared, sequence: int | None) -> asyncio.Future[Any]:
        now = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
        state: dict[str, Any] = {"phase": "queued", "kind": p.kind, "class": p.device, "at": now}
        if sequence is not None:
            state["job_seq"] = sequence
        if p.digest:
            state["py_digest"] = p.digest
        subject = f"$KV.{_wire.BUCKET_STATE}.{_wire.job_key(p.job_id)}"
        return await self._acks.publish(subject, json.dumps(state).encode())

    # -- results --------------------------------------------------------------------------

    @_kiln_errors
    async def job(self, job_id: str, kind: str | None = None) -> Job:
        """A handle on job `job_id` submitted elsewhere (`kiln submit`, another process), to
        wait for its result, see its status or cancel it. Without `kind`, a result of any
        kind with this id is taken."""
        _wire.check_job_id(job_id)
        if kind is not None:
            _wire.check_kind(kind)
        job = await self._watch(job_id, kind, None)
        await self._nc.flush()
        return job

    async def _watch(
        self,
        job_id: str,
        kind: str | None,
        device: str | None,
        *,
        shared: bool = False,
        new_id: bool = False,
    ) -> Job:
        """A Job whose future its result completes (the subscription is in place at the
        server after the next flush). `new_id`: the client made the id for this job, so no
        earlier job answered it, and a result heard is its answer as it comes (see
        `_on_result`)."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        job = Job(self, job_id, kind, device, future)
        job._new_id = new_id
        earlier = self._watching.get(job_id)
        if earlier is not None:
            # Another handle on the same id: it shares the answer.
            def share(done: asyncio.Future[Result]) -> None:
                if done.cancelled() or job._future.done():
                    return
                if done.exception() is not None:  # the client closed: this handle too
                    job._future.set_exception(done.exception())  # type: ignore[arg-type]
                    job._future.exception()
                else:
                    job._settle(done.result())

            earlier.job._future.add_done_callback(share)
            return job
        # A worker answers a job of a kind it does not run on `results.unknown.<id>`: each
        # job listens there too (its kind's answer or that one, whichever comes).
        if shared and kind is not None:
            kinds = (kind,) if kind == _wire.UNKNOWN_KIND else (kind, _wire.UNKNOWN_KIND)
            for each in kinds:
                if each not in self._by_kind:
                    waiting: dict[str, Job] = {}
                    sub = await self._nc.subscribe(
                        f"results.{each}.>", cb=self._on_result(waiting)
                    )
                    self._by_kind[each] = (sub, waiting)
                self._by_kind[each][1][job_id] = job
            self._watching[job_id] = _Watch(job, None, kinds)
        else:
            # `results.*.<id>`: every kind's answer to the id, the job's own and `unknown`'s
            # among them (the callback takes only those).
            sub = await self._nc.subscribe(
                _wire.result_subject(None, job_id), cb=self._on_result({job_id: job})
            )
            self._watching[job_id] = _Watch(job, sub, ())
        return job

    def _on_result(self, waiting: dict[str, Job]) -> Callable[[Msg], Awaitable[None]]:
        """The callback of a result subscription: completes the job the result names, if it
        is one of `waiting` and the result answers it (`kiln._job.answers`)."""

        async def on_result(msg: Msg) -> None:
            try:
                event = json.loads(msg.data)
            except ValueError:
                log.warning("a message on %s is not a result event; ignored", msg.subject)
                return
            job_id = event.get("id") if isinstance(event, dict) else None
            job = waiting.get(job_id) if isinstance(job_id, str) else None
            if job is None or job.done() or job_id is None:
                return
            came = Result(event, self)
            if not job._answers(came):  # another kind's job under the same id
                return
            attempt = event.get("attempt")
            if job._new_id and not (isinstance(attempt, int) and attempt > 1):
                # No earlier job's answer can be stored under an id this client made: no
                # lookup (a request to the server per result). A job delivered again may be
                # heard from the run whose result the stream refused: looked up.
                job._settle(came)
                self._spawn(self._unwatch(job_id, job._future))
                return
            # Looked up beside the next results: this callback is the subscription's reader.
            await self._lookups.acquire()
            self._spawn(self._settle_heard(job, msg.subject, event, came))

        return on_result

    async def _settle_heard(
        self, job: Job, subject: str, event: dict[str, Any], came: Result
    ) -> None:
        """Answer `job` with the result stored on `subject`, where `event` was heard (holding
        one of the client's lookups at once, released here)."""
        try:
            stored = await self._stored(subject, event)
        finally:
            self._lookups.release()
        if stored is None or job.done():
            return
        answer = came if stored is event else Result(stored, self)
        if not job._answers(answer):
            # `results.unknown.<id>` keeps another kind's answer under this id, which
            # refused this job's own: the one that came is all it gets.
            answer = came
        job._settle(answer)
        await self._unwatch(job.id, job._future)

    async def _stored(self, subject: str, came: dict[str, Any]) -> dict[str, Any] | None:
        """The result KILN_RESULTS holds on `subject`: a subscriber sees every result
        published, also one the stream refused because the job was answered before (a
        redelivery, an id used again), and the answer is the stored one. None when nothing
        is stored there after about a second (the publish was refused for another reason and
        the worker tries again); the event as it came when the stream cannot be read."""
        pause = 0.005
        for _ in range(8):
            try:
                msg = await self._js.get_last_msg(_wire.STREAM_RESULTS, subject)
            except nats.js.errors.NotFoundError as e:
                if e.err_code == _NO_STREAM:
                    return came
                await asyncio.sleep(pause)
                pause *= 2
                continue
            except Exception:
                return came
            try:
                stored = json.loads(msg.data or b"")
            except ValueError:
                return came
            if isinstance(stored, dict) and stored.get("id") == came.get("id"):
                return stored
            return came
        return None

    def _look_up_after_reconnect(self) -> None:
        """Look up the stored results of the jobs still waiting (one sweep at a time: a
        reconnection during one starts none)."""
        if self._sweep is None or self._sweep.done():
            self._sweep = self._spawn(self._look_up_watched())
        else:  # its lookups may have met the connection down again
            self._sweep_again = True

    async def _look_up_watched(self, again_after: float = 3.0) -> None:
        """Look up the stored results of the jobs still waiting, 16 at a time, now and once
        more `again_after` seconds later (a worker may store its result after the first look,
        before this client's subscriptions are back)."""
        limit = asyncio.Semaphore(16)

        async def look(job: Job) -> None:
            async with limit:
                await job._look_up()

        while True:
            self._sweep_again = False
            for pause in (0.0, again_after):
                await asyncio.sleep(pause)
                jobs = [watch.job for watch in list(self._watching.values())]
                await asyncio.gather(*(look(job) for job in jobs), return_exceptions=True)
            if not self._sweep_again:
                return

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Future[None]:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _unwatch(self, job_id: str, future: asyncio.Future[Result] | None = None) -> None:
        """Stop waiting for job `job_id`'s result (only when `future` is the one watched,
        if given)."""
        watch = self._watching.get(job_id)
        if watch is None or (future is not None and watch.job._future is not future):
            return
        del self._watching[job_id]
        subs = [] if watch.sub is None else [watch.sub]
        for kind in watch.kinds:
            if kind not in self._by_kind:
                continue
            kind_sub, waiting = self._by_kind[kind]
            waiting.pop(job_id, None)
            if not waiting:
                del self._by_kind[kind]
                subs.append(kind_sub)
        for sub in subs:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection may be closing; nothing left to stop
                pass

    async def _lookup(
        self, kind: str | None, job_id: str, *, since: datetime | None = None
    ) -> Result | None:
        """Job `job_id`'s stored result, if any: a replay's result (later, so it wins),
        else the first run's; for a job of `kind` that workers do not run, the answer on
        `results.unknown.<id>` that names the kind (or, for a job this client published at
        `since`, was submitted since: `kiln._job.answers`)."""
        subject = _wire.result_subject(kind, job_id)
        for candidate in (f"{subject}.>", subject):
            found = await self._last_result(candidate)
            if found is not None:
                return found
        if kind is not None and kind != _wire.UNKNOWN_KIND:
            found = await self._last_result(_wire.result_subject(_wire.UNKNOWN_KIND, job_id))
            if found is not None and answers(kind, found, since):
                return found
        return None

    async def _last_result(self, subject: str) -> Result | None:
        """The result KILN_RESULTS holds last on `subject` (a wildcard: of all it matches),
        or None."""
        try:
            msg = await self._js.get_last_msg(_wire.STREAM_RESULTS, subject)
        except nats.js.errors.ServiceUnavailableError as e:
            # No JetStream: no result can come (a wait would run out its timeout, or never end).
            raise _no_jetstream(self._nc, e) from e
        except nats.js.errors.NotFoundError as e:
            if e.err_code == _NO_STREAM:
                raise KilnError(
                    "the KILN_RESULTS stream does not exist on this server: run `kiln init`"
                ) from e
            return None
        if not msg.data:
            return None
        event = json.loads(msg.data)
        return Result(event, self) if isinstance(event, dict) else None

    @_kiln_errors
    async def result(self, job_id: str, kind: str | None = None) -> Result | None:
        """Job `job_id`'s stored result, or None when it has none yet (one lookup, no
        waiting; `Client.job(id).result()` waits)."""
        _wire.check_job_id(job_id)
        return await self._lookup(kind, job_id)

    @_kiln_errors
    async def status(self, job_id: str, kind: str | None = None) -> JobState:
        """Where job `job_id` is; see `Job.status`."""
        _wire.check_job_id(job_id)
        record = await self._state(job_id)
        phase, replay = _phase_and_replay(record)
        found = await self._answer(kind, job_id, phase, replay)
        if found is not None:
            return "succeeded" if found.succeeded else "failed"
        if await self._running(job_id):
            # A result stored since the first look wins over a heartbeat not yet refreshed.
            found = await self._answer(kind, job_id, phase, replay)
            if found is not None:
                return "succeeded" if found.succeeded else "failed"
            return "running"
        if _cancels(await self._kv_get(_wire.BUCKET_CANCEL, job_id), record):
            return "cancel_requested"
        if phase == "queued":
            if not await self._left_the_queue(record):
                return "queued"
            # Answered, or taken, since the first look: KILN_JOBS lets go of a job only once
            # its result is stored (or its copy, routed or handed back, is queued).
            found = await self._answer(kind, job_id, phase, replay)
            if found is not None:
                return "succeeded" if found.succeeded else "failed"
            return "running" if await self._running(job_id) else "gone"
        return "pending"

    async def _left_the_queue(self, record: dict[str, Any]) -> bool:
        """Whether KILN_JOBS holds no job of the record's kind on any subject it can be on
        (its class's, or every class's for auto, copies included), as `kiln status` reads
        it: then the job is gone (its result dropped from a full KILN_RESULTS, or the job
        purged). False when that cannot be read."""
        kind, device = record.get("kind"), record.get("class")
        if not isinstance(kind, str) or not isinstance(device, str):
            return False
        classes = {"auto", "gpu", "cpu"} if device == "auto" else {device}
        filters = [f"jobs.*.{kind}", f"jobs.*.{kind}.copy"]
        # The record names the job's own message: there, it is queued; gone, only a copy
        # (routed or handed back) can be it (another job of its kind hid that it was gone).
        sequence = record.get("job_seq")
        if isinstance(sequence, int) and not isinstance(sequence, bool):
            # Within a second: a user without $JS.API.STREAM.MSG.GET.KILN_JOBS (the secure
            # configuration's submitter) gets no reply, and is told by the subjects alone.
            try:
                await asyncio.wait_for(self._js.get_msg(_wire.STREAM_JOBS, seq=sequence), 1.0)
                return False
            except nats.js.errors.NotFoundError:
                filters = filters[1:]
            except Exception:  # unreadable (no permission): by the subjects alone
                pass
        try:
            for subjects in filters:
                info = await self._js.stream_info(_wire.STREAM_JOBS, subjects_filter=subjects)
                for subject, count in (info.state.subjects or {}).items():
                    if count > 0 and subject.split(".")[1] in classes:
                        return False
        except Exception:  # unreadable: it may still be there
            return False
        return True

    async def _earlier_kind(self, job_id: str) -> str | None:
        """The kind `job_id` was submitted as within the duplicate window: its queued
        record's, else its result's (None when neither was made in the window, or they
        cannot be read)."""
        try:
            record = await self._state(job_id)
            if isinstance(record.get("kind"), str) and _in_window(_parse_time(record.get("at"))):
                return str(record["kind"])
            found = await self._lookup(None, job_id)
        except Exception:  # a lookup that fails leaves the job a plain resubmission
            return None
        if found is not None and _in_window(found.enqueued_at):
            return found.kind
        return None

    async def _state(self, job_id: str) -> dict[str, Any]:
        """What KILN_STATE records for `job_id` (empty without a record, or one that does
        not parse)."""
        state = await self._kv_get(_wire.BUCKET_STATE, job_id)
        try:
            record = json.loads(state) if state is not None else {}
        except ValueError:
            return {}
        return record if isinstance(record, dict) else {}

    async def _record(self, job_id: str) -> tuple[str | None, int]:
        """The phase and replay number KILN_STATE records for `job_id` (None, 0 without)."""
        return _phase_and_replay(await self._state(job_id))

    async def _answer(
        self, kind: str | None, job_id: str, phase: str | None, replay: int
    ) -> Result | None:
        """The job's stored result, unless it is older than a replay recorded as queued
        (`kiln dlq replay`): that one is the failed run's, and the replay is not answered
        yet."""
        found = await self._lookup(kind, job_id)
        if found is not None and phase == "queued" and replay > found.replay:
            return None
        return found

    async def _kv_get(self, bucket: str, job_id: str) -> bytes | None:
        try:
            kv = await self._js.key_value(bucket)
            entry = await kv.get(_wire.job_key(job_id))
        except (nats.js.errors.NotFoundError, nats.js.errors.KeyValueError):
            return None
        return entry.value

    async def _running(self, job_id: str) -> bool:
        try:
            kv = await self._js.key_value(_wire.BUCKET_WORKERS)
            keys = await kv.keys()
        except (
            nats.js.errors.NotFoundError,
            nats.js.errors.NoKeysError,
            nats.js.errors.KeyValueError,
        ):
            return False
        for key in keys:
            try:
                entry = await kv.get(key)
                worker = json.loads(entry.value or b"{}")
            except (nats.js.errors.NotFoundError, nats.js.errors.KeyValueError, ValueError):
                continue
            if any(j.get("id") == job_id for j in worker.get("running") or []):
                return True
        return False

    @_kiln_errors
    async def cancel(self, job_id: str, kind: str | None = None) -> bool:
        """Mark job `job_id` cancelled; see `Job.cancel`. Returns False, marking nothing,
        when it has a result already (a mark would cancel a later run of the same id). An id
        with no job known is marked, in case one sent without a record waits in the queue;
        the mark cancels only jobs enqueued before it, never one submitted later."""
        _wire.check_job_id(job_id)
        if await self._answer(kind, job_id, *await self._record(job_id)) is not None:
            return False
        try:
            kv = await self._js.key_value(_wire.BUCKET_CANCEL)
        except nats.js.errors.NotFoundError as e:
            raise KilnError(
                f"the {_wire.BUCKET_CANCEL} bucket does not exist on this server: run `kiln init`"
            ) from e
        now = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
        await kv.put(
            _wire.job_key(job_id), json.dumps({"id": job_id, "requested_at": now}).encode()
        )
        return True

    # -- the object store -----------------------------------------------------------------

    async def _bucket(self) -> ObjectStore:
        if self._data is None:
            try:
                self._data = await self._js.object_store(_wire.BUCKET_DATA)
            except nats.js.errors.NotFoundError as e:
                raise KilnError(
                    f"the {_wire.BUCKET_DATA} object store does not exist on this server: run "
                    "`kiln init` (with a kiln version that has it)"
                ) from e
        return self._data

    @_kiln_errors
    async def put(
        self,
        name: str,
        data: bytes | bytearray | memoryview | np.ndarray[Any, Any] | str | os.PathLike[str],
    ) -> _wire.ObjectInfo:
        """Store `data` in KILN_DATA as object `name`: bytes as they are (a CSV dataset, a
        PNG, a safetensors file), a numpy array as `.npy`, a str or path as that file's
        contents. Returns its `ObjectInfo`; `info.ref()` is the reference a job names it by."""
        if not isinstance(name, str) or not name:
            raise ValueError("an object needs a non-empty name")
        if len(name.encode()) > _wire.MAX_OBJECT_NAME:
            raise ValueError(
                f"object names are at most {_wire.MAX_OBJECT_NAME} bytes, not "
                f"{len(name.encode())} (the server closes the connection of a longer one)"
            )
        # A file's name is kept as the object's description: a worker's errors about the
        # object name it (`object NAME (file data.csv)`), as they do for `kiln put`.
        description = None
        source: bytes | Path
        if isinstance(data, np.ndarray):
            source = _wire.npy_bytes(data)
        elif isinstance(data, (bytes, bytearray, memoryview)):
            source = bytes(data)
        elif isinstance(data, (str, os.PathLike)):
            path = Path(data)
            if path.is_dir():
                raise IsADirectoryError(f"put({name!r}, {str(data)[:60]!r}): that is a folder")
            if not path.exists():
                raise FileNotFoundError(
                    f"put({name!r}, {str(data)[:60]!r}) stores the file at that path, and there is "
                    "no such file; to store text itself, pass bytes (text.encode())"
                )
            source = path  # read as it is sent
            if path.name and path.name != name:
                description = f"file {path.name}"
        else:
            raise TypeError(
                f"put stores bytes, a numpy array or a file path, not {type(data).__name__}"
            )
        bucket = await self._bucket()
        # Cancelled (Ctrl-C), it leaves no chunk behind: _upload.py.
        size, sha256 = await _upload.put(bucket, name, source, description, self._uploads)
        return _wire.ObjectInfo(name=name, size=size, sha256=sha256)

    @_kiln_errors
    async def objects(self, prefix: str = "") -> list[_wire.ObjectInfo]:
        """The objects in KILN_DATA whose names start with `prefix` (all without one), by
        name (`kiln ls`): each `ObjectInfo` has its name, size and sha256 (hex; "" for a
        link, which has none of its own). Entries kiln cannot read (another client's) are
        left out; `kiln ls` lists them.

        Read here from the last entry of each name, not with nats-py's `list()`, which waits
        for ever when the newest entry does not parse."""
        await self._bucket()  # says to run `kiln init` where there is no bucket
        stream, entries = f"OBJ_{_wire.BUCKET_DATA}", f"$O.{_wire.BUCKET_DATA}.M.>"
        try:
            await self._js.get_last_msg(stream, entries)
        except nats.js.errors.NotFoundError:
            return []
        sub = await self._js.subscribe(
            entries,
            stream=stream,
            ordered_consumer=True,
            deliver_policy=nats.js.api.DeliverPolicy.LAST_PER_SUBJECT,
        )
        found: list[_wire.ObjectInfo] = []
        try:
            while True:
                msg = await sub.next_msg(timeout=10)
                listed = _listed(msg.subject, msg.data, prefix)
                if listed is not None:
                    found.append(listed)
                if msg.metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
        return sorted(found, key=lambda o: o.name)

    @_kiln_errors
    async def delete(self, name: str) -> None:
        """Remove object `name` from KILN_DATA, freeing its space (`kiln rm`); a job naming
        it later is answered that it is not found. Raises `ObjectNotFound` when there is no
        such object."""
        _check_object_name(name)
        bucket = await self._bucket()
        try:
            await bucket.get_info(name)
            await bucket.delete(name)
        except (nats.js.errors.ObjectNotFoundError, nats.js.errors.ObjectDeletedError) as e:
            raise ObjectNotFound(f"no object {name!r} in {_wire.BUCKET_DATA}") from e
        except nats.js.errors.BadObjectMetaError:
            # An entry that does not parse (another client's), which nats-py cannot remove:
            # purged, as `kiln rm` does (its chunks, named by nothing now, age out or go with
            # `kiln rm --orphans`).
            import base64

            encoded = base64.urlsafe_b64encode(name.encode()).decode()
            await self._js.purge_stream(
                f"OBJ_{_wire.BUCKET_DATA}", subject=f"$O.{_wire.BUCKET_DATA}.M.{encoded}"
            )

    @_kiln_errors
    async def get(self, name: str) -> bytes:
        """Object `name`'s bytes from KILN_DATA (a job's stored output, a trained model)."""
        _check_object_name(name)
        await self._bucket()  # says to run `kiln init` where there is no bucket
        try:
            return await _download.read(self._js, name)
        except ObjectNotFound as e:
            raise ObjectNotFound(
                f"{e}: a result names its stored output in output.object.name"
            ) from e.__cause__


def _check_object_name(name: object) -> None:
    """Refuse a name no object can have (`ValueError`), as `put` does."""
    if not isinstance(name, str) or not name or len(name.encode()) > _wire.MAX_OBJECT_NAME:
        # A longer name's subject makes the server close the connection.
        raise ValueError(f"an object name is 1 to {_wire.MAX_OBJECT_NAME} bytes, not {name!r:.80}")


def _listed(subject: str, data: bytes, prefix: str) -> _wire.ObjectInfo | None:
    """The live object whose entry `data` is on `subject`, if it is one named `prefix`…: the
    name its subject encodes (URL-safe padded base64, as `kiln get` addresses it)."""
    import base64
    import binascii

    encoded = subject.removeprefix(f"$O.{_wire.BUCKET_DATA}.M.")
    try:
        name = base64.urlsafe_b64decode(encoded.encode()).decode()
    except (binascii.Error, ValueError):
        return None
    if base64.urlsafe_b64encode(name.encode()).decode() != encoded or not name.startswith(prefix):
        return None
    try:
        info = json.loads(data)
    except ValueError:
        return None
    if not isinstance(info, dict) or info.get("deleted"):
        return None
    size = info.get("size")
    digest = info.get("digest")
    return _wire.ObjectInfo(
        name=name,
        size=size if isinstance(size, int) else 0,
        sha256=_sha256_hex(digest if isinstance(digest, str) else ""),
    )


def _sha256_hex(digest: str) -> str:
    """`SHA-256=<base64url>`, as the object store keeps digests, in hex ("" if none)."""
    import base64
    import binascii

    encoded = digest.removeprefix("SHA-256=")
    if encoded == digest or not encoded:
        return ""
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError):
        return ""
    return raw.hex() if len(raw) == 32 else ""
