//! Running a case: where it runs (a vendor library as jobs of its kind do, or Burn), the
//! sampling loop, and the row it gives.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use burn::tensor::backend::Backend;
use kiln_kernels::cpu::depthwise;
use kiln_kernels::vendor::openblas;
use kiln_kernels::{
    ComputeDevice, ConvEngine, CpuBackend, CudaBackend, Dtype, Engines, MatmulEngine,
};
use serde::{Deserialize, Serialize};

use super::MIN_ITERS;
use super::case::{Case, Work};
use super::measure::{measure, measure_blas, measure_cublas_add, measure_cudnn, measure_direct};

/// How long to measure each case.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Untimed iterations first (JIT compilation, autotune, caches).
    pub warmup: u32,
    /// Timed iterations (at most; see `case_budget_s`). The small vector add runs
    /// [`SMALL_ITERS_FACTOR`](super::SMALL_ITERS_FACTOR) times as many.
    pub iters: u32,
    /// Seconds of timed iterations after which a case stops early (after at least
    /// [`MIN_ITERS`] iterations).
    pub case_budget_s: f64,
}

/// One measured (or failed, or skipped) case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The join key with the PyTorch reference.
    pub case: String,
    /// matmul, vector_add, conv2d, train_mlp_step, small_vector_add.
    pub family: String,
    /// burn-cuda, burn-ndarray (torch-cuda in the reference).
    pub backend: String,
    /// cuda:0, cpu.
    pub device: String,
    /// The dtype the output really had (checked on the tensor), else the one asked for.
    pub dtype: String,
    /// The sizes, in words ([`Case::shape`]).
    pub shape: String,
    /// Untimed iterations run first.
    pub warmup: u32,
    /// Timed iterations that ran.
    pub iterations: u32,
    /// Median seconds per iteration (`None` unless the status is ok).
    pub median_s: Option<f64>,
    /// Mean seconds per iteration (`None` unless the status is ok).
    pub mean_s: Option<f64>,
    /// Fewest seconds an iteration took (`None` unless the status is ok).
    pub min_s: Option<f64>,
    /// Work of one iteration.
    pub flops: Option<f64>,
    /// Bytes one iteration reads and writes (element-wise cases only).
    pub bytes: Option<f64>,
    /// From the median.
    pub tflops: Option<f64>,
    /// From the median.
    pub gbps: Option<f64>,
    /// The headline unit: TFLOP/s, GB/s, ms/step, us/job.
    pub metric: String,
    /// The headline value, from the median.
    pub value: Option<f64>,
    /// ok, error or skipped.
    pub status: String,
    /// Why the case failed or was skipped.
    pub error: Option<String>,
    /// How the case really ran, where it matters: the library and compute mode used, or that
    /// Burn may run f32 on tensor cores.
    pub note: Option<String>,
}

impl Row {
    fn empty(case: &Case, backend: &str, device: &ComputeDevice, settings: &Settings) -> Self {
        Row {
            case: case.name.clone(),
            family: case.family().into(),
            backend: backend.into(),
            device: device.to_string(),
            dtype: case.dtype().as_str().into(),
            shape: case.shape(),
            warmup: settings.warmup,
            iterations: 0,
            median_s: None,
            mean_s: None,
            min_s: None,
            flops: case.flops(),
            bytes: case.bytes(),
            tflops: None,
            gbps: None,
            metric: case.metric().into(),
            value: None,
            status: "error".into(),
            error: None,
            note: None,
        }
    }
}

/// The name of the burn backend that runs on `device`.
pub fn backend_name(device: &ComputeDevice) -> &'static str {
    kiln_kernels::burn_engine(matches!(device, ComputeDevice::Cuda(_)))
}

