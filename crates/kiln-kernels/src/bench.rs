//! Device-side timing of the kernels behind the job kinds: matmul (f32, tf32, bf16; on CUDA
//! through cuBLAS as `matmul` jobs run there, plus Burn's own kernels in `_burn` rows), vector add,
//! a dense 3×3 conv2d (f32, tf32, bf16; on CUDA through cuDNN as `conv2d` jobs run there, plus
//! Burn's in `_burn` rows), one Adam step of an MLP, and the one-job-at-a-time small vector add
//! (upload, add, read back).
//!
//! Every case creates its inputs once on the device (outside the timed region), runs warm-up
//! iterations (they pay JIT compilation and autotune), then times each iteration on its own:
//! `B::sync`, start the clock, run, `B::sync`, stop the clock. The output of an iteration is
//! kept alive until after the second sync, so a lazy backend (burn's fusion) must compute it.
//! A row reports the median, mean and minimum seconds per iteration and, from the median, the
//! case's throughput. A case that fails (a panic in the backend, a dtype the device lacks)
//! becomes an error row; the other cases still run.
//!
//! Case names are the join key with the PyTorch reference (`scripts/torch_reference.py`), which
//! names its rows with the same rules.
//!
//! ```
//! use kiln_kernels::bench::{Profile, Settings, cases, run_case};
//! use kiln_kernels::{ComputeDevice, Engines};
//! let case = cases(Profile::Quick).remove(0);
//! let settings = Settings { warmup: 1, iters: 2, case_budget_s: 1.0 };
//! let row = run_case(&ComputeDevice::Cpu, Engines::default(), &case, &settings);
//! assert_eq!(row.status, "ok");
//! assert!(row.median_s.unwrap() > 0.0);
//! ```

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use burn::backend::Autodiff;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::{
    DType, Distribution, Int, Tensor, TensorData, backend::Backend, module::conv2d,
    ops::ConvOptions,
};
use serde::{Deserialize, Serialize};

use crate::cpu::depthwise;
use crate::device::{ComputeDevice, CpuBackend, CudaBackend};
use crate::dtype_name;
use crate::kinds::mlp::Mlp;
use crate::vendor::openblas;
use crate::{ConvEngine, Dtype, Engines, MatmulEngine};

/// Timed iterations always run at least this many times, whatever the time budget.
pub const MIN_ITERS: u32 = 3;
/// The small vector add runs this many times the configured iterations (each one is short).
pub const SMALL_ITERS_FACTOR: u32 = 10;
/// Length of the one-job-at-a-time vector add.
pub const SMALL_LEN: usize = 1024;
/// Adam's learning rate in the training step (its value does not change the cost).
const LR: f64 = 1e-3;

/// What a case computes.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// C = A·B with square n×n matrices; 2n³ flops. `burn`: on Burn's kernels even where
    /// `matmul` jobs run on cuBLAS (CUDA).
    Matmul {
        /// Rows and columns of A, B and C.
        n: usize,
        /// Element type of the product.
        dtype: Dtype,
        /// On Burn's kernels, whatever `matmul` jobs run on.
        burn: bool,
    },
    /// c = a + b on the device, f32; 3·4·len bytes moved. `burn`: on Burn's kernels even where
    /// `vector_add` jobs run on cuBLAS (CUDA).
    VectorAdd {
        /// Elements of each vector.
        len: usize,
        /// On Burn's kernels, whatever `vector_add` jobs run on.
        burn: bool,
    },
    /// Convolution with a square `kernel`, stride 1, "same" zero padding (kernel / 2), no
    /// bias: input [batch, channels, height, width], weight
    /// [out_channels, channels / groups, kernel, kernel];
    /// 2·batch·out_channels·height·width·(channels / groups)·kernel² flops. Dense 3×3 (the
    /// issue's target) or depthwise (groups = channels = out_channels, what `conv2d` jobs
    /// compute). `burn`: on Burn's kernels even where `conv2d` jobs run on cuDNN (CUDA).
    Conv2d {
        /// Images in the batch.
        batch: usize,
        /// Input channels per image.
        channels: usize,
        /// Output channels per image.
        out_channels: usize,
        /// Image rows.
        height: usize,
        /// Image columns.
        width: usize,
        /// Side of the square kernel.
        kernel: usize,
        /// 1 for a dense convolution, `channels` for a depthwise one.
        groups: usize,
        /// Element type of the convolution.
        dtype: Dtype,
        /// On Burn's kernels, whatever `conv2d` jobs run on.
        burn: bool,
    },
    /// One Adam step (forward, softmax cross-entropy, backward, update) of an MLP
    /// `features → hidden.. → classes` with ReLU between layers, on one batch.
    TrainStep {
        /// Samples in the batch.
        batch: usize,
        /// Inputs of the first layer.
        features: usize,
        /// Widths of the hidden layers, in order.
        hidden: Vec<usize>,
        /// Outputs of the last layer.
        classes: usize,
    },
    /// One small job: upload a and b from host memory, add, read c back; per iteration.
    /// `burn` as for [`Work::VectorAdd`].
    SmallVectorAdd {
        /// Elements of each vector.
        len: usize,
        /// On Burn's kernels, whatever `vector_add` jobs run on.
        burn: bool,
    },
}

