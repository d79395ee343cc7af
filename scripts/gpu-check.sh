#!/usr/bin/env bash
# kiln's GPU check, for a CUDA machine without internet (see ../shared/GPU.md): starts
# nats-server, a CUDA worker, a CPU worker and the aggregator, runs every kind on both with the
# same seeds, compares, and writes the report into $OUT (default ./gpu-report).
# Expects the binaries in .device/ (kiln built with CUDARC_CUDA_VERSION=13000, nats-server).
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-report}"
BIN="${KILN_BIN:-$PWD/.device/kiln}"
NATS_SERVER="${NATS_SERVER_BIN:-$PWD/.device/nats-server}"
mkdir -p "$OUT"
work=$(mktemp -d)
export NATS_URL=nats://127.0.0.1:4333
export RUST_LOG=info
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

{ nvidia-smi; echo; nproc; free -g; } > "$OUT/machine.txt" 2>&1
"$NATS_SERVER" -js -a 127.0.0.1 -p 4333 -sd "$work/store" > "$OUT/nats-server.log" 2>&1 &
sleep 1
"$BIN" init > "$OUT/init.txt" 2>&1
"$BIN" worker --device cuda --name gpu-worker --ack-wait-s 60 > "$OUT/worker-gpu.log" 2>&1 &
"$BIN" worker --device cpu --name cpu-worker > "$OUT/worker-cpu.log" 2>&1 &
"$BIN" aggregator --interval-ms 500 > "$OUT/aggregator.log" 2>&1 &
sleep 2
python3 scripts/gpu_check.py --kiln "$BIN" --out "$OUT" --timeout-s "${KILN_CHECK_TIMEOUT_S:-240}"
rc=$?
sleep 1
"$BIN" status > "$OUT/status.txt" 2>&1
cat "$OUT/status.txt"
exit $rc
