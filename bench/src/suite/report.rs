//! `report.md`: the suite's figures as markdown tables with their charts, and a short summary
//! for the terminal. Ratios are truncated, never rounded up, to the digits shown.

use std::fmt::Write as _;

use super::Suite;
use super::kernels::{self, KernelRow};
use super::original;

/// Where the GPU figures recorded so far are (`just gpu-check` on an H200, 2026-11-26), from the
/// repository root and relative to a report in `bench/results/<date>/`.
const RECORDED_GPU: &[(&str, &str)] = &[
    (
        "bench/results/2026-11-26/h200/kernels.md",
        "../2026-11-26/h200/kernels.md",
    ),
    (
        "bench/results/2026-11-26/h200/gpu-check.md",
        "../2026-11-26/h200/gpu-check.md",
    ),
];

/// `x` cut (not rounded) to `decimals` digits.
pub fn down(x: f64, decimals: i32) -> String {
    let scale = 10f64.powi(decimals);
    let cut = (x * scale).floor() / scale;
    format!("{cut:.prec$}", prec = decimals.max(0) as usize)
}

/// Milliseconds with about three significant digits.
pub fn ms(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0} ms")
    } else if v.abs() >= 10.0 {
        format!("{v:.1} ms")
    } else if v.abs() >= 1.0 {
        format!("{v:.2} ms")
    } else if v.abs() >= 0.01 {
        format!("{v:.3} ms")
    } else {
        format!("{:.2} µs", v * 1e3)
    }
}