/// One benchmark case: a name (the join key with the PyTorch reference) and its work.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// The case's name, such as `matmul_bf16_n4096`: the join key with the PyTorch reference.
    pub name: String,
    /// What it computes.
    pub work: Work,
}

impl Case {
    /// A matmul as `matmul` jobs run it (on CUDA: cuBLAS, unless the process chose Burn).
    pub fn matmul(n: usize, dtype: Dtype) -> Self {
        Case {
            name: format!("matmul_{}_n{n}", dtype.as_str()),
            work: Work::Matmul {
                n,
                dtype,
                burn: false,
            },
        }
    }

    /// A matmul on Burn's kernels (`matmul_<dtype>_n<n>_burn`); its `tf32` runs Burn's f32
    /// product, which Burn computes at TF32-like precision on tensor cores.
    pub fn matmul_burn(n: usize, dtype: Dtype) -> Self {
        Case {
            name: format!("matmul_{}_n{n}_burn", dtype.as_str()),
            work: Work::Matmul {
                n,
                dtype,
                burn: true,
            },
        }
    }

    /// A vector add as `vector_add` jobs run it (on CUDA: cuBLAS, unless the process chose Burn),
    /// or on Burn's kernels (`vector_add_f32_<len>_burn`).
    pub fn vector_add(len: usize, burn: bool) -> Self {
        Case {
            name: format!(
                "vector_add_f32_{}{}",
                count_name(len),
                if burn { "_burn" } else { "" }
            ),
            work: Work::VectorAdd { len, burn },
        }
    }

    /// A dense 3×3 convolution as kiln convolves (on CUDA: cuDNN, unless the process chose
    /// Burn).
    pub fn conv2d(input: [usize; 4], out_channels: usize, dtype: Dtype) -> Self {
        Self::conv2d_on(input, out_channels, dtype, false)
    }

    /// The same on Burn's kernels (`conv2d_3x3_<dtype>_…_burn`); its `tf32` runs Burn's f32
    /// convolution, which Burn computes at TF32-like precision on tensor cores.
    pub fn conv2d_burn(input: [usize; 4], out_channels: usize, dtype: Dtype) -> Self {
        Self::conv2d_on(input, out_channels, dtype, true)
    }

    fn conv2d_on(
        [batch, channels, height, width]: [usize; 4],
        out_channels: usize,
        dtype: Dtype,
        burn: bool,
    ) -> Self {
        Case {
            name: format!(
                "conv2d_3x3_{}_{batch}x{channels}x{height}x{width}_c{out_channels}{}",
                dtype.as_str(),
                if burn { "_burn" } else { "" }
            ),
            work: Work::Conv2d {
                batch,
                channels,
                out_channels,
                height,
                width,
                kernel: 3,
                groups: 1,
                dtype,
                burn,
            },
        }
    }

    /// A depthwise `kernel`×`kernel` filter over every channel, what a `conv2d` job computes
    /// (`conv2d_dw5x5_<dtype>_<b>x<c>x<h>x<w>`, with `_burn` on Burn's kernels).
    pub fn filter(
        [batch, channels, height, width]: [usize; 4],
        kernel: usize,
        dtype: Dtype,
        burn: bool,
    ) -> Self {
        Case {
            name: format!(
                "conv2d_dw{kernel}x{kernel}_{}_{batch}x{channels}x{height}x{width}{}",
                dtype.as_str(),
                if burn { "_burn" } else { "" }
            ),
            work: Work::Conv2d {
                batch,
                channels,
                out_channels: channels,
                height,
                width,
                kernel,
                groups: channels,
                dtype,
                burn,
            },
        }
    }

