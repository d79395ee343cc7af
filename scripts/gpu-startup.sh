#!/usr/bin/env bash
# Part of the GPU check: how long a CUDA worker takes to be ready with a cold and with a warm
# cache, the first job's latency after a warm start, and what an out-of-memory job does.
# Usage: scripts/gpu-startup.sh BIN CACHE_DIR OUT   (NATS_URL must point at a running server)
set -u
BIN=$1 CACHE=$2 OUT=$3
DEVICE=${DEVICE:-cuda} CLASS=${CLASS:-gpu}   # DEVICE=cpu CLASS=cpu: a smoke test of this script without a GPU
mkdir -p "$OUT/logs"

now() { date +%s.%N; }
# Start a CUDA worker (pid in WORKER); READY = seconds until it logs "worker serving",
# or "timeout" / "exited".
start_worker() {
  local name=$1 limit=$2 t0
  t0=$(now)
  READY=timeout
  "$BIN" worker --device "$DEVICE" --name "$name" --cache-dir "$CACHE" --max-elements 100000000000 \
    > "$OUT/logs/$name.log" 2>&1 &
  WORKER=$!
  for _ in $(seq 1 $((limit * 10))); do
    if grep -q "worker serving" "$OUT/logs/$name.log"; then
      READY=$(python3 -c "print(round($(now) - $t0, 3))")
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
first_job=$(python3 -c "print(round($(now) - $t0, 3))")
first_compute=$(python3 -c "import json;print(json.load(open('$OUT/logs/first-job.json'))['compute_ms'])" 2>/dev/null || echo null)
if [ "$DEVICE" = cpu ]; then
  oom_kind=skipped worker_alive=true   # a CPU worker would really allocate the 90 GB
else
  # A 150000×1 by 1×150000 product: tiny inputs, a 90 GB result, over an 80 GB GPU's memory.
  alive && "$BIN" submit matmul -p m=150000 -p k=1 -p n=150000 -d "$CLASS" --wait --wait-timeout-s 90 > "$OUT/logs/oom-job.json" 2>> "$OUT/logs/submit.log"
  oom_kind=$(python3 -c "import json;print(json.load(open('$OUT/logs/oom-job.json'))['error']['kind'])" 2>/dev/null || echo none)
  sleep 1
  if alive; then worker_alive=true; else worker_alive=false; fi
fi
alive && "$BIN" submit vector_add -p len=1024 -d "$CLASS" --wait --wait-timeout-s 30 > "$OUT/logs/after-oom.json" 2>> "$OUT/logs/submit.log"
after=$(python3 -c "import json;print(json.load(open('$OUT/logs/after-oom.json'))['status'])" 2>/dev/null || echo none)
stop_worker; warm_exit=$EXITED
cat > "$OUT/startup.json" <<JSON
{"ready_s_cold_cache": "$cold", "cold_worker_exit": "$cold_exit",
 "ready_s_warm_cache": "$warm", "first_job_wall_s_after_warm_start": "$first_job",
 "first_job_compute_ms": "$first_compute",
 "oom_job_error_kind": "$oom_kind", "worker_alive_after_oom": $worker_alive,
 "job_after_oom": "$after", "warm_worker_exit": "$warm_exit"}
JSON
cat "$OUT/startup.json"
