#!/usr/bin/env python3
"""Check kiln's Grafana dashboard and alert rules against a live Prometheus (`just dashboard-check`).

Starts, all on 127.0.0.1 in a temporary directory: a nats-server with JetStream; kiln's
aggregator, scheduler, a CPU worker and a CPU worker serving the GPU class (so that the GPU
speedup has both classes), each with --metrics-addr; and a real Prometheus scraping them every
second with deploy/prometheus/rules/*.yml loaded. While jobs flow (succeeding and failing
ones, GPU, CPU and auto jobs, and one dead letter), it evaluates the PromQL of every panel
target of deploy/grafana/kiln.json, and every template variable's label_values(), through
Prometheus' HTTP API and requires each to return data (at least one series with a finite
value). It also requires the rules to be loaded and healthy (/api/v1/rules) and `promtool
check rules` to pass; and three alerts to go pending (or firing) in /api/v1/alerts: the dead
letter raises KilnDeadLettersGrowing, and once the GPU-class worker is stopped and GPU jobs
queued, KilnRoleDown (its target) and KilnBacklogWithoutWorkers (class gpu).

Grafana's variables are replaced as Grafana would: $__rate_interval by --rate-interval (30s),
$kind and $class by their "All" value `.*`. Standard library only.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import ClassVar

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy/grafana/kiln.json"
RULES = sorted(glob.glob(str(ROOT / "deploy/prometheus/rules/*.yml")))
ALERTS = {
    "KilnDeadLettersGrowing",
    "KilnBacklogWithoutWorkers",
    "KilnJobFailureRatioHigh",
    "KilnNatsDisconnected",
    "KilnRoleDown",
}
WAIT_S = 90.0  # --wait-s


def fail(message: str) -> None:
    raise SystemExit(f"dashboard-check: FAILED: {message}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, OSError):
        return 0, ""


def wait_until(what: str, check, timeout: float | None = None):
    """Poll `check` until it returns something truthy; fail with `what` after `timeout`
    (default --wait-s)."""
    timeout = WAIT_S if timeout is None else timeout
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    fail(f"{what} (waited {timeout:.0f} s)")


class Processes:
    """Child processes with their logs in `dir`; stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, dir: Path, env: dict[str, str]):
        self.dir, self.env, self.children = dir, env, []

    def start(self, name: str, args: list[str]) -> None:
        log = open(self.dir / f"{name}.log", "wb")  # noqa: SIM115 (closed in stop())
        child = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.dir
        )
        self.children.append((name, child, log))

    def check_alive(self) -> None:
        for name, child, _ in self.children:
            if child.poll() is not None:
                fail(f"{name} exited with {child.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 20) -> str:
        text = (self.dir / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop_one(self, name: str) -> None:
        """SIGTERM one child and wait for it (a worker drains and deletes its heartbeat)."""
        for child_name, child, _ in self.children:
            if child_name == name and child.poll() is None:
                child.terminate()
                child.wait(timeout=30)

    def stop(self) -> None:
        for _, child, _ in self.children:
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + 15
        for _, child, log in self.children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            log.close()


def nats_publish(port: int, subject: str, msg_id: str, body: bytes) -> None:
    """Publish one message with a Nats-Msg-Id over the NATS protocol, and wait for the
    server to have processed it (PING/PONG). JetStream stores what lands on its subjects."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        f = s.makefile("rb")
        if not f.readline().startswith(b"INFO "):
            raise OSError("nats-server did not greet with INFO")
        headers = f"NATS/1.0\r\nNats-Msg-Id: {msg_id}\r\n\r\n".encode()
        s.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"protocol":1}\r\n')
        s.sendall(
            f"HPUB {subject} {len(headers)} {len(headers) + len(body)}\r\n".encode()
            + headers
            + body
            + b"\r\n"
        )
        s.sendall(b"PING\r\n")
        while (line := f.readline()) and not line.startswith(b"PONG"):
            if line.startswith(b"-ERR"):
                raise OSError(f"nats-server refused the publish: {line!r}")


class Prometheus:
    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"

    def api(self, path: str, **params: str) -> dict:
        url = f"{self.base}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        status, body = http_get(url)
        if status != 200:
            return {"status": "error", "error": f"HTTP {status}: {body[:300]}"}
        return json.loads(body)

    def query(self, expr: str) -> dict:
        return self.api("query", query=expr)


def finite_series(answer: dict) -> int:
    """How many series of an instant-query answer have a finite value."""
    if answer.get("status") != "success":
        return 0
    data = answer["data"]
    if data["resultType"] == "vector":
        values = [float(r["value"][1]) for r in data["result"]]
    elif data["resultType"] == "scalar":
        values = [float(data["result"][1])]
    else:
        values = []
    return sum(1 for v in values if math.isfinite(v))


def panels_of(dashboard: dict) -> list[dict]:
    """Every panel, rows' nested panels included."""
    out = []
    for p in dashboard.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))
    return [p for p in out if p.get("type") != "row"]