    /// One Adam step of an MLP `features → hidden.. → classes` on a batch of `batch`
    /// (`train_mlp_step_<widths>_b<batch>`).
    pub fn train_step(batch: usize, features: usize, hidden: &[usize], classes: usize) -> Self {
        let widths: Vec<String> = std::iter::once(features)
            .chain(hidden.iter().copied())
            .chain(std::iter::once(classes))
            .map(|w| w.to_string())
            .collect();
        Case {
            name: format!("train_mlp_step_{}_b{batch}", widths.join("-")),
            work: Work::TrainStep {
                batch,
                features,
                hidden: hidden.to_vec(),
                classes,
            },
        }
    }

    /// One small job's round trip as `vector_add` jobs run it, or on Burn's kernels
    /// (`small_vector_add_roundtrip_<len>_burn`).
    pub fn small_vector_add(len: usize, burn: bool) -> Self {
        Case {
            name: format!(
                "small_vector_add_roundtrip_{len}{}",
                if burn { "_burn" } else { "" }
            ),
            work: Work::SmallVectorAdd { len, burn },
        }
    }

    /// The kernel family, for reports: matmul, vector_add, conv2d, train_mlp_step,
    /// small_vector_add.
    pub fn family(&self) -> &'static str {
        match self.work {
            Work::Matmul { .. } => "matmul",
            Work::VectorAdd { .. } => "vector_add",
            Work::Conv2d { .. } => "conv2d",
            Work::TrainStep { .. } => "train_mlp_step",
            Work::SmallVectorAdd { .. } => "small_vector_add",
        }
    }

    /// The dtype asked for.
    pub fn dtype(&self) -> Dtype {
        match self.work {
            Work::Matmul { dtype, .. } | Work::Conv2d { dtype, .. } => dtype,
            _ => Dtype::F32,
        }
    }

    /// The sizes, in words.
    pub fn shape(&self) -> String {
        match &self.work {
            Work::Matmul { n, .. } => format!("m=k=n={n}"),
            Work::VectorAdd { len, .. } | Work::SmallVectorAdd { len, .. } => format!("len={len}"),
            Work::Conv2d { .. } => {
                let Some(s) = self.work.conv_shape() else {
                    return String::new();
                };
                let [k, _] = s.kernel;
                format!(
                    "input {}x{}x{}x{}, weight {}x{}x{k}x{k}, padding {}{}",
                    s.batch,
                    s.channels,
                    s.height,
                    s.width,
                    s.out_channels,
                    s.channels / s.groups,
                    s.padding[0],
                    if s.groups > 1 {
                        format!(", {} groups", s.groups)
                    } else {
                        String::new()
                    }
                )
            }
            Work::TrainStep {
                batch,
                features,
                hidden,
                classes,
            } => format!("batch {batch}, layers {features}-{hidden:?}-{classes}"),
        }
    }

    /// Floating-point operations of one iteration (multiply-adds count as two); for the
    /// training step, 6 per weight and sample (forward 2, backward 4).
    pub fn flops(&self) -> Option<f64> {
        match &self.work {
            Work::Matmul { n, .. } => Some(2.0 * (*n as f64).powi(3)),
            Work::Conv2d { .. } => self.work.conv_shape().map(|s| {
                let taps = s.channels / s.groups * s.kernel[0] * s.kernel[1];
                2.0 * s.output_len() as f64 * taps as f64
            }),
            Work::TrainStep {
                batch,
                features,
                hidden,
                classes,
            } => Some(6.0 * mlp_weights(*features, hidden, *classes) as f64 * *batch as f64),
            Work::VectorAdd { .. } | Work::SmallVectorAdd { .. } => None,
        }
    }

    /// Bytes read and written by one iteration of the element-wise cases (3·4·len).
    pub fn bytes(&self) -> Option<f64> {
        match self.work {
            Work::VectorAdd { len, .. } | Work::SmallVectorAdd { len, .. } => {
                Some(12.0 * len as f64)
            }
            _ => None,
        }
    }

    /// The headline unit of the case: TFLOP/s, GB/s, ms/step or us/job.
    pub fn metric(&self) -> &'static str {
        match self.work {
            Work::Matmul { .. } | Work::Conv2d { .. } => "TFLOP/s",
            Work::VectorAdd { .. } => "GB/s",
            Work::TrainStep { .. } => "ms/step",
            Work::SmallVectorAdd { .. } => "us/job",
        }
    }

    /// The headline value for `seconds` per iteration, in [`Case::metric`]'s unit.
    pub fn value(&self, seconds: f64) -> Option<f64> {
        match self.work {
            Work::Matmul { .. } | Work::Conv2d { .. } => self.flops().map(|f| f / seconds / 1e12),
            Work::VectorAdd { .. } => self.bytes().map(|b| b / seconds / 1e9),
            Work::TrainStep { .. } => Some(seconds * 1e3),
            Work::SmallVectorAdd { .. } => Some(seconds * 1e6),
        }
    }
}

