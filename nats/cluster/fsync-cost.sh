#!/usr/bin/env bash
# What `sync_interval: always` costs: kiln's pipelined submit rate (jobs/s acknowledged by the
# cluster) into R3 streams on three local nodes started from node.conf, then from a copy of
# node.conf without the line (nats-server's default: fsync every 2 minutes). Same machine,
# same run, alternating, ROUNDS times each.
#   KILN=target/debug/kiln JOBS=5000 ROUNDS=3 nats/cluster/fsync-cost.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
kiln=${KILN:-kiln}
jobs=${JOBS:-5000}
rounds=${ROUNDS:-3}
base=${PORT_BASE:-24222}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
grep -v '^\s*sync_interval: always' "$here/node.conf" > "$work/default-fsync.conf"

# rate CONFIG: start three nodes, `kiln init --replicas 3`, time `kiln submit --count $jobs`.
rate() {
  local dir pids=() urls="" i
  dir=$(mktemp -d -p "$work")
  for i in 0 1 2; do
    KILN_NODE_NAME=kiln-n$((i + 1)) \
    KILN_CLIENT_LISTEN=127.0.0.1:$((base + i)) \
    KILN_HTTP_LISTEN=127.0.0.1:$((base + 10 + i)) \
    KILN_CLUSTER_LISTEN=127.0.0.1:$((base + 20 + i)) \
    KILN_ROUTE_1=nats-route://127.0.0.1:$((base + 20)) \
    KILN_ROUTE_2=nats-route://127.0.0.1:$((base + 21)) \
    KILN_ROUTE_3=nats-route://127.0.0.1:$((base + 22)) \
    KILN_STORE_DIR="$dir/n$i" \
      nats-server -c "$1" > "$dir/log$i" 2>&1 &
    pids+=($!)
    urls+="${urls:+,}nats://127.0.0.1:$((base + i))"
  done
  for i in 0 1 2; do
    until curl -sf "http://127.0.0.1:$((base + 10 + i))/healthz" > /dev/null; do sleep 0.2; done
  done
  "$kiln" --nats-url "$urls" --replicas 3 init > /dev/null
  local start end
  start=$(date +%s.%N)
  "$kiln" --nats-url "$urls" submit vector_add -p len=16 --count "$jobs" --id r > /dev/null
  end=$(date +%s.%N)
  kill "${pids[@]}"
  wait "${pids[@]}" 2> /dev/null || true
  echo "$jobs / ($end - $start)" | bc -l | xargs printf '%.0f'
}

echo "jobs/s acknowledged, $jobs jobs per round, R3 on three local nodes ($(nproc) cores)"
for r in $(seq "$rounds"); do
  always=$(rate "$here/node.conf")
  lazy=$(rate "$work/default-fsync.conf")
  echo "round $r: sync_interval always $always, default (2 min) $lazy"
done
