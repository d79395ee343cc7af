"""The load and the assertions of `just compose-check` (scripts/compose-check.sh starts the
compose stack and runs this from the host with kiln's Python client).

Submits JOBS jobs of every kind through the scheduler (`jobs.auto.<kind>`), kills one NATS
container (the node leading KILN_JOBS) and one CPU worker container with SIGKILL while they
run, lets Docker restart both, and then checks that:
  - every job id has exactly one result, on `results.<kind>.<id>`, and it succeeded;
  - the aggregator's counts (its `metrics.<kind>.<class>` snapshots) equal the results;
  - Prometheus scrapes every kiln role, and its `kiln_jobs_total` equals the results.
Prints a JSON summary; exits 1 with the reason when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from typing import Any

import kiln
from kiln import SubmitError

KINDS = ["matmul", "vector_add", "conv2d", "train_mlp", "mlp_predict"]
# Small sizes: the point is the pipeline, not the kernels (2 shared cores run all of it).
PARAMS: dict[str, dict[str, Any]] = {
    "matmul": {"n": 32},
    "vector_add": {"len": 256},
    "conv2d": {"batch": 1, "channels": 1, "height": 32, "width": 32, "filter": "sobel"},
    "train_mlp": {
        "samples": 64,
        "features": 2,
        "classes": 2,
        "hidden": [8],
        "epochs": 2,
        "batch_size": 32,
    },
    "mlp_predict": {"x": [[0.5, -0.5], [1.0, 2.0], [-1.5, 0.25]]},
}
NATS_HTTP = {"kiln-n1": 8222, "kiln-n2": 8223, "kiln-n3": 8224}
SERVICE_OF_NODE = {"kiln-n1": "nats-1", "kiln-n2": "nats-2", "kiln-n3": "nats-3"}
ROLE_PORTS = {"aggregator": 9191, "scheduler": 9192, "worker-cpu-1": 9193, "worker-cpu-2": 9194}
PROMETHEUS = "http://127.0.0.1:9090"


class CheckFailed(Exception):
    pass


def log(message: str) -> None:
    print(f"compose-check: {message}", file=sys.stderr, flush=True)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def prometheus(query: str) -> list[dict[str, Any]]:
    url = f"{PROMETHEUS}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise CheckFailed(f"Prometheus refused {query!r}: {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def container(project: str, service: str) -> str:
    out = subprocess.run(
        [
            "docker",
            "ps",
            "-aq",
            "--filter",
            f"label=com.docker.compose.project={project}",
            "--filter",
            f"label=com.docker.compose.service={service}",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    if len(out) != 1:
        raise CheckFailed(f"expected one container of service {service}, found {out}")
    return out[0]


def inspect(cid: str, template: str) -> str:
    return subprocess.run(
        ["docker", "inspect", "-f", template, cid], check=True, capture_output=True, text=True
    ).stdout.strip()


def crash(project: str, service: str) -> str:
    """SIGKILL the container's process from the host: a crash, so its restart policy brings it
    back (`docker kill` counts as a manual stop, which restart policies leave stopped)."""
    cid = container(project, service)
    pid = int(inspect(cid, "{{.State.Pid}}"))
    if pid <= 0:
        raise CheckFailed(f"{service} is not running, so it cannot be killed")
    os.kill(pid, signal.SIGKILL)
    return cid


async def wait_until(what: str, timeout: float, probe: Any, interval: float = 0.5) -> Any:
    """Poll `probe` until it returns something true. Errors count as "not yet": during a
    failover JetStream's API times out or has no responders for a few seconds."""
    deadline = time.monotonic() + timeout
    error: Exception | None = None
    while True:
        try:
            value = await probe()
            if value:
                return value
        except CheckFailed:
            raise
        except Exception as e:
            error = e
        if time.monotonic() > deadline:
            last = f" (last error: {error!r})" if error else ""
            raise CheckFailed(f"timed out after {timeout:.0f} s waiting for {what}{last}")
        await asyncio.sleep(interval)


async def stack_ready(project: str) -> None:
    async def init_done() -> bool:
        cid = container(project, "init")
        state = inspect(cid, "{{.State.Status}} {{.State.ExitCode}}")
        return state == "exited 0"

    async def roles_ready() -> bool:
        return all(http_ok(f"http://127.0.0.1:{p}/readyz") for p in ROLE_PORTS.values())

    await wait_until("kiln init to finish (exit 0)", 180, init_done)
    await wait_until("every kiln role's /readyz", 180, roles_ready)


async def jobs_leader(js: Any) -> str:
    info = await js.stream_info("KILN_JOBS")
    leader = info.cluster.leader if info.cluster else None
    if leader not in SERVICE_OF_NODE:
        raise CheckFailed(f"KILN_JOBS has no leader among {list(SERVICE_OF_NODE)}: {leader!r}")
    return str(leader)


