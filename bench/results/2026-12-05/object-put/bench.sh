#!/usr/bin/env bash
# Interleaved `kiln put` of one file with two kiln binaries against one private nats-server.
# usage: bench.sh OLD_KILN NEW_KILN SIZE_MIB ROUNDS
set -euo pipefail
old=$1 new=$2 mib=$3 rounds=$4
dir=$(mktemp -d /tmp/putbench/run.XXXX)
port=$((20000 + RANDOM % 20000))
nats-server -a 127.0.0.1 -p $port -js -sd "$dir/store" >"$dir/server.log" 2>&1 &
server=$!
trap 'kill $server; rm -rf "$dir"' EXIT
sleep 1
url=nats://127.0.0.1:$port
"$new" init --server "$url" >/dev/null 2>&1
head -c $((mib * 1024 * 1024)) /dev/urandom > "$dir/data.bin"
for r in $(seq 1 "$rounds"); do
  for side in old new; do
    bin=${!side}
    start=$(date +%s.%N)
    "$bin" put "$dir/data.bin" --name "x-$side" --server "$url" >/dev/null
    end=$(date +%s.%N)
    printf '%s round %d: %.3f s (%.1f MiB/s)\n' "$side" "$r" "$(echo "$end - $start" | bc)" "$(echo "$mib / ($end - $start)" | bc -l)"
  done
done
