//! `kiln-bench suite`: every benchmark in one run, written as JSON, CSV, SVG charts and a
//! markdown report into one folder (`just bench` calls it).
//!
//! Parts, in order: kernels on every backend present (GPU vs CPU in the same run), CPU matmul
//! against numpy (`bench/scripts/numpy_reference.py`, skipped without python and numpy), GPU
//! vs CPU at the original system's sizes as jobs, end to end and compute, beside PyTorch
//! (`bench/scripts/torch_jobs.py`, skipped without torch), the pipeline against the raw
//! JetStream ceiling, communication overhead per kind and size, data
//! through the object store (a 4096² matmul by object against the raw store, a JPEG through
//! conv2d), throughput against worker processes, and the scheduler against static policies. A part
//! that fails is reported as failed and the others still run; the command then exits 1.

mod charts;
mod data;
mod kernels;
mod original;
mod overhead;
mod report;
pub(crate) mod scaling;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use clap::ValueEnum as _;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::cli::{LatencyArgs, PipelineArgs, SchedulerBenchArgs, SuiteArgs, SuitePart};
use crate::{latency, pipeline, scheduler};
use kiln_cli::cli::NatsArgs;

/// The machine the suite ran on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub os: String,
    /// The GPU used, or why none was.
    pub gpu: String,
    /// /proc/loadavg's 1-minute load when the suite started and ended (other work on the
    /// machine disturbs the figures).
    pub load_at_start: Option<f64>,
    pub load_at_end: Option<f64>,
}

/// CPU matmul against numpy, from the reference script's JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Numpy {
    /// `ran` or why not.
    pub status: String,
    pub rows: Vec<NumpyRow>,
    pub numpy: Option<String>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct NumpyRow {
    pub case: String,
    /// openblas (matmul jobs' engine where it is installed) or burn-ndarray.
    #[serde(default)]
    pub backend: Option<String>,
    pub burn_gflops: f64,
    pub numpy_gflops: f64,
    pub ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub name: &'static str,
    pub seconds: f64,
    /// Why the step failed, when it did.
    pub error: Option<String>,
}

/// Everything the suite measured (`suite.json`).
#[derive(Debug, Clone, Serialize)]
pub struct Suite {
    pub tool: &'static str,
    pub version: &'static str,
    pub mode: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: time::OffsetDateTime,
    pub seconds: f64,
    pub machine: Machine,
    pub steps: Vec<Step>,
    pub kernels: Option<kernels::Section>,
    pub numpy: Numpy,
    /// GPU vs CPU at the original system's sizes, as jobs.
    pub original: Option<original::Section>,
    pub pipeline: Option<pipeline::Report>,
    /// One tiny job at a time against the raw round trip (measured with the pipeline).
    pub latency: Option<latency::Report>,
    pub overhead: Option<overhead::Section>,
    pub data: Option<data::Section>,
    pub scaling: Option<scaling::Section>,
    pub scheduler: Option<scheduler::Report>,
    /// The files written, relative to the output folder.
    pub files: Vec<String>,
}

const STEPS: usize = 9;

pub async fn run(nats: &NatsArgs, args: SuiteArgs) -> anyhow::Result<ExitCode> {
    let mut run = SuiteRun::start(nats, &args)?;
    let want = |part: SuitePart| args.parts.contains(&part);
    if want(SuitePart::Kernels) {
        run.kernels().await;
    }
    if want(SuitePart::Numpy) {
        run.numpy();
    }
    if want(SuitePart::Original) {
        run.original().await;
    }
    if want(SuitePart::Pipeline) {
        run.pipeline().await;
    }
    if want(SuitePart::Overhead) {
        run.overhead().await;
    }
    if want(SuitePart::Data) {
        run.data().await;
    }
    if want(SuitePart::Scaling) {
        run.scaling().await;
    }
    if want(SuitePart::Scheduler) {
        run.scheduler().await;
    }
    run.write_files()?;
    let every_part = SuitePart::value_variants().iter().all(|p| want(*p));
    if let Some(readme) = args.readme.as_ref().filter(|_| every_part) {
        match update_readme(readme, &run.out, &run.suite) {
            Ok(()) => eprintln!("{} updated", readme.display()),
            Err(e) => eprintln!("{} not updated: {e:#}", readme.display()),
        }
    }
    Ok(run.finish())
}

