//! `kiln-bench kernels`: device-side timings of the kernels behind the job kinds, printed as a
//! table and written as JSON in the row format `bench/scripts/torch_reference.py` also writes, so
//! that its `--compare` mode can put burn and PyTorch side by side.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use kiln_bench::timing::{self as bench, Profile, Row, Settings};
use kiln_kernels::{ComputeDevice, Engines};
use serde::Serialize;

use crate::cli::KernelsArgs;
use kiln_cli::cmd::worker::parse_device;

#[derive(Debug, Serialize)]
struct Report<'a> {
    tool: &'static str,
    machine: String,
    device: String,
    backend: &'static str,
    profile: &'static str,
    settings: Settings,
    rows: &'a [Row],
}

pub fn run(args: KernelsArgs) -> anyhow::Result<ExitCode> {
    let device = parse_device(&args.device)?;
    anyhow::ensure!(
        args.case_budget_s.is_finite() && args.case_budget_s >= 0.0,
        "--case-budget-s must be a number of seconds >= 0, got {}",
        args.case_budget_s
    );
    let gpu = matches!(device, ComputeDevice::Cuda(_));
    if gpu {
        use_cache_dir(&args);
    }
    let (profile, profile_name, settings) = profile(&args, gpu);
    let cases: Vec<_> = bench::cases(profile)
        .into_iter()
        .filter(|c| args.filter.as_deref().is_none_or(|f| c.name.contains(f)))
        .collect();
    anyhow::ensure!(
        !cases.is_empty(),
        "no case name contains {:?}; try matmul, vector_add, conv2d, train or bf16",
        args.filter.as_deref().unwrap_or_default()
    );
    let machine = describe_machine(&device);
    if let Some(path) = &args.json
        && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    eprintln!("machine: {machine}");
    eprintln!(
        "{} case(s) on {device} ({profile_name} sizes), warm-up {} and up to {} timed iteration(s) each",
        cases.len(),
        settings.warmup,
        settings.iters
    );

    let backend = bench::backend_name(&device);
    let mut rows: Vec<Row> = Vec::with_capacity(cases.len());
    let mut write_error = None;
    for (i, case) in cases.iter().enumerate() {
        eprint!("[{}/{}] {} ... ", i + 1, cases.len(), case.name);
        let _ = std::io::stderr().flush();
        let started = std::time::Instant::now();
        let row = bench::run_case(&device, Engines::default(), case, &settings);
        eprintln!(
            "{} ({:.1} s)",
            summary(&row),
            started.elapsed().as_secs_f64()
        );
        rows.push(row);
        if let Some(path) = &args.json {
            let report = Report {
                tool: "kiln-bench kernels",
                machine: machine.clone(),
                device: device.to_string(),
                backend,
                profile: profile_name,
                settings,
                rows: &rows,
            };
            if let Err(e) = crate::write_json(path, &report) {
                write_error = Some(e);
            }
        }
    }
    finish(&rows, write_error, args.json.as_deref())
}

/// On CUDA: keep autotune results and compiled kernels in `--cache-dir` (default: the one
/// workers share); a failure is said and the run goes on.
fn use_cache_dir(args: &KernelsArgs) {
    let dir = args
        .cache_dir
        .clone()
        .unwrap_or_else(kiln_kernels::default_cache_dir);
    if let Err(e) = kiln_kernels::use_cache_dir(&dir) {
        eprintln!("bench: {e}");
    }
}

/// The sizes to run (`--quick`'s, else the device's), their name, and the iterations.
fn profile(args: &KernelsArgs, gpu: bool) -> (Profile, &'static str, Settings) {
    let (profile, profile_name) = match (args.quick, gpu) {
        (true, _) => (Profile::Quick, "quick"),
        (false, true) => (Profile::Gpu, "gpu"),
        (false, false) => (Profile::Cpu, "cpu"),
    };
    let settings = Settings {
        warmup: args.warmup.unwrap_or(if gpu { 3 } else { 1 }),
        iters: args
            .iters
            .unwrap_or(match profile {
                Profile::Gpu => 20,
                Profile::Cpu => 5,
                Profile::Quick => 3,
            })
            .max(1),
        case_budget_s: args.case_budget_s,
    };
    (profile, profile_name, settings)
}

/// Print the table and where the rows were written. Fails when writing them did; exit
/// status 1 when a case failed.
fn finish(
    rows: &[Row],
    write_error: Option<anyhow::Error>,
    json: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    println!();
    print!("{}", table(rows));
    if let Some(path) = json {
        if let Some(e) = write_error {
            return Err(e);
        }
        println!("rows written to {}", path.display());
    }
    let failed = rows.iter().filter(|r| r.status == "error").count();
    if failed > 0 {
        eprintln!("{failed} case(s) failed; see the error column");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The headline of a row, or why it has none.
fn summary(row: &Row) -> String {
    match (row.status.as_str(), row.value, row.median_s) {
        ("ok", Some(value), Some(median)) => format!(
            "{} {}, median {}",
            significant(value),
            row.metric,
            human_seconds(median)
        ),
        _ => format!(
            "{}: {}",
            row.status,
            row.error.as_deref().unwrap_or("no figure")
        ),
    }
}

fn table(rows: &[Row]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<40} {:<5} {:>6} {:>11} {:>11} {:>12} {:<8} {:>10} {:>10}",
        "case", "dtype", "iters", "median", "mean", "value", "unit", "TFLOP/s", "GB/s"
    );
    let num = |v: Option<f64>| v.map_or_else(|| "-".into(), significant);
    for row in rows {
        if row.status != "ok" {
            let _ = writeln!(
                out,
                "{:<40} {:<5} {}: {}",
                row.case,
                row.dtype,
                row.status,
                row.error.as_deref().unwrap_or("no figure")
            );
            continue;
        }
        let _ = writeln!(
            out,
            "{:<40} {:<5} {:>6} {:>11} {:>11} {:>12} {:<8} {:>10} {:>10}",
            row.case,
            row.dtype,
            row.iterations,
            row.median_s.map_or_else(|| "-".into(), human_seconds),
            row.mean_s.map_or_else(|| "-".into(), human_seconds),
            num(row.value),
            row.metric,
            num(row.tflops),
            num(row.gbps),
        );
    }
    out
}

/// Four significant digits, without switching to exponents for the usual range.
fn significant(v: f64) -> String {
    let decimals = if v == 0.0 || !v.is_finite() {
        0
    } else {
        (3 - v.abs().log10().floor() as i32).clamp(0, 9) as usize
    };
    format!("{v:.decimals$}")
}

fn human_seconds(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 1e-3 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{:.2} us", s * 1e6)
    }
}

/// A GPU's name, driver and memory from nvidia-smi, when it is there.
pub(crate) fn gpu_description(index: usize) -> Option<String> {
    std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,driver_version,memory.total",
            "--format=csv,noheader",
            &format!("--id={index}"),
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// CPU model and cores; on CUDA, the GPU's name, driver and memory from nvidia-smi when it
/// is there.
fn describe_machine(device: &ComputeDevice) -> String {
    let mut machine = crate::machine::describe_machine();
    if let ComputeDevice::Cuda(index) = device {
        let gpu =
            gpu_description(*index).unwrap_or_else(|| "GPU not described (no nvidia-smi)".into());
        machine.push_str(&format!("; cuda:{index}: {gpu}"));
    }
    machine
}
