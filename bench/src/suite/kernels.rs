//! The kernel part of the suite: every kind at several sizes on each backend present, and the
//! GPU-vs-CPU table in the original system's form (workload, size, CPU time, GPU time,
//! speedup), both sides measured in this run.

use indicatif::ProgressBar;
use kiln_bench::timing::{self as bench, Case, Row, Settings};
use kiln_kernels::{ComputeDevice, Dtype, Engines};
use serde::Serialize;

/// One case: the job kind it stands for, the workload's name in the speedup table, the size
/// in words, and the benchmark case.
pub struct SuiteCase {
    pub kind: &'static str,
    pub workload: &'static str,
    pub size: String,
    pub case: Case,
}

/// A measured case on one backend.
#[derive(Debug, Clone, Serialize)]
pub struct KernelRow {
    pub kind: &'static str,
    pub workload: &'static str,
    pub size: String,
    pub row: Row,
}

/// CPU time against GPU time for one case; `speedup` = CPU time / GPU time.
#[derive(Debug, Clone, Serialize)]
pub struct Speedup {
    pub workload: &'static str,
    pub kind: &'static str,
    pub size: String,
    pub case: String,
    pub cpu_ms: f64,
    pub gpu_ms: f64,
    pub speedup: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Section {
    pub cpu_settings: Settings,
    /// Where CUDA was used: the device and its settings.
    pub gpu_settings: Option<Settings>,
    pub gpu_device: Option<String>,
    /// Why there is no GPU side, when there is none.
    pub gpu_skipped: Option<String>,
    pub rows: Vec<KernelRow>,
    pub speedups: Vec<Speedup>,
}

pub const MATMUL: &str = "matrix multiplication";
pub const TRAINING: &str = "neural network training";
pub const IMAGE: &str = "image processing (conv2d)";
pub const VECTOR: &str = "vector addition";
/// The table's rows in the original system's order.
pub const WORKLOADS: [&str; 4] = [MATMUL, TRAINING, IMAGE, VECTOR];

/// The suite's cases: several sizes of every kind, cheapest first.
pub fn cases(quick: bool) -> Vec<SuiteCase> {
    [
        matmul_cases(quick),
        training_cases(quick),
        image_cases(quick),
        vector_cases(quick),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn matmul_cases(quick: bool) -> Vec<SuiteCase> {
    let sizes: &[usize] = if quick {
        &[64, 128]
    } else {
        &[256, 512, 1024, 2048]
    };
    let blas = sizes.iter().map(|&n| SuiteCase {
        kind: "matmul",
        workload: MATMUL,
        size: format!("{n}×{n} f32"),
        case: Case::matmul(n, Dtype::F32),
    });
    // The same products on Burn's kernels, for reference where matmul jobs run on a BLAS.
    let burn = sizes.iter().map(|&n| SuiteCase {
        kind: "matmul",
        workload: MATMUL,
        size: format!("{n}×{n} f32, Burn's kernels"),
        case: Case::matmul_burn(n, Dtype::F32),
    });
    blas.chain(burn).collect()
}

fn training_cases(quick: bool) -> Vec<SuiteCase> {
    let (features, hidden, classes, batches): (usize, &[usize], usize, &[usize]) = if quick {
        (16, &[32, 32], 4, &[32, 128])
    } else {
        (
            bench::MLP_FEATURES,
            &bench::MLP_HIDDEN,
            bench::MLP_CLASSES,
            &[64, 512, 2048],
        )
    };
    let widths: Vec<String> = std::iter::once(features)
        .chain(hidden.iter().copied())
        .chain(std::iter::once(classes))
        .map(|w| w.to_string())
        .collect();
    batches
        .iter()
        .map(|&batch| SuiteCase {
            kind: "train_mlp",
            workload: TRAINING,
            size: format!("batch {batch}, Adam step of MLP {}", widths.join("-")),
            case: Case::train_step(batch, features, hidden, classes),
        })
        .collect()
}

fn image_cases(quick: bool) -> Vec<SuiteCase> {
    let convs: &[([usize; 4], usize)] = if quick {
        &[([1, 3, 32, 32], 3), ([1, 8, 16, 16], 8)]
    } else {
        &[
            ([1, 3, 512, 512], 3),
            ([16, 3, 512, 512], 3),
            ([4, 64, 112, 112], 64),
        ]
    };
    convs
        .iter()
        .map(|&(shape @ [b, c, h, w], out_channels)| SuiteCase {
            kind: "conv2d",
            workload: IMAGE,
            size: format!("{b}×{c}×{h}×{w}→{out_channels}, 3×3 filter"),
            case: Case::conv2d(shape, out_channels, Dtype::F32),
        })
        .collect()
}

/// One small job's round trip, then long vectors.
fn vector_cases(quick: bool) -> Vec<SuiteCase> {
    let lens: &[usize] = if quick {
        &[1 << 12, 1 << 16]
    } else {
        &[1 << 16, 1 << 20, 16 << 20]
    };
    let small = SuiteCase {
        kind: "vector_add",
        workload: VECTOR,
        size: format!("{} (one job: upload, add, read back)", bench::SMALL_LEN),
        case: Case::small_vector_add(bench::SMALL_LEN, false),
    };
    std::iter::once(small)
        .chain(lens.iter().map(|&len| SuiteCase {
            kind: "vector_add",
            workload: VECTOR,
            size: count_words(len),
            case: Case::vector_add(len, false),
        }))
        .collect()
}

/// `16M elements` for 16·2²⁰.
fn count_words(len: usize) -> String {
    if len >= 1 << 20 && len.is_multiple_of(1 << 20) {
        format!("{}M elements", len >> 20)
    } else if len >= 1 << 10 && len.is_multiple_of(1 << 10) {
        format!("{}K elements", len >> 10)
    } else {
        format!("{len} elements")
    }
}

pub fn cpu_settings(quick: bool) -> Settings {
    if quick {
        Settings {
            warmup: 1,
            iters: 3,
            case_budget_s: 0.5,
        }
    } else {
        Settings {
            warmup: 2,
            iters: 10,
            case_budget_s: 3.0,
        }
    }
}

pub fn gpu_settings(quick: bool) -> Settings {
    Settings {
        warmup: 3,
        iters: if quick { 5 } else { 20 },
        case_budget_s: 3.0,
    }
}

/// Run every case on the CPU, then on CUDA device 0 when there is one (and `gpu` allows),
/// one progress tick per case. Blocking: call from a blocking thread.
pub fn measure(quick: bool, gpu: bool, bar: &ProgressBar) -> Section {
    let cases = cases(quick);
    let cuda = cuda_device(gpu);
    let mut devices = vec![(ComputeDevice::Cpu, cpu_settings(quick))];
    if let Ok(device) = &cuda {
        devices.push((device.clone(), gpu_settings(quick)));
    }
    bar.set_length((cases.len() * devices.len()) as u64);
    let mut rows = Vec::new();
    for (device, settings) in &devices {
        for case in &cases {
            bar.set_message(format!("{device} {}", case.case.name));
            let row = bench::run_case(device, Engines::default(), &case.case, settings);
            rows.push(KernelRow {
                kind: case.kind,
                workload: case.workload,
                size: case.size.clone(),
                row,
            });
            bar.inc(1);
        }
    }
    let speedups = speedups(&rows);
    Section {
        cpu_settings: cpu_settings(quick),
        gpu_settings: cuda.as_ref().ok().map(|_| gpu_settings(quick)),
        gpu_device: cuda.as_ref().ok().map(|d| d.to_string()),
        gpu_skipped: cuda.err(),
        rows,
        speedups,
    }
}

/// The GPU a part measures: CUDA device 0 where there is one and `gpu` allows, or why none.
pub(super) fn cuda_device(gpu: bool) -> Result<ComputeDevice, String> {
    if !gpu {
        Err("left out with --no-gpu".to_owned())
    } else if kiln_kernels::cuda_device_count() == 0 {
        Err("no CUDA device on this machine".to_owned())
    } else {
        Ok(ComputeDevice::Cuda(0))
    }
}

/// Pair every CPU row with the GPU row of the same case, where both measured.
pub fn speedups(rows: &[KernelRow]) -> Vec<Speedup> {
    let ok_ms = |r: &KernelRow| {
        (r.row.status == "ok")
            .then_some(r.row.median_s)
            .flatten()
            .map(|s| s * 1e3)
    };
    rows.iter()
        .filter(|r| r.row.device == "cpu")
        .filter_map(|cpu| {
            let gpu = rows
                .iter()
                .find(|g| g.row.device != "cpu" && g.row.case == cpu.row.case)?;
            let (cpu_ms, gpu_ms) = (ok_ms(cpu)?, ok_ms(gpu)?);
            Some(Speedup {
                workload: cpu.workload,
                kind: cpu.kind,
                size: cpu.size.clone(),
                case: cpu.row.case.clone(),
                cpu_ms,
                gpu_ms,
                speedup: cpu_ms / gpu_ms,
            })
        })
        .collect()
}

/// A flat CSV record of a row.
#[derive(Debug, Serialize)]
pub struct CsvRow<'a> {
    pub kind: &'a str,
    pub workload: &'a str,
    pub size: &'a str,
    pub case: &'a str,
    pub backend: &'a str,
    pub device: &'a str,
    pub dtype: &'a str,
    pub iterations: u32,
    pub median_ms: Option<f64>,
    pub mean_ms: Option<f64>,
    pub min_ms: Option<f64>,
    pub value: Option<f64>,
    pub metric: &'a str,
    pub status: &'a str,
    pub error: Option<&'a str>,
}

impl<'a> From<&'a KernelRow> for CsvRow<'a> {
    fn from(r: &'a KernelRow) -> Self {
        let ms = |s: Option<f64>| s.map(|s| s * 1e3);
        CsvRow {
            kind: r.kind,
            workload: r.workload,
            size: &r.size,
            case: &r.row.case,
            backend: &r.row.backend,
            device: &r.row.device,
            dtype: &r.row.dtype,
            iterations: r.row.iterations,
            median_ms: ms(r.row.median_s),
            mean_ms: ms(r.row.mean_s),
            min_ms: ms(r.row.min_s),
            value: r.row.value,
            metric: &r.row.metric,
            status: &r.row.status,
            error: r.row.error.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_at_several_sizes() {
        for quick in [true, false] {
            let cases = cases(quick);
            for kind in ["matmul", "train_mlp", "conv2d", "vector_add"] {
                let sizes = cases.iter().filter(|c| c.kind == kind).count();
                assert!(sizes >= 2, "{kind}: {sizes} size(s)");
            }
            let names: std::collections::HashSet<_> =
                cases.iter().map(|c| c.case.name.clone()).collect();
            assert_eq!(names.len(), cases.len(), "case names are distinct");
        }
    }

    #[test]
    fn speedup_pairs_the_same_case() {
        let case = Case::matmul(8, Dtype::F32);
        let row = |device: &str, median: f64| KernelRow {
            kind: "matmul",
            workload: MATMUL,
            size: "8×8".into(),
            row: Row {
                case: case.name.clone(),
                family: "matmul".into(),
                backend: "b".into(),
                device: device.into(),
                dtype: "f32".into(),
                shape: String::new(),
                warmup: 0,
                iterations: 3,
                median_s: Some(median),
                mean_s: Some(median),
                min_s: Some(median),
                flops: None,
                bytes: None,
                tflops: None,
                gbps: None,
                metric: "TFLOP/s".into(),
                value: None,
                status: "ok".into(),
                error: None,
                note: None,
            },
        };
        let s = speedups(&[row("cpu", 0.010), row("cuda:0", 0.002)]);
        assert_eq!(s.len(), 1);
        assert!((s[0].speedup - 5.0).abs() < 1e-9);
        assert!((s[0].cpu_ms - 10.0).abs() < 1e-9);
        assert!(speedups(&[row("cpu", 0.010)]).is_empty());
    }
}