/// One run of the suite: its settings, where it writes, and what it has measured so far.
/// Each part is a method that records its step, failed or not, and keeps its section.
struct SuiteRun<'a> {
    nats: &'a NatsArgs,
    args: &'a SuiteArgs,
    /// The output folder.
    out: PathBuf,
    quick: bool,
    started: Instant,
    suite: Suite,
}

impl<'a> SuiteRun<'a> {
    /// Create the output folder and describe the machine.
    fn start(nats: &'a NatsArgs, args: &'a SuiteArgs) -> anyhow::Result<Self> {
        let started_at = time::OffsetDateTime::now_utc();
        let started = Instant::now();
        let out = args.out.clone().unwrap_or_else(|| {
            let date = started_at.date();
            PathBuf::from(format!("bench/results/{date}"))
        });
        std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        let mode = if args.quick { "quick" } else { "default" };
        let suite = Suite {
            tool: "kiln-bench suite",
            version: env!("CARGO_PKG_VERSION"),
            mode,
            started_at,
            seconds: 0.0,
            machine: machine(),
            steps: Vec::new(),
            kernels: None,
            numpy: Numpy {
                status: "not run".into(),
                rows: Vec::new(),
                numpy: None,
            },
            original: None,
            pipeline: None,
            latency: None,
            overhead: None,
            data: None,
            scaling: None,
            scheduler: None,
            files: Vec::new(),
        };
        eprintln!("kiln-bench suite ({mode} settings) into {}", out.display());
        eprintln!("machine: {}", describe(&suite.machine));
        Ok(Self {
            nats,
            args,
            out,
            quick: args.quick,
            started,
            suite,
        })
    }

    /// Record a step that started at `timer`; returns its section when it has one.
    fn record<T>(
        &mut self,
        name: &'static str,
        timer: Instant,
        result: anyhow::Result<T>,
    ) -> Option<T> {
        self.suite.steps.push(Step {
            name,
            seconds: timer.elapsed().as_secs_f64(),
            error: result.as_ref().err().map(|e| format!("{e:#}")),
        });
        result.ok()
    }

    /// 1. Kernels, on a blocking thread; the GPU they used names the machine's.
    async fn kernels(&mut self) {
        let bar = step_bar(1, "kernels on every backend");
        let timer = Instant::now();
        let (quick, gpu, b) = (self.quick, !self.args.no_gpu, bar.clone());
        let section = tokio::task::spawn_blocking(move || kernels::measure(quick, gpu, &b)).await;
        bar.finish_and_clear();
        self.suite.kernels = self.record("kernels", timer, section.map_err(anyhow::Error::from));
        if let Some(k) = &self.suite.kernels {
            self.suite.machine.gpu = match (&k.gpu_device, &k.gpu_skipped) {
                (Some(device), _) => gpu_name(device),
                (None, Some(why)) => format!("none used: {why}"),
                (None, None) => "none".into(),
            };
            let failed = k.rows.iter().filter(|r| r.row.status == "error").count();
            if failed > 0 {
                self.suite.steps.last_mut().expect("just recorded").error =
                    Some(format!("{failed} case(s) failed; see kernels.csv"));
            }
        }
    }

    /// 2. numpy, from the CPU matmul rows.
    fn numpy(&mut self) {
        eprintln!("[2/{STEPS}] CPU matmul vs numpy");
        let timer = Instant::now();
        self.suite.numpy = match &self.suite.kernels {
            Some(k) => numpy_reference(self.args, &self.out, k),
            None => Numpy {
                status: "skipped: the kernel part failed or was left out".into(),
                rows: Vec::new(),
                numpy: None,
            },
        };
        self.record("numpy reference", timer, Ok(()));
    }