async def submit_all(client: Any, specs: list[dict[str, Any]], on_progress: Any) -> int:
    """Submit in batches, retrying what a failover refused (same ids: the server drops
    copies it already stored). Returns how many submissions were retried."""
    retried = 0
    batch = max(25, len(specs) // 20)  # the kills come between batches, mid-submission
    for start in range(0, len(specs), batch):
        pending = specs[start : start + batch]
        for _attempt in range(60):
            try:
                await client.submit_many(pending, device="auto")
                break
            except SubmitError as e:
                refused = set(e.refused)
                pending = [s for s in pending if s["id"] in refused]
                retried += len(pending)
                log(f"{len(pending)} submissions refused ({e}); retrying them")
            except Exception as e:  # a connection lost mid-batch: resubmit all of it
                retried += len(pending)
                log(f"submitting failed ({e!r}); retrying the batch")
            await asyncio.sleep(1)
        else:
            raise CheckFailed(f"{len(pending)} jobs were still refused after 60 attempts")
        await on_progress(start + batch)
    return retried


async def read_results(js: Any, expected: int, timeout: float) -> dict[str, list[dict[str, Any]]]:
    """Every message of KILN_RESULTS, by subject."""
    by_subject: dict[str, list[dict[str, Any]]] = {}
    sub = await js.subscribe("results.>", ordered_consumer=True)
    deadline = time.monotonic() + timeout
    try:
        while sum(len(v) for v in by_subject.values()) < expected:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                msg = await sub.next_msg(timeout=min(left, 5))
            except Exception:  # nats' TimeoutError: check the deadline again
                continue
            by_subject.setdefault(msg.subject, []).append(json.loads(msg.data))
    finally:
        await sub.unsubscribe()
    return by_subject


async def aggregator_counts(js: Any) -> dict[str, dict[str, int]]:
    """Per kind: jobs, succeeded, failed and duplicates summed over classes, from the latest
    snapshot on each metrics.<kind>.<class> subject."""
    info = await js.stream_info("KILN_METRICS", subjects_filter="metrics.>")
    counts: dict[str, dict[str, int]] = {}
    for subject in info.state.subjects or {}:
        msg = await js.get_last_msg("KILN_METRICS", subject)
        snap = json.loads(msg.data)
        kind = subject.split(".")[1]
        c = counts.setdefault(kind, Counter())
        for field in ("jobs", "succeeded", "failed", "duplicates"):
            c[field] += int(snap.get(field) or 0)
    return {k: dict(v) for k, v in counts.items()}


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--project", required=True, help="the compose project name")
    ap.add_argument("--jobs", type=int, default=1000, help="jobs of each kind")
    ap.add_argument(
        "--kill-at", type=float, default=0.4, help="fraction submitted before the kills"
    )
    ap.add_argument("--timeout-s", type=float, default=900, help="seconds to wait for all results")
    args = ap.parse_args()
    timings: dict[str, float] = {}
    t0 = time.monotonic()

    log("waiting for the stack: init done, every role ready")
    await stack_ready(args.project)
    timings["ready_s"] = time.monotonic() - t0

    url = ",".join(f"nats://127.0.0.1:{p}" for p in (4222, 4223, 4224))
    async with kiln.connect(url, connect_timeout=5) as client:
        js = client.nats.jetstream()
        run = f"cc{int(time.time())}"

        # mlp_predict needs a trained model: one train_mlp job first, asked to store it (a job on
        # generated data stores its model only when asked to).
        model_job = await client.submit(
            "train_mlp", "auto", id=f"{run}-model", output="safetensors", **PARAMS["train_mlp"]
        )
        model = await model_job.result(timeout=120)
        model.raise_for_status()
        model_name = model.output["object"]["name"]  # a plain string names a `model` object
        log(f"model trained by {model.worker}: {model_name}")

        specs: list[dict[str, Any]] = []
        for i in range(args.jobs):
            for kind in KINDS:  # interleaved: every kind is in flight when the kills come
                params = dict(PARAMS[kind])
                if kind == "mlp_predict":
                    params["model"] = model_name
                specs.append({"kind": kind, "id": f"{run}-{kind}-{i}", "seed": i, **params})
        total = len(specs) + 1  # and the model's job

        killed: dict[str, str] = {}

        async def on_progress(submitted: int) -> None:
            if killed or submitted < args.kill_at * len(specs):
                return
            leader = await jobs_leader(js)
            crash(args.project, SERVICE_OF_NODE[leader])
            crash(args.project, "worker-cpu-1")
            killed.update(
                {
                    "nats": f"{SERVICE_OF_NODE[leader]} ({leader}, leading KILN_JOBS)",
                    "worker": "worker-cpu-1",
                }
            )
            log(f"SIGKILLed {killed['nats']} and worker-cpu-1 after {submitted} submissions")
            timings["kill_at_s"] = time.monotonic() - t0

        t_submit = time.monotonic()
        retried = await submit_all(client, specs, on_progress)
        timings["submit_s"] = time.monotonic() - t_submit
        if not killed:
            raise CheckFailed("the kills never happened")
        log(f"{len(specs)} jobs submitted in {timings['submit_s']:.1f} s ({retried} resubmitted)")

        async def all_answered() -> bool:
            info = await js.stream_info("KILN_RESULTS")
            return bool(info.state.messages >= total)

        await wait_until(f"{total} results in KILN_RESULTS", args.timeout_s, all_answered, 1)
        timings["answered_s"] = time.monotonic() - t_submit
        results = await read_results(js, total, 120)

        # Exactly once: one message per job's subject, none for anything else.
        expected = {f"results.{s['kind']}.{s['id']}" for s in specs}
        expected.add(f"results.train_mlp.{run}-model")
        missing = expected - results.keys()
        extra = results.keys() - expected
        twice = {s: len(v) for s, v in results.items() if len(v) != 1}
        failed = [v[0] for v in results.values() if v[0].get("status") != "succeeded"]
        if missing or extra or twice:
            raise CheckFailed(
                f"results: {len(missing)} job(s) unanswered (e.g. {sorted(missing)[:3]}), "
                f"{len(extra)} unexpected subject(s) (e.g. {sorted(extra)[:3]}), "
                f"{len(twice)} answered more than once (e.g. {list(twice.items())[:3]})"
            )
        if failed:
            raise CheckFailed(f"{len(failed)} job(s) failed, e.g. {json.dumps(failed[0])[:600]}")
        per_kind = Counter(s.split(".")[1] for s in results)
        retries = Counter(v[0]["kind"] for v in results.values() if int(v[0].get("attempt", 1)) > 1)
        workers = Counter(v[0].get("worker") for v in results.values())

        # The aggregator's counts equal the results (its snapshots lag by up to a second).
        async def aggregated() -> dict[str, dict[str, int]] | None:
            counts = await aggregator_counts(js)
            ok = all(
                counts.get(k, {}).get("jobs") == n and counts[k].get("succeeded") == n
                for k, n in per_kind.items()
            ) and set(counts) == set(per_kind)
            return counts if ok else None

        try:
            counts = await wait_until(
                "the aggregator's counts to equal the results", 60, aggregated, 1
            )
        except CheckFailed:
            raise CheckFailed(
                f"aggregator counts {await aggregator_counts(js)} != results {dict(per_kind)}"
            ) from None

    # Prometheus scrapes every role (the killed worker too, once restarted) and has the counts.
    async def scraped() -> bool:
        up = prometheus('up{job="kiln"}')
        return len(up) == len(ROLE_PORTS) and all(s["value"][1] == "1" for s in up)

    await wait_until("Prometheus to scrape every kiln role (up == 1)", 60, scraped, 1)

    async def prometheus_counts() -> dict[str, int] | None:
        rows = prometheus('sum by (kind) (kiln_jobs_total{role="aggregator"})')
        seen = {r["metric"]["kind"]: int(float(r["value"][1])) for r in rows}
        return seen if seen == dict(per_kind) else None

    try:
        prom = await wait_until(
            "Prometheus' kiln_jobs_total to equal the results", 60, prometheus_counts, 1
        )
    except CheckFailed:
        rows = prometheus('sum by (kind) (kiln_jobs_total{role="aggregator"})')
        raise CheckFailed(f"Prometheus has {rows}, the results {dict(per_kind)}") from None

    restarts = {
        svc: int(inspect(container(args.project, svc), "{{.RestartCount}}"))
        for svc in ("nats-1", "nats-2", "nats-3", "worker-cpu-1", "worker-cpu-2")
    }
    if not any(restarts[s] for s in ("nats-1", "nats-2", "nats-3")) or not restarts["worker-cpu-1"]:
        raise CheckFailed(f"the killed containers were not restarted: {restarts}")
    timings["total_s"] = time.monotonic() - t0
    print(
        json.dumps(
            {
                "jobs": total,
                "results_per_kind": dict(per_kind),
                "aggregator": counts,
                "prometheus_kiln_jobs_total": prom,
                "answered_after_a_retry": dict(retries),
                "resubmitted_after_refusal": retried,
                "results_per_worker": dict(workers),
                "killed": killed,
                "restarts": restarts,
                "seconds": {k: round(v, 1) for k, v in timings.items()},
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except CheckFailed as e:
        print(f"compose-check: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
