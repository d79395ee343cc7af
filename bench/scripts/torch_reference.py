#!/usr/bin/env python3
"""PyTorch reference for `kiln bench kernels`: the same cases, the same sizes, the same case
names and the same JSON row format, timed the same way (inputs made once on the device, warm-up,
then each iteration between two `torch.cuda.synchronize()` calls; median, mean and minimum).

    python3 bench/scripts/torch_reference.py --json torch-kernels.json            # CUDA, H100 sizes
    python3 bench/scripts/torch_reference.py --device cpu --json torch-cpu.json   # the CPU sizes
    python3 bench/scripts/torch_reference.py --compare burn-kernels.json torch-kernels.json --out DIR

Precision, named as kiln's matmul and conv2d dtypes: "_f32" rows are true f32 (TF32 off),
"_tf32" rows run with TF32 allowed (cuBLAS and cuDNN tensor cores), "_bf16" rows in bf16. The
MLP step runs with TF32 allowed.

kiln's "_burn" rows (matmul, vector add and conv2d on Burn's kernels, where kiln's jobs run on
cuBLAS and cuDNN) are compared with the PyTorch row of the same name without the suffix.

`--compare` joins a burn file and a PyTorch file by case name and writes kernels.md and
kernels.json with the burn/PyTorch ratio (PyTorch's seconds per iteration over burn's: above 1,
burn is faster) against the targets of issue 3.

Standard library + torch only: the GPU machine has no internet. `--compare` needs no torch.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

MIN_ITERS = 3
SMALL_ITERS_FACTOR = 10
SMALL_LEN = 1024
MLP_FEATURES, MLP_HIDDEN, MLP_CLASSES = 256, [1024, 1024], 10


# ---------------------------------------------------------------------------------------------
# Cases: the same list and names as kiln_bench::timing::cases.


def count_name(n):
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20}M"
    if n >= 1 << 10 and n % (1 << 10) == 0:
        return f"{n >> 10}K"
    return str(n)


def matmul(n, dtype):
    return {"name": f"matmul_{dtype}_n{n}", "family": "matmul", "dtype": dtype, "n": n}


def vector_add(n):
    return {"name": f"vector_add_f32_{count_name(n)}", "family": "vector_add", "dtype": "f32",
            "len": n}


def small_vector_add(n):
    return {"name": f"small_vector_add_roundtrip_{n}", "family": "small_vector_add",
            "dtype": "f32", "len": n}


def conv2d(shape, out_channels, dtype):
    b, c, h, w = shape
    return {"name": f"conv2d_3x3_{dtype}_{b}x{c}x{h}x{w}_c{out_channels}", "family": "conv2d",
            "dtype": dtype, "input": list(shape), "out_channels": out_channels, "kernel": 3,
            "groups": 1}


def depthwise(shape, kernel, dtype):
    """A depthwise filter over every channel, what kiln's conv2d jobs compute."""
    b, c, h, w = shape
    return {"name": f"conv2d_dw{kernel}x{kernel}_{dtype}_{b}x{c}x{h}x{w}", "family": "conv2d",
            "dtype": dtype, "input": list(shape), "out_channels": c, "kernel": kernel,
            "groups": c}


def train_step(batch, features, hidden, classes):
    widths = [features] + list(hidden) + [classes]
    return {"name": f"train_mlp_step_{'-'.join(map(str, widths))}_b{batch}",
            "family": "train_mlp_step", "dtype": "f32", "batch": batch, "widths": widths}