    /// 3. GPU vs CPU at the original system's sizes.
    async fn original(&mut self) {
        let bar = step_bar(3, "GPU vs CPU at the original system's sizes, as jobs");
        let timer = Instant::now();
        let torch = (self.args.python.as_str(), self.args.torch_script.as_path());
        let gpu = !self.args.no_gpu;
        let limit = self
            .args
            .original_limit_s
            .map(std::time::Duration::from_secs);
        let result =
            original::measure(self.nats, self.quick, gpu, torch, limit, &self.out, &bar).await;
        bar.finish_and_clear();
        self.suite.original = self.record("original sizes", timer, result);
    }

    /// 4. Pipeline vs the ceiling.
    async fn pipeline(&mut self) {
        let timer = Instant::now();
        step_bar(4, "pipeline vs the raw JetStream ceiling").finish_and_clear();
        let pipeline_args = PipelineArgs {
            jobs: if self.quick { 500 } else { 20_000 },
            len: 1024,
            runs: if self.quick { 1 } else { 5 },
            json: None,
            external: false,
            varz: None,
            server_pid: None,
        };
        let result = pipeline::measure_pipeline(self.nats, &pipeline_args, false).await;
        self.suite.pipeline = self.record("pipeline", timer, result);
        let timer = Instant::now();
        let latency_args = LatencyArgs {
            jobs: if self.quick { 100 } else { 2000 },
            warmup: if self.quick { 20 } else { 200 },
            json: None,
            external: false,
        };
        let result = latency::measure_latency(self.nats, &latency_args, false).await;
        self.suite.latency = self.record("latency, one job at a time", timer, result);
    }

    /// 5. Communication overhead.
    async fn overhead(&mut self) {
        let bar = step_bar(5, "communication overhead per kind and size");
        let timer = Instant::now();
        let result = overhead::measure(self.nats, self.quick, &bar).await;
        bar.finish_and_clear();
        self.suite.overhead = self.record("overhead", timer, result);
    }

    /// 6. Data through the object store.
    async fn data(&mut self) {
        let bar = step_bar(6, "data through the object store");
        let timer = Instant::now();
        let result = data::measure(self.nats, self.quick, &bar).await;
        bar.finish_and_clear();
        self.suite.data = self.record("data", timer, result);
    }

    /// 7. Scaling with worker processes.
    async fn scaling(&mut self) {
        let bar = step_bar(7, "throughput against worker processes");
        let timer = Instant::now();
        let result = scaling::measure(self.nats, self.quick, &self.args.workers, &bar).await;
        bar.finish_and_clear();
        self.suite.scaling = self.record("scaling", timer, result);
    }

    /// 8. Scheduler vs static policies.
    async fn scheduler(&mut self) {
        step_bar(8, "scheduler vs always-GPU and always-CPU").finish_and_clear();
        let timer = Instant::now();
        let scheduler_args = SchedulerBenchArgs {
            small: if self.quick { 60 } else { 400 },
            large: if self.quick { 6 } else { 60 },
            gpu_overhead_ms: 2.0,
            cpu_slowdown: 8.0,
            json: None,
        };
        let result = scheduler::measure(self.nats, &scheduler_args, false).await;
        self.suite.scheduler = self.record("scheduler", timer, result);
    }

    /// 9. Files.
    fn write_files(&mut self) -> anyhow::Result<()> {
        eprintln!("[9/{STEPS}] writing JSON, CSV, charts and report.md");
        self.suite.machine.load_at_end = load_average();
        self.suite.seconds = self.started.elapsed().as_secs_f64();
        let timer = Instant::now();
        let written = write_all(&self.out, &mut self.suite);
        self.record("files", timer, written);
        // Rewrite the JSON and the report with the last step's time in them.
        crate::write_json(&self.out.join("suite.json"), &self.suite)?;
        std::fs::write(self.out.join("report.md"), report::markdown(&self.suite))
            .with_context(|| format!("writing {}", self.out.join("report.md").display()))
    }

