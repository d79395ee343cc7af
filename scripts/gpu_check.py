#!/usr/bin/env python3
"""kiln's GPU check: run every job kind on a CUDA worker and a CPU worker with the same seeds,
compare the results, and write a JSON + markdown report.

Run by scripts/gpu-check.sh (`just gpu-check`), which starts nats-server and the workers.
Standard library only: the GPU machine has no internet.
"""

import argparse
import json
import math
import subprocess
import sys
import time

# (name, kind, params, seed, tolerance on relative differences GPU vs CPU). The CPU side always
# computes in f32 (it has no other dtype), so the tolerance is that of the GPU's precision:
# matmul f32 runs in true f32 on cuBLAS (summation order only), tf32 keeps 10 bits of mantissa
# in the products, f16 10 and bf16 7 bits in the inputs themselves; conv2d likewise on cuDNN
# (f32 true f32). train_mlp runs on Burn's kernels, whose f32 may use TF32-like tensor cores. A
# non-square product checks the row-major/column-major mapping of the cuBLAS call; the
# user-given matrices and image check exact values.
CASES = [
    ("vector_add 1k", "vector_add", {"len": 1024}, 1, 1e-6),
    ("vector_add 4M", "vector_add", {"len": 4 << 20}, 2, 1e-6),
    ("vector_add 1M+3", "vector_add", {"len": (1 << 20) + 3}, 3, 1e-6),
    ("matmul 256", "matmul", {"n": 256}, 3, 1e-4),
    ("matmul 1024", "matmul", {"n": 1024}, 4, 1e-4),
    ("matmul 1000x300 by 300x700", "matmul", {"m": 1000, "k": 300, "n": 700}, 5, 1e-4),
    ("matmul 2x3 by 3x2 given", "matmul", {"a": [[1, 2, 3], [4, 5, 6]], "b": [[7, 8], [9, 10], [11, 12]]}, 1, 0.0),
    ("matmul 1024 tf32", "matmul", {"n": 1024, "dtype": "tf32"}, 4, 5e-3),
    ("matmul 1024 bf16", "matmul", {"n": 1024, "dtype": "bf16"}, 4, 3e-2),
    ("matmul 1024 f16", "matmul", {"n": 1024, "dtype": "f16"}, 4, 1e-2),
    ("conv2d sobel 1x3x256x256", "conv2d", {"batch": 1, "channels": 3, "height": 256, "width": 256, "filter": "sobel"}, 5, 1e-5),
    ("conv2d gaussian 8x3x224x224", "conv2d", {"batch": 8, "channels": 3, "height": 224, "width": 224, "filter": "gaussian"}, 6, 1e-5),
    ("conv2d 3x3 given", "conv2d", {"image": [[[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]], [[0, -1, 0, 2], [3, 0, 1, 0], [2, 2, 0, -3]]], "kernel": [[0, 1, 0], [1, -4, 1], [0, 1, 0]]}, 1, 1e-6),
    ("conv2d gaussian 8x3x224x224 tf32", "conv2d", {"batch": 8, "channels": 3, "height": 224, "width": 224, "filter": "gaussian", "dtype": "tf32"}, 6, 5e-3),
    ("conv2d sobel 4x3x512x512 bf16", "conv2d", {"batch": 4, "channels": 3, "height": 512, "width": 512, "filter": "sobel", "dtype": "bf16"}, 8, 3e-2),
    ("conv2d gaussian 8x3x224x224 f16", "conv2d", {"batch": 8, "channels": 3, "height": 224, "width": 224, "filter": "gaussian", "dtype": "f16"}, 6, 1e-2),
    ("train_mlp default", "train_mlp", {}, 7, None),
]


def submit(kiln, kind, params, seed, device, timeout_s):
    cmd = [kiln, "submit", kind, "--params", json.dumps(params), "--seed", str(seed),
           "--device", device, "--wait", "--wait-timeout-s", str(timeout_s)]
    started = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s + 30)
    wall = time.time() - started
    try:
        event = json.loads(proc.stdout)
    except json.JSONDecodeError:
        event = {"status": "no result", "error": {"kind": "internal", "message": proc.stderr.strip()[-500:]}}
    return event, wall


def flat(value):
    """A nested list of numbers as one flat list (None: empty)."""
    if isinstance(value, list):
        return [v for item in value for v in flat(item)]
    return [] if value is None else [value]


