#!/bin/sh
# This stop's release build: one pipeline invocation, one latency run.
set -eu
T=$HOME/.cache/kiln/target
export PATH=/work/main/.tools/venv/bin:$PATH
cd "$(dirname "$0")"
rm -rf /tmp/kiln-stop58-store; nats-server -js -p 4333 -m 8333 -a 127.0.0.1 -sd /tmp/kiln-stop58-store > /dev/null 2>&1 &
SP=$!
sleep 1
"$T/release/kiln-bench" pipeline --external -s nats://127.0.0.1:4333 --varz http://127.0.0.1:8333 --server-pid $SP --jobs 20000 --runs 3 > pipeline.txt 2>&1
"$T/release/kiln-bench" latency --jobs 2000 > latency.txt 2>&1
kill $SP
rm -rf /tmp/kiln-stop58-store
echo done
