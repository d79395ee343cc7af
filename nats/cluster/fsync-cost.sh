#!/usr/bin/env bash
# What `sync_interval: always` costs, into R3 streams on three local nodes started from
# node.conf, then from a copy of node.conf without the line (nats-server's default: fsync every
# 2 minutes). Same machine, same run, alternating, ROUNDS times each:
#  - throughput: kiln's pipelined submit (1,024 publishes in flight), jobs/s acknowledged;
#  - latency: SEQ one-job `kiln submit` runs one after another, ms each (process start
#    included, the same in both).
#   KILN=target/debug/kiln JOBS=20000 SEQ=40 ROUNDS=3 nats/cluster/fsync-cost.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
kiln=${KILN:-kiln}
jobs=${JOBS:-5000}
rounds=${ROUNDS:-3}
seq_jobs=${SEQ:-40}
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
  local rate
  rate=$(echo "$jobs / ($end - $start)" | bc -l | xargs printf '%.0f')
  start=$(date +%s.%N)
  for i in $(seq "$seq_jobs"); do
    "$kiln" --nats-url "$urls" submit vector_add -p len=16 --id "s$i" > /dev/null 2>&1
  done
  end=$(date +%s.%N)
  kill "${pids[@]}"
  wait "${pids[@]}" 2> /dev/null || true
  echo "$rate jobs/s, $(echo "1000 * ($end - $start) / $seq_jobs" | bc -l | xargs printf '%.1f') ms per one-job submit"
}

echo "R3 on three local nodes ($(nproc) cores); $jobs pipelined jobs, then $seq_jobs one-job submits per round"
for r in $(seq "$rounds"); do
  always=$(rate "$here/node.conf")
  lazy=$(rate "$work/default-fsync.conf")
  echo "round $r: sync_interval always: $always | default (2 min): $lazy"
done
