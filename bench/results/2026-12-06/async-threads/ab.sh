#!/bin/sh
# old (a19e076, multi-thread runtime) vs new (one async thread) as the role processes, alternating
export KILN_BIN=$(dirname "$0")/role.sh WORKER_ENV= AGG_ENV= T=$HOME/.cache/kiln/target
SP=$(pgrep -f "nats-server -js -p 4333")
for r in 1 2 3 4; do for arm in old new; do
  export KILN_REAL=$(dirname "$0")/kiln-$arm
  $T/release/kiln-bench latency --external -s nats://127.0.0.1:4333 --jobs 4000 > lat-$arm-$r.txt 2>&1
done; done
for r in 1 2; do for arm in old new; do
  export KILN_REAL=$(dirname "$0")/kiln-$arm
  $T/release/kiln-bench pipeline --external -s nats://127.0.0.1:4333 --varz http://127.0.0.1:8333 --server-pid $SP --jobs 20000 --runs 3 > pipe-$arm-$r.txt 2>&1
done; done
echo done > done
