//! GPU vs CPU at the original system's sizes: matrix multiply of 1000² to 5000², vector add
//! of 1M to 100M elements, 3×3 Sobel filtering of 224 to 1024 px image batches and MLP
//! training on thousands of samples, each as real kiln jobs.
//!
//! Every case runs as jobs, one at a time (the next is submitted when the previous result
//! arrived), on a CPU worker and, where CUDA is present, a CUDA worker, both in this process
//! on a private nats-server. For each job the client notes when it published and when the
//! result event reached it (**end to end**); the result event says how long the worker spent
//! running the kernel (**compute**: making the seeded inputs, the operation and the summary
//! it returns; see `ResultEvent::compute_ms`). Medians over the jobs after one untimed warm-up
//! job per case and device.
//!
//! Where PyTorch is installed, `bench/scripts/torch_jobs.py` runs the same jobs in PyTorch on
//! the same devices, timed the same way as kiln's compute (inputs made on the device, the
//! operation, the same summary read back), so kiln's compute column sits beside PyTorch's.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use indicatif::ProgressBar;
use kiln_kernels::ComputeDevice;
use kiln_proto::{Codec, DeviceClass, streams};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::kernels::{IMAGE, MATMUL, TRAINING, VECTOR};
use super::overhead::{one_job, quantile};
use kiln_cli::cli::NatsArgs;
use kiln_cli::cmd::roles::LocalRoles;
use kiln_client::JobSpec;

/// The largest job here (a 100M-element vector add: 300M elements) is above a worker's
/// default `--max-elements` (2²⁸); the workers of this part accept 2³⁰ (4 GiB of f32).
const MAX_ELEMENTS: u64 = 1 << 30;
/// What PyTorch's side writes: the cases it is given, and its figures per device (CUDA device
/// 0 is the only GPU measured; see [`torch_file`]).
pub const PYTORCH_FILES: [&str; 3] = [CASES_FILE, "torch-jobs-cpu.json", "torch-jobs-cuda0.json"];
const CASES_FILE: &str = "original-cases.json";
/// The longest one job may take before the part gives up on it.
const JOB_PATIENCE: Duration = Duration::from_secs(600);
/// Under a time limit, kiln's jobs start no case after this share of it; PyTorch's side has
/// what is left.
const KILN_SHARE: f64 = 0.6;

/// One kind at one size.
#[derive(Debug, Clone, Serialize)]
pub struct OriginalCase {
    /// Joins kiln's rows with PyTorch's.
    pub name: String,
    pub kind: &'static str,
    pub workload: &'static str,
    pub size: String,
    pub params: serde_json::Value,
    /// Timed jobs per device (after one warm-up job).
    pub jobs: usize,
}

/// One case on one device: medians over its jobs, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct OriginalRow {
    pub case: String,
    pub kind: &'static str,
    pub workload: &'static str,
    pub size: String,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// What computed it, from the result (`output.engine`: openblas, cublas, direct, …).
    pub engine: String,
    pub jobs: usize,
    pub end_to_end_ms: f64,
    pub compute_ms: f64,
    /// The same job in PyTorch on the same device, where it ran.
    pub torch_ms: Option<f64>,
}

