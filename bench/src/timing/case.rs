//! The benchmark's cases: what each computes, its name (the join key with the PyTorch
//! reference), its work, and the cases of each profile.

use kiln_kernels::Dtype;
use kiln_kernels::vendor::cudnn::ConvShape;

use super::SMALL_LEN;

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
    pub fn conv_shape(&self) -> Option<ConvShape> {
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
            } => Some(ConvShape {
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

pub(super) fn mlp_widths(features: usize, hidden: &[usize], classes: usize) -> Vec<usize> {
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
        // The cases behind the targets first, Burn's own kernels (`_burn`, for
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

#[cfg(test)]
mod tests {
    use super::*;

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
