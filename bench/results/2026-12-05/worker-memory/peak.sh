#!/usr/bin/env bash
# Peak resident memory (VmHWM) of a CPU worker with --max-memory-mb 1024 while one conv2d of
# a generated 1 x 1 x 1 x 134,000,000 image runs (an outside test's case: counted as two
# 536 MB maps, the budget's whole).  usage: peak.sh KILN
set -euo pipefail
kiln=$1
dir=$(mktemp -d /tmp/membench/run.XXXX)
port=$((20000 + RANDOM % 20000))
nats-server -a 127.0.0.1 -p $port -js -sd "$dir/store" >"$dir/server.log" 2>&1 &
server=$!
export NATS_URL=nats://127.0.0.1:$port
sleep 1
"$kiln" init --data-max-bytes 1073741824 --results-max-bytes 536870912 >/dev/null 2>&1
"$kiln" worker --device cpu --max-memory-mb 1024 --name mem --no-warmup >"$dir/worker.log" 2>&1 &
worker=$!
trap 'kill $worker $server 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
sleep 2
before=$(awk '/VmHWM/ {print $2}' /proc/$worker/status)
"$kiln" submit conv2d -p batch=1 -p channels=1 -p height=1 -p width=134000000 --wait --wait-timeout 5m > "$dir/result.json" || true
after=$(awk '/VmHWM/ {print $2}' /proc/$worker/status)
status=$(python3 -c "import json,sys; r=json.load(open('$dir/result.json')); print(r['status'], (r.get('error') or {}).get('kind',''), r.get('compute_ms'))")
echo "$(basename "$kiln") peak RSS: before $((before/1024)) MiB, after the job $((after/1024)) MiB; result: $status"
