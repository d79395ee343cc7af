//! `kiln-bench suite --quick` into a temporary folder: every file is there and holds the rows
//! and values the report is made of (values, not timings).

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn csv_rows(dir: &Path, name: &str) -> Vec<csv::StringRecord> {
    let mut reader =
        csv::Reader::from_path(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let header = reader.headers().unwrap().clone();
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert!(!rows.is_empty(), "{name} has no rows");
    for r in &rows {
        assert_eq!(r.len(), header.len(), "{name}: a row with another width");
    }
    rows
}

fn column(dir: &Path, name: &str, col: &str) -> usize {
    let mut reader = csv::Reader::from_path(dir.join(name)).unwrap();
    reader
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == col)
        .unwrap_or_else(|| panic!("{name} has no column {col}"))
}

fn num(r: &csv::StringRecord, i: usize) -> f64 {
    r[i].parse()
        .unwrap_or_else(|_| panic!("not a number: {:?} in {r:?}", &r[i]))
}

fn json(dir: &Path, name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join(name)).unwrap()).unwrap()
}

const KILN_BENCH: &str = env!("CARGO_BIN_EXE_kiln-bench");

/// The `kiln` binary the suite starts workers from: cargo builds it beside `kiln-bench` when
/// the workspace's tests are built (`cargo test --workspace`).
fn kiln_beside() -> std::path::PathBuf {
    let kiln = Path::new(KILN_BENCH).with_file_name("kiln");
    assert!(
        kiln.is_file(),
        "{} is missing: build it first (cargo build -p kiln-cli), or run the workspace's tests",
        kiln.display()
    );
    kiln
}

