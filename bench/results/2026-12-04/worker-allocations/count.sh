#!/bin/bash
# Count allocator calls per job in a CPU worker: $1 = kiln binary with probes, $2 = jobs
K=$1; N=${2:-3000}
PORT=$((20000 + RANDOM % 20000))
rm -rf js; nats-server -js -a 127.0.0.1 -p $PORT -sd $PWD/js >server.log 2>&1 & SP=$!
export NATS_URL=nats://127.0.0.1:$PORT
sleep 0.5
$K init >/dev/null 2>&1
$K worker --device cpu --name alloc-probe >worker.log 2>&1 & WP=$!
sleep 3
$K submit vector_add -p len=1024 -n 500 --id warm --wait >/dev/null 2>&1
sleep 1
perf stat -e 'probe_kiln:*' -p $WP -o perf.txt -- sleep 600 & PP=$!
sleep 0.5
t0=$(date +%s.%N)
$K submit vector_add -p len=1024 -n $N --id m$RANDOM --wait >/dev/null 2>&1
t1=$(date +%s.%N)
kill -INT $PP; wait $PP 2>/dev/null
echo "jobs $N in $(echo "$t1 - $t0" | bc) s"
cat perf.txt | grep probe
kill $WP; wait $WP 2>/dev/null; kill $SP; wait $SP 2>/dev/null