/// Run one case on `device`, its cases without `_burn` on `engines` as jobs of their kind run
/// there. Never panics: failures become error rows, bf16 on the CPU a skipped row. Touching a
/// CUDA device needs CUDA (check [`kiln_kernels::cuda_device_count`] first).
pub fn run_case(device: &ComputeDevice, engines: Engines, case: &Case, settings: &Settings) -> Row {
    let backend = backend_name(device);
    let mut row = Row::empty(case, backend, device, settings);
    if *device == ComputeDevice::Cpu && case.dtype() != Dtype::F32 {
        row.status = "skipped".into();
        row.error = Some(format!("{} needs a GPU", case.dtype().as_str()));
        return row;
    }
    let vendor = Vendor::of(device, engines, &case.work);
    if let Some(vendor) = vendor {
        row.backend = vendor.name().into();
    }
    let settings = Settings {
        warmup: settings.warmup,
        iters: settings.iters.max(1),
        case_budget_s: settings.case_budget_s,
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| match (device, vendor) {
        (_, Some(Vendor::Cublas(index))) => match case.work {
            Work::Matmul { .. } => measure_blas(Some(index), case, &settings),
            _ => measure_cublas_add(index, case, &settings),
        },
        (_, Some(Vendor::Openblas)) => measure_blas(None, case, &settings),
        (_, Some(Vendor::Cudnn(index))) => measure_cudnn(index, case, &settings),
        (_, Some(Vendor::Direct)) => measure_direct(case, &settings),
        (ComputeDevice::Cpu, None) => measure::<CpuBackend>(&Default::default(), case, &settings),
        (ComputeDevice::Cuda(index), None) => measure::<CudaBackend>(
            &burn::backend::cuda::CudaDevice::new(*index),
            case,
            &settings,
        ),
    }));
    let outcome = match outcome {
        Ok(result) => result,
        Err(panic) => Err(format!("panicked: {}", panic_message(panic.as_ref()))),
    };
    match outcome {
        Ok(measured) => {
            // Burn's f32 products and convolutions on CUDA may use tensor cores.
            let burn_f32_on_gpu = vendor.is_none()
                && matches!(device, ComputeDevice::Cuda(_))
                && matches!(case.work, Work::Matmul { .. } | Work::Conv2d { .. })
                && matches!(case.dtype(), Dtype::F32 | Dtype::Tf32);
            row.fill(case, measured, burn_f32_on_gpu);
        }
        // Backend panics can carry pages of context; a row keeps the start.
        Err(error) => row.error = Some(error.chars().take(500).collect()),
    }
    row
}

impl Row {
    /// The row of a case that ran, from what it `measured`.
    fn fill(&mut self, case: &Case, measured: Measured, burn_f32_on_gpu: bool) {
        let stats = Stats::of(&measured.samples);
        self.iterations = measured.samples.len() as u32;
        self.dtype = measured.dtype;
        self.note = measured.note;
        if burn_f32_on_gpu {
            self.note = Some(
                "f32 tensors; burn may run them on tensor cores at TF32-like precision".into(),
            );
        }
        self.median_s = Some(stats.median);
        self.mean_s = Some(stats.mean);
        self.min_s = Some(stats.min);
        self.tflops = case.flops().map(|f| f / stats.median / 1e12);
        self.gbps = case.bytes().map(|b| b / stats.median / 1e9);
        self.value = case.value(stats.median);
        self.status = "ok".into();
    }
}

/// The vendor library a case runs on instead of Burn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vendor {
    Cublas(usize),
    Openblas,
    Cudnn(usize),
    /// conv2d jobs' depthwise loop on the CPU.
    Direct,
}

