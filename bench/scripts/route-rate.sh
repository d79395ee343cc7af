#!/usr/bin/env bash
# How fast one scheduler routes auto jobs: queues JOBS tiny vector_add jobs on jobs.auto.* of a
# private nats-server with no workers, starts `kiln scheduler`, and times until every routed
# copy waits on the CPU workers' consumer (polled every 0.1 s, so a lower bound on the rate).
# Compare two builds on the same machine in the same sitting:
#   bench/scripts/route-rate.sh OLD_KILN 20000; bench/scripts/route-rate.sh NEW_KILN 20000
set -u
K=${1:?usage: route-rate.sh KILN_BINARY [JOBS]}
N=${2:-20000}
port=$((20000 + RANDOM % 10000))
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
nats-server -js -a 127.0.0.1 -p "$port" -sd "$dir/store" > "$dir/nats-server.log" 2>&1 &
sleep 1
export NATS_URL=nats://127.0.0.1:$port RUST_LOG=warn
"$K" init > /dev/null
"$K" submit vector_add -p len=16 --device auto --count "$N" > /dev/null 2>&1
start=$(date +%s.%N)
"$K" scheduler > "$dir/scheduler.log" 2>&1 &
while true; do
    pending=$("$K" status 2>/dev/null | awk '/workers-cpu/ {print $3}')
    [ "${pending:-0}" -ge "$N" ] && break
    sleep 0.1
done
end=$(date +%s.%N)
python3 -c "d = $end - $start; print(f'$N jobs routed in {d:.2f} s: {$N / d:.0f} jobs/s')"
