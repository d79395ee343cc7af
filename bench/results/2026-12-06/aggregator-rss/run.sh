#!/bin/bash
set -u
export PATH=/work/main/.tools/venv/bin:$PATH
cd /tmp/me/rss
arm=$1
rm -rf js; nats-server -js -sd $PWD/js -a 127.0.0.1 -p 14950 >ns.log 2>&1 & ns=$!
sleep 0.5; export NATS_URL=nats://127.0.0.1:14950
./kiln-new init >/dev/null
${PRE:-} ./kiln-$arm aggregator --metrics-addr 127.0.0.1:14951 >agg.log 2>&1 & agg=$!
./kiln-new worker --device cpu >w.log 2>&1 & w=$!
sleep 2
line="$arm:"
for i in $(seq ${2:-8}); do ./kiln-new submit vector_add -p len=16 --count 15000 --seed $((i*100000)) --wait >/dev/null 2>&1; sleep 2; line="$line $(awk '/VmRSS/{print $2}' /proc/$agg/status)/$(curl -s 127.0.0.1:14951/metrics | wc -c)"; done
echo "$line (KiB after each 15,000 jobs)"
kill $w $agg; sleep 1; kill $ns; wait 2>/dev/null