fn assert_success(output: &std::process::Output) {
    assert!(
        output.status.success(),
        "kiln-bench failed with {}:\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn quick_suite_writes_every_file_with_its_figures() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path();
    let script = kiln_testkit::workspace_root().join("bench/scripts/numpy_reference.py");
    let output = Command::new(KILN_BENCH)
        .env("KILN_BIN", kiln_beside())
        .args(["suite", "--quick", "--workers", "1,2", "--out"])
        .arg(dir)
        .arg("--numpy-script")
        .arg(&script)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert_success(&output);

    for name in [
        "suite.json",
        "report.md",
        "kernels.csv",
        "kernels.svg",
        "pipeline.json",
        "pipeline.csv",
        "pipeline.svg",
        "original.csv",
        "original.svg",
        "overhead.csv",
        "overhead.svg",
        "data.csv",
        "data.svg",
        "scaling.csv",
        "scaling.svg",
        "scheduler.json",
        "scheduler.csv",
        "scheduler.svg",
    ] {
        assert!(dir.join(name).is_file(), "{name} is missing");
    }
    let suite = json(dir, "suite.json");
    for step in suite["steps"].as_array().unwrap() {
        assert!(step["error"].is_null(), "step failed: {step}");
    }
    let gpu = suite["kernels"]["gpu_device"].is_string();

    // Kernels: every kind at two sizes or more on the CPU, all measured.
    let kernels = csv_rows(dir, "kernels.csv");
    let (kind, device, status, median) = (
        column(dir, "kernels.csv", "kind"),
        column(dir, "kernels.csv", "device"),
        column(dir, "kernels.csv", "status"),
        column(dir, "kernels.csv", "median_ms"),
    );
    for k in ["matmul", "train_mlp", "conv2d", "vector_add"] {
        let cpu: Vec<_> = kernels
            .iter()
            .filter(|r| &r[kind] == k && &r[device] == "cpu")
            .collect();
        assert!(cpu.len() >= 2, "{k}: {} CPU row(s)", cpu.len());
        for r in cpu {
            assert_eq!(&r[status], "ok", "{r:?}");
            assert!(num(r, median) > 0.0, "{r:?}");
        }
    }
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    if gpu {
        let speedups = csv_rows(dir, "speedup.csv");
        let s = column(dir, "speedup.csv", "speedup");
        assert!(speedups.iter().all(|r| num(r, s) > 0.0));
    } else {
        assert!(!dir.join("speedup.csv").exists());
        assert!(report.contains("GPU skipped"), "{report}");
        assert!(report.contains("h200/kernels.md"), "{report}");
    }

    // Pipeline: the ratios are kiln over the ceilings of the same run.
    let p = json(dir, "pipeline.json");
    let f = |k: &str| p[k].as_f64().unwrap_or_else(|| panic!("{k} in {p}"));
    assert!(f("kiln_jobs_per_s") > 0.0 && f("ceiling_same_bytes_jobs_per_s") > 0.0);
    let ratio = f("kiln_jobs_per_s") / f("ceiling_same_bytes_jobs_per_s");
    assert!((f("ratio_same_bytes") - ratio).abs() < 1e-12);
    assert!(f("kiln_total_ms_p50") > 0.0 && f("kiln_total_ms_p50") <= f("kiln_total_ms_p99"));
    let runs = csv_rows(dir, "pipeline.csv");
    let sides: HashSet<&str> = runs.iter().map(|r| r.get(0).unwrap()).collect();
    // Two kiln sides (role processes, in-process roles) and five ceilings.
    assert_eq!(sides.len(), 7, "{sides:?}");
    assert!(sides.contains("ceiling, same bytes, three connections"));
    assert!(sides.contains("ceiling, same bytes, kiln's stream settings"));
    let three = f("kiln_jobs_per_s") / f("ceiling_three_connections_jobs_per_s");
    assert!((f("ratio_three_connections") - three).abs() < 1e-12);
    let settings = f("kiln_jobs_per_s") / f("ceiling_kiln_streams_jobs_per_s");
    assert!((f("ratio_kiln_streams") - settings).abs() < 1e-12);
    let in_process = f("kiln_in_process_jobs_per_s") / f("ceiling_same_bytes_jobs_per_s");
    assert!((f("ratio_in_process_same_bytes") - in_process).abs() < 1e-12);
    assert!(f("ceiling_subject_per_result_jobs_per_s") > 0.0);
    // One job at a time: percentiles in order, on both sides.
    let suite = json(dir, "suite.json");
    for side in ["kiln", "floor"] {
        let l = &suite["latency"][side];
        let q = |k: &str| {
            l[k].as_f64()
                .unwrap_or_else(|| panic!("latency.{side}.{k} in {l}"))
        };
        assert!(
            q("p50") > 0.0 && q("p50") <= q("p90") && q("p90") <= q("p99"),
            "{l}"
        );
        assert!(q("p99") <= q("max"), "{l}");
    }
    // Each side's round trip in stages, from its result's times: four for kiln, the echo
    // computing nothing; the stages' medians are within the round trip's slowest.
    let stages = suite["latency"]["stages"]
        .as_array()
        .expect("latency stages");
    assert_eq!(stages.len(), 4, "{stages:?}");
    let max = |side: &str| suite["latency"][side]["max"].as_f64().expect("max");
    for (i, stage) in stages.iter().enumerate() {
        let p50 = stage["kiln"]["p50"].as_f64().expect("kiln p50");
        assert!(p50 > 0.0 && p50 <= max("kiln"), "{stage}");
        match stage["floor"]["p50"].as_f64() {
            Some(p50) => assert!(i != 2 && p50 > 0.0 && p50 <= max("floor"), "{stage}"),
            None => assert!(i == 2 && stage["floor"].is_null(), "{stage}"),
        }
    }

    // Overhead: every kind, end to end above compute, the given number of jobs.
    let overhead = csv_rows(dir, "overhead.csv");
    let (okind, jobs, e2e, compute, over) = (
        column(dir, "overhead.csv", "kind"),
        column(dir, "overhead.csv", "jobs"),
        column(dir, "overhead.csv", "end_to_end_ms"),
        column(dir, "overhead.csv", "compute_ms"),
        column(dir, "overhead.csv", "overhead_ms"),
    );
    let kinds: HashSet<&str> = overhead.iter().map(|r| &r[okind]).collect();
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    for r in &overhead {
        assert!(num(r, jobs) >= 2.0, "{r:?}");
        assert!(num(r, e2e) > num(r, compute), "{r:?}");
        assert!(num(r, over) > 0.0, "{r:?}");
    }

    // The original sizes (tiny with --quick): every kind on the CPU worker, end to end above
    // compute; a GPU row and a speedup per case where CUDA ran.
    let original = csv_rows(dir, "original.csv");
    let (ocase, okind, odevice, oe2e, ocompute, oengine) = (
        column(dir, "original.csv", "case"),
        column(dir, "original.csv", "kind"),
        column(dir, "original.csv", "device"),
        column(dir, "original.csv", "end_to_end_ms"),
        column(dir, "original.csv", "compute_ms"),
        column(dir, "original.csv", "engine"),
    );
    let cpu: Vec<_> = original.iter().filter(|r| &r[odevice] == "cpu").collect();
    let kinds: HashSet<&str> = cpu.iter().map(|r| &r[okind]).collect();
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    assert!(cpu.len() >= 8, "two sizes of every kind: {}", cpu.len());
    for r in &original {
        assert!(num(r, ocompute) > 0.0, "{r:?}");
        assert!(num(r, oe2e) > num(r, ocompute), "{r:?}");
        assert!(!r[oengine].is_empty(), "{r:?}");
    }
    let matmul_engine = cpu.iter().find(|r| &r[okind] == "matmul").unwrap();
    assert!(
        ["openblas", "burn-ndarray"].contains(&&matmul_engine[oengine]),
        "{matmul_engine:?}"
    );
    if gpu {
        let speedups = csv_rows(dir, "original-speedup.csv");
        assert_eq!(speedups.len(), cpu.len());
        assert!(dir.join("original-speedup.svg").is_file());
    } else {
        assert!(!dir.join("original-speedup.csv").exists());
        assert!(original.iter().all(|r| &r[odevice] == "cpu"));
        assert!(
            report.contains("GPU vs CPU at the original system's sizes"),
            "{report}"
        );
    }
    let cases: HashSet<&str> = cpu.iter().map(|r| &r[ocase]).collect();
    assert_eq!(cases.len(), cpu.len(), "one CPU row per case");

    // Data: the matmul by object against the raw store, and the JPEG; ratios from the run's
    // own figures, the output fetched and checked, the worker's memory read.
    let d = &suite["data"]["transfer"];
    let g = |k: &str| d[k].as_f64().unwrap_or_else(|| panic!("{k} in {d}"));
    assert!(g("raw_ms") > 0.0 && g("kiln_transfer_ms") > 0.0, "{d}");
    assert!((g("rate_ratio") - g("raw_ms") / g("kiln_transfer_ms")).abs() < 1e-9);
    assert!(g("worker_peak_mib") >= g("worker_rss_before_mib"), "{d}");
    assert!(g("memory_ratio") >= 0.0, "{d}");
    let image = &suite["data"]["image"];
    assert!(image["jpeg_bytes"].as_u64().unwrap() >= 1 << 20, "{image}");
    assert!(image["png_bytes"].as_u64().unwrap() > 0, "{image}");
    let data = csv_rows(dir, "data.csv");
    assert_eq!(data.len(), 2);
    let (dcompute, de2e, dupload, ddown) = (
        column(dir, "data.csv", "compute_ms"),
        column(dir, "data.csv", "end_to_end_ms"),
        column(dir, "data.csv", "upload_ms"),
        column(dir, "data.csv", "download_ms"),
    );
    for r in &data {
        assert!(num(r, de2e) > num(r, dcompute), "{r:?}");
        assert!(num(r, dupload) > 0.0 && num(r, ddown) > 0.0, "{r:?}");
    }

    // Scaling: both workloads at 1 and 2 workers; 1 worker is the base.
    let scaling = csv_rows(dir, "scaling.csv");
    let (workers, rate, relative) = (
        column(dir, "scaling.csv", "workers"),
        column(dir, "scaling.csv", "jobs_per_s"),
        column(dir, "scaling.csv", "relative"),
    );
    assert_eq!(scaling.len(), 4);
    for r in &scaling {
        assert!(num(r, rate) > 0.0);
        if &r[workers] == "1" {
            assert_eq!(num(r, relative), 1.0);
        }
    }

    // Scheduler: three policies over the same jobs.
    let scheduler = csv_rows(dir, "scheduler.csv");
    assert_eq!(scheduler.len(), 3);
    let sjobs = column(dir, "scheduler.csv", "jobs");
    assert!(scheduler.iter().all(|r| &r[sjobs] == "66"));

    // Charts: titled, with axis descriptions and legends.
    for (name, texts) in [
        (
            "kernels.svg",
            &["milliseconds (log scale)", "size", "burn-ndarray)"][..],
        ),
        (
            "pipeline.svg",
            &["jobs per second", "raw JetStream, 16-byte messages"][..],
        ),
        (
            "original.svg",
            &[
                "milliseconds (log scale)",
                "CPU: end to end",
                "CPU: compute",
                "vector addition",
            ][..],
        ),
        (
            "overhead.svg",
            &["milliseconds", "queue wait (stored → worker)"][..],
        ),
        (
            "scaling.svg",
            &["worker processes", "ideal (linear)", "compute jobs"][..],
        ),
        ("scheduler.svg", &["milliseconds", "makespan"][..]),
        (
            "data.svg",
            &["raw put + get, same bytes", "worker handling (load, store)"][..],
        ),
    ] {
        let svg = std::fs::read_to_string(dir.join(name)).unwrap();
        assert!(svg.starts_with("<svg"), "{name}");
        for t in texts {
            assert!(svg.contains(t), "{name} lacks {t:?}");
        }
    }

    // The report: every section, every chart, the machine.
    for heading in [
        "## Machine",
        "## GPU vs CPU",
        "## Kernels",
        "## CPU matmul: kiln vs numpy",
        "## Pipeline vs the raw JetStream ceiling",
        "## Communication overhead",
        "## Data through the object store",
        "## Scaling with workers",
        "## Scheduler vs static policies",
    ] {
        assert!(report.contains(heading), "report.md lacks {heading}");
    }
    for chart in [
        "kernels.svg",
        "pipeline.svg",
        "overhead.svg",
        "scaling.svg",
        "scheduler.svg",
    ] {
        assert!(
            report.contains(&format!("]({chart})")),
            "report.md does not show {chart}"
        );
    }
    let cores = std::thread::available_parallelism().unwrap().get();
    assert!(
        report.contains(&format!("| cores available | {cores} |")),
        "{report}"
    );
    for row in [
        "| matrix multiplication |",
        "| neural network training |",
        "| image processing (conv2d) |",
        "| vector addition |",
    ] {
        assert!(report.contains(row), "the GPU-vs-CPU table lacks {row}");
    }
    let numpy = suite["numpy"]["status"].as_str().unwrap();
    if numpy == "ran" {
        for r in suite["numpy"]["rows"].as_array().unwrap() {
            assert!(r["ratio"].as_f64().unwrap() > 0.0);
        }
    } else {
        assert!(numpy.starts_with("skipped"), "{numpy}");
        assert!(
            report.contains(numpy),
            "the report says why numpy was skipped"
        );
    }
}