def substitute(expr: str, rate_interval: str) -> str:
    for name, value in [
        ("$__rate_interval", rate_interval),
        ("${kind}", ".*"),
        ("$kind", ".*"),
        ("${class}", ".*"),
        ("$class", ".*"),
    ]:
        expr = expr.replace(name, value)
    if "$" in expr.replace("${1}", ""):
        fail(f"a Grafana variable this check does not know is left in {expr!r}")
    return expr


def check_dashboard_shape(dashboard: dict) -> None:
    if dashboard.get("schemaVersion", 0) < 39:
        fail(
            f"schemaVersion {dashboard.get('schemaVersion')} is older than Grafana 11's (39); kiln.json is written for Grafana 12 (41)"
        )
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds = variables.get("datasource")
    if not ds or ds["type"] != "datasource" or ds["query"] != "prometheus":
        fail("the dashboard has no `datasource` variable of type prometheus")
    for p in panels_of(dashboard):
        for thing in [p, *p.get("targets", [])]:
            if thing.get("datasource", {}).get("uid") != "${datasource}":
                fail(f"panel {p['title']!r} does not use the ${{datasource}} variable")
        if not p.get("targets"):
            fail(f"panel {p['title']!r} has no query")


class Load(threading.Thread):
    """Jobs every second until stopped: CPU, GPU-class and auto vector adds of one size (the
    speedup compares a size bucket across classes), small matmuls, and jobs that fail
    validation on the worker."""

    BATCHES: ClassVar[list[list[str]]] = [
        ["vector_add", "-p", "len=4096", "-d", "cpu", "--count", "20"],
        ["vector_add", "-p", "len=4096", "-d", "gpu", "--count", "10"],
        ["vector_add", "-p", "len=4096", "-d", "auto", "--count", "10"],
        ["matmul", "-p", "n=64", "-d", "cpu", "--count", "4"],
    ]
    # `kiln submit` refuses invalid parameters; a job published as any client could fails on
    # the worker (invalid_input).
    INVALID = b'{"params":{"len":"many"}}'

    def __init__(self, kiln: str, env: dict[str, str], nats_port: int, max_rounds: int):
        super().__init__(daemon=True)
        self.kiln, self.env, self.nats_port, self.max_rounds = (
            kiln,
            env,
            nats_port,
            max_rounds,
        )
        self.stopped = threading.Event()
        self.submitted = 0
        self.failing = 0
        self.errors: list[str] = []

    def run(self) -> None:
        for _ in range(self.max_rounds):
            if self.stopped.is_set():
                return
            for batch in self.BATCHES:
                out = subprocess.run(
                    [self.kiln, "submit", *batch],
                    check=False,
                    env=self.env,
                    capture_output=True,
                    text=True,
                )
                if out.returncode != 0:
                    self.errors.append(f"kiln submit {' '.join(batch)}: {out.stderr.strip()}")
                else:
                    self.submitted += int(batch[-1])
            for _ in range(3):
                self.failing += 1
                try:
                    nats_publish(
                        self.nats_port,
                        "jobs.cpu.vector_add",
                        f"invalid-{self.failing}",
                        self.INVALID,
                    )
                except OSError as e:
                    self.errors.append(f"publishing an invalid job: {e}")
            self.stopped.wait(1.0)


ROLES = ["aggregator", "scheduler", "worker-cpu", "worker-gpu"]


def role_args(kiln: str, ports: dict[str, int]) -> dict[str, list[str]]:
    """Each kiln role's command line: the GPU class is served by a CPU worker, so that the
    GPU speedup has both classes on a machine without a GPU."""
    metrics = {role: ["--metrics-addr", f"127.0.0.1:{port}"] for role, port in ports.items()}
    return {
        "aggregator": [kiln, "aggregator", "--interval-ms", "500", *metrics["aggregator"]],
        "scheduler": [kiln, "scheduler", *metrics["scheduler"]],
        "worker-cpu": [kiln, "worker", "--device", "cpu", "--name", "check-cpu",
                       *metrics["worker-cpu"]],
        "worker-gpu": [kiln, "worker", "--device", "cpu", "--serve-class", "gpu",
                       "--name", "check-gpu-class", *metrics["worker-gpu"]],
    }  # fmt: skip