impl Work {
    /// The convolution of a conv2d case, as cuDNN takes it.
    pub fn conv_shape(&self) -> Option<crate::vendor::cudnn::ConvShape> {
        match *self {
            Work::Conv2d {
                batch,
                channels,
                out_channels,
                height,
                width,
                kernel,
                groups,
                ..
            } => Some(crate::vendor::cudnn::ConvShape {
                batch,
                channels,
                height,
                width,
                out_channels,
                kernel: [kernel, kernel],
                padding: [kernel / 2, kernel / 2],
                groups,
            }),
            _ => None,
        }
    }
}

/// Weights and biases of an MLP `features → hidden.. → classes`.
fn mlp_weights(features: usize, hidden: &[usize], classes: usize) -> usize {
    let widths = mlp_widths(features, hidden, classes);
    widths.windows(2).map(|w| (w[0] + 1) * w[1]).sum()
}

fn mlp_widths(features: usize, hidden: &[usize], classes: usize) -> Vec<usize> {
    let mut widths = Vec::with_capacity(hidden.len() + 2);
    widths.push(features);
    widths.extend_from_slice(hidden);
    widths.push(classes);
    widths
}

/// `64M` for 64·2²⁰, `16K` for 16·2¹⁰, else the number.
fn count_name(len: usize) -> String {
    if len >= 1 << 20 && len.is_multiple_of(1 << 20) {
        format!("{}M", len >> 20)
    } else if len >= 1 << 10 && len.is_multiple_of(1 << 10) {
        format!("{}K", len >> 10)
    } else {
        len.to_string()
    }
}

/// Which set of sizes to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// The sizes of issue 3's targets, for an H100-class GPU.
    Gpu,
    /// Smaller sizes for a CPU (bf16 cases are listed and reported as skipped).
    Cpu,
    /// Tiny sizes: a smoke test of every case in seconds.
    Quick,
}

/// Width of the benchmark MLP: features 256 → 1024 → 1024 → 10 classes.
pub const MLP_FEATURES: usize = 256;
/// Hidden layer widths of the benchmark MLP.
pub const MLP_HIDDEN: [usize; 2] = [1024, 1024];
/// Classes (outputs) of the benchmark MLP.
pub const MLP_CLASSES: usize = 10;

