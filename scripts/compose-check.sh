#!/usr/bin/env bash
# The container test (`just compose-check`), run before every release rather than in CI (a cold
# run builds kiln, two base images and the stack on top; docs/CONTAINERS.md has the timings):
#   1. starts dockerd (--bridge=none --iptables=false) if no daemon answers, and stops it at the
#      end if it started it;
#   2. builds the images (deploy/docker/images.sh: from local bases where no registry answers);
#   3. brings compose.yaml up as project kiln-check: 3 NATS nodes, init, aggregator, scheduler,
#      two CPU workers, Prometheus, every one on the host's network at 127.0.0.1;
#   4. runs scripts/compose_check.py from the host with kiln's Python client: JOBS jobs of every
#      kind through the scheduler, one NATS container and one worker container SIGKILLed
#      mid-run, then every job answered exactly once, the aggregator's counts and Prometheus'
#      equal to the results;
#   5. tears the stack down with its volumes, whatever happened (logs kept on failure).
#
#   scripts/compose-check.sh                  KILN_CHECK_JOBS=1000 per kind (the default)
#   KILN_CHECK_JOBS=100 scripts/compose-check.sh
#   KILN_CHECK_KEEP=1 scripts/compose-check.sh    leave the stack up afterwards (down -v it yourself)
set -euo pipefail
cd "$(dirname "$0")/.."

project=kiln-check
jobs=${KILN_CHECK_JOBS:-1000}
tag=${KILN_CHECK_TAG:-dev}
logs=$(mktemp -d -t kiln-compose-check.XXXXXX)
t0=$(date +%s)
phase() { echo "compose-check: [$(($(date +%s) - t0)) s] $*" >&2; }
die() { echo "compose-check: $*" >&2; exit 1; }

command -v docker >/dev/null || die "docker is not installed (Debian: apt-get install docker.io docker-compose)"

# 1. The daemon.
started_dockerd=
if ! docker info >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || die "no Docker daemon answers, and starting one needs root"
  command -v dockerd >/dev/null || die "no Docker daemon answers and dockerd is not installed (apt-get install docker.io)"
  phase "starting dockerd --bridge=none --iptables=false (log: $logs/dockerd.log)"
  dockerd --bridge=none --iptables=false > "$logs/dockerd.log" 2>&1 &
  started_dockerd=$!
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || die "dockerd did not answer within 30 s; see $logs/dockerd.log"
fi

# Compose: the docker CLI plugin (v2) or Debian's docker-compose (1.29); the file works with both.
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose -p "$project")
elif command -v docker-compose >/dev/null; then
  compose=(docker-compose -p "$project")
else
  die "neither \`docker compose\` nor docker-compose is installed (Debian: apt-get install docker-compose)"
fi

cleanup() {
  local rc=$?
  if [ -n "${KILN_CHECK_KEEP:-}" ]; then
    phase "leaving the stack up (KILN_CHECK_KEEP): ${compose[*]} down -v"
  else
    if [ "$rc" != 0 ]; then
      "${compose[@]}" logs --no-color > "$logs/compose.log" 2>&1 || true
      phase "FAILED; the containers' logs are in $logs/compose.log"
    fi
    "${compose[@]}" down -v --remove-orphans > "$logs/down.log" 2>&1 ||
      echo "compose-check: compose down failed; see $logs/down.log" >&2
  fi
  if [ -n "$started_dockerd" ]; then
    kill "$started_dockerd" 2>/dev/null && wait "$started_dockerd" 2>/dev/null || true
  fi
  [ "$rc" != 0 ] || rm -rf "$logs"
  exit "$rc"
}
trap cleanup EXIT

# A stack left by an earlier run goes first; then every port the stack listens on must be free
# (all containers share the host's network).
"${compose[@]}" down -v --remove-orphans > /dev/null 2>&1 || true
busy=()
for port in 4222 4223 4224 6222 6223 6224 8222 8223 8224 9090 9191 9192 9193 9194; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then busy+=("$port"); fi
done
[ ${#busy[@]} -eq 0 ] || die "ports ${busy[*]} on 127.0.0.1 are in use; the stack needs them (compose.yaml lists them)"

# 2. Images. Prometheus: upstream's image where it can be pulled, else Debian's package.
phase "building the images (tag $tag)"
images=(kiln kiln-nats)
prom_image=prom/prometheus:v3.5.0
if ! docker image inspect "$prom_image" >/dev/null 2>&1 && ! docker pull -q "$prom_image" >/dev/null 2>&1; then
  images+=(prometheus)
  prom_image=kiln-local/prometheus:bookworm
fi
deploy/docker/images.sh --tag "$tag" "${images[@]}" > "$logs/images.log" 2>&1 ||
  { tail -30 "$logs/images.log" >&2; die "building the images failed; see $logs/images.log"; }
grep -E '^(kiln|kiln-nats|kiln-local/prometheus):' "$logs/images.log" >&2 || true
t_built=$(date +%s)

# 3. The stack, from nothing.
export KILN_IMAGE=kiln:$tag KILN_NATS_IMAGE=kiln-nats:$tag KILN_PROMETHEUS_IMAGE=$prom_image
phase "compose up ($prom_image)"
"${compose[@]}" up -d --no-build > "$logs/up.log" 2>&1 ||
  { cat "$logs/up.log" >&2; die "compose up failed"; }

# 4. The load and the checks, with kiln's Python client in its own virtual environment.
venv=.tools/compose-check
stamp="$venv/.kiln-client-$( (cat clients/python/pyproject.toml; pwd) | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  phase "installing kiln's Python client into $venv"
  rm -rf "$venv" && python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -e clients/python
  touch "$stamp"
fi
phase "$jobs jobs of each kind, a NATS node and a worker killed mid-run"
t_load=$(date +%s)
"$venv/bin/python" scripts/compose_check.py --project "$project" --jobs "$jobs" | tee "$logs/summary.json"
t_end=$(date +%s)
phase "passed: images $((t_built - t0)) s, stack and load $((t_end - t_built)) s (load $((t_end - t_load)) s), total $((t_end - t0)) s"
