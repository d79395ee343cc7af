#!/bin/bash
# A/B: release (base) vs release-lto, pipeline, interleaved
export PATH=/work/main/.tools/venv/bin:$PATH
for round in 1 2; do
  for arm in base lto; do
    rm -rf /tmp/me/pb; mkdir -p /tmp/me/pb
    nats-server -js -p 4333 -m 8333 -a 127.0.0.1 -sd /tmp/me/pb/store > /tmp/me/pb/ns.log 2>&1 &
    NS=$!
    sleep 1
    /tmp/me/$arm/kiln-bench pipeline --external -s nats://127.0.0.1:4333 --varz http://127.0.0.1:8333 --server-pid $NS --jobs 20000 --runs 3 > /tmp/me/ab-$arm-$round.txt 2>&1
    kill -9 $NS; sleep 1
    echo "$arm $round: $(grep 'kiln / ceiling' /tmp/me/ab-$arm-$round.txt)"
  done
done