def cases(profile, cuda):
    """`cuda`: add the tf32 rows of the quick profile, which only mean something on CUDA."""
    mlp = lambda b: train_step(b, MLP_FEATURES, MLP_HIDDEN, MLP_CLASSES)  # noqa: E731
    s = (lambda case: [case]) if cuda else (lambda case: [])
    if profile == "gpu":
        conv = [32, 64, 224, 224]
        return [vector_add(64 << 20), small_vector_add(SMALL_LEN),
                matmul(4096, "f32"), matmul(8192, "f32"), matmul(4096, "tf32"),
                matmul(8192, "tf32"), matmul(4096, "bf16"), matmul(8192, "bf16"),
                conv2d(conv, 64, "f32"), conv2d(conv, 64, "tf32"), conv2d(conv, 64, "bf16"),
                depthwise([32, 3, 512, 512], 5, "f32"), mlp(512), mlp(4096)]
    if profile == "cpu":
        conv = [4, 64, 112, 112]
        return [vector_add(16 << 20), small_vector_add(SMALL_LEN), matmul(1024, "f32"),
                matmul(2048, "f32"), matmul(2048, "bf16"), conv2d(conv, 64, "f32"),
                conv2d(conv, 64, "bf16"), depthwise([8, 3, 224, 224], 5, "f32"), mlp(512)]
    conv = [1, 8, 16, 16]
    return ([vector_add(1 << 16), small_vector_add(SMALL_LEN), matmul(64, "f32"),
             matmul(128, "f32")] + s(matmul(128, "tf32"))
            + [matmul(128, "bf16"), conv2d(conv, 8, "f32")] + s(conv2d(conv, 8, "tf32"))
            + [conv2d(conv, 8, "bf16"), depthwise([2, 3, 16, 16], 5, "f32"),
               train_step(32, 16, [32, 32], 4)])


