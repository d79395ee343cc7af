//! The report's sections, one function each: a markdown table (and its chart's link) per
//! part of the suite, appended to the report or to the README's generated part.

use std::fmt::Write as _;

use super::super::Suite;
use super::super::kernels::{self, KernelRow};
use super::super::original;
use super::{RECORDED_GPU, cell, down, ms, value};

pub(super) fn gpu_vs_cpu(o: &mut String, s: &Suite) {
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

pub(super) fn kernel_table(o: &mut String, s: &Suite) {
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

pub(super) fn numpy(o: &mut String, s: &Suite) {
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

pub(super) fn pipeline(o: &mut String, s: &Suite) {
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
pub(super) fn original(o: &mut String, s: &Suite) {
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

pub(super) fn overhead(o: &mut String, s: &Suite) {
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

pub(super) fn data_path(o: &mut String, s: &Suite) {
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

pub(super) fn scaling(o: &mut String, s: &Suite) {
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

pub(super) fn scheduler(o: &mut String, s: &Suite) {
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