fn value(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

pub fn markdown(s: &Suite) -> String {
    let mut o = String::new();
    let m = &s.machine;
    let _ = writeln!(o, "# kiln benchmark report, {}\n", s.started_at.date());
    let _ = writeln!(
        o,
        "`kiln-bench suite` ({} settings{}), kiln {}, started {} UTC, {:.0} s in all. \
         Every ratio below compares figures measured in this run on this machine.\n",
        s.mode,
        if s.mode == "quick" {
            ": tiny sizes, a smoke run, not figures to quote"
        } else {
            ""
        },
        s.version,
        s.started_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        s.seconds
    );
    let _ = writeln!(o, "## Machine\n");
    let _ = writeln!(o, "| | |\n|---|---|");
    let _ = writeln!(o, "| CPU | {} |", m.cpu);
    let _ = writeln!(o, "| cores available | {} |", m.cores);
    let _ = writeln!(o, "| memory | {:.1} GiB |", m.memory_gib);
    let _ = writeln!(o, "| OS | {} |", m.os);
    let _ = writeln!(o, "| GPU | {} |", m.gpu);
    let load = |l: Option<f64>| l.map_or_else(|| "unknown".into(), |l| format!("{l:.2}"));
    let _ = writeln!(
        o,
        "| load average (1 min) at start / end | {} / {} |\n",
        load(m.load_at_start),
        load(m.load_at_end)
    );
    if m.load_at_start.is_some_and(|l| l > m.cores as f64 * 0.5) {
        let _ = writeln!(
            o,
            "The machine was busy with other work when the suite started (load {} on {} cores): \
             CPU figures are lower and noisier than on a quiet machine.\n",
            load(m.load_at_start),
            m.cores
        );
    }

    let _ = writeln!(o, "## Steps\n\n| step | seconds | outcome |\n|---|---|---|");
    for step in &s.steps {
        let _ = writeln!(
            o,
            "| {} | {:.1} | {} |",
            step.name,
            step.seconds,
            step.error
                .as_deref()
                .map_or_else(|| "ok".to_owned(), |e| format!("failed: {}", cell(e)))
        );
    }
    o.push('\n');

    gpu_vs_cpu(&mut o, s);
    kernel_table(&mut o, s);
    numpy(&mut o, s);
    original(&mut o, s);
    pipeline(&mut o, s);
    overhead(&mut o, s);
    data_path(&mut o, s);
    scaling(&mut o, s);
    scheduler(&mut o, s);

    let _ = writeln!(o, "## Files\n");
    for f in &s.files {
        let _ = writeln!(o, "- [`{f}`]({f})");
    }
    o
}

/// A table cell: no pipes or newlines.
fn cell(text: &str) -> String {
    text.replace('|', "/").replace('\n', " ")
}

fn gpu_vs_cpu(o: &mut String, s: &Suite) {
    let _ = writeln!(o, "## GPU vs CPU\n");
    let Some(k) = &s.kernels else {
        let _ = writeln!(
            o,
            "Not measured: the kernel part failed or was left out by --parts (see Steps).\n"
        );
        return;
    };
    let cpu_rows: Vec<&KernelRow> = k.rows.iter().filter(|r| r.row.device == "cpu").collect();
    match &k.gpu_device {
        Some(device) => {
            let _ = writeln!(
                o,
                "Median time of one operation on the CPU (burn-ndarray; matmul on OpenBLAS where \
                 it is installed) and on {device} (burn-cuda; matmul on cuBLAS) at the same sizes, \
                 in this run; speedup = CPU time / GPU time \
                 (below 1: the CPU was faster). GPU settings: {} warm-up and up to {} timed \
                 iterations per case (JIT compilation and autotune fall in the warm-up).\n",
                k.gpu_settings.map_or(0, |g| g.warmup),
                k.gpu_settings.map_or(0, |g| g.iters),
            );
        }
        None => {
            let _ = writeln!(
                o,
                "**GPU skipped: {}.** The table shows the CPU side; the GPU columns stay empty \
                 rather than borrow figures from another machine. GPU figures were recorded with \
                 `just gpu-check` on an H200 on 2026-11-26 (kernels against PyTorch in the same \
                 run, every kind against the CPU): {}. Run `./dev bench` on a CUDA machine to fill \
                 these columns.\n",
                k.gpu_skipped.as_deref().unwrap_or("no CUDA device"),
                RECORDED_GPU
                    .iter()
                    .map(|(path, link)| format!("[`{path}`]({link})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let _ = writeln!(
        o,
        "| workload | size | CPU time | GPU time | speedup |\n|---|---|---|---|---|"
    );
    for workload in kernels::WORKLOADS {
        for r in cpu_rows.iter().filter(|r| r.workload == workload) {
            let cpu = match (r.row.status.as_str(), r.row.median_s) {
                ("ok", Some(sec)) => ms(sec * 1e3),
                (status, _) => status.to_owned(),
            };
            let (gpu, speedup) = match k.speedups.iter().find(|x| x.case == r.row.case) {
                Some(x) => (ms(x.gpu_ms), format!("{}×", down(x.speedup, 2))),
                None if k.gpu_device.is_some() => {
                    let why = k
                        .rows
                        .iter()
                        .find(|g| g.row.device != "cpu" && g.row.case == r.row.case)
                        .map_or("not run".to_owned(), |g| g.row.status.clone());
                    (why, "-".into())
                }
                None => ("skipped".into(), "-".into()),
            };
            let _ = writeln!(
                o,
                "| {workload} | {} | {cpu} | {gpu} | {speedup} |",
                cell(&r.size)
            );
        }
    }
    o.push('\n');
    if !k.speedups.is_empty() {
        let _ = writeln!(o, "![GPU speedup](speedup.svg)\n");
    }
}

fn kernel_table(o: &mut String, s: &Suite) {
    let _ = writeln!(o, "## Kernels\n");
    let Some(k) = &s.kernels else {
        let _ = writeln!(
            o,
            "Not measured: the kernel part failed or was left out by --parts (see Steps).\n"
        );
        return;
    };
    let _ = writeln!(
        o,
        "Every kind at several sizes on each backend present (`kiln_bench::timing`: inputs \
         made once on the device, warm-up iterations, then each iteration timed between two \
         device syncs; median shown). `train_mlp` is timed as one Adam step of its network, \
         `vector_add` 1,024 as one whole small job (upload, add, read back). CPU settings: {} \
         warm-up, up to {} timed iterations, {} s budget per case. All rows: \
         [`kernels.csv`](kernels.csv).\n",
        k.cpu_settings.warmup, k.cpu_settings.iters, k.cpu_settings.case_budget_s
    );
    let _ = writeln!(
        o,
        "| kind | size | device | median | throughput |\n|---|---|---|---|---|"
    );
    for r in &k.rows {
        let (median, throughput) = match (r.row.status.as_str(), r.row.median_s, r.row.value) {
            ("ok", Some(sec), Some(v)) => (ms(sec * 1e3), format!("{} {}", value(v), r.row.metric)),
            (status, _, _) => (
                status.to_owned(),
                cell(r.row.error.as_deref().unwrap_or("")),
            ),
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {median} | {throughput} |",
            r.kind,
            cell(&r.size),
            r.row.device
        );
    }
    let _ = writeln!(o, "\n![Kernel times by size](kernels.svg)\n");
}

fn numpy(o: &mut String, s: &Suite) {
    let _ = writeln!(o, "## CPU matmul: kiln vs numpy\n");
    if s.numpy.status != "ran" {
        let _ = writeln!(o, "{}.\n", s.numpy.status);
        return;
    }
    let _ = writeln!(
        o,
        "numpy {} on the same machine in the same run (`bench/scripts/numpy_reference.py`); ratio = \
         numpy time / kiln time. Rows without a suffix run where matmul jobs run (OpenBLAS where \
         it is installed); `_burn` rows on burn-ndarray.\n",
        s.numpy.numpy.as_deref().unwrap_or("?")
    );
    let _ = writeln!(
        o,
        "| case | kiln backend | kiln GFLOP/s | numpy GFLOP/s | ratio |\n|---|---|---|---|---|"
    );
    for r in &s.numpy.rows {
        let _ = writeln!(
            o,
            "| {} | {} | {:.1} | {:.1} | {} |",
            r.case,
            r.backend.as_deref().unwrap_or("burn-ndarray"),
            r.burn_gflops,
            r.numpy_gflops,
            down(r.ratio, 3)
        );
    }
    o.push('\n');
}

fn pipeline(o: &mut String, s: &Suite) {
    let _ = writeln!(o, "## Pipeline vs the raw JetStream ceiling\n");
    let Some(p) = &s.pipeline else {
        let _ = writeln!(
            o,
            "Not measured: the pipeline part failed or was left out by --parts (see Steps).\n"
        );
        return;
    };
    let runs = p.runs.iter().filter(|r| r.side == "kiln").count();
    let _ = writeln!(
        o,
        "{} small jobs (vector_add, len {}) per run, all published at once by the bench \
         process, through a `kiln worker --device cpu` and a `kiln aggregator` process (the \
         clock starts after they took 200 warm-up jobs), against the same flow with no kiln \
         logic in one process (publish with a message id → pull + ack → publish a result and \
         wait for its PubAck → pull + ack), on one private nats-server; medians of {runs} \
         run(s) per side. Every run: [`pipeline.csv`](pipeline.csv).\n",
        p.jobs_per_run, p.vector_len
    );
    let _ = writeln!(
        o,
        "| flow | jobs/s | kiln as a ratio |\n|---|---|---|\n\
         | raw JetStream, messages the size of kiln's ({} B job, {} B result) | {:.0} | {} |\n\
         | raw JetStream, 16-byte messages | {:.0} | {} |\n\
         | raw JetStream, same bytes, a subject per result as in `KILN_RESULTS` | {:.0} | {} |\n\
         | raw JetStream, same bytes, publisher, worker and results each on their own connection | {:.0} | {} |\n\
         | raw JetStream, same bytes, three connections, streams and consumers set up as kiln's | {:.0} | {} |\n\
         | kiln end to end, worker and aggregator processes | {:.0} | — |\n\
         | kiln end to end, worker and aggregator in the bench process | {:.0} | {} of the same-bytes ceiling |\n",
        p.job_bytes,
        p.result_bytes,
        p.ceiling_same_bytes_jobs_per_s,
        down(p.ratio_same_bytes, 3),
        p.ceiling_small_jobs_per_s,
        down(p.ratio_small, 3),
        p.ceiling_subject_per_result_jobs_per_s,
        down(
            p.kiln_jobs_per_s / p.ceiling_subject_per_result_jobs_per_s,
            3
        ),
        p.ceiling_three_connections_jobs_per_s,
        down(p.ratio_three_connections, 3),
        p.ceiling_kiln_streams_jobs_per_s,
        down(p.ratio_kiln_streams, 3),
        p.kiln_jobs_per_s,
        p.kiln_in_process_jobs_per_s,
        down(p.ratio_in_process_same_bytes, 3)
    );
    let _ = writeln!(
        o,
        "kiln's latency, submit → result, over all its runs (the aggregator's histogram): \
         p50 {}, p90 {}, p99 {}, mean {}, max {} — under a burst of {} jobs published at once, \
         so mostly queueing (the one-job-at-a-time cost is in the next section).\n",
        ms(p.kiln_total_ms_p50),
        ms(p.kiln_total_ms_p90),
        ms(p.kiln_total_ms_p99),
        ms(p.kiln_total_ms_mean),
        ms(p.kiln_total_ms_max),
        p.jobs_per_run
    );
    let _ = writeln!(o, "![Pipeline throughput](pipeline.svg)\n");
    if let Some(l) = &s.latency {
        let _ = writeln!(
            o,
            "{}\n\n{}\n",
            crate::latency::METHOD,
            crate::latency::table(l)
        );
    }
}

/// The original system's GPU-vs-CPU table at its sizes, as jobs: end to end and compute per
/// device, speedups, and PyTorch's time for the same job.
fn original(o: &mut String, s: &Suite) {
    let _ = writeln!(
        o,
        "## GPU vs CPU at the original system's sizes
"
    );
    let Some(x) = &s.original else {
        let _ = writeln!(
            o,
            "Not measured: the original-sizes part failed or was left out by --parts (see Steps).\n"
        );
        return;
    };
    let _ = writeln!(
        o,
        "Every case as kiln jobs: {}. GPU: {}. PyTorch: {}. Speedup = CPU time / GPU time. \
         [`original.csv`](original.csv).\n",
        x.method, x.gpu, x.torch
    );
    let gpu = x.rows.iter().any(|r| r.device != "cpu");
    original_table(o, x, gpu);
    o.push('\n');
    if !x.not_reached.is_empty() {
        let _ = writeln!(
            o,
            "Not reached within the part's time limit (`--original-limit-s`): {}.\n",
            x.not_reached.join(", ")
        );
    }
    if !gpu {
        let _ = writeln!(
            o,
            "The GPU columns are missing because no GPU was used here; run `./dev bench` (or \
             `kiln-bench suite --parts original`) on a CUDA machine to add them.\n"
        );
    }
    let _ = writeln!(o, "![The original sizes as jobs](original.svg)\n");
    if !x.speedups.is_empty() {
        let _ = writeln!(
            o,
            "![GPU speedup at the original sizes](original-speedup.svg)\n"
        );
    }
}

/// The original sizes' table: a row per case, the GPU's columns where `gpu` ran.
fn original_table(o: &mut String, x: &original::Section, gpu: bool) {
    let torch = x.rows.iter().any(|r| r.torch_ms.is_some());
    let mut header = vec![
        "workload",
        "size",
        "jobs",
        "CPU engine",
        "CPU end to end",
        "CPU compute",
    ];
    if torch {
        header.push("PyTorch CPU");
    }
    if gpu {
        header.extend(["GPU engine", "GPU end to end", "GPU compute"]);
        if torch {
            header.push("PyTorch GPU");
        }
        header.extend(["speedup end to end", "speedup compute"]);
    }
    let _ = writeln!(o, "| {} |", header.join(" | "));
    let _ = writeln!(o, "|{}", "---|".repeat(header.len()));
    let torch_cell = |t: Option<f64>| t.map_or_else(|| "-".to_owned(), ms);
    for cpu in x.rows.iter().filter(|r| r.device == "cpu") {
        let mut cells = vec![
            cpu.workload.to_owned(),
            cell(&cpu.size),
            cpu.jobs.to_string(),
            cpu.engine.clone(),
            ms(cpu.end_to_end_ms),
            ms(cpu.compute_ms),
        ];
        if torch {
            cells.push(torch_cell(cpu.torch_ms));
        }
        if gpu {
            match x
                .rows
                .iter()
                .find(|g| g.device != "cpu" && g.case == cpu.case)
            {
                Some(g) => {
                    cells.extend([g.engine.clone(), ms(g.end_to_end_ms), ms(g.compute_ms)]);
                    if torch {
                        cells.push(torch_cell(g.torch_ms));
                    }
                    // The speedups as measured for original-speedup.csv, not worked out again.
                    let speedup = x.speedups.iter().find(|s| s.case == cpu.case);
                    let times = |f: fn(&original::OriginalSpeedup) -> f64| {
                        speedup.map_or_else(|| "-".to_owned(), |s| format!("{}×", down(f(s), 2)))
                    };
                    cells.push(times(|s| s.end_to_end_speedup));
                    cells.push(times(|s| s.compute_speedup));
                }
                None => cells.extend(std::iter::repeat_n(
                    "-".to_owned(),
                    header.len() - cells.len(),
                )),
            }
        }
        let _ = writeln!(o, "| {} |", cells.join(" | "));
    }
}

fn overhead(o: &mut String, s: &Suite) {
    let _ = writeln!(o, "## Communication overhead\n");
    let Some(ov) = &s.overhead else {
        let _ = writeln!(
            o,
            "Not measured: the overhead part failed or was left out by --parts (see Steps).\n"
        );
        return;
    };
    let _ = writeln!(
        o,
        "End to end minus compute, per kind and size: {}. Transport = submit + result \
         delivery. Generated inputs are made on the worker from a seed (the job carries only \
         parameters); inline inputs travel in the job. [`overhead.csv`](overhead.csv).\n",
        ov.method
    );
    let _ = writeln!(
        o,
        "| kind | size | input | job bytes | jobs | end to end | compute | overhead | overhead share | submit | queue wait | worker handling | result delivery |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in &ov.rows {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {}% | {} | {} | {} | {} |",
            r.kind,
            cell(&r.size),
            r.input,
            r.job_bytes,
            r.jobs,
            ms(r.end_to_end_ms),
            ms(r.compute_ms),
            ms(r.overhead_ms),
            down(r.overhead_share * 100.0, 1),
            ms(r.submit_ms),
            ms(r.queue_ms),
            ms(r.worker_ms),
            ms(r.result_ms)
        );
    }
    let _ = writeln!(o, "\n![Communication overhead](overhead.svg)\n");
}

fn data_path(o: &mut String, s: &Suite) {
    let _ = writeln!(o, "## Data through the object store\n");
    let Some(d) = &s.data else {
        let _ = writeln!(
            o,
            "Not measured: the data part failed or was left out by --parts (see Steps).\n"
        );
        return;
    };
    let t = &d.transfer;
    let _ = writeln!(o, "{}. [`data.csv`](data.csv).\n", d.method);
    let _ = writeln!(
        o,
        "| case | runs | bytes moved | raw put + get | kiln outside compute | rate ratio (raw = 1) | worker RSS before | worker peak | peak − before over tensors |\n\
         |---|---|---|---|---|---|---|---|---|"
    );
    let _ = writeln!(
        o,
        "| {} | {} | {:.0} MiB | {} ({:.0} MiB/s) | {} ({:.0} MiB/s) | {} | {:.0} MiB | {:.0} MiB | {} of {:.0} MiB |\n",
        cell(&t.case),
        t.runs,
        t.bytes_moved as f64 / (1024.0 * 1024.0),
        ms(t.raw_ms),
        t.raw_mib_s,
        ms(t.kiln_transfer_ms),
        t.kiln_mib_s,
        down(t.rate_ratio, 3),
        t.worker_rss_before_mib,
        t.worker_peak_mib,
        down(t.memory_ratio, 3),
        t.tensor_mib
    );
    let _ = writeln!(
        o,
        "| case | jobs | end to end | upload | submit | queue wait | worker handling | compute | result delivery | download |\n\
         |---|---|---|---|---|---|---|---|---|---|"
    );
    let i = &d.image;
    for (case, jobs, split) in [(&t.case, t.runs, &t.split), (&i.case, i.jobs, &i.split)] {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell(case),
            jobs,
            ms(split.end_to_end_ms),
            ms(split.upload_ms),
            ms(split.submit_ms),
            ms(split.queue_ms),
            ms(split.worker_ms),
            ms(split.compute_ms),
            ms(split.result_ms),
            ms(split.download_ms)
        );
    }
    let _ = writeln!(
        o,
        "\nWorker handling is the worker's time outside compute: downloading and decoding the \
         inputs, encoding and storing the output ({} KiB JPEG in, {} KiB PNG out).\n",
        i.jpeg_bytes / 1024,
        i.png_bytes / 1024
    );
    let _ = writeln!(o, "![Data through the object store](data.svg)\n");
}

fn scaling(o: &mut String, s: &Suite) {
    let _ = writeln!(o, "## Scaling with workers\n");
    let Some(sc) = &s.scaling else {
        let _ = writeln!(
            o,
            "Not measured: the scaling part failed or was left out by --parts (see Steps).\n"
        );
        return;
    };
    let max = sc.rows.iter().map(|r| r.workers).max().unwrap_or(1);
    let _ = writeln!(o, "{}. [`scaling.csv`](scaling.csv).\n", sc.method);
    if max > sc.cores {
        let _ = writeln!(
            o,
            "This machine has {} core(s): counts above it share cores with each other and with \
             nats-server and the publisher, so they cannot scale further here; they show what \
             oversubscription costs.\n",
            sc.cores
        );
    }
    let _ = writeln!(
        o,
        "| workload | workers | jobs | seconds | jobs/s | relative to the first count |\n|---|---|---|---|---|---|"
    );
    for r in &sc.rows {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {:.2} | {:.0} | {}× |",
            r.workload,
            r.workers,
            r.jobs,
            r.seconds,
            r.jobs_per_s,
            down(r.relative, 2)
        );
    }
    let _ = writeln!(o, "\n![Scaling](scaling.svg)\n");
}

fn scheduler(o: &mut String, s: &Suite) {
    let _ = writeln!(o, "## Scheduler vs static policies\n");
    let Some(r) = &s.scheduler else {
        let _ = writeln!(
            o,
            "Not measured: the scheduler part failed or was left out by --parts (see Steps).\n"
        );
        return;
    };
    let _ = writeln!(
        o,
        "{} vector_add (len 4096) and {} matmul (n 384), all submitted at once, under each \
         policy in the same run; {}. [`scheduler.json`](scheduler.json), \
         [`scheduler.csv`](scheduler.csv).\n",
        r.small_jobs, r.large_jobs, r.simulated
    );
    let _ = writeln!(
        o,
        "| policy | makespan | mean completion | to gpu / to cpu |\n|---|---|---|---|"
    );
    for run in &r.runs {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} / {} |",
            run.policy,
            ms(run.makespan_ms),
            ms(run.mean_completion_ms),
            run.to_gpu,
            run.to_cpu
        );
    }
    let _ = writeln!(
        o,
        "\nkiln's scheduler / always gpu: makespan {}, mean completion {}; / always cpu: \
         makespan {}, mean completion {} (below 1: the scheduler finished sooner).\n",
        down(r.makespan_ratio_vs_always_gpu, 3),
        down(r.mean_completion_ratio_vs_always_gpu, 3),
        down(r.makespan_ratio_vs_always_cpu, 3),
        down(r.mean_completion_ratio_vs_always_cpu, 3)
    );
    let _ = writeln!(o, "![Scheduler](scheduler.svg)\n");
}