/// CPU against GPU for one case; speedups are CPU time / GPU time.
#[derive(Debug, Clone, Serialize)]
pub struct OriginalSpeedup {
    pub case: String,
    pub workload: &'static str,
    pub size: String,
    pub cpu_end_to_end_ms: f64,
    pub gpu_end_to_end_ms: f64,
    pub end_to_end_speedup: f64,
    pub cpu_compute_ms: f64,
    pub gpu_compute_ms: f64,
    pub compute_speedup: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Section {
    pub method: &'static str,
    pub rows: Vec<OriginalRow>,
    pub speedups: Vec<OriginalSpeedup>,
    /// The GPU used, or why none was.
    pub gpu: String,
    /// `ran (torch X)` or why PyTorch's side is missing.
    pub torch: String,
    /// The cases not started within the part's time limit (`--original-limit-s`).
    pub not_reached: Vec<String>,
}

pub const METHOD: &str = "jobs one at a time through a private nats-server to an in-process \
    worker per device (CPU; CUDA where present), inputs generated from the job's seed on the \
    worker; end to end = client publish → result received; compute = the worker's time running \
    the kernel (inputs, operation, summary), from the result event; medians over the jobs after \
    one untimed warm-up job; PyTorch: the same job timed the same way as compute \
    (bench/scripts/torch_jobs.py)";

/// The original system's sizes (or tiny ones, `quick`), cheapest first within a kind.
pub fn cases(quick: bool) -> Vec<OriginalCase> {
    let case = |kind, workload, size: String, params: serde_json::Value, jobs| OriginalCase {
        name: format!("{kind}_{}", size.replace(['×', ' ', ','], "_")),
        kind,
        workload,
        size,
        params,
        jobs,
    };
    let sides: &[u64] = if quick {
        &[100, 200]
    } else {
        &[1000, 2000, 3000, 4000, 5000]
    };
    let lens: &[u64] = if quick {
        &[10_000, 100_000]
    } else {
        &[1_000_000, 10_000_000, 100_000_000]
    };
    // [batch, height, width] of 3-channel images.
    let images: &[[u64; 3]] = if quick {
        &[[2, 32, 32], [1, 64, 64]]
    } else {
        &[[32, 224, 224], [8, 512, 512], [2, 1024, 1024]]
    };
    let samples: &[u64] = if quick {
        &[200, 400]
    } else {
        // Whole batches of 128 (`batch_size`): no odd last-batch shape to compile and autotune.
        &[1024, 4096, 10_240]
    };
    // Fewer jobs where one takes seconds on a CPU.
    let jobs = |big: bool| match (quick, big) {
        (true, _) => 2,
        (false, true) => 3,
        (false, false) => 5,
    };
    let mut cases = Vec::new();
    for &n in sides {
        let (size, params) = (format!("{n}×{n}"), json!({ "n": n }));
        cases.push(case("matmul", MATMUL, size, params, jobs(n >= 3000)));
    }
    for &len in lens {
        let (size, params) = (count(len), json!({ "len": len }));
        cases.push(case(
            "vector_add",
            VECTOR,
            size,
            params,
            jobs(len >= 10_000_000),
        ));
    }
    for &[batch, height, width] in images {
        let size = format!("{batch}×3×{height}×{width}");
        let params = json!({
            "batch": batch, "channels": 3, "height": height, "width": width, "filter": "sobel"
        });
        cases.push(case("conv2d", IMAGE, size, params, jobs(height >= 512)));
    }
    let (features, hidden, epochs): (u64, &[u64], u64) = if quick {
        (16, &[32], 1)
    } else {
        (784, &[256, 128], 5)
    };
    for &n in samples {
        let size = format!("{n} samples");
        let params = json!({
            "samples": n, "features": features, "classes": 10, "hidden": hidden,
            "epochs": epochs, "batch_size": 128, "lr": 0.001
        });
        cases.push(case("train_mlp", TRAINING, size, params, jobs(n >= 4096)));
    }
    cases
}

/// `100M` for 100,000,000; `10K` for 10,000.
fn count(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}K", n / 1_000),
        n => n.to_string(),
    }
}

/// Run every case on the CPU worker and on the CUDA worker where there is one (and `gpu`
/// allows), then PyTorch's side where `python` has torch. Under a `limit`, the cases run in
/// rounds (every kind's smallest size, then every kind's next, …) so that a cut-off run still
/// covers every kind, and the cases not started in time are listed in the section.
pub async fn measure(
    nats: &NatsArgs,
    quick: bool,
    gpu: bool,
    torch: (&str, &Path),
    limit: Option<Duration>,
    out: &Path,
    bar: &ProgressBar,
) -> anyhow::Result<Section> {
    let started = Instant::now();
    let cuda = super::kernels::cuda_device(gpu);
    let mut devices = vec![ComputeDevice::Cpu];
    devices.extend(cuda.clone());

    let (server, nats) = crate::private_server(nats)?;
    let client = kiln_client::connect(&nats.connect_options()).await?;
    let js = jetstream::new(client.clone());
    let topology = kiln_cli::cmd::topology(&nats);
    streams::ensure_all(&js, &topology).await?;
    let roles = start_workers(&client, &topology, &devices);
    let mut results = client.subscribe("results.>").await?;

    let cases = cases(quick);
    let per_device: usize = cases.iter().map(|c| c.jobs + 1).sum();
    bar.set_length((per_device * devices.len()) as u64);
    let run = kiln_proto::new_job_id();
    let mut rows = Vec::new();
    let mut not_reached = Vec::new();
    for case in in_rounds(&cases) {
        if limit.is_some_and(|l| started.elapsed() >= l.mul_f64(KILN_SHARE)) {
            bar.suspend(|| eprintln!("  {}: not reached within the time limit", case.name));
            not_reached.push(case.name.clone());
            continue;
        }
        for device in &devices {
            let jobs = Jobs {
                js: &js,
                run: &run,
                device,
                bar,
            };
            rows.push(jobs.measure(case, &mut results).await?);
        }
    }
    // The table's order: the cases' own, CPU first.
    let place = |r: &OriginalRow| cases.iter().position(|c| c.name == r.case);
    rows.sort_by_key(|r| (place(r), r.device != "cpu"));
    roles.stop().await?;
    drop(results);
    let _ = client.drain().await;

    // PyTorch runs for minutes at these sizes: off the async threads. It gets the cases kiln
    // measured and, under a limit, what is left of it.
    let measured: Vec<OriginalCase> = cases
        .into_iter()
        .filter(|c| !not_reached.contains(&c.name))
        .collect();
    let left = limit.map(|l| l.saturating_sub(started.elapsed()));
    let torch = tokio::task::block_in_place(|| {
        torch_side(torch, bar, out, &measured, &devices, left, &mut rows)
    });
    // Stopped last: a client still connected would warn of the lost connection meanwhile.
    drop(server);
    Ok(Section {
        method: METHOD,
        speedups: speedups(&rows),
        rows,
        gpu: match cuda {
            Ok(device) => device.to_string(),
            Err(why) => format!("none: {why}"),
        },
        torch,
        not_reached,
    })
}