def flops(case):
    f = case["family"]
    if f == "matmul":
        return 2.0 * case["n"] ** 3
    if f == "conv2d":
        b, c, h, w = case["input"]
        k = case["kernel"]
        return 2.0 * b * case["out_channels"] * h * w * (c // case["groups"]) * k * k
    if f == "train_mlp_step":
        ws = case["widths"]
        weights = sum((ws[i] + 1) * ws[i + 1] for i in range(len(ws) - 1))
        return 6.0 * weights * case["batch"]
    return None


def nbytes(case):
    return 12.0 * case["len"] if case["family"] in ("vector_add", "small_vector_add") else None


def metric(case):
    return {"matmul": "TFLOP/s", "conv2d": "TFLOP/s", "vector_add": "GB/s",
            "train_mlp_step": "ms/step", "small_vector_add": "us/job"}[case["family"]]


def value(case, seconds):
    f = case["family"]
    if f in ("matmul", "conv2d"):
        return flops(case) / seconds / 1e12
    if f == "vector_add":
        return nbytes(case) / seconds / 1e9
    if f == "train_mlp_step":
        return seconds * 1e3
    return seconds * 1e6


def shape(case):
    f = case["family"]
    if f == "matmul":
        return f"m=k=n={case['n']}"
    if f in ("vector_add", "small_vector_add"):
        return f"len={case['len']}"
    if f == "conv2d":
        b, c, h, w = case["input"]
        k, g = case["kernel"], case["groups"]
        return (f"input {b}x{c}x{h}x{w}, weight {case['out_channels']}x{c // g}x{k}x{k}, "
                f"padding {k // 2}" + (f", {g} groups" if g > 1 else ""))
    ws = case["widths"]
    return f"batch {case['batch']}, layers {ws[0]}-{ws[1:-1]}-{ws[-1]}"


# ---------------------------------------------------------------------------------------------
# Measuring.


class Skip(Exception):
    pass


def time_iterations(torch, device, settings, iters, op):
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(settings["warmup"]):
        out = op()
        sync()
        del out
    samples, spent = [], 0.0
    for i in range(iters):
        sync()
        start = time.perf_counter()
        out = op()
        sync()
        seconds = time.perf_counter() - start
        del out
        samples.append(seconds)
        spent += seconds
        if i + 1 >= MIN_ITERS and spent > settings["case_budget_s"]:
            break
    return samples


def set_tf32(torch, allowed):
    """TF32 on or off for cuBLAS matmuls and cuDNN convolutions."""
    try:
        torch.backends.cuda.matmul.allow_tf32 = allowed
        torch.backends.cudnn.allow_tf32 = allowed
    except Exception:  # noqa: BLE001 -- a torch that refuses the legacy flags
        torch.set_float32_matmul_precision("high" if allowed else "highest")


def measure(torch, device, case, settings):
    """Seconds per iteration, the dtype the output really had, and a note."""
    iters = settings["iters"]
    dtype = case["dtype"]
    cuda = device.type == "cuda"
    if dtype == "tf32" and not cuda:
        raise Skip(f"{dtype} rows are for CUDA")
    if dtype == "bf16" and not cuda:
        raise Skip("bf16 rows run on CUDA only, as in kiln")
    f = case["family"]
    # TF32 off for true-f32 rows: "f32" matmuls and convolutions (kiln's f32 on cuBLAS, cuDNN).
    strict = f in ("matmul", "conv2d") and dtype == "f32"
    set_tf32(torch, not strict)
    low = torch.bfloat16 if dtype == "bf16" else torch.float32
    note = None
    if f == "matmul":
        n = case["n"]
        a = torch.rand(n, n, device=device).to(low)
        b = torch.rand(n, n, device=device).to(low)
        out_dtype = (a @ b).dtype
        samples = time_iterations(torch, device, settings, iters, lambda: a @ b)
    elif f == "vector_add":
        a = torch.rand(case["len"], device=device)
        b = torch.rand(case["len"], device=device)
        out_dtype = (a + b).dtype
        samples = time_iterations(torch, device, settings, iters, lambda: a + b)
    elif f == "conv2d":
        bsz, c, h, w = case["input"]
        x = torch.rand(bsz, c, h, w, device=device).to(low)
        k, groups = case["kernel"], case["groups"]
        weight = (torch.rand(case["out_channels"], c // groups, k, k, device=device) * 0.2
                  - 0.1).to(low)
        conv = torch.nn.functional.conv2d
        first = conv(x, weight, None, 1, k // 2, 1, groups)
        if list(first.shape) != [bsz, case["out_channels"], h, w]:
            raise RuntimeError(f"conv2d output has shape {list(first.shape)}")
        out_dtype = first.dtype
        del first
        samples = time_iterations(torch, device, settings, iters,
                                  lambda: conv(x, weight, None, 1, k // 2, 1, groups))
    elif f == "train_mlp_step":
        ws = case["widths"]
        layers = []
        for i in range(len(ws) - 1):
            layers.append(torch.nn.Linear(ws[i], ws[i + 1]))
            if i < len(ws) - 2:
                layers.append(torch.nn.ReLU())
        model = torch.nn.Sequential(*layers).to(device)
        optim = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-5)
        loss_fn = torch.nn.CrossEntropyLoss()
        x = torch.randn(case["batch"], ws[0], device=device)
        y = torch.arange(case["batch"], device=device) % ws[-1]

        def step():
            optim.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            optim.step()
            return loss

        out_dtype = torch.float32
        samples = time_iterations(torch, device, settings, iters, step)
        note = "Adam (eps 1e-5), TF32 allowed" if cuda else "Adam (eps 1e-5)"
    elif f == "small_vector_add":
        n = case["len"]
        # Host buffers made once (as burn's Vecs are); every job uploads, adds, reads back.
        a_host = torch.tensor([float(i) for i in range(n)], dtype=torch.float32)
        b_host = torch.tensor([0.5 * i for i in range(n)], dtype=torch.float32)
        expected = float(n - 1) + 0.5 * (n - 1)

        def job():
            c = (a_host.to(device) + b_host.to(device)).cpu()
            if float(c[n - 1]) != expected:
                raise RuntimeError("the small vector add read back a wrong sum")
            return c

        out_dtype = torch.float32
        samples = time_iterations(torch, device, settings, iters * SMALL_ITERS_FACTOR, job)
        note = "per job: upload a and b from host, add, read c back"
    else:
        raise RuntimeError(f"unknown family {f}")
    name = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}.get(
        out_dtype, str(out_dtype))
    if dtype == "bf16" and name != "bf16":
        raise RuntimeError(f"output is {name} but the case asks for bf16")
    if cuda and name == "f32" and f in ("matmul", "conv2d", "train_mlp_step"):
        name = "f32" if strict else "tf32"
    return samples, name, note


def run_case(torch, device, case, settings):
    row = {
        "case": case["name"], "family": case["family"], "backend": f"torch-{device.type}",
        "device": str(device), "dtype": case["dtype"], "shape": shape(case),
        "warmup": settings["warmup"], "iterations": 0, "median_s": None, "mean_s": None,
        "min_s": None, "flops": flops(case), "bytes": nbytes(case), "tflops": None,
        "gbps": None, "metric": metric(case), "value": None, "status": "error", "error": None,
        "note": None,
    }
    try:
        samples, dtype, note = measure(torch, device, case, settings)
    except Skip as e:
        row["status"], row["error"] = "skipped", str(e)
        return row
    except Exception as e:  # noqa: BLE001 -- every failure becomes an error row
        row["error"] = f"{type(e).__name__}: {e}"[:500]
        return row
    finally:
        if device.type == "cuda":
            try:
                torch.cuda.empty_cache()
            except Exception:  # noqa: BLE001
                pass
    median = statistics.median(samples)
    row.update({
        "iterations": len(samples), "median_s": median, "mean_s": statistics.fmean(samples),
        "min_s": min(samples), "dtype": dtype, "note": note, "value": value(case, median),
        "status": "ok",
    })
    if row["flops"] is not None:
        row["tflops"] = row["flops"] / median / 1e12
    if row["bytes"] is not None:
        row["gbps"] = row["bytes"] / median / 1e9
    return row


def describe_machine(torch, device):
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    text = (f"{cpu}, {os.cpu_count()} cores, {platform.system().lower()} {platform.machine()}; "
            f"torch {torch.__version__}")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        text += (f", CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}; "
                 f"{device}: {props.name}, {props.total_memory / 2**30:.0f} GiB")
    else:
        text += f", {torch.get_num_threads()} threads"
    return text


def fmt(v, unit=""):
    if v is None:
        return "-"
    if v == 0 or v != v:
        return f"{v}{unit}"
    import math
    decimals = max(0, min(9, 3 - math.floor(math.log10(abs(v)))))
    return f"{v:.{decimals}f}{unit}"


def bench(args):
    try:
        import torch
    except ImportError:
        print("torch_reference: PyTorch is not installed (python3 -c 'import torch' fails); "
              "install it to measure the reference", file=sys.stderr)
        return 2
    want = args.device
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            print(f"torch_reference: --device {want}: PyTorch sees no CUDA device "
                  f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                  "use --device cpu", file=sys.stderr)
            return 2
        device = torch.device(want if ":" in want else "cuda:0")
        if device.index >= torch.cuda.device_count():
            print(f"torch_reference: --device {want}: only {torch.cuda.device_count()} CUDA "
                  "device(s)", file=sys.stderr)
            return 2
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        profile = "quick" if args.quick else "gpu"
    elif want == "cpu":
        device = torch.device("cpu")
        profile = "quick" if args.quick else "cpu"
    else:
        print(f"torch_reference: unknown device {want!r}: use cuda, cuda:N or cpu",
              file=sys.stderr)
        return 2
    cuda = device.type == "cuda"
    settings = {
        "warmup": args.warmup if args.warmup is not None else (3 if cuda else 1),
        "iters": max(1, args.iters if args.iters is not None
                     else {"gpu": 20, "cpu": 5, "quick": 3}[profile]),
        "case_budget_s": args.case_budget_s,
    }
    todo = [c for c in cases(profile, cuda=cuda) if not args.filter or args.filter in c["name"]]
    if not todo:
        print(f"torch_reference: no case name contains {args.filter!r}", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    machine = describe_machine(torch, device)
    print(f"machine: {machine}", file=sys.stderr)
    print(f"{len(todo)} case(s) on {device} ({profile} sizes), warm-up {settings['warmup']} and "
          f"up to {settings['iters']} timed iteration(s) each", file=sys.stderr)
    if args.json and os.path.dirname(args.json):
        os.makedirs(os.path.dirname(args.json), exist_ok=True)
    rows = []
    for i, case in enumerate(todo):
        print(f"[{i + 1}/{len(todo)}] {case['name']} ... ", end="", file=sys.stderr, flush=True)
        started = time.perf_counter()
        row = run_case(torch, device, case, settings)
        if row["status"] == "ok":
            what = f"{fmt(row['value'])} {row['metric']} ({row['dtype']})"
        else:
            what = f"{row['status']}: {row['error']}"
        print(f"{what} ({time.perf_counter() - started:.1f} s)", file=sys.stderr, flush=True)
        rows.append(row)
        if args.json:
            report = {"tool": "bench/scripts/torch_reference.py", "machine": machine,
                      "device": str(device), "backend": f"torch-{device.type}",
                      "profile": profile, "settings": settings, "rows": rows}
            with open(args.json + ".tmp", "w") as f:
                json.dump(report, f, indent=2)
            os.replace(args.json + ".tmp", args.json)
    print()
    print(f"{'case':<40} {'dtype':<5} {'iters':>6} {'median s':>12} {'value':>12} unit")
    for row in rows:
        if row["status"] != "ok":
            print(f"{row['case']:<40} {row['dtype']:<5} {row['status']}: {row['error']}")
        else:
            print(f"{row['case']:<40} {row['dtype']:<5} {row['iterations']:>6} "
                  f"{fmt(row['median_s']):>12} {fmt(row['value']):>12} {row['metric']}")
    if args.json:
        print(f"rows written to {args.json}")
    return 1 if any(r["status"] == "error" for r in rows) else 0


# ---------------------------------------------------------------------------------------------
# Comparing a burn run with a PyTorch run.

# Issue 3's targets: (family, dtype) -> (text, lowest burn/PyTorch ratio that meets it).
TARGETS = {
    ("matmul", "tf32"): ("≥ 0.5 of cuBLAS TF32", 0.5),
    ("matmul", "bf16"): ("≥ 0.5 of cuBLAS bf16", 0.5),
    ("vector_add", "f32"): ("keep ≥ 0.9", 0.9),
    ("conv2d", "tf32"): ("≥ 0.8 of cuDNN TF32", 0.8),
    ("conv2d", "bf16"): ("≥ 0.5 of cuDNN bf16", 0.5),
    ("train_mlp_step", "f32"): ("keep ≥ 0.9", 0.9),
    ("small_vector_add", "f32"): ("≤ 1.5× PyTorch's time (≥ 0.67)", 1 / 1.5),
}


def load_rows(path):
    """A report's rows; a missing or unreadable file (a run cut off early) gives none."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        print(f"torch_reference: {path}: {e}; comparing without it", file=sys.stderr)
        return {"rows": [], "machine": f"(no readable {os.path.basename(path)})"}
    if isinstance(data, list):
        return {"rows": data}
    data.setdefault("rows", [])
    return data


def case_dtype(name):
    for d in ("tf32", "bf16", "f32"):
        if f"_{d}_" in name:
            return d
    return "f32"


def compare(args):
    burn_path, torch_path = args.compare
    burn, ref = load_rows(burn_path), load_rows(torch_path)
    by_name = {}
    order = []
    for side, data in (("burn", burn), ("torch", ref)):
        previous = None
        for row in data["rows"]:
            name = row.get("case")
            if name is None:
                continue
            if name not in by_name:
                by_name[name] = {}
                # A row only PyTorch has goes right after the row it follows there.
                at = order.index(previous) + 1 if previous in order else len(order)
                order.insert(at, name)
            by_name[name][side] = row
            previous = name
    # kiln's "_burn" rows take the PyTorch row of their name without the suffix.
    for name, sides in by_name.items():
        if name.endswith("_burn") and "torch" not in sides:
            base = by_name.get(name[: -len("_burn")], {}).get("torch")
            if base is not None:
                sides["torch"] = base
    joined = []
    for name in order:
        b, t = by_name[name].get("burn"), by_name[name].get("torch")
        any_row = b or t
        family = any_row.get("family", "")
        dtype = case_dtype(name)
        ok = lambda r: r is not None and r.get("status") == "ok" and r.get("median_s")  # noqa: E731
        ratio = t["median_s"] / b["median_s"] if ok(b) and ok(t) else None
        target = TARGETS.get((family, dtype))
        if family in ("matmul", "conv2d") and dtype == "f32":
            target_text = "none set (true f32, TF32 off on both sides)"
        else:
            target_text = target[0] if target else "-"
        meets = None if ratio is None or target is None else ratio >= target[1]
        joined.append({
            "case": name, "family": family, "metric": any_row.get("metric"),
            "burn_dtype": b and b.get("dtype"), "torch_dtype": t and t.get("dtype"),
            "burn_status": b and b.get("status"), "torch_status": t and t.get("status"),
            "burn_value": b and b.get("value"), "torch_value": t and t.get("value"),
            "burn_median_s": b and b.get("median_s"), "torch_median_s": t and t.get("median_s"),
            "burn_error": b and b.get("error"), "torch_error": t and t.get("error"),
            "ratio": ratio, "target": target_text,
            "target_min_ratio": target[1] if target else None,
            "meets": meets,
        })
    os.makedirs(args.out, exist_ok=True)
    report = {"burn": {k: burn.get(k) for k in ("machine", "device", "backend", "settings")},
              "torch": {k: ref.get(k) for k in ("machine", "device", "backend", "settings")},
              "ratio": "PyTorch seconds per iteration / burn seconds per iteration "
                       "(= burn throughput / PyTorch throughput; above 1 burn is faster)",
              "rows": joined}
    with open(os.path.join(args.out, "kernels.json"), "w") as f:
        json.dump(report, f, indent=2)

    def cell(row):
        if row is None:
            return "-"
        if row.get("status") != "ok":
            msg = (row.get("error") or "").replace("|", "\\|").replace("\n", " ")
            return f"{row.get('status')}: {msg[:80]}"
        return f"{fmt(row.get('value'))} {row.get('metric')} ({row.get('dtype')})"

    lines = [
        "# Kernels: kiln (cuBLAS, cuDNN, Burn) vs PyTorch, same machine, same run",
        "",
        f"- kiln: {burn.get('machine', '?')} ({burn.get('backend', '?')}, "
        f"{burn.get('device', '?')})",
        f"- PyTorch: {ref.get('machine', '?')} ({ref.get('backend', '?')}, "
        f"{ref.get('device', '?')})",
        "- ratio = PyTorch time per iteration / kiln time per iteration (kiln's share of "
        "PyTorch's throughput; above 1 kiln is faster). Medians over the timed iterations.",
        "- matmul and conv2d rows are named by kiln's dtypes: f32 is true f32 (TF32 off on "
        "both sides), tf32 allows TF32, bf16 is bf16. Rows without a suffix are kiln's job "
        "path (cuBLAS for matmul and vector add, cuDNN for conv2d on CUDA); \"_burn\" rows run "
        "Burn's own kernels (its f32, "
        "TF32-like) against the PyTorch row of the same name without the suffix.",
        "",
        "| case | kiln | PyTorch | kiln/PyTorch | target | meets |",
        "|---|---|---|---|---|---|",
    ]
    for j in joined:
        b, t = by_name[j["case"]].get("burn"), by_name[j["case"]].get("torch")
        meets = {True: "yes", False: "**no**", None: "-"}[j["meets"]]
        lines.append(f"| {j['case']} | {cell(b)} | {cell(t)} | "
                     f"{fmt(j['ratio'])} | {j['target']} | {meets} |")
    with open(os.path.join(args.out, "kernels.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--json", help="write the rows and the machine as JSON to this file")
    parser.add_argument("--warmup", type=int, help="untimed iterations per case (3 CUDA, 1 CPU)")
    parser.add_argument("--iters", type=int,
                        help="timed iterations per case, at most (20 CUDA, 5 CPU, 3 quick)")
    parser.add_argument("--case-budget-s", type=float, default=3.0,
                        help="seconds of timed iterations after which a case stops early")
    parser.add_argument("--filter", help="only cases whose name contains this text")
    parser.add_argument("--compare", nargs=2, metavar=("BURN_JSON", "TORCH_JSON"),
                        help="join a burn and a PyTorch file into kernels.md/json in --out")
    parser.add_argument("--out", default=".", help="folder for --compare's output")
    args = parser.parse_args()
    if args.compare:
        return compare(args)
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
