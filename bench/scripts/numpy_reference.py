#!/usr/bin/env python3
"""CPU matmul reference: numpy (its bundled OpenBLAS) at the sizes `kiln bench kernels --device
cpu` uses, on the same machine in the same run, and the ratio of kiln's rows to it: matmul jobs'
engine (OpenBLAS loaded at run time where installed, else burn-ndarray) and, in "_burn" rows,
burn-ndarray itself.

    python3 bench/scripts/numpy_reference.py --burn burn-cpu.json --out DIR
"""

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--burn", required=True, help="JSON from `kiln bench kernels --device cpu`")
    parser.add_argument("--out", required=True)
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args()
    try:
        import numpy as np
    except ImportError:
        print("numpy_reference: numpy is not installed (pip install numpy)", file=sys.stderr)
        return 2
    with open(args.burn) as f:
        burn = json.load(f)
    rows = []
    for row in burn["rows"]:
        if row.get("family") != "matmul" or row.get("status") != "ok":
            continue
        n = int(re.search(r"_n(\d+)", row["case"]).group(1))
        rng = np.random.default_rng(0)
        a = rng.uniform(-1, 1, (n, n)).astype(np.float32)
        b = rng.uniform(-1, 1, (n, n)).astype(np.float32)
        a @ b  # warm-up
        samples = []
        for _ in range(args.iters):
            t = time.perf_counter()
            a @ b
            samples.append(time.perf_counter() - t)
        median = statistics.median(samples)
        flops = 2 * n ** 3
        rows.append({
            "case": row["case"], "backend": row.get("backend", "burn-ndarray"),
            "burn_median_s": row["median_s"], "numpy_median_s": median,
            "burn_gflops": flops / row["median_s"] / 1e9, "numpy_gflops": flops / median / 1e9,
            "ratio": median / row["median_s"],
        })
    config = np.show_config(mode="dicts") if hasattr(np, "show_config") else {}
    blas = (config.get("Build Dependencies", {}).get("blas", {}) if isinstance(config, dict) else {})
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    lines = [
        "# CPU matmul f32: kiln vs numpy, same machine, same run",
        "",
        f"- machine: {machine}; numpy {np.__version__} with {blas.get('name', 'its bundled BLAS')} "
        f"{blas.get('version', '')}",
        "- ratio = numpy time / kiln time (kiln's share of numpy's throughput; issue 3's target is "
        "≥ 0.7). Rows without a suffix run where matmul jobs run; \"_burn\" rows on burn-ndarray.",
        "",
        "| case | kiln backend | kiln GFLOP/s | numpy GFLOP/s | ratio |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['case']} | {r['backend']} | {r['burn_gflops']:.1f} | "
                     f"{r['numpy_gflops']:.1f} | {r['ratio']:.3f} |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "cpu-matmul.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, "cpu-matmul.json"), "w") as f:
        json.dump({"machine": machine, "numpy": np.__version__, "blas": blas, "rows": rows}, f, indent=2)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