/// The cases in rounds: every kind's first size, then every kind's second, and so on.
fn in_rounds(cases: &[OriginalCase]) -> Vec<&OriginalCase> {
    let rank = |i: usize| {
        cases[..i]
            .iter()
            .filter(|c| c.kind == cases[i].kind)
            .count()
    };
    let mut order: Vec<usize> = (0..cases.len()).collect();
    order.sort_by_key(|&i| rank(i)); // stable: kinds keep their order within a round
    order.into_iter().map(|i| &cases[i]).collect()
}

/// A worker per device on `client`, for jobs up to [`MAX_ELEMENTS`], without warm-up jobs of
/// their own: each case's first job is its warm-up (JIT, autotune), and a worker's own would
/// compile shapes no case uses, on cores the CPU side is measured on.
fn start_workers(
    client: &async_nats::Client,
    topology: &kiln_proto::Topology,
    devices: &[ComputeDevice],
) -> LocalRoles {
    let mut roles = LocalRoles::default();
    for device in devices {
        let mut config = kiln_worker::WorkerConfig::new(device.clone());
        config.topology = topology.clone();
        config.limits.max_elements = MAX_ELEMENTS;
        config.warmup = false;
        // The GPU caches a `kiln worker` would use (`just gpu-check` points it at its own).
        if let Some(dir) = std::env::var_os("KILN_CACHE_DIR") {
            config.cache_dir = Some(dir.into());
        }
        roles.worker(client, config);
    }
    roles
}

/// Where one case's jobs go and what they are called.
struct Jobs<'a> {
    js: &'a jetstream::Context,
    run: &'a str,
    device: &'a ComputeDevice,
    bar: &'a ProgressBar,
}

impl Jobs<'_> {
    /// A warm-up job, then `case.jobs` timed ones, one at a time; their medians.
    async fn measure(
        &self,
        case: &OriginalCase,
        results: &mut async_nats::Subscriber,
    ) -> anyhow::Result<OriginalRow> {
        let device = self.device;
        let class = match device {
            ComputeDevice::Cpu => DeviceClass::Cpu,
            ComputeDevice::Cuda(_) => DeviceClass::Gpu,
        };
        self.bar
            .set_message(format!("{device} {} {}", case.kind, case.size));
        let entry = kiln_kernels::find(case.kind).context("the suite's kinds are registered")?;
        let what = format!("{} {} on {device}", case.kind, case.size);
        let (mut end_to_end, mut compute, mut engine) = (Vec::new(), Vec::new(), String::new());
        // Job 0 is the untimed warm-up.
        for i in 0..=case.jobs {
            let id = format!("original-{}-{class}-{}-{i}", self.run, case.name);
            let params = case.params.clone();
            let spec = JobSpec::new(entry, class, params, id, i as u64, None, Codec::Json)?;
            let done = one_job(self.js, results, spec, &what, JOB_PATIENCE).await?;
            self.bar.inc(1);
            if i == 0 {
                continue;
            }
            end_to_end.push((done.received - done.submitted).as_seconds_f64() * 1e3);
            compute.push(done.event.compute_ms);
            // train_mlp runs on Burn everywhere and does not name an engine.
            let burn = kiln_kernels::burn_engine(class == DeviceClass::Gpu);
            engine = done.event.output["engine"]
                .as_str()
                .unwrap_or(burn)
                .to_owned();
        }
        let (end_to_end_ms, compute_ms) = (quantile(end_to_end, 0.5), quantile(compute, 0.5));
        // A line per case, so that a run cut short (a time limit) still says what it measured.
        self.bar.suspend(|| {
            eprintln!(
                "  {device} {} {}: end to end {end_to_end_ms:.3} ms, compute {compute_ms:.3} ms \
                 ({engine})",
                case.kind, case.size
            );
        });
        Ok(OriginalRow {
            case: case.name.clone(),
            kind: case.kind,
            workload: case.workload,
            size: case.size.clone(),
            device: device.to_string(),
            engine,
            jobs: case.jobs,
            end_to_end_ms,
            compute_ms,
            torch_ms: None,
        })
    }
}