def compare(gpu, cpu, tol):
    """Relative differences of the output summaries, and whether they are within tol."""
    if gpu.get("status") != "succeeded" or cpu.get("status") != "succeeded":
        return {"ok": False, "why": "a side failed"}
    go, co = gpu["output"], cpu["output"]
    if "final_accuracy" in go:
        ga, ca = go["final_accuracy"], co["final_accuracy"]
        ok = ga >= 0.9 and ca >= 0.9 and abs(go["epochs"][0]["loss"] - co["epochs"][0]["loss"]) <= 0.02 * co["epochs"][0]["loss"]
        return {"ok": ok, "gpu_accuracy": ga, "cpu_accuracy": ca,
                "gpu_first_loss": go["epochs"][0]["loss"], "cpu_first_loss": co["epochs"][0]["loss"]}
    # A user's matrices or image come back inline: compare them value for value, to `tol` of
    # the largest (0: exactly).
    for inline in ("c", "image"):
        if inline in go or inline in co:
            g, c = flat(go.get(inline)), flat(co.get(inline))
            scale = max([abs(v) for v in c] + [1e-30])
            worst = (max([abs(a - b) for a, b in zip(g, c)] + [0.0]) / scale
                     if len(g) == len(c) and g else float("inf"))
            return {"ok": worst <= tol, "l2_rel": worst, "checksum_rel": 0.0,
                    "extremes_rel": 0.0, "tolerance": tol, "gpu_dtype": go.get("dtype"),
                    "gpu_engine": go.get("engine"), "gpu_" + inline: go.get(inline),
                    "cpu_" + inline: co.get(inline)}
    gs, cs = go["summary"], co["summary"]
    n = 1
    for d in go.get("shape", [go.get("len", 1)]):
        n *= d
    scale = max(abs(cs["max"]), abs(cs["min"]), 1e-30)
    l2_rel = abs(gs["l2_norm"] - cs["l2_norm"]) / max(cs["l2_norm"], 1e-30)
    # The checksum's scale: by Cauchy-Schwarz |sum| <= l2 * sqrt(n).
    sum_rel = abs(gs["checksum"] - cs["checksum"]) / max(cs["l2_norm"] * math.sqrt(n), 1e-30)
    ext_rel = max(abs(gs["max"] - cs["max"]), abs(gs["min"] - cs["min"])) / scale
    worst = max(l2_rel, sum_rel, ext_rel)
    return {"ok": worst <= tol, "l2_rel": l2_rel, "checksum_rel": sum_rel, "extremes_rel": ext_rel,
            "tolerance": tol, "gpu_dtype": go.get("dtype"), "gpu_engine": go.get("engine")}


def render(rows, out):
    """The markdown table of a run (also: `gpu_check.py --render gpu-check.json --out DIR`)."""
    ms = lambda v: f"{v:.3f}" if isinstance(v, (int, float)) else "-"
    lines = ["| case | GPU vs CPU | GPU engine, dtype | GPU compute ms | CPU compute ms | CPU time / GPU time | largest relative difference (tolerance) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        g, c = r["gpu"]["compute_ms"], r["cpu"]["compute_ms"]
        ratio = f"{c / g:.3f}" if g and c else "-"
        check = r["check"]
        if "l2_rel" in check:
            diff = f"{max(check['l2_rel'], check['checksum_rel'], check['extremes_rel']):.2e} ({check['tolerance']:.0e})"
        elif "gpu_accuracy" in check:
            diff = (f"accuracy {check['gpu_accuracy']:.3f} vs {check['cpu_accuracy']:.3f}, first-epoch loss "
                    f"{check['gpu_first_loss']:.4f} vs {check['cpu_first_loss']:.4f}")
        else:
            diff = check.get("why", "-")
        how = f"{check.get('gpu_engine') or '-'}, {check.get('gpu_dtype') or '-'}"
        lines.append(f"| {r['case']} | {'ok' if check['ok'] else 'MISMATCH'} | {how} | {ms(g)} | {ms(c)} | {ratio} | {diff} |")
    with open(f"{out}/gpu-check.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kiln")
    parser.add_argument("--out", required=True)
    parser.add_argument("--timeout-s", type=int, default=240)
    parser.add_argument("--render", help="only re-render the markdown of this gpu-check.json")
    args = parser.parse_args()
    if args.render:
        with open(args.render) as f:
            render(json.load(f), args.out)
        return 0

    rows = []
    for name, kind, params, seed, tol in CASES:
        row = {"case": name, "kind": kind, "params": params, "seed": seed}
        for device in ("gpu", "cpu"):
            # bf16 exists only on GPUs: the CPU side computes the f32 product as reference.
            p = dict(params)
            if device == "cpu":
                p.pop("dtype", None)
            event, wall = submit(args.kiln, kind, p, seed, device, args.timeout_s)
            row[device] = {"status": event.get("status"), "device": event.get("device"),
                           "compute_ms": event.get("compute_ms"), "total_ms": event.get("total_ms"),
                           "wall_s": wall, "error": event.get("error")}
            row[device + "_output"] = event.get("output")
        row["check"] = compare({"status": row["gpu"]["status"], "output": row["gpu_output"]},
                               {"status": row["cpu"]["status"], "output": row["cpu_output"]}, tol)
        for device in ("gpu", "cpu"):
            out = row.pop(device + "_output") or {}
            row[device]["summary"] = out.get("summary") or {k: out.get(k) for k in ("final_accuracy", "final_loss")}
        rows.append(row)
        print(f"{name}: {'ok' if row['check']['ok'] else 'MISMATCH'} "
              f"gpu {row['gpu']['compute_ms']} ms, cpu {row['cpu']['compute_ms']} ms", flush=True)
        with open(f"{args.out}/gpu-check.json", "w") as f:
            json.dump(rows, f, indent=2)

    render(rows, args.out)
    return 0 if all(r["check"]["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