def prometheus_config(ports: dict[str, int]) -> str:
    """Scrape every role each second as job `kiln`, with the labels of compose's config; the
    rules loaded. JSON is YAML, so no YAML library is needed."""
    labels = {
        "aggregator": {"role": "aggregator"},
        "scheduler": {"role": "scheduler"},
        "worker-cpu": {"role": "worker", "class": "cpu"},
        "worker-gpu": {"role": "worker", "class": "gpu"},
    }
    static = [{"targets": [f"127.0.0.1:{ports[r]}"], "labels": labels[r]} for r in ROLES]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": RULES,
        "scrape_configs": [{"job_name": "kiln", "static_configs": static}],
    }
    return json.dumps(config, indent=2)


def start_system(kiln: str, tools: dict[str, str], tmp: Path, procs: Processes) -> Prometheus:
    """nats-server, `kiln init`, the four roles and Prometheus, each answering before the next
    step; returns the Prometheus."""
    nats_port = int(procs.env["NATS_URL"].rsplit(":", 1)[1])
    procs.start("nats-server", [tools["nats-server"], "-a", "127.0.0.1", "-p", str(nats_port),
                                "-js", "-sd", str(tmp / "jetstream")])  # fmt: skip
    wait_until(
        "nats-server listens", lambda: socket.socket().connect_ex(("127.0.0.1", nats_port)) == 0
    )
    init = subprocess.run(
        [kiln, "init"], check=False, env=procs.env, capture_output=True, text=True
    )
    if init.returncode != 0:
        fail(f"kiln init: {init.stderr.strip()}")
    ports = {role: free_port() for role in ROLES}
    for role, args in role_args(kiln, ports).items():
        procs.start(role, args)
    (tmp / "prometheus.yml").write_text(prometheus_config(ports))
    prom = Prometheus(free_port())
    procs.start("prometheus", [tools["prometheus"], f"--config.file={tmp / 'prometheus.yml'}",
                               f"--storage.tsdb.path={tmp / 'prometheus'}",
                               f"--web.listen-address={prom.base.removeprefix('http://')}"])  # fmt: skip
    for role, port in ports.items():
        wait_until(
            f"{role} ready (/readyz)",
            lambda port=port: (
                procs.check_alive(),
                http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200,
            )[1],
        )
    wait_until("Prometheus ready", lambda: http_get(f"{prom.base}/-/ready")[0] == 200)
    wait_until(
        "Prometheus scraping all four kiln targets",
        lambda: finite_series(prom.query('up{job="kiln"} == 1')) == len(ROLES),
    )
    return prom


def check_variables(dashboard: dict, prom: Prometheus) -> int:
    """Every template variable's label_values(metric, label) has values; returns how many."""
    variables = [v for v in dashboard["templating"]["list"] if v["type"] == "query"]
    for v in variables:
        definition = v["definition"]
        inner = definition[definition.index("(") + 1 : definition.rindex(")")]
        metric, label = [part.strip() for part in inner.split(",")]
        wait_until(
            f"variable ${v['name']}: {definition} has values",
            lambda label=label, metric=metric: prom.api(
                f"label/{label}/values", **{"match[]": metric}
            ).get("data"),
        )
    return len(variables)


def check_panels(dashboard: dict, prom: Prometheus, rate_interval: str, watch) -> int:
    """Every panel target returns at least one finite series; returns how many targets.
    `watch` is called at every poll (it fails when a process or the load did)."""
    checked = 0
    for panel in panels_of(dashboard):
        for t in panel["targets"]:
            expr = substitute(t["expr"], rate_interval)

            def answered(expr=expr):
                watch()
                return finite_series(prom.query(expr))

            series = wait_until(
                f"panel {panel['title']!r} target {t['refId']}: no data for {expr}", answered
            )
            checked += 1
            print(f"  {series:3d} series  {panel['title']} [{t['refId']}]")
    return checked


def check_rules(prom: Prometheus) -> int:
    """kiln's alert rules are loaded and evaluate without error; returns how many rules."""

    def healthy():
        groups = prom.api("rules").get("data", {}).get("groups", [])
        rules = [r for g in groups for r in g["rules"]]
        ok = {r["name"] for r in rules} == ALERTS and all(
            r["health"] == "ok" and r.get("lastEvaluation", "").startswith("2") for r in rules
        )
        return len(rules) if ok else None

    return wait_until(f"the rules {sorted(ALERTS)} loaded and healthy in /api/v1/rules", healthy)


def alert_state(prom: Prometheus, why: str, alertname: str, **labels: str) -> str:
    """Wait until the alert `alertname` with `labels` is pending (before its `for:`) or firing;
    returns which."""

    def state():
        for a in prom.api("alerts").get("data", {}).get("alerts", []):
            want = {"alertname": alertname, **{k.rstrip("_"): v for k, v in labels.items()}}
            if all(a["labels"].get(k) == v for k, v in want.items()):
                return a["state"]
        return None

    return wait_until(f"{alertname} {labels or ''} pending or firing {why}", state)


