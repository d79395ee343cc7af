#!/usr/bin/env bash
# kiln's GPU check, for a CUDA machine without internet (see ../shared/GPU.md): starts
# nats-server; times a CUDA worker's start with a cold and a warm cache and sends it an
# out-of-memory job; runs every kind on a CUDA and a CPU worker with the same seeds and compares
# (skip with KILN_SKIP_CORRECTNESS=1); times the kernels against PyTorch; writes the report into
# $OUT (default ./gpu-report).
# Expects the binaries in .device/ (kiln built with CUDARC_CUDA_VERSION=13000, nats-server).
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-report}"
BIN="${KILN_BIN:-$PWD/.device/kiln}"
NATS_SERVER="${NATS_SERVER_BIN:-$PWD/.device/nats-server}"
LOGS="$OUT/logs"
mkdir -p "$OUT" "$LOGS"
work=$(mktemp -d)
export NATS_URL=nats://127.0.0.1:4333
export RUST_LOG=info
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

{ nvidia-smi; echo; nproc; free -g; } > "$LOGS/machine.txt" 2>&1
"$NATS_SERVER" -js -a 127.0.0.1 -p 4333 -sd "$work/store" > "$LOGS/nats-server.log" 2>&1 &
sleep 1
"$BIN" init > "$LOGS/init.txt" 2>&1
# Start-up: a cold-cache and a warm-cache CUDA worker, the first job after a warm start, and an
# out-of-memory job (writes $OUT/startup.json). The cache it fills serves the workers below.
echo "== start-up and out-of-memory"
scripts/gpu-startup.sh "$BIN" "$work/cache" "$OUT"
rc=0
if [ -z "${KILN_SKIP_CORRECTNESS:-}" ]; then
    "$BIN" worker --device cuda --name gpu-worker --ack-wait-s 60 --cache-dir "$work/cache" \
        > "$LOGS/worker-gpu.log" 2>&1 &
    "$BIN" worker --device cpu --name cpu-worker > "$LOGS/worker-cpu.log" 2>&1 &
    "$BIN" aggregator --interval-ms 500 > "$LOGS/aggregator.log" 2>&1 &
    sleep 2
    python3 scripts/gpu_check.py --kiln "$BIN" --out "$OUT" --timeout-s "${KILN_CHECK_TIMEOUT_S:-240}"
    rc=$?
fi
sleep 1
"$BIN" status > "$OUT/status.txt" 2>&1
cat "$OUT/status.txt"

# Kernel timings, burn against PyTorch on the same GPU in the same run (issue 3's targets).
# The services stop first so that the benchmarks have the GPU to themselves. Each side runs
# under a timeout and rewrites its JSON after every case, so a hang costs at most its timeout
# and keeps what was measured. Expected on an H100: burn ~2 min (JIT + autotune of each new
# shape during warm-up), PyTorch ~30 s.
pids=$(jobs -p)
if [ -n "$pids" ]; then
    kill $pids 2>/dev/null
    ( sleep 10; kill -9 $pids 2>/dev/null ) &
    killer=$!
    wait $pids 2>/dev/null
    kill $killer 2>/dev/null
fi
if python3 -c 'import torch' 2>/dev/null; then
    echo "== kernels: burn (kiln bench kernels --device cuda)"
    timeout -k 10 "${KILN_KERNEL_BENCH_TIMEOUT_S:-180}" "$BIN" bench kernels --device cuda \
        --json "$OUT/burn-kernels.json" 2>&1 | tee "$LOGS/bench-kernels.log"
    echo "burn kernels: exit ${PIPESTATUS[0]}"
    echo "== kernels: PyTorch (scripts/torch_reference.py)"
    timeout -k 10 "${KILN_TORCH_BENCH_TIMEOUT_S:-90}" python3 scripts/torch_reference.py \
        --json "$OUT/torch-kernels.json" 2>&1 | tee "$LOGS/torch-reference.log"
    echo "PyTorch kernels: exit ${PIPESTATUS[0]}"
    # kernels.json (the joined rows) stays out of $OUT: `--compare` remakes it from the two files.
    python3 scripts/torch_reference.py --compare "$OUT/burn-kernels.json" \
        "$OUT/torch-kernels.json" --out "$work/kernels" > "$LOGS/compare.log" 2>&1 \
        && cp "$work/kernels/kernels.md" "$OUT/kernels.md" && cat "$OUT/kernels.md" \
        || { echo "kernel comparison failed:"; cat "$LOGS/compare.log"; }
else
    echo "PyTorch is not importable here: kernel benchmarks skipped" | tee "$LOGS/kernels.txt"
fi

# $OUT brings back at most 8 files (startup.json, gpu-check.json/.md, status.txt,
# burn-kernels.json, torch-kernels.json, kernels.md, logs.txt): all logs go into one (long ones
# cut in the middle).
for f in "$LOGS"/*; do
    echo "===== $(basename "$f")"
    if [ "$(wc -l < "$f")" -gt 4000 ]; then
        head -n 500 "$f"; echo "..... ($(wc -l < "$f") lines, cut) ....."; tail -n 3000 "$f"
    else
        cat "$f"
    fi
done > "$OUT/logs.txt" 2>&1 && rm -rf "$LOGS"
exit $rc