    /// Print the summary and the steps that failed; fails when one did.
    fn finish(&self) -> ExitCode {
        println!("{}", report::summary(&self.suite));
        println!(
            "report: {} ({:.0} s in all)",
            self.out.join("report.md").display(),
            self.suite.seconds
        );
        let failed: Vec<String> = self
            .suite
            .steps
            .iter()
            .filter_map(|s| s.error.as_ref().map(|e| format!("{}: {e}", s.name)))
            .collect();
        for f in &failed {
            eprintln!("failed: {f}");
        }
        if failed.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

fn step_bar(n: usize, what: &str) -> ProgressBar {
    eprintln!("[{n}/{STEPS}] {what}");
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("  [{bar:40}] {pos}/{len} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

/// Write every file; the names go into `suite.files`.
fn write_all(out: &Path, suite: &mut Suite) -> anyhow::Result<()> {
    let mut files = vec!["suite.json".to_owned(), "report.md".to_owned()];
    if suite.numpy.status == "ran" {
        for name in ["burn-cpu-matmul.json", "cpu-matmul.json", "cpu-matmul.md"] {
            files.push(name.to_owned());
        }
    }
    if suite.original.is_some() {
        // PyTorch's side of the original sizes: the cases it was given, its figures per device.
        for name in original::PYTORCH_FILES {
            if out.join(name).is_file() {
                files.push(name.to_owned());
            }
        }
    }
    let mut put = |name: &str, bytes: Vec<u8>| -> anyhow::Result<()> {
        let path = out.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        files.push(name.to_owned());
        Ok(())
    };
    if let Some(k) = &suite.kernels {
        put(
            "kernels.csv",
            csv_bytes(k.rows.iter().map(kernels::CsvRow::from))?,
        )?;
        put("kernels.svg", charts::kernels(&k.rows)?.into_bytes())?;
        if !k.speedups.is_empty() {
            put("speedup.csv", csv_bytes(k.speedups.iter())?)?;
            put("speedup.svg", charts::speedup(&k.speedups)?.into_bytes())?;
        }
    }
    if let Some(o) = &suite.original {
        put("original.csv", csv_bytes(o.rows.iter())?)?;
        put("original.svg", charts::original(&o.rows)?.into_bytes())?;
        if !o.speedups.is_empty() {
            put("original-speedup.csv", csv_bytes(o.speedups.iter())?)?;
            let chart = charts::original_speedup(&o.speedups)?;
            put("original-speedup.svg", chart.into_bytes())?;
        }
    }
    if let Some(p) = &suite.pipeline {
        put("pipeline.json", serde_json::to_vec_pretty(p)?)?;
        put(
            "pipeline.csv",
            csv_bytes(p.runs.iter().map(pipeline::Run::row))?,
        )?;
        put("pipeline.svg", charts::pipeline(p)?.into_bytes())?;
    }
    if let Some(o) = &suite.overhead {
        put("overhead.csv", csv_bytes(o.rows.iter())?)?;
        put("overhead.svg", charts::overhead(&o.rows)?.into_bytes())?;
    }
    if let Some(d) = &suite.data {
        put("data.csv", csv_bytes(d.csv_rows())?)?;
        put("data.svg", charts::data(d)?.into_bytes())?;
    }
    if let Some(s) = &suite.scaling {
        put("scaling.csv", csv_bytes(s.rows.iter())?)?;
        put(
            "scaling.svg",
            charts::scaling(&s.rows, s.cores)?.into_bytes(),
        )?;
    }
    if let Some(s) = &suite.scheduler {
        put("scheduler.json", serde_json::to_vec_pretty(s)?)?;
        put("scheduler.csv", csv_bytes(s.runs.iter())?)?;
        put("scheduler.svg", scheduler::chart(&s.runs).into_bytes())?;
    }
    files.sort();
    suite.files = files;
    Ok(())
}

/// Put the run's headline tables and charts into `readme` between its markers.
fn update_readme(readme: &Path, out: &Path, suite: &Suite) -> anyhow::Result<()> {
    anyhow::ensure!(
        suite.mode != "quick",
        "quick figures are a smoke run, not figures to show"
    );
    let text = std::fs::read_to_string(readme)?;
    // Links from the file's folder to the report's (e.g. `../bench/results/<date>/` from docs/).
    let root = readme
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let base = match (root.canonicalize(), out.canonicalize()) {
        (Ok(from), Ok(to)) => format!("{}/", relative(&from, &to).display()),
        _ => format!("{}/", out.display()),
    };
    let section = report::readme_section(suite, &base);
    let text = report::splice(&text, &section).with_context(|| {
        format!(
            "it has no {} … {} markers",
            report::README_START,
            report::README_END
        )
    })?;
    std::fs::write(readme, text)?;
    Ok(())
}

/// The path from folder `from` to `to`, both absolute.
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut path = PathBuf::new();
    for _ in common..from.len() {
        path.push("..");
    }
    for c in &to[common..] {
        path.push(c);
    }
    path
}

fn csv_bytes<T: Serialize>(rows: impl IntoIterator<Item = T>) -> anyhow::Result<Vec<u8>> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for row in rows {
        writer.serialize(row)?;
    }
    writer.into_inner().context("finishing a CSV file")
}

/// Write the CPU matmul rows where `bench/scripts/numpy_reference.py` reads them, run it, and read
/// its figures back. Missing python, numpy or script: skipped, with the reason.
fn numpy_reference(args: &SuiteArgs, out: &Path, k: &kernels::Section) -> Numpy {
    let skipped = |why: String| Numpy {
        status: format!("skipped: {why}"),
        rows: Vec::new(),
        numpy: None,
    };
    if !args.numpy_script.is_file() {
        return skipped(format!(
            "{} not found (run from the repository root)",
            args.numpy_script.display()
        ));
    }
    let rows: Vec<_> = k
        .rows
        .iter()
        .filter(|r| r.row.device == "cpu" && r.row.family == "matmul")
        .map(|r| r.row.clone())
        .collect();
    let burn = out.join("burn-cpu-matmul.json");
    let body = serde_json::json!({
        "tool": "kiln-bench suite",
        "machine": crate::machine::describe_machine(),
        "device": "cpu",
        "backend": "kiln (per row)",
        "settings": k.cpu_settings,
        "rows": rows,
    });
    if let Err(e) = crate::write_json(&burn, &body) {
        return skipped(format!("{e:#}"));
    }
    let output = std::process::Command::new(&args.python)
        .arg(&args.numpy_script)
        .arg("--burn")
        .arg(&burn)
        .arg("--out")
        .arg(out)
        .output();
    match output {
        Err(e) => skipped(format!("could not run {}: {e}", args.python)),
        Ok(o) if !o.status.success() => skipped(format!(
            "{} exited with {}: {}",
            args.numpy_script.display(),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(_) => {
            #[derive(serde::Deserialize)]
            struct Figures {
                numpy: Option<String>,
                rows: Vec<NumpyRow>,
            }
            let path = out.join("cpu-matmul.json");
            match std::fs::read(&path)
                .map_err(anyhow::Error::from)
                .and_then(|b| Ok(serde_json::from_slice::<Figures>(&b)?))
            {
                Ok(f) => Numpy {
                    status: "ran".into(),
                    rows: f.rows,
                    numpy: f.numpy,
                },
                Err(e) => skipped(format!("reading {}: {e:#}", path.display())),
            }
        }
    }
}

fn machine() -> Machine {
    let cpu = crate::machine::cpu_model();
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / (1024.0 * 1024.0));
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_gib,
        os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
        gpu: "not checked".into(),
        load_at_start: load_average(),
        load_at_end: None,
    }
}

fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The GPU's name, driver and memory from nvidia-smi, when it is there.
fn gpu_name(device: &str) -> String {
    let index = device
        .strip_prefix("cuda:")
        .and_then(|i| i.parse().ok())
        .unwrap_or(0);
    match crate::kernels::gpu_description(index) {
        Some(gpu) => format!("{device}: {gpu}"),
        None => format!("{device} (not described: no nvidia-smi)"),
    }
}

fn describe(m: &Machine) -> String {
    format!(
        "{}, {} cores, {:.1} GiB, {}; GPU: {}",
        m.cpu, m.cores, m.memory_gib, m.os, m.gpu
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_links_are_relative_to_the_file_they_go_into() {
        let rel = |a: &str, b: &str| relative(Path::new(a), Path::new(b));
        assert_eq!(
            rel("/r", "/r/bench/results/d"),
            Path::new("bench/results/d")
        );
        assert_eq!(
            rel("/r/docs", "/r/bench/results/d"),
            Path::new("../bench/results/d")
        );
        assert_eq!(rel("/r/a/b", "/r/c"), Path::new("../../c"));
    }
}
