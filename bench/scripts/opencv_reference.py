#!/usr/bin/env python3
"""CPU image filters: kiln's conv2d engines against OpenCV's filter2D, same machine, same run.

Runs `kiln bench kernels --device cpu` on its depthwise filter cases (what conv2d jobs compute:
one 5x5 kernel over every plane, zero padding; a batch of small images and one large image),
kiln's direct loop and Burn's kernels (`_burn`) both, then OpenCV's `cv2.filter2D` (BORDER_CONSTANT, the same zero padding)
on every plane of the same shapes, and prints the ratios as a table and a text chart, and
writes JSON.

    python3 bench/scripts/opencv_reference.py [--kiln PATH] [--out DIR]

Needs opencv-python-headless and numpy (`pip install opencv-python-headless`).
"""

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

# (batch, channels, height, width, kernel side): the CPU profile's `conv2d_dw*` cases.
SHAPES = [(8, 3, 224, 224, 5), (1, 3, 2048, 2048, 5)]
ITERS = 10


def kiln_rows(kiln, iters):
    """kiln's direct and Burn rows for the depthwise cases, from one bench run."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kiln.json")
        subprocess.run([kiln, "bench", "kernels", "--device", "cpu", "--filter", "conv2d_dw",
                        "--iters", str(iters), "--json", path], check=True,
                       stdout=subprocess.DEVNULL)
        with open(path) as f:
            return {row["case"]: row for row in json.load(f)["rows"]}


def opencv_median(cv2, np, shape, iters):
    b, c, h, w, k = shape
    rng = np.random.default_rng(0)
    planes = rng.uniform(-1, 1, (b * c, h, w)).astype(np.float32)
    kernel = rng.uniform(-1, 1, (k, k)).astype(np.float32)

    def run():
        return [cv2.filter2D(p, -1, kernel, borderType=cv2.BORDER_CONSTANT) for p in planes]

    run()
    samples = []
    for _ in range(iters):
        t = time.perf_counter()
        run()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def main():
    parser = argparse.ArgumentParser()
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    parser.add_argument("--kiln", default=os.path.join(target, "release", "kiln"))
    parser.add_argument("--out", default=None, help="write cpu-conv2d.json here")
    parser.add_argument("--iters", type=int, default=ITERS)
    args = parser.parse_args()
    if not all(importlib.util.find_spec(m) for m in ("cv2", "numpy")):
        print("opencv_reference: needs opencv-python-headless and numpy "
              "(pip install opencv-python-headless)", file=sys.stderr)
        return 2
    # kiln runs before OpenCV and numpy are imported: importing them starts numpy's OpenBLAS
    # threads, which spin for a while and took a core from kiln's first case (8x3x224x224:
    # 2.41-2.47 ms against 1.40-1.53 ms when kiln ran first, three runs each).
    kiln = kiln_rows(args.kiln, args.iters)
    import cv2
    import numpy as np
    rows = []
    for shape in SHAPES:
        b, c, h, w, k = shape
        name = f"conv2d_dw{k}x{k}_f32_{b}x{c}x{h}x{w}"
        opencv = opencv_median(cv2, np, shape, args.iters)
        flops = 2.0 * b * c * h * w * k * k
        for case in (name, name + "_burn"):
            row = kiln.get(case)
            if not row or row.get("status") != "ok":
                print(f"opencv_reference: kiln has no timing for {case}: {row}", file=sys.stderr)
                return 1
            rows.append({"case": case, "engine": row["backend"], "kiln_median_s": row["median_s"],
                         "opencv_median_s": opencv, "kiln_gflops": flops / row["median_s"] / 1e9,
                         "opencv_gflops": flops / opencv / 1e9,
                         "ratio": opencv / row["median_s"]})
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    lines = [
        "# CPU image filters (depthwise 5x5, zero padding): kiln vs OpenCV filter2D, same run",
        "",
        f"- machine: {machine}; OpenCV {cv2.__version__} ({cv2.getNumThreads()} threads)",
        "- ratio = OpenCV time / kiln time (kiln's share of OpenCV's throughput). Rows without a "
        "suffix run where conv2d jobs run on a CPU worker (the direct loop); \"_burn\" rows on "
        "burn-ndarray (`--conv2d-engine burn`).",
        "",
        "| case | kiln engine | kiln ms | OpenCV ms | kiln GFLOP/s | OpenCV GFLOP/s | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['case']} | {r['engine']} | {r['kiln_median_s'] * 1e3:.3f} | "
                     f"{r['opencv_median_s'] * 1e3:.3f} | {r['kiln_gflops']:.1f} | "
                     f"{r['opencv_gflops']:.1f} | {r['ratio']:.3f} |")
    lines += ["", "ratio to OpenCV (1.0 = as fast; each # is 0.05):", "```"]
    width = max(len(r["case"]) for r in rows)
    for r in rows:
        bar = "#" * round(r["ratio"] / 0.05)
        lines.append(f"{r['case']:<{width}} {bar} {r['ratio']:.3f}")
    lines.append("```")
    print("\n".join(lines))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "cpu-conv2d.json"), "w") as f:
            json.dump({"machine": machine, "opencv": cv2.__version__, "rows": rows}, f, indent=2)
        with open(os.path.join(args.out, "cpu-conv2d.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