/// The cases of a profile, cheapest first within each family.
pub fn cases(profile: Profile) -> Vec<Case> {
    use Dtype::{Bf16, F32, Tf32};
    let mlp = |batch| Case::train_step(batch, MLP_FEATURES, &MLP_HIDDEN, MLP_CLASSES);
    match profile {
        // The cases behind the issue's targets first, Burn's own kernels (`_burn`, for
        // reference) last: on a cold cache their autotuning is what a time limit cuts.
        Profile::Gpu => vec![
            Case::vector_add(64 << 20, false),
            Case::small_vector_add(SMALL_LEN, false),
            Case::matmul(4096, F32),
            Case::matmul(8192, F32),
            Case::matmul(4096, Tf32),
            Case::matmul(8192, Tf32),
            Case::matmul(4096, Bf16),
            Case::matmul(8192, Bf16),
            Case::conv2d([32, 64, 224, 224], 64, F32),
            Case::conv2d([32, 64, 224, 224], 64, Tf32),
            Case::conv2d([32, 64, 224, 224], 64, Bf16),
            Case::filter([32, 3, 512, 512], 5, F32, false),
            mlp(512),
            mlp(4096),
            Case::matmul_burn(4096, Tf32),
            Case::matmul_burn(8192, Tf32),
            Case::matmul_burn(4096, Bf16),
            Case::matmul_burn(8192, Bf16),
            Case::conv2d_burn([32, 64, 224, 224], 64, Tf32),
            Case::conv2d_burn([32, 64, 224, 224], 64, Bf16),
            Case::filter([32, 3, 512, 512], 5, F32, true),
            Case::vector_add(64 << 20, true),
            Case::small_vector_add(SMALL_LEN, true),
        ],
        Profile::Cpu => vec![
            Case::vector_add(16 << 20, false),
            Case::small_vector_add(SMALL_LEN, false),
            Case::matmul(1024, F32),
            Case::matmul(2048, F32),
            Case::matmul(2048, Bf16),
            Case::conv2d([4, 64, 112, 112], 64, F32),
            Case::conv2d([4, 64, 112, 112], 64, Bf16),
            Case::filter([8, 3, 224, 224], 5, F32, false),
            Case::filter([8, 3, 224, 224], 5, F32, true),
            Case::filter([1, 3, 2048, 2048], 5, F32, false),
            Case::filter([1, 3, 2048, 2048], 5, F32, true),
            mlp(512),
        ],
        Profile::Quick => vec![
            Case::vector_add(1 << 16, false),
            Case::small_vector_add(SMALL_LEN, false),
            Case::matmul(64, F32),
            Case::matmul(128, F32),
            Case::matmul(128, Tf32),
            Case::matmul(128, Bf16),
            Case::matmul_burn(128, Tf32),
            Case::conv2d([1, 8, 16, 16], 8, F32),
            Case::conv2d([1, 8, 16, 16], 8, Tf32),
            Case::conv2d([1, 8, 16, 16], 8, Bf16),
            Case::conv2d_burn([1, 8, 16, 16], 8, Tf32),
            Case::filter([2, 3, 16, 16], 5, F32, false),
            Case::train_step(32, 16, &[32, 32], 4),
        ],
    }
}

/// How long to measure each case.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Untimed iterations first (JIT compilation, autotune, caches).
    pub warmup: u32,
    /// Timed iterations (at most; see `case_budget_s`). The small vector add runs
    /// [`SMALL_ITERS_FACTOR`] times as many.
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
    crate::burn_engine(matches!(device, ComputeDevice::Cuda(_)))
}

/// Run one case on `device`, its cases without `_burn` on `engines` as jobs of their kind run
/// there. Never panics: failures become error rows, bf16 on the CPU a skipped row. Touching a
/// CUDA device needs CUDA (check [`crate::cuda_device_count`] first).
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
struct Measured {
    samples: Vec<f64>,
    dtype: String,
    note: Option<String>,
}

fn sync<B: Backend>(device: &B::Device) -> Result<(), String> {
    B::sync(device).map_err(|e| format!("device sync failed: {e}"))
}