/// Where the README's generated part starts and ends.
pub const README_START: &str = "<!-- bench:start -->";
pub const README_END: &str = "<!-- bench:end -->";

/// The generated part of the benchmarks page: the machine, the GPU-vs-CPU table and every
/// section but the full kernel table, with links made relative to that page's folder through
/// `base` (the report's folder, e.g. `../bench/results/2026-11-26/`).
pub fn readme_section(s: &Suite, base: &str) -> String {
    let m = &s.machine;
    let mut o = String::new();
    let load = m.load_at_start.map_or_else(String::new, |l| {
        format!("; load average {l:.2} at the start")
    });
    let _ = writeln!(
        o,
        "Latest run: {}, `kiln-bench suite` ({} settings, {:.0} s) on {}, {} cores, {:.1} GiB; GPU: {}{load}. Full report: [`{base}report.md`]({base}report.md).\n",
        s.started_at.date(),
        s.mode,
        s.seconds,
        m.cpu,
        m.cores,
        m.memory_gib,
        m.gpu
    );
    let mut body = String::new();
    gpu_vs_cpu(&mut body, s);
    let _ = writeln!(body, "![Kernel times by size](kernels.svg)\n");
    numpy(&mut body, s);
    original(&mut body, s);
    pipeline(&mut body, s);
    overhead(&mut body, s);
    data_path(&mut body, s);
    scaling(&mut body, s);
    scheduler(&mut body, s);
    // Headings one level down; links from the repository root.
    let names: Vec<&str> = s.files.iter().map(String::as_str).collect();
    // `../x` from the report's folder is `x` in the folder above it.
    let parent = base
        .trim_end_matches('/')
        .rsplit_once('/')
        .map_or(String::new(), |(p, _)| format!("{p}/"));
    for line in body.lines() {
        let mut line = match line.strip_prefix("## ") {
            Some(rest) => format!("### {rest}"),
            None => line.to_owned(),
        };
        line = line.replace("](../", &format!("]({parent}"));
        for name in &names {
            line = line.replace(&format!("]({name}"), &format!("]({base}{name}"));
        }
        o.push_str(&line);
        o.push('\n');
    }
    o
}

