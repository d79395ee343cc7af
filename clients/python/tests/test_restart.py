"""A server restart while the client waits for results: results stored while its connection
was down reach no subscription, and the client looks them up once it is back."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import kiln
import kiln._client

from conftest import (
    Process,
    Stack,
    _env,
    _wait_serving,
    free_port,
    kiln_binary,
    nats_server_binary,
    self_signed_certificate,
    wait_for_port,
)


def _restartable(tmp_path: Path) -> tuple[Stack, Callable[[], Process]]:
    """A stack on a free port, and what (re)starts its nats-server with JetStream on the same
    store (`kiln init` is run on its first start)."""
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    stack = Stack(url=url, kiln=kiln_binary(), workdir=tmp_path)
    server_args = [nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(port)]
    server_args += ["-sd", str(tmp_path / "js")]
    started: list[Process] = []

    def start_server() -> Process:
        server = stack.start("nats-server", server_args, _env())
        wait_for_port(port, server)
        if not started:
            init = [stack.kiln, "--nats-url", url, "init"]
            subprocess.run(init, env=_env(), check=True, capture_output=True)
        started.append(server)
        return server

    return stack, start_server


async def test_results_stored_while_the_server_restarted_are_received(tmp_path: Path) -> None:
    stack, start_server = _restartable(tmp_path)
    url, kiln_bin, env = stack.url, stack.kiln, _env()
    server = start_server()
    try:
        worker = [kiln_bin, "--nats-url", url, "worker", "--device", "cpu", "--name", "rs"]
        stack.start("worker", worker, env)
        await _wait_serving(url, stack)
        async with kiln.connect(url) as client:
            jobs = [
                await client.submit("train_mlp", "cpu", epochs=150, id=f"restart-{i}")
                for i in range(2)
            ]
            # Both held by the worker, which acks each once its result is stored (a status
            # read from the worker's heartbeat, every 2 s, could miss a job this short).
            js = client.nats.jetstream()
            deadline = time.monotonic() + 30
            while True:
                info = await js.consumer_info("KILN_JOBS", "workers-cpu")
                if (info.num_ack_pending, info.num_pending) == (2, 0):
                    break
                assert time.monotonic() < deadline, f"the jobs were never both held: {info}"
                await asyncio.sleep(0.02)
            # Down for longer than the jobs take: the worker stores their results as it
            # reconnects, before this client (which tries again only after 12 s) is back.
            client.nats.options["reconnect_time_wait"] = 12.0
            server.popen.kill()
            server.popen.wait()
            await asyncio.sleep(6)
            start_server()
            started = time.monotonic()
            results = [await job.result(timeout=20) for job in jobs]
            assert [r.status for r in results] == ["succeeded", "succeeded"]
            assert time.monotonic() - started < 18
    finally:
        stack.stop()


async def test_a_result_timeout_is_a_deadline_while_the_server_is_away(tmp_path: Path) -> None:
    stack, start_server = _restartable(tmp_path)
    server = start_server()
    try:
        async with kiln.connect(stack.url) as client:
            # No worker: the job waits. Then the server goes away.
            job = await client.submit("vector_add", "cpu", len=4)
            server.popen.kill()
            server.popen.wait()
            await asyncio.sleep(0.5)
            started = time.monotonic()
            try:
                await job.result(timeout=1)
                raise AssertionError("a result came from no server")
            except kiln.ResultTimeout as e:
                assert "the connection to the NATS server is down" in str(e), e
            # It took 6 s: the lookups waited 5 s each on the absent server.
            assert time.monotonic() - started < 2.5
            # A request the server cannot answer is a kiln error (it was nats-py's).
            try:
                await job.status()
                raise AssertionError("a status came from no server")
            except kiln.KilnError:
                pass
    finally:
        stack.stop()


async def test_a_submit_while_the_connection_is_down_says_so_and_how_to_submit_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack, start_server = _restartable(tmp_path)
    server = start_server()
    monkeypatch.setattr(kiln._client, "ACK_TIMEOUT", 1.0)
    try:
        async with kiln.connect(stack.url) as client:
            server.popen.kill()
            server.popen.wait()
            await asyncio.sleep(0.5)
            assert not client.nats.is_connected
            # It said to check that the server runs with JetStream. Down before the submit,
            # the job is not sent at all, after one wait for the connection.
            with pytest.raises(kiln.SubmitError) as caught:
                await client.submit("vector_add", "cpu", len=4)
            said = str(caught.value)
            (job_id,) = caught.value.refused
            assert "was not sent: the connection to the NATS server has been down" in said, said
            assert "nats-server -js" not in said, said
            # The id was made here: submitting again without it would make another.
            assert f"pass id={job_id!r}" in said, said
            # With an id, its lookups waited out the outage before the publish waited again:
            # twice the wait.
            started = time.monotonic()
            with pytest.raises(kiln.SubmitError) as caught:
                await client.submit("vector_add", "cpu", len=4, id="down-1")
            assert time.monotonic() - started < 1.8
            assert "connection to the NATS server has been down" in str(caught.value)
            assert "pass id=" not in str(caught.value), caught.value
    finally:
        stack.stop()


async def test_a_server_certificate_not_trusted_is_said_at_once(tmp_path: Path) -> None:
    # A TLS server whose certificate the client does not trust: nats-py's first connection
    # hung for ever after the failed handshake.
    self_signed_certificate(tmp_path)
    port = free_port()
    (tmp_path / "tls.conf").write_text(
        f"listen: 127.0.0.1:{port}\n"
        f"tls {{ cert_file: {tmp_path / 'cert.pem'}, key_file: {tmp_path / 'key.pem'} }}\n"
    )
    stack = Stack(url=f"nats://127.0.0.1:{port}", kiln=kiln_binary(), workdir=tmp_path)
    config = str(tmp_path / "tls.conf")
    server = stack.start("nats-server", [nats_server_binary(), "-c", config], _env())
    wait_for_port(port, server)
    try:
        started = time.monotonic()
        try:
            await asyncio.wait_for(kiln.connect(f"nats://127.0.0.1:{port}"), 30)
            raise AssertionError("connected to a server it does not trust")
        except kiln.ConnectError as e:
            assert "TLS with the NATS server" in str(e) and "certificate" in str(e), e
        assert time.monotonic() - started < 5
        async with kiln.connect(
            f"tls://127.0.0.1:{port}", tls_ca=str(tmp_path / "cert.pem")
        ) as client:
            assert client.nats.is_connected
    finally:
        stack.stop()