/// Warm up, then time each iteration between two syncs. The output of `op` lives until
/// after the second sync.
fn time_iterations<B: Backend, T>(
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
fn sample<T>(
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

/// Cast to the case's dtype (tf32 stays f32) and check that the tensor really is in it.
fn cast_to<B: Backend, const D: usize>(
    tensor: Tensor<B, D>,
    dtype: Dtype,
    what: &str,
) -> Result<Tensor<B, D>, String> {
    let tensor = match dtype.burn_dtype() {
        None => tensor,
        Some(low) => tensor.cast(low),
    };
    check_dtype(&tensor, dtype, what)?;
    Ok(tensor)
}

fn check_dtype<B: Backend, const D: usize>(
    tensor: &Tensor<B, D>,
    dtype: Dtype,
    what: &str,
) -> Result<(), String> {
    let want = dtype.burn_dtype().map_or(DType::F32, DType::from);
    if tensor.dtype() == want {
        Ok(())
    } else {
        Err(format!(
            "{what} is {} but the case asks for {}",
            dtype_name(tensor.dtype()),
            dtype.as_str()
        ))
    }
}

/// A matmul case on the device's BLAS (cuBLAS on CUDA device `cuda`, else OpenBLAS), sampled
/// like the Burn cases: operands in place first, warm-up, then one sample per product (between
/// two stream synchronisations on the GPU).
fn measure_blas(cuda: Option<usize>, case: &Case, settings: &Settings) -> Result<Measured, String> {
    let Work::Matmul { n, dtype, .. } = case.work else {
        return Err(format!("{} is not a matmul", case.name));
    };
    let (samples, note) = match cuda {
        Some(index) => {
            let note = match dtype {
                Dtype::F32 => "cuBLAS, CUBLAS_COMPUTE_32F (true f32)",
                Dtype::Tf32 => "cuBLAS, CUBLAS_COMPUTE_32F_FAST_TF32",
                Dtype::Bf16 => "cuBLAS, bf16 in and out, f32 accumulation",
                Dtype::F16 => "cuBLAS, f16 in and out, f32 accumulation",
            };
            let products = std::cell::RefCell::new(crate::vendor::cublas::SquareProducts::new(
                index, n, dtype,
            )?);
            let samples = sample(
                settings,
                settings.iters,
                || products.borrow().sync(),
                || products.borrow_mut().launch(),
            )?;
            (samples, note)
        }
        None => {
            let a = crate::seeded_values(7, 0, n * n);
            let b = crate::seeded_values(7, 1, n * n);
            let mut c = vec![0.0f32; n * n];
            let samples = sample(
                settings,
                settings.iters,
                || Ok(()),
                || {
                    crate::vendor::openblas::matmul_into(&a, &b, &mut c, (n, n, n))
                        .map_err(|e| e.message)
                },
            )?;
            (samples, "OpenBLAS cblas_sgemm")
        }
    };
    Ok(Measured {
        samples,
        dtype: dtype.as_str().into(),
        note: Some(note.into()),
    })
}

/// A vector add case on cuBLAS, as `vector_add` jobs run on CUDA: the large case on vectors kept
/// on the device (as the Burn and PyTorch rows time it), the small one a whole job (upload,
/// add, read back) per iteration.
fn measure_cublas_add(index: usize, case: &Case, settings: &Settings) -> Result<Measured, String> {
    let (samples, note) = match case.work {
        Work::VectorAdd { len, .. } => {
            let sums = std::cell::RefCell::new(crate::vendor::cublas::DeviceSums::new(index, len)?);
            let samples = sample(
                settings,
                settings.iters,
                || sums.borrow().sync(),
                || sums.borrow_mut().launch(),
            )?;
            (samples, "cuBLAS cublasSgeam, c = 1·a + 1·b")
        }
        Work::SmallVectorAdd { len, .. } => {
            let (a, b) = small_operands(len);
            let iters = settings.iters.saturating_mul(SMALL_ITERS_FACTOR);
            let samples = sample(
                settings,
                iters,
                || Ok(()),
                || {
                    let c =
                        crate::vendor::cublas::vector_add(index, &a, &b).map_err(|e| e.message)?;
                    check_small_sum(&a, &b, &c)?;
                    Ok(c)
                },
            )?;
            (
                samples,
                "per job: upload a and b from host, add on cuBLAS, read c back",
            )
        }
        _ => return Err(format!("{} is not a vector add", case.name)),
    };
    Ok(Measured {
        samples,
        dtype: "f32".into(),
        note: Some(note.into()),
    })
}

/// The small vector add's host vectors (made once, as a job's are before it runs), whose last
/// sum is exact: (len − 1) + (len − 1)/2.
fn small_operands(len: usize) -> (Vec<f32>, Vec<f32>) {
    let a = (0..len).map(|i| i as f32).collect();
    let b = (0..len).map(|i| 0.5 * i as f32).collect();
    (a, b)
}

/// That the small vector add read back its whole output with the right last sum.
fn check_small_sum(a: &[f32], b: &[f32], c: &[f32]) -> Result<(), String> {
    match (a.last(), b.last(), c.last()) {
        (Some(x), Some(y), Some(z)) if c.len() == a.len() && *z == x + y => Ok(()),
        _ => Err("the small vector add read back a wrong sum".into()),
    }
}

/// A depthwise conv2d case on the CPU's direct loop, as a conv2d job filters there: one kernel
/// over every plane of the batch, each sample one call.
fn measure_direct(case: &Case, settings: &Settings) -> Result<Measured, String> {
    let Some(shape) = case.work.conv_shape() else {
        return Err(format!("{} is not a conv2d", case.name));
    };
    let [k, _] = shape.kernel;
    let pixels = crate::seeded_values(7, 0, shape.input_len());
    let kernels = [crate::seeded_values(7, 1, k * k)];
    let depthwise = crate::cpu::depthwise::Depthwise {
        planes: shape.batch * shape.channels,
        height: shape.height,
        width: shape.width,
        side: k,
        kernels: &kernels,
    };
    let samples = sample(
        settings,
        settings.iters,
        || Ok(()),
        || Ok(depthwise.run(&pixels)),
    )?;
    Ok(Measured {
        samples,
        dtype: "f32".into(),
        note: Some("kiln's direct depthwise loop, on every core".into()),
    })
}

/// A conv2d case on cuDNN, sampled like the Burn cases: operands on the device first, warm-up
/// (the first launch measures cuDNN's algorithms), then one sample per convolution between two
/// stream synchronisations. The note names the algorithm and math type cuDNN chose.
fn measure_cudnn(index: usize, case: &Case, settings: &Settings) -> Result<Measured, String> {
    let Some(shape) = case.work.conv_shape() else {
        return Err(format!("{} is not a conv2d", case.name));
    };
    let convolutions = std::cell::RefCell::new(crate::vendor::cudnn::Convolutions::new(
        index,
        shape,
        case.dtype(),
    )?);
    let samples = sample(
        settings,
        settings.iters,
        || convolutions.borrow().sync(),
        || convolutions.borrow_mut().launch(),
    )?;
    let algorithm = convolutions.borrow().algorithm();
    Ok(Measured {
        samples,
        dtype: case.dtype().as_str().into(),
        note: Some(format!(
            "cuDNN, {}",
            algorithm.unwrap_or_else(|| "algorithm unknown".into())
        )),
    })
}

fn measure<B: Backend>(
    device: &B::Device,
    case: &Case,
    settings: &Settings,
) -> Result<Measured, String> {
    let iters = settings.iters;
    let measured = |samples, dtype: &str| Measured {
        samples,
        dtype: dtype.into(),
        note: None,
    };
    match &case.work {
        &Work::Matmul { n, dtype, .. } => {
            let a = Tensor::<B, 2>::random([n, n], Distribution::Default, device);
            let b = Tensor::<B, 2>::random([n, n], Distribution::Default, device);
            let a = cast_to(a, dtype, "matmul input a")?;
            let b = cast_to(b, dtype, "matmul input b")?;
            check_dtype(&a.clone().matmul(b.clone()), dtype, "matmul output")?;
            let samples = time_iterations::<B, _>(device, settings, iters, || {
                Ok(a.clone().matmul(b.clone()))
            })?;
            Ok(measured(samples, dtype.as_str()))
        }
        &Work::VectorAdd { len, .. } => {
            let a = Tensor::<B, 1>::random([len], Distribution::Default, device);
            let b = Tensor::<B, 1>::random([len], Distribution::Default, device);
            let samples =
                time_iterations::<B, _>(device, settings, iters, || Ok(a.clone() + b.clone()))?;
            Ok(measured(samples, "f32"))
        }
        Work::Conv2d { dtype, .. } => {
            let dtype = *dtype;
            let s = case
                .work
                .conv_shape()
                .ok_or_else(|| format!("{} is not a conv2d", case.name))?;
            let x = Tensor::<B, 4>::random(
                [s.batch, s.channels, s.height, s.width],
                Distribution::Default,
                device,
            );
            let w = Tensor::<B, 4>::random(
                [
                    s.out_channels,
                    s.channels / s.groups,
                    s.kernel[0],
                    s.kernel[1],
                ],
                Distribution::Uniform(-0.1, 0.1),
                device,
            );
            let x = cast_to(x, dtype, "conv2d input")?;
            let w = cast_to(w, dtype, "conv2d weight")?;
            let options = || ConvOptions::new([1, 1], s.padding, [1, 1], s.groups);
            let first = conv2d(x.clone(), w.clone(), None, options());
            check_dtype(&first, dtype, "conv2d output")?;
            if first.dims() != s.output_dims() {
                return Err(format!(
                    "conv2d output has shape {:?}, expected {:?}",
                    first.dims(),
                    s.output_dims()
                ));
            }
            drop(first);
            let samples = time_iterations::<B, _>(device, settings, iters, || {
                Ok(conv2d(x.clone(), w.clone(), None, options()))
            })?;
            Ok(measured(samples, dtype.as_str()))
        }
        Work::TrainStep {
            batch,
            features,
            hidden,
            classes,
        } => {
            let samples = train_step::<B>(
                device,
                settings,
                iters,
                *batch,
                &mlp_widths(*features, hidden, *classes),
            )?;
            Ok(measured(samples, "f32"))
        }
        &Work::SmallVectorAdd { len, .. } => {
            let (a, b) = small_operands(len);
            let iters = iters.saturating_mul(SMALL_ITERS_FACTOR);
            let samples = time_iterations::<B, _>(device, settings, iters, || {
                let ta = Tensor::<B, 1>::from_data(TensorData::new(a.clone(), [len]), device);
                let tb = Tensor::<B, 1>::from_data(TensorData::new(b.clone(), [len]), device);
                let c = (ta + tb)
                    .into_data()
                    .into_vec::<f32>()
                    .map_err(|e| format!("reading the small vector add back: {e:?}"))?;
                check_small_sum(&a, &b, &c)?;
                Ok(c)
            })?;
            let mut m = measured(samples, "f32");
            m.note = Some("per job: upload a and b from host, add, read c back".into());
            Ok(m)
        }
    }
}

/// Time Adam steps of the MLP `widths` on one fixed batch.
fn train_step<B: Backend>(
    device: &B::Device,
    settings: &Settings,
    iters: u32,
    batch: usize,
    widths: &[usize],
) -> Result<Vec<f64>, String> {
    type Ad<B> = Autodiff<B>;
    let (features, classes) = (widths[0], widths[widths.len() - 1]);
    let x = Tensor::<Ad<B>, 2>::random([batch, features], Distribution::Normal(0.0, 1.0), device);
    let labels: Vec<i64> = (0..batch).map(|i| (i % classes) as i64).collect();
    let y = Tensor::<Ad<B>, 1, Int>::from_data(TensorData::new(labels, [batch]), device);
    // The network the train_mlp kind trains (its initialisation is outside the timed steps).
    let mut model = Some(Mlp::<Ad<B>>::init(widths, 0, device));
    let mut optim = AdamConfig::new().init::<Ad<B>, Mlp<Ad<B>>>();
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    time_iterations::<B, _>(device, settings, iters, || {
        let m = model.take().ok_or("the model was lost in a failed step")?;
        let loss = loss_fn.forward(m.forward(x.clone()), y.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &m);
        model = Some(optim.step(LR, m, grads));
        Ok(loss)
    })
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

    #[test]
    fn names_match_the_pytorch_reference() {
        let names: Vec<String> = cases(Profile::Gpu).into_iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "vector_add_f32_64M",
                "small_vector_add_roundtrip_1024",
                "matmul_f32_n4096",
                "matmul_f32_n8192",
                "matmul_tf32_n4096",
                "matmul_tf32_n8192",
                "matmul_bf16_n4096",
                "matmul_bf16_n8192",
                "conv2d_3x3_f32_32x64x224x224_c64",
                "conv2d_3x3_tf32_32x64x224x224_c64",
                "conv2d_3x3_bf16_32x64x224x224_c64",
                "conv2d_dw5x5_f32_32x3x512x512",
                "train_mlp_step_256-1024-1024-10_b512",
                "train_mlp_step_256-1024-1024-10_b4096",
                "matmul_tf32_n4096_burn",
                "matmul_tf32_n8192_burn",
                "matmul_bf16_n4096_burn",
                "matmul_bf16_n8192_burn",
                "conv2d_3x3_tf32_32x64x224x224_c64_burn",
                "conv2d_3x3_bf16_32x64x224x224_c64_burn",
                "conv2d_dw5x5_f32_32x3x512x512_burn",
                "vector_add_f32_64M_burn",
                "small_vector_add_roundtrip_1024_burn",
            ]
        );
    }
}
