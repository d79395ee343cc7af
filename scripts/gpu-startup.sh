#!/usr/bin/env bash
# Part of the GPU check: how long a CUDA worker takes to be ready with a cold and with a warm
# cache, the first job's latency after a warm start, and what out-of-memory jobs do.
# Usage: scripts/gpu-startup.sh BIN CACHE_DIR OUT   (NATS_URL must point at a running server)
set -u
BIN=$1 CACHE=$2 OUT=$3
DEVICE=${DEVICE:-cuda} CLASS=${CLASS:-gpu}   # DEVICE=cpu CLASS=cpu: a smoke test of this script without a GPU
mkdir -p "$OUT/logs"

now() { date +%s.%N; }
since() { python3 -c "print(round($(now) - $1, 3))"; }
# field FILE KEY [KEY...] DEFAULT: a value of a result event written by `kiln submit --wait`.
field() {
  local file=$1 default=${*: -1} path=""
  for key in "${@:2:$#-2}"; do path="$path['$key']"; done
  python3 -c "import json;print(json.load(open('$file'))$path)" 2>/dev/null || echo "$default"
}
# Start a CUDA worker (pid in WORKER); READY = seconds until it logs "worker serving",
# or "timeout" / "exited".
start_worker() {
  local name=$1 limit=$2 t0
  t0=$(now)
  READY=timeout
  "$BIN" worker --device "$DEVICE" --name "$name" --cache-dir "$CACHE" --max-elements 100000000000 \
    --max-memory-mb 10000000 --metrics-addr 127.0.0.1:9464 > "$OUT/logs/$name.log" 2>&1 &
  WORKER=$!
  for _ in $(seq 1 $((limit * 10))); do
    if grep -q "worker serving" "$OUT/logs/$name.log"; then
      READY=$(since "$t0")
      return 0
    fi
    if ! kill -0 "$WORKER" 2>/dev/null; then READY=exited; return 1; fi
    sleep 0.1
  done
  return 1
}
# Stop the worker; EXITED = its exit status.
stop_worker() { kill -TERM "$WORKER" 2>/dev/null; wait "$WORKER"; EXITED=$?; }

start_worker gpu-cold "${COLD_LIMIT_S:-200}"; cold=$READY
stop_worker; cold_exit=$EXITED
worker_alive=false
start_worker gpu-warm 60; warm=$READY
alive() { kill -0 "$WORKER" 2>/dev/null; }
t0=$(now)
alive && "$BIN" submit matmul -p n=1024 -d "$CLASS" --wait --wait-timeout-s 60 > "$OUT/logs/first-job.json" 2>> "$OUT/logs/submit.log"
first_job=$(since "$t0")
first_compute=$(field "$OUT/logs/first-job.json" compute_ms null)
# The first conv2d (cuDNN, the warm-up's shape) and the first training job (Burn) after it.
t0=$(now)
alive && "$BIN" submit conv2d -p filter=gaussian -d "$CLASS" --wait --wait-timeout-s 60 > "$OUT/logs/first-conv.json" 2>> "$OUT/logs/submit.log"
first_conv=$(since "$t0")
t0=$(now)
alive && "$BIN" submit train_mlp -d "$CLASS" --wait --wait-timeout-s 90 > "$OUT/logs/first-train.json" 2>> "$OUT/logs/submit.log"
first_train=$(since "$t0")
# The worker's device-memory gauges (CubeCL's memory_usage on CUDA) after its first job.
python3 -c "import urllib.request as u;print(u.urlopen('http://127.0.0.1:9464/metrics',timeout=5).read().decode())" 2>&1 \
  | grep -E "^kiln_worker_(device_memory|jobs)" > "$OUT/logs/metrics-gpu.txt"
if [ "$DEVICE" = cpu ]; then
  oom_matmul=skipped oom_conv=skipped hold_free_gb=null worker_alive=true   # a CPU worker would really allocate
else
  # Out of memory for real: a PyTorch process takes all but about 2 GB of the GPU's free memory,
  # then a matmul (cuBLAS) and a conv2d (cuDNN) that each need more are submitted. The worker's
  # memory budget is lifted (--max-memory-mb above) so that admission lets them through to the
  # device. Expected: two `out_of_memory` results, and the worker still serving.
  rm -f "$OUT/logs/hog.ready"
  python3 - "$OUT/logs/hog.ready" > "$OUT/logs/hog.log" 2>&1 <<'PY' &
import sys, time, torch
free, total = torch.cuda.mem_get_info()
hold = torch.empty(max(free - (2 << 30), 0), dtype=torch.uint8, device="cuda")
free_after, _ = torch.cuda.mem_get_info()
open(sys.argv[1], "w").write(f"{free_after / 2**30:.2f}")
print(f"holding {hold.numel() / 2**30:.1f} GiB; {free_after / 2**30:.2f} GiB left free of {total / 2**30:.1f}", flush=True)
time.sleep(600)
PY
  HOG=$!
  for _ in $(seq 1 300); do [ -s "$OUT/logs/hog.ready" ] && break; sleep 0.1; done
  hold_free_gb=$(cat "$OUT/logs/hog.ready" 2>/dev/null || echo null)
  # 20000^3 matmul: 4.8 GB of f32 operands; conv2d 48x3x2048x2048: 2.4 GB input, 2.4 GB output.
  alive && "$BIN" submit matmul -p n=20000 -d "$CLASS" --wait --wait-timeout-s 90 > "$OUT/logs/oom-matmul.json" 2>> "$OUT/logs/submit.log"
  oom_matmul=$(field "$OUT/logs/oom-matmul.json" error kind none)
  alive && "$BIN" submit conv2d -p batch=48 -p channels=3 -p height=2048 -p width=2048 -d "$CLASS" --wait --wait-timeout-s 90 > "$OUT/logs/oom-conv.json" 2>> "$OUT/logs/submit.log"
  oom_conv=$(field "$OUT/logs/oom-conv.json" error kind none)
  kill "$HOG" 2>/dev/null; wait "$HOG" 2>/dev/null
  sleep 1
  if alive; then worker_alive=true; else worker_alive=false; fi
fi
alive && "$BIN" submit vector_add -p len=1024 -d "$CLASS" --wait --wait-timeout-s 30 > "$OUT/logs/after-oom.json" 2>> "$OUT/logs/submit.log"
after=$(field "$OUT/logs/after-oom.json" status none)
stop_worker; warm_exit=$EXITED
cat > "$OUT/startup.json" <<JSON
{"ready_s_cold_cache": "$cold", "first_job_s_from_warm_start": "$(python3 -c "print(round($warm + $first_job, 3))" 2>/dev/null || echo null)", "cold_worker_exit": "$cold_exit",
 "ready_s_warm_cache": "$warm", "first_job_wall_s_after_warm_start": "$first_job",
 "first_job_compute_ms": "$first_compute",
 "first_conv2d_wall_s": "$first_conv", "first_train_mlp_wall_s": "$first_train",
 "free_gib_while_held": $hold_free_gb,
 "oom_matmul_error_kind": "$oom_matmul", "oom_conv2d_error_kind": "$oom_conv",
 "worker_alive_after_oom": $worker_alive,
 "job_after_oom": "$after", "warm_worker_exit": "$warm_exit"}
JSON
cat "$OUT/startup.json"