/// PyTorch's times, joined into `rows` by case and device; says how it went.
fn torch_side(
    (python, script): (&str, &Path),
    bar: &ProgressBar,
    out: &Path,
    cases: &[OriginalCase],
    devices: &[ComputeDevice],
    limit: Option<Duration>,
    rows: &mut [OriginalRow],
) -> String {
    // A file left by an earlier run into the same folder must not pass for this run's.
    for name in PYTORCH_FILES {
        let _ = std::fs::remove_file(out.join(name));
    }
    if !script.is_file() {
        return format!("skipped: {} not found", script.display());
    }
    let has_torch = std::process::Command::new(python)
        .args(["-c", "import torch"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_torch {
        return format!("skipped: {python} cannot import torch");
    }
    let cases_path = out.join(CASES_FILE);
    if let Err(e) = crate::write_json(&cases_path, &cases) {
        return format!("skipped: {e:#}");
    }
    let mut version = String::new();
    // Under a limit, each device has an equal share of what is left.
    let share = limit.map(|l| l.div_f64(devices.len() as f64));
    for device in devices {
        let torch_device = match device {
            ComputeDevice::Cpu => "cpu".to_owned(),
            other => other.to_string(),
        };
        let json_path = out.join(torch_file(&torch_device));
        bar.set_message(format!("PyTorch on {torch_device}: the same jobs"));
        let mut command = std::process::Command::new(python);
        command
            .arg(script)
            .arg("--cases")
            .arg(&cases_path)
            .args(["--device", &torch_device, "--json"])
            .arg(&json_path);
        if let Some(share) = share {
            command
                .arg("--time-limit-s")
                .arg(share.as_secs().max(1).to_string());
        }
        let figures = match run_showing_progress(command, bar) {
            Err(e) => return format!("failed: could not run {python}: {e}"),
            Ok((status, log)) if !status.success() => {
                return format!(
                    "failed on {torch_device}: {} exited with {status}: {}",
                    script.display(),
                    log.trim()
                );
            }
            Ok(_) => std::fs::read(&json_path)
                .map_err(anyhow::Error::from)
                .and_then(|b| Ok(serde_json::from_slice::<TorchFigures>(&b)?)),
        };
        let figures = match figures {
            Ok(f) => f,
            Err(e) => return format!("failed: reading {}: {e:#}", json_path.display()),
        };
        version = figures.torch;
        let device = device.to_string();
        for t in figures.rows {
            if let Some(row) = rows
                .iter_mut()
                .find(|r| r.case == t.case && r.device == device)
            {
                row.torch_ms = t.median_ms;
            }
        }
    }
    format!("ran (torch {version})")
}

/// The file PyTorch's figures on `device` (`cpu`, `cuda:0`) go to: one of [`PYTORCH_FILES`].
fn torch_file(device: &str) -> String {
    format!("torch-jobs-{}.json", device.replace(':', ""))
}

/// Run `command`, each line it writes to stderr shown as `bar`'s message; its exit status and
/// those lines.
fn run_showing_progress(
    mut command: std::process::Command,
    bar: &ProgressBar,
) -> std::io::Result<(std::process::ExitStatus, String)> {
    use std::io::BufRead as _;
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut log = String::new();
    if let Some(stderr) = child.stderr.take() {
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line?;
            bar.set_message(format!("PyTorch {line}"));
            log.push_str(&line);
            log.push('\n');
        }
    }
    Ok((child.wait()?, log))
}

#[derive(Deserialize)]
struct TorchFigures {
    torch: String,
    rows: Vec<TorchRow>,
}

#[derive(Deserialize)]
struct TorchRow {
    case: String,
    median_ms: Option<f64>,
}

/// Pair every CPU row with the GPU row of the same case.
pub fn speedups(rows: &[OriginalRow]) -> Vec<OriginalSpeedup> {
    rows.iter()
        .filter(|r| r.device == "cpu")
        .filter_map(|cpu| {
            let gpu = rows
                .iter()
                .find(|g| g.device != "cpu" && g.case == cpu.case)?;
            Some(OriginalSpeedup {
                case: cpu.case.clone(),
                workload: cpu.workload,
                size: cpu.size.clone(),
                cpu_end_to_end_ms: cpu.end_to_end_ms,
                gpu_end_to_end_ms: gpu.end_to_end_ms,
                end_to_end_speedup: cpu.end_to_end_ms / gpu.end_to_end_ms,
                cpu_compute_ms: cpu.compute_ms,
                gpu_compute_ms: gpu.compute_ms,
                compute_speedup: cpu.compute_ms / gpu.compute_ms,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(kind: &str) -> Vec<serde_json::Value> {
        cases(false)
            .into_iter()
            .filter(|c| c.kind == kind)
            .map(|c| c.params)
            .collect()
    }

    #[test]
    fn the_original_systems_sizes() {
        let n: Vec<u64> = sizes("matmul")
            .iter()
            .map(|p| p["n"].as_u64().unwrap())
            .collect();
        assert_eq!(n, [1000, 2000, 3000, 4000, 5000]);
        let len: Vec<u64> = sizes("vector_add")
            .iter()
            .map(|p| p["len"].as_u64().unwrap())
            .collect();
        assert_eq!(len.last(), Some(&100_000_000));
        // 100M: three 100M-element tensors fit the part's limit, not the default one.
        const { assert!(3 * 100_000_000 <= MAX_ELEMENTS) };
        assert!(3 * 100_000_000 > kiln_proto::Limits::default().max_elements);
        let sides: Vec<u64> = sizes("conv2d")
            .iter()
            .map(|p| p["height"].as_u64().unwrap())
            .collect();
        assert_eq!(sides, [224, 512, 1024]);
        for p in sizes("conv2d") {
            assert!(p["batch"].as_u64().unwrap() >= 2, "batches: {p}");
        }
        for p in sizes("train_mlp") {
            assert!(
                p["samples"].as_u64().unwrap() >= 1000,
                "thousands of samples: {p}"
            );
        }
    }

    #[test]
    fn rounds_take_every_kinds_next_size_in_turn() {
        let cases = cases(false);
        let order: Vec<&str> = in_rounds(&cases).iter().map(|c| c.name.as_str()).collect();
        assert_eq!(order.len(), cases.len());
        assert_eq!(
            order[..4],
            [
                "matmul_1000_1000",
                "vector_add_1M",
                "conv2d_32_3_224_224",
                "train_mlp_1024_samples"
            ]
        );
        assert_eq!(order[4], "matmul_2000_2000");
        assert_eq!(order.last(), Some(&"matmul_5000_5000"));
    }

    #[test]
    fn pytorch_writes_only_the_files_listed() {
        for device in [ComputeDevice::Cpu, ComputeDevice::Cuda(0)] {
            let file = torch_file(&device.to_string());
            assert!(PYTORCH_FILES.contains(&file.as_str()), "{file}");
        }
    }

    #[test]
    fn every_case_is_a_valid_job_with_a_distinct_name() {
        for quick in [true, false] {
            let cases = cases(quick);
            let names: std::collections::HashSet<_> = cases.iter().map(|c| &c.name).collect();
            assert_eq!(names.len(), cases.len());
            for c in &cases {
                let entry = kiln_kernels::find(c.kind).unwrap();
                JobSpec::new(
                    entry,
                    DeviceClass::Cpu,
                    c.params.clone(),
                    "x".into(),
                    1,
                    None,
                    Codec::Json,
                )
                .unwrap_or_else(|e| panic!("{}: {e}", c.name));
            }
        }
        assert_eq!(count(100_000_000), "100M");
        assert_eq!(count(10_000), "10K");
        assert_eq!(count(1500), "1500");
    }

    #[test]
    fn speedups_pair_cpu_and_gpu_rows_of_a_case() {
        let row = |device: &str, e2e: f64, compute: f64| OriginalRow {
            case: "matmul_1000_1000".into(),
            kind: "matmul",
            workload: MATMUL,
            size: "1000×1000".into(),
            device: device.into(),
            engine: "x".into(),
            jobs: 3,
            end_to_end_ms: e2e,
            compute_ms: compute,
            torch_ms: None,
        };
        let s = speedups(&[row("cpu", 100.0, 80.0), row("cuda:0", 10.0, 2.0)]);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].end_to_end_speedup, 10.0);
        assert_eq!(s[0].compute_speedup, 40.0);
        assert!(speedups(&[row("cpu", 1.0, 1.0)]).is_empty());
    }
}
