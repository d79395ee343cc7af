"""Connecting as the `kiln` CLI does: the `nats` CLI's contexts, and a server without
JetStream said as such (each test starts its own nats-server: conftest.py's nats_server)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Process, self_signed_certificate

import kiln

Start = Callable[..., tuple[str, Process]]


def save_context(config: Path, name: str, fields: dict[str, Any]) -> None:
    """What `nats context save NAME` writes under `config` (the XDG_CONFIG_HOME)."""
    folder = config / "nats" / "context"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({"description": "a test", **fields}))


def select_context(config: Path, name: str) -> None:
    """What `nats context select NAME` writes."""
    (config / "nats" / "context.txt").write_text(f"{name}\n")


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty XDG_CONFIG_HOME, with no NATS_* variable set."""
    for variable in ("NATS_URL", "NATS_CONTEXT", "NATS_USER", "NATS_PASSWORD", "NATS_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path / "config"


def port_of(client: kiln.Client) -> int | None:
    url = client.nats.connected_url
    return None if url is None else url.port


async def test_the_selected_context_gives_the_server_and_its_user_and_password(
    nats_server: Start, config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = nats_server("--user", "ada", "--pass", "s3cret")
    port = int(url.rsplit(":", 1)[1])
    save_context(config, "lab", {"url": url, "user": "ada", "password": "s3cret"})
    select_context(config, "lab")
    async with kiln.connect(connect_timeout=1) as client:
        assert port_of(client) == port
    # Named by NATS_CONTEXT or context=, with the selection pointing elsewhere.
    select_context(config, "elsewhere")
    monkeypatch.setenv("NATS_CONTEXT", "lab")
    async with kiln.connect(connect_timeout=1) as client:
        assert port_of(client) == port
    monkeypatch.delenv("NATS_CONTEXT")
    async with kiln.connect(context="lab", connect_timeout=1) as client:
        assert port_of(client) == port
    # An argument or variable overrides the context's value, one at a time.
    with pytest.raises(kiln.ConnectError, match="refused these credentials") as caught:
        await kiln.connect(context="lab", password="wrong", connect_timeout=1)
    assert "NATS context 'lab'" in str(caught.value) and "s3cret" not in str(caught.value)
    monkeypatch.setenv("NATS_PASSWORD", "wrong")
    with pytest.raises(kiln.ConnectError, match="refused these credentials"):
        await kiln.connect(context="lab", connect_timeout=1)
    monkeypatch.delenv("NATS_PASSWORD")
    # A URL with its own credentials is used with them, not the context's (wrong here).
    save_context(config, "stale", {"url": url, "user": "ada", "password": "wrong"})
    with_credentials = url.replace("nats://", "nats://ada:s3cret@", 1)
    async with kiln.connect(with_credentials, context="stale", connect_timeout=1) as client:
        assert port_of(client) == port
    # None given at all: said as such, not as a refusal of "these" (as the CLI says it).
    select_context(config, "")
    with pytest.raises(kiln.ConnectError, match="requires credentials, and none were given"):
        await kiln.connect(url, connect_timeout=1)


async def test_a_context_with_a_url_only_is_used_and_an_argument_overrides_it(
    nats_server: Start, config: Path
) -> None:
    url, _ = nats_server()
    other, _ = nats_server()
    save_context(config, "plain", {"url": url, "token": "", "creds": "", "tls_first": False})
    select_context(config, "plain")
    async with kiln.connect(connect_timeout=1) as client:
        assert port_of(client) == int(url.rsplit(":", 1)[1])
    async with kiln.connect(other, connect_timeout=1) as client:
        assert port_of(client) == int(other.rsplit(":", 1)[1])


async def test_a_context_kiln_cannot_honour_or_that_is_missing_is_refused(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Refused when connect() is called, before any connection is tried.
    save_context(config, "hub", {"url": "nats://127.0.0.1:1", "jetstream_domain": "hub"})
    with pytest.raises(ValueError, match="NATS context 'hub' .* sets jetstream_domain"):
        kiln.connect(context="hub")
    for field in ("inbox_prefix", "user_jwt", "socks_proxy", "nsc", "jetstream_api_prefix"):
        save_context(config, "odd", {"url": "nats://127.0.0.1:1", field: "x"})
        with pytest.raises(ValueError, match=f"sets {field}, which kiln does not support"):
            kiln.connect(context="odd")
    # A named context that does not exist is an error, not a fallback to localhost.
    monkeypatch.setenv("NATS_CONTEXT", "nosuch")
    missing = r"NATS context 'nosuch' .* does not exist.*nats context ls"
    with pytest.raises(ValueError, match=missing):
        kiln.connect()
    monkeypatch.delenv("NATS_CONTEXT")
    select_context(config, "gone")
    with pytest.raises(ValueError, match="NATS context 'gone' .* does not exist"):
        kiln.connect()
    with pytest.raises(ValueError, match="is not a NATS context name"):
        kiln.connect(context="../x")


async def wait_for_result(client: kiln.Client, job_id: str) -> Any:
    job = await client.job(job_id, "vector_add")
    return await job.result(timeout=20)


async def test_a_server_without_jetstream_is_said_as_such_not_as_nats_pys_error(
    nats_server: Start,
) -> None:
    url, _ = nats_server()  # no -js
    async with kiln.connect(url) as client:
        calls = {
            "objects": lambda: client.objects(),
            "get": lambda: client.get("x"),
            "put": lambda: client.put("x", b"1"),
            "delete": lambda: client.delete("x"),
            "status": lambda: client.status("some-job"),
            "result": lambda: client.result("some-job"),
            "cancel": lambda: client.cancel("some-job"),
            "upload": lambda: client.submit("vector_add", "cpu", a=[1.0], b=[2.0], upload=True),
            # (A SubmitError said "run `kiln init`" or "submit it again in a moment".)
            "submit": lambda: client.submit("vector_add", "cpu", a=[1.0], b=[2.0]),
            "submit_many": lambda: client.submit_many(
                [{"kind": "vector_add", "a": [1.0], "b": [2.0]}], device="cpu"
            ),
            # (It waited out its timeout, saying the job was "queued or running".)
            "job result": lambda: wait_for_result(client, "some-job"),
        }
        for name, call in calls.items():
            started = time.monotonic()
            with pytest.raises(kiln.ConnectError) as caught:
                await call()
            said = str(caught.value)
            assert f"at {url} runs without JetStream" in said, (name, said)
            assert "start it with -js" in said, (name, said)
            assert time.monotonic() - started < 10, name


async def test_a_contexts_tls_files_and_tls_first_are_used(
    nats_server: Start, config: Path, tmp_path: Path
) -> None:
    # A server that wants TLS before the NATS protocol (`handshake_first`), as a context
    # saved with `nats context save --tlsfirst --tlsca ...` reaches it.
    self_signed_certificate(tmp_path)
    (tmp_path / "tls.conf").write_text(
        f"tls {{ cert_file: {tmp_path / 'cert.pem'}, key_file: {tmp_path / 'key.pem'}, "
        "handshake_first: true }\n"
    )
    url, _ = nats_server("-c", str(tmp_path / "tls.conf"))
    tls_url = url.replace("nats://", "tls://")
    save_context(config, "tls", {"url": tls_url, "ca": str(tmp_path / "cert.pem")})
    with pytest.raises(kiln.ConnectError):  # the NATS protocol first: no answer
        await kiln.connect(context="tls", connect_timeout=1)
    save_context(
        config, "tls", {"url": tls_url, "ca": str(tmp_path / "cert.pem"), "tls_first": True}
    )
    async with kiln.connect(context="tls", connect_timeout=1) as client:
        assert client.nats.is_connected


async def test_a_missing_tls_or_credentials_file_is_named() -> None:
    # ssl said only "[Errno 2] No such file or directory", naming no file.
    with pytest.raises(ValueError, match="CA certificate .* '/nonexistent/ca.pem' does not exist"):
        await kiln.connect("nats://127.0.0.1:1", tls_ca="/nonexistent/ca.pem")
    with pytest.raises(ValueError, match="credentials file .* '/nonexistent/x.creds' does not"):
        await kiln.connect("nats://127.0.0.1:1", creds="/nonexistent/x.creds")