/// `text` with the part between the markers replaced by `section`; `None` without markers.
pub fn splice(text: &str, section: &str) -> Option<String> {
    let start = text.find(README_START)? + README_START.len();
    let end = start + text[start..].find(README_END)?;
    Some(format!(
        "{}\n<!-- Written by `kiln-bench suite --readme` (`./dev bench`); edits here are overwritten. -->\n\n{}\n{}",
        &text[..start],
        section.trim_end(),
        &text[end..]
    ))
}

/// A few lines for the terminal.
pub fn summary(s: &Suite) -> String {
    let mut o = String::new();
    if let Some(k) = &s.kernels {
        match &k.gpu_device {
            Some(d) => {
                let _ = writeln!(o, "GPU vs CPU on {d}:");
                for x in &k.speedups {
                    let _ = writeln!(
                        o,
                        "  {:<28} {:<44} CPU {:>10}  GPU {:>10}  {}×",
                        x.workload,
                        x.size,
                        ms(x.cpu_ms),
                        ms(x.gpu_ms),
                        down(x.speedup, 2)
                    );
                }
            }
            None => {
                let _ = writeln!(
                    o,
                    "GPU skipped ({}); recorded H200 figures: {}",
                    k.gpu_skipped.as_deref().unwrap_or("no CUDA device"),
                    RECORDED_GPU[0].0
                );
            }
        }
    }
    if let Some(x) = &s.original {
        for r in &x.speedups {
            let _ = writeln!(
                o,
                "original sizes: {:<28} {:<14} GPU speedup {}× end to end, {}× compute",
                r.workload,
                r.size,
                down(r.end_to_end_speedup, 2),
                down(r.compute_speedup, 2)
            );
        }
    }
    if let Some(p) = &s.pipeline {
        let _ = writeln!(
            o,
            "pipeline: kiln {:.0} jobs/s = {} of the raw JetStream ceiling (same bytes)",
            p.kiln_jobs_per_s,
            down(p.ratio_same_bytes, 3)
        );
    }
    if let Some(d) = &s.data {
        let t = &d.transfer;
        let _ = writeln!(
            o,
            "data: {}: kiln moves data at {} of the raw object store's rate; worker peak {} × its tensors",
            t.case,
            down(t.rate_ratio, 3),
            down(t.memory_ratio, 3)
        );
        let _ = writeln!(
            o,
            "data: {}: {} end to end, {} of it compute",
            d.image.case,
            ms(d.image.split.end_to_end_ms),
            ms(d.image.split.compute_ms)
        );
    }
    if let Some(sc) = &s.scaling {
        for r in &sc.rows {
            let _ = writeln!(
                o,
                "scaling: {} worker(s), {}: {:.0} jobs/s ({}×)",
                r.workers,
                r.workload,
                r.jobs_per_s,
                down(r.relative, 2)
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_replaces_only_between_the_markers() {
        let text = "before\n<!-- bench:start -->\nold\n<!-- bench:end -->\nafter\n";
        let out = splice(text, "new table\n").unwrap();
        assert!(out.starts_with("before\n<!-- bench:start -->"));
        assert!(out.contains("new table\n<!-- bench:end -->\nafter\n"));
        assert!(!out.contains("old"));
        // Again: the same result, nothing piles up.
        assert_eq!(splice(&out, "new table\n").unwrap(), out);
        assert!(splice("no markers", "x").is_none());
    }

    #[test]
    fn ratios_are_cut_not_rounded_up() {
        assert_eq!(down(0.5639, 3), "0.563");
        assert_eq!(down(1.999, 2), "1.99");
        assert_eq!(down(2.0, 2), "2.00");
        assert_eq!(ms(0.004), "4.00 µs");
        assert_eq!(ms(12.345), "12.3 ms");
    }
}
