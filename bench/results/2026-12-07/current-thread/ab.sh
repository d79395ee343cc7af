#!/bin/bash
T=$HOME/.cache/kiln/target
export PATH=/work/main/.tools/venv/bin:$PATH
cd "$(dirname "$0")"
rm -rf store2; nats-server -js -p 4335 -m 8335 -a 127.0.0.1 -sd "$(dirname "$0")"/store2 > server2.log 2>&1 &
SP=$!
sleep 1
for r in 4 5 6; do
  for arm in base ct; do
    unset KILN_CT
    KILN_BIN="$(dirname "$0")"/kiln-$arm "$T/release/kiln-bench" pipeline --external -s nats://127.0.0.1:4335 --varz http://127.0.0.1:8335 --server-pid $SP --jobs 20000 --runs 3 > ab-$arm-$r.txt 2>&1
    echo "$arm $r: $(grep '^kiln / ceiling' ab-$arm-$r.txt)"
    grep "^kiln  " ab-$arm-$r.txt
    grep "kiln, processes: server" ab-$arm-$r.txt | head -1
  done
done
kill $SP
