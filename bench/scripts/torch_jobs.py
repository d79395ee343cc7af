#!/usr/bin/env python3
"""The jobs of `kiln-bench suite --parts original` in PyTorch: the same kinds, parameters and
work, timed the way a kiln worker times a job's compute.

    python3 bench/scripts/torch_jobs.py --cases original-cases.json --device cuda:0 --json out.json

`--cases` is the file the suite writes (a list of {name, kind, params, jobs}). Each case runs
once untimed, then `jobs` times; each run is one job as a kiln worker runs it with seeded
inputs: the inputs made on the device, the operation, and the summary kiln returns read back
to the host (a sum and a norm: `.item()` waits for the device). The row is the median run.

- matmul {n} (or m, k, n): C = A·B in true f32 (TF32 off), as kiln's f32 jobs.
- vector_add {len}: a + b.
- conv2d {batch, channels, height, width, filter}: a depthwise filter with zero "same"
  padding; sobel is the edge magnitude sqrt(gx² + gy²) of one convolution with both
  kernels, gaussian a 5×5 σ = 1 blur, sharpen and box 3×3.
- train_mlp {samples, features, classes, hidden, epochs, batch_size, lr}: concentric-shell
  data (as kiln's), Linear layers with ReLU, softmax cross-entropy, Adam (β 0.9, 0.999,
  ε 1e-5) over a fresh shuffle every epoch, and the training-set accuracy after each epoch.

Standard library + torch only (the GPU machine has no internet).
"""

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time


def sync(torch, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summary(t):
    """What a kiln result carries for a big output: a checksum and a norm, read back."""
    return (t.sum().item(), t.norm().item())


def matmul(torch, device, p, g):
    n = p.get("n") or p.get("m") or p.get("k")
    m, k = p.get("m", n), p.get("k", n)
    a = torch.rand(m, k, device=device, generator=g)
    b = torch.rand(k, n, device=device, generator=g)
    return summary(a @ b)


def vector_add(torch, device, p, g):
    n = p["len"]
    a = torch.rand(n, device=device, generator=g)
    b = torch.rand(n, device=device, generator=g)
    return summary(a + b)


def filter_weights(torch, name):
    if name == "sobel":
        gx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        return torch.stack([gx, gx.t()])
    if name == "sharpen":
        return torch.tensor([[[0.0, -1.0, 0.0], [-1.0, 5.0, -1.0], [0.0, -1.0, 0.0]]])
    if name == "box":
        return torch.full((1, 3, 3), 1.0 / 9.0)
    x = torch.arange(5, dtype=torch.float32) - 2.0
    g1 = torch.exp(-(x * x) / 2.0)
    g2 = torch.outer(g1, g1)
    return (g2 / g2.sum()).unsqueeze(0)


def conv2d(torch, device, p, g):
    b, c = p.get("batch", 1), p.get("channels", 3)
    h, w = p.get("height", 256), p.get("width", 256)
    name = p.get("filter", "gaussian")
    kernels = filter_weights(torch, name).to(device)  # [maps, k, k]
    maps, k = kernels.shape[0], kernels.shape[-1]
    weight = kernels.unsqueeze(1).repeat(c, 1, 1, 1)  # [c * maps, 1, k, k]
    image = torch.rand(b, c, h, w, device=device, generator=g)
    out = torch.nn.functional.conv2d(image, weight, padding=k // 2, groups=c)
    if name == "sobel":
        out = out.view(b, c, maps, h, w)
        out = torch.sqrt(out[:, :, 0] ** 2 + out[:, :, 1] ** 2)
    return summary(out)


def shells(torch, device, samples, features, classes, g):
    labels = torch.arange(samples, device=device) % classes
    u = torch.randn(samples, features, device=device, generator=g)
    u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-12)
    jitter = torch.rand(samples, device=device, generator=g) * 0.6 - 0.3
    r = 2.0 * (labels.float() + 0.5 + jitter) / classes
    return u * r.unsqueeze(1), labels


def train_mlp(torch, device, p, g):
    samples, features = p.get("samples", 2048), p.get("features", 2)
    classes, hidden = p.get("classes", 3), p.get("hidden", [64, 64])
    epochs, lr = p.get("epochs", 20), p.get("lr", 0.01)
    batch = min(p.get("batch_size", 128), samples)
    x, y = shells(torch, device, samples, features, classes, g)
    widths = [features] + list(hidden) + [classes]
    layers = []
    for i in range(len(widths) - 1):
        layers.append(torch.nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers).to(device)
    optim = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-5)
    loss_fn = torch.nn.CrossEntropyLoss()
    history = []
    for _ in range(epochs):
        order = torch.randperm(samples, device=device, generator=g)
        loss_sum = torch.zeros((), device=device)
        for start in range(0, samples, batch):
            idx = order[start:start + batch]
            loss = loss_fn(model(x[idx]), y[idx])
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            loss_sum += loss.detach()
        with torch.no_grad():
            correct = (model(x).argmax(dim=1) == y).sum()
        history.append((loss_sum.item() / math.ceil(samples / batch), correct.item() / samples))
    return history[-1]


KINDS = {"matmul": matmul, "vector_add": vector_add, "conv2d": conv2d, "train_mlp": train_mlp}


def run_case(torch, device, case):
    job = KINDS[case["kind"]]
    times = []
    for i in range(case["jobs"] + 1):
        g = torch.Generator(device=device)
        g.manual_seed(i)
        sync(torch, device)
        start = time.perf_counter()
        job(torch, device, case["params"], g)
        sync(torch, device)
        if i > 0:  # run 0 is the untimed warm-up
            times.append((time.perf_counter() - start) * 1e3)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", required=True, help="the suite's original-cases.json")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--json", required=True, help="where to write the rows")
    ap.add_argument("--time-limit-s", type=float, default=None,
                    help="start no case after this many seconds; the rest are rows saying so")
    args = ap.parse_args()
    started = time.monotonic()
    import torch

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        # Every core the process may use, as kiln's CPU worker (some builds start with one).
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    with open(args.cases) as f:
        cases = json.load(f)
    rows = []
    for case in cases:
        if args.time_limit_s is not None and time.monotonic() - started >= args.time_limit_s:
            rows.append({"case": case["name"], "median_ms": None,
                         "status": f"skipped: past --time-limit-s {args.time_limit_s:g}"})
            print(f"{args.device} {case['name']}: not reached in time", file=sys.stderr)
            continue
        try:
            times = run_case(torch, device, case)
            row = {"case": case["name"], "median_ms": statistics.median(times),
                   "min_ms": min(times), "jobs": len(times), "status": "ok"}
        except Exception as e:  # noqa: BLE001 -- one case's failure is its row, not the run's
            row = {"case": case["name"], "median_ms": None, "status": f"error: {e}"}
        print(f"{args.device} {case['name']}: {row['median_ms']} ms", file=sys.stderr)
        rows.append(row)
    with open(args.json, "w") as f:
        json.dump({"torch": torch.__version__, "device": args.device, "device_name": name,
                   "threads": torch.get_num_threads(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