impl Vendor {
    /// Where a case runs on `device` with `engines`: cases without `_burn` run where jobs of
    /// their kind run (matmul on the device's BLAS, vector adds on cuBLAS on CUDA, conv2d on
    /// cuDNN on CUDA and depthwise f32 ones on the direct loop on the CPU), else on Burn (None).
    fn of(device: &ComputeDevice, engines: Engines, work: &Work) -> Option<Vendor> {
        let blas = engines.matmul == MatmulEngine::Blas;
        let native = engines.conv == ConvEngine::Native;
        match (work, device) {
            (
                Work::Matmul { burn: false, .. }
                | Work::VectorAdd { burn: false, .. }
                | Work::SmallVectorAdd { burn: false, .. },
                ComputeDevice::Cuda(index),
            ) if blas => Some(Vendor::Cublas(*index)),
            (Work::Matmul { burn: false, .. }, ComputeDevice::Cpu)
                if blas && openblas::available() =>
            {
                Some(Vendor::Openblas)
            }
            (Work::Conv2d { burn: false, .. }, ComputeDevice::Cuda(index)) if native => {
                Some(Vendor::Cudnn(*index))
            }
            (
                &Work::Conv2d {
                    burn: false,
                    channels,
                    out_channels,
                    groups,
                    dtype: Dtype::F32,
                    ..
                },
                ComputeDevice::Cpu,
            ) if native && groups == channels && out_channels == channels => Some(Vendor::Direct),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Vendor::Cublas(_) => "cublas",
            Vendor::Openblas => "openblas",
            Vendor::Cudnn(_) => "cudnn",
            Vendor::Direct => depthwise::ENGINE,
        }
    }
}

/// Run `cases` one after another, handing each row to `on_row` as it finishes.
pub fn run_cases(
    device: &ComputeDevice,
    engines: Engines,
    cases: &[Case],
    settings: &Settings,
    mut on_row: impl FnMut(&Row),
) -> Vec<Row> {
    cases
        .iter()
        .map(|case| {
            let row = run_case(device, engines, case, settings);
            on_row(&row);
            row
        })
        .collect()
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

/// Median, mean and minimum of the per-iteration seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stats {
    median: f64,
    mean: f64,
    min: f64,
}

impl Stats {
    fn of(samples: &[f64]) -> Self {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n == 0 {
            f64::NAN
        } else if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Stats {
            median,
            mean: sorted.iter().sum::<f64>() / n as f64,
            min: sorted.first().copied().unwrap_or(f64::NAN),
        }
    }
}

/// What a successful case measured.
pub(super) struct Measured {
    pub(super) samples: Vec<f64>,
    pub(super) dtype: String,
    pub(super) note: Option<String>,
}

fn sync<B: Backend>(device: &B::Device) -> Result<(), String> {
    B::sync(device).map_err(|e| format!("device sync failed: {e}"))
}

/// Warm up, then time each iteration between two syncs. The output of `op` lives until
/// after the second sync.
pub(super) fn time_iterations<B: Backend, T>(
    device: &B::Device,
    settings: &Settings,
    iters: u32,
    op: impl FnMut() -> Result<T, String>,
) -> Result<Vec<f64>, String> {
    sample(settings, iters, || sync::<B>(device), op)
}

/// The sampling loop of every case: `settings.warmup` untimed iterations, then one sample per
/// iteration between two `sync`s, until `iters` samples or `case_budget_s` seconds (after at
/// least [`MIN_ITERS`]). The output of `op` lives until after the second sync.
pub(super) fn sample<T>(
    settings: &Settings,
    iters: u32,
    mut sync: impl FnMut() -> Result<(), String>,
    mut op: impl FnMut() -> Result<T, String>,
) -> Result<Vec<f64>, String> {
    for _ in 0..settings.warmup {
        let out = op()?;
        sync()?;
        drop(out);
    }
    let mut samples = Vec::with_capacity(iters as usize);
    let mut spent = 0.0;
    for i in 0..iters {
        sync()?;
        let start = Instant::now();
        let out = op()?;
        sync()?;
        let seconds = start.elapsed().as_secs_f64();
        drop(out);
        samples.push(seconds);
        spent += seconds;
        if i + 1 >= MIN_ITERS && spent > settings.case_budget_s {
            break;
        }
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(Stats::of(&[3.0, 1.0, 2.0]).median, 2.0);
        assert_eq!(Stats::of(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
        assert_eq!(Stats::of(&[4.0, 1.0, 2.0, 3.0]).min, 1.0);
        assert_eq!(Stats::of(&[4.0, 1.0, 2.0, 3.0]).mean, 2.5);
    }
}