def check_alerts_without_gpu_worker(kiln: str, procs: Processes, prom: Prometheus) -> list[str]:
    """Stop the GPU-class worker and queue GPU jobs: its target goes down (KilnRoleDown) and the
    GPU class has a backlog and no live worker (KilnBacklogWithoutWorkers)."""
    procs.stop_one("worker-gpu")
    out = subprocess.run(
        [kiln, "submit", "vector_add", "-p", "len=64", "-d", "gpu", "--count", "5"],
        check=False, env=procs.env, capture_output=True, text=True,
    )  # fmt: skip
    if out.returncode != 0:
        fail(f"kiln submit -d gpu: {out.stderr.strip()}")
    down = alert_state(
        prom, "after the worker stopped", "KilnRoleDown", role="worker", class_="gpu"
    )
    backlog = alert_state(
        prom, "with GPU jobs queued and no GPU worker", "KilnBacklogWithoutWorkers", class_="gpu"
    )
    return [f"KilnRoleDown {down}", f"KilnBacklogWithoutWorkers {backlog}"]


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    parser.add_argument("--kiln", default=os.environ.get("KILN_BIN", f"{target}/debug/kiln"))
    parser.add_argument("--rate-interval", default="30s", help="what $__rate_interval becomes")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--wait-s", type=float, default=WAIT_S, help="how long each query may take to return data"
    )
    return parser.parse_args()


def main() -> int:
    global WAIT_S
    args = arguments()
    WAIT_S = args.wait_s
    tools = {name: shutil.which(name) for name in ["nats-server", "prometheus", "promtool"]}
    missing = [name for name, path in tools.items() if not path]
    if missing:
        print(
            f"dashboard-check: {', '.join(missing)} not found: dashboard NOT checked; run it as "
            "./dev dashboard-check (it installs them into .tools/)",
            file=sys.stderr,
        )
        return 1 if os.environ.get("CI") else 0
    if not os.access(args.kiln, os.X_OK):
        fail(f"no kiln binary at {args.kiln}; build it (cargo build -p kiln-cli) or set KILN_BIN")
    dashboard = json.loads(DASHBOARD.read_text())
    check_dashboard_shape(dashboard)

    tmp = Path(tempfile.mkdtemp(prefix="kiln-dashboard-check-"))
    nats_port = free_port()
    # Small streams: JetStream reserves each stream's maximum out of the store's share of the
    # free disk, and kiln's defaults (4 GiB of results, 8 GiB of data) need more than a
    # build machine may have.
    env = {
        **os.environ,
        "NATS_URL": f"nats://127.0.0.1:{nats_port}",
        "RUST_LOG": "warn",
        "KILN_RESULTS_MAX_BYTES": str(256 << 20),
        "KILN_DATA_MAX_BYTES": str(256 << 20),
    }
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    procs = Processes(tmp, env)
    load = Load(args.kiln, env, nats_port, max_rounds=300)
    try:
        prom = start_system(args.kiln, tools, tmp, procs)
        # The dead-letter alert compares with the lowest count of its window: let Prometheus
        # see an empty KILN_DLQ first.
        wait_until(
            "kiln_dead_letters = 0 in Prometheus",
            lambda: finite_series(prom.query("kiln_dead_letters == 0")) == 1,
        )
        load.start()
        nats_publish(nats_port, "dlq.vector_add", "dashboard-check-letter", b'{"params":{"len":8}}')

        def watch():
            procs.check_alive()
            if load.errors:
                fail("submissions failed:\n" + "\n".join(load.errors[:5]))

        variables = check_variables(dashboard, prom)
        targets = check_panels(dashboard, prom, args.rate_interval, watch)
        rules = check_rules(prom)
        alerts = [
            "KilnDeadLettersGrowing "
            + alert_state(prom, "after a dead letter", "KilnDeadLettersGrowing")
        ]
        promtool = subprocess.run(
            [tools["promtool"], "check", "rules", *RULES],
            check=False,
            capture_output=True,
            text=True,
        )
        if promtool.returncode != 0:
            fail(f"promtool check rules:\n{promtool.stdout}{promtool.stderr}")
        load.stopped.set()
        load.join()
        watch()
        alerts += check_alerts_without_gpu_worker(args.kiln, procs, prom)
        print(
            f"dashboard-check: {len(panels_of(dashboard))} panels, {targets} panel queries and "
            f"{variables} template variables returned data from Prometheus scraping "
            f"{len(ROLES)} kiln processes under load ({load.submitted} jobs submitted, "
            f"{load.failing} invalid ones published); {rules} alert rules loaded and healthy; "
            f"promtool check rules passed; live alerts: {', '.join(alerts)}"
        )
        return 0
    finally:
        load.stopped.set()
        procs.stop()
        if args.keep:
            print(f"dashboard-check: logs and config kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
