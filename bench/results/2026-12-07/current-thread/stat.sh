#!/bin/bash
# perf of worker during pipeline bench
T=$HOME/.cache/kiln/target
export PATH=/work/main/.tools/venv/bin:$PATH
cd "$(dirname "$0")"
rm -rf store; nats-server -js -p 4334 -m 8334 -a 127.0.0.1 -sd "$(dirname "$0")"/store > server.log 2>&1 &
SP=$!
sleep 1
KILN_BIN=${KB:-$T/release/kiln} "$T/release/kiln-bench" pipeline --external -s nats://127.0.0.1:4334 --server-pid $SP --jobs ${JOBS:-100000} --runs 1 > pipeline.txt 2>&1 &
BP=$!
for i in $(seq 1 900); do W=$(pgrep -f "kiln[-a-z]* worker" | head -1); [ -n "$W" ] && break; sleep 0.1; done
A=$(pgrep -f "kiln[-a-z]* aggregator" | head -1)
echo worker=$W agg=$A
# wait for warmup over
sleep ${DELAY:-1}
perf stat -e syscalls:sys_enter_writev,syscalls:sys_enter_recvfrom,syscalls:sys_enter_epoll_wait,context-switches -p $W -o stat-worker.txt -- sleep ${DUR:-3} &
perf stat -e context-switches -p $A -o stat-agg.txt -- sleep ${DUR:-3} &
wait $BP
sleep 1
kill $SP
