//! `conv2d`: filters an image batch channel by channel (depthwise, groups = channels) with zero
//! "same" padding, so the output has the input's shape.
//!
//! Like PyTorch's and Burn's `conv2d`, the kernel is applied as a cross-correlation (not
//! flipped): output(y, x) = Σ kernel(i, j) · input(y + i − kh/2, x + j − kw/2), with pixels
//! outside the image read as zero.
//!
//! Named filters:
//! - `gaussian` (the default): 5×5, σ = 1, normalised to sum 1 (a blur);
//! - `sobel`: edge magnitude √(gx² + gy²) of the 3×3 Sobel derivatives
//!   gx = [[-1,0,1],[-2,0,2],[-1,0,1]] and gy = gxᵀ, both computed by one convolution;
//! - `sharpen`: 3×3 [[0,-1,0],[-1,5,-1],[0,-1,0]];
//! - `box`: 3×3 mean.
//!
//! Generated images are `seeded_values(seed, 0, b*c*h*w)` mapped to [0, 1), laid out
//! `[batch][channel][row][column]`.
//!
//! On a CUDA worker the convolution runs on cuDNN by default ([`crate::vendor::cudnn`]), in the
//! job's `dtype` (f32 true f32, tf32, bf16 or f16); on a CPU worker (f32 only) on a direct
//! depthwise loop ([`crate::cpu::depthwise`]); with `--conv2d-engine burn`
//! ([`crate::ConvEngine::Burn`] in [`crate::RunContext::engines`]), and where cuDNN is missing,
//! on Burn's kernels. The result names both (`"dtype"`, `"engine"`: cudnn, direct, burn-cuda or
//! burn-ndarray). Sobel's magnitude is taken in f32 from the two maps, whatever the dtype of
//! the convolution.
//!
//! On cuDNN a generated image is made on the GPU ([`crate::vendor::nvrtc`]'s generator, the
//! same values bit for bit; the result says `"inputs": "device"`) and the output is made there
//! from the maps ([`crate::magnitude`]) and summarised there when large, so that only what the
//! job returns comes back over PCIe ([`cudnn::conv2d_from`]).

use burn::tensor::{
    DType, FloatDType, Tensor, TensorData, backend::Backend, module::conv2d, ops::ConvOptions,
};
use kiln_proto::{JobError, Limits, OutputMode, checked_product};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::Want;
use crate::io::{InlineValues, Input, Inputs, Placement, Wanted};

use crate::Dtype;
use crate::cpu::depthwise::Depthwise;
use crate::dtype_name;
use crate::engine::ConvEngine;
use crate::vendor::cublas::{MadeOn, Output, ReadBack};
use crate::vendor::cudnn::{self, ConvShape};
use crate::{Kernel, Plan, RunContext};

/// Largest side of a user-given kernel.
pub const MAX_KERNEL_SIZE: usize = 31;

/// The named filters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    /// 5×5 Gaussian blur, σ = 1.
    #[default]
    Gaussian,
    /// Edge magnitude from the 3×3 Sobel derivatives.
    Sobel,
    /// 3×3 sharpening.
    Sharpen,
    /// 3×3 mean.
    Box,
}

impl Filter {
    /// The name used in parameters and outputs.
    pub fn as_str(self) -> &'static str {
        match self {
            Filter::Gaussian => "gaussian",
            Filter::Sobel => "sobel",
            Filter::Sharpen => "sharpen",
            Filter::Box => "box",
        }
    }

    /// The kernels this filter convolves with (two for sobel: gx, then gy), row-major.
    fn kernels(self) -> (usize, Vec<Vec<f32>>) {
        match self {
            Filter::Gaussian => {
                let g: Vec<f64> = (-2i32..=2)
                    .flat_map(|y| (-2i32..=2).map(move |x| (-((x * x + y * y) as f64) / 2.0).exp()))
                    .collect();
                let sum: f64 = g.iter().sum();
                (5, vec![g.iter().map(|v| (v / sum) as f32).collect()])
            }
            Filter::Sobel => (
                3,
                vec![
                    vec![-1.0, 0.0, 1.0, -2.0, 0.0, 2.0, -1.0, 0.0, 1.0],
                    vec![-1.0, -2.0, -1.0, 0.0, 0.0, 0.0, 1.0, 2.0, 1.0],
                ],
            ),
            Filter::Sharpen => (
                3,
                vec![vec![0.0, -1.0, 0.0, -1.0, 5.0, -1.0, 0.0, -1.0, 0.0]],
            ),
            Filter::Box => (3, vec![vec![1.0 / 9.0; 9]]),
        }
    }
}

/// Generated: `{"batch": 1, "channels": 3, "height": 256, "width": 256, "filter": "sobel"}`.
/// Given: `{"image": [[[..]]], "filter": ..}` or `{"image": .., "kernel": [[..]]}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Images in the generated batch (default 1).
    #[serde(default)]
    pub batch: Option<u64>,
    /// Channels per image (default 3).
    #[serde(default)]
    pub channels: Option<u64>,
    /// Rows per image (default 256).
    #[serde(default)]
    pub height: Option<u64>,
    /// Columns per image (default 256).
    #[serde(default)]
    pub width: Option<u64>,
    /// A named filter (default gaussian).
    #[serde(default)]
    pub filter: Option<Filter>,
    /// A user kernel instead of a named filter: odd square size up to 31, finite values,
    /// applied as given (cross-correlation, as PyTorch's conv2d computes: not flipped).
    #[serde(default, deserialize_with = "crate::io::read_narrowed")]
    pub kernel: Option<Vec<Vec<f32>>>,
    /// A user image instead of a generated batch, shaped `[channels][height][width]`, or an
    /// object: a PNG or JPEG (values in [0, 1]), or a tensor [H, W], [C, H, W] or [B, C, H, W].
    #[serde(default)]
    pub image: Option<Input<Vec<Vec<Vec<f32>>>>>,
    /// Element type of the convolution (default f32; tf32, bf16 and f16 on GPU workers).
    #[serde(default)]
    pub dtype: Option<Dtype>,
}

/// Default sizes of a generated batch.
const DEFAULT_BATCH: u64 = 1;
const DEFAULT_CHANNELS: u64 = 3;
const DEFAULT_SIDE: u64 = 256;

/// Sizes and filter of one job, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    batch: u64,
    channels: u64,
    height: u64,
    width: u64,
    /// Side of the (square) kernel.
    ksize: u64,
    /// Convolutions per channel: 2 for sobel, else 1.
    passes: u64,
}

impl Params {
    /// The job's sizes; `None` while an image given as an object is not loaded yet.
    fn shape(&self, inputs: &Inputs) -> Result<Option<Shape>, JobError> {
        let (ksize, passes) = match (&self.filter, &self.kernel) {
            (Some(_), Some(_)) => {
                return Err(JobError::invalid_input(
                    "conv2d takes either a named \"filter\" or a \"kernel\", not both",
                ));
            }
            (_, Some(kernel)) => (check_kernel(kernel)? as u64, 1),
            (filter, None) => {
                let filter = filter.unwrap_or_default();
                let (size, kernels) = filter.kernels();
                (size as u64, kernels.len() as u64)
            }
        };
        let (batch, channels, height, width) = match &self.image {
            Some(image) => {
                let Some((b, c, h, w)) = given_shape(image, inputs)? else {
                    return Ok(None);
                };
                for (name, given, actual) in [
                    ("batch", self.batch, b),
                    ("channels", self.channels, c),
                    ("height", self.height, h),
                    ("width", self.width, w),
                ] {
                    if given.is_some_and(|g| g != actual) {
                        return Err(JobError::invalid_input(format!(
                            "conv2d {name} {} disagrees with the given image's {actual}; \
                             leave the sizes out when sending an image",
                            given.unwrap_or_default()
                        )));
                    }
                }
                (b, c, h, w)
            }
            None => (
                self.batch.unwrap_or(DEFAULT_BATCH),
                self.channels.unwrap_or(DEFAULT_CHANNELS),
                self.height.unwrap_or(DEFAULT_SIDE),
                self.width.unwrap_or(DEFAULT_SIDE),
            ),
        };
        if batch == 0 || channels == 0 || height == 0 || width == 0 {
            return Err(JobError::invalid_input(format!(
                "conv2d needs batch, channels, height and width >= 1, got \
                 {batch}x{channels}x{height}x{width}"
            )));
        }
        Ok(Some(Shape {
            batch,
            channels,
            height,
            width,
            ksize,
            passes,
        }))
    }

    /// The filter's name in outputs, and its kernels (row-major, one or two).
    fn kernels(&self) -> (&'static str, usize, Vec<Vec<f32>>) {
        match &self.kernel {
            Some(kernel) => ("kernel", kernel.len(), vec![kernel.concat()]),
            None => {
                let filter = self.filter.unwrap_or_default();
                let (size, kernels) = filter.kernels();
                (filter.as_str(), size, kernels)
            }
        }
    }
}

/// Side of a user kernel, refusing non-square, even, too large and non-finite ones.
fn check_kernel(kernel: &[Vec<f32>]) -> Result<usize, JobError> {
    let size = kernel.len();
    if size == 0 || size.is_multiple_of(2) || size > MAX_KERNEL_SIZE {
        return Err(JobError::invalid_input(format!(
            "conv2d kernel must be square with an odd side from 1 to {MAX_KERNEL_SIZE}, got {size} rows"
        )));
    }
    if let Some((i, row)) = kernel.iter().enumerate().find(|(_, r)| r.len() != size) {
        return Err(JobError::invalid_input(format!(
            "conv2d kernel must be square: it has {size} rows but row {i} has {} values",
            row.len()
        )));
    }
    if let Some(at) = kernel.first_non_finite() {
        // JSON's only way to an infinity is a number too large; a binary body may hold NaN.
        return Err(JobError::invalid_input(format!(
            "conv2d kernel {} (or not a number)",
            crate::io::out_of_f32_range(&at)
        )));
    }
    Ok(size)
}

/// Whether the image was given as a tensor [B, C, H, W]: its output keeps that rank, also for
/// B = 1, as PyTorch's conv2d does (it came back [C, H, W], and code written for batches broke
/// at a batch of one); an image file, [C, H, W] or [H, W] comes back [C, H, W].
fn given_as_batch(params: &Params, inputs: &Inputs) -> bool {
    matches!(params.image, Some(Input::Object(_)))
        && inputs.shape("image").is_some_and(|s| s.len() == 4)
}

/// Batch, channels, rows and columns of the image the user gave, inline or loaded (None while
/// not loaded yet).
fn given_shape(
    image: &Input<Vec<Vec<Vec<f32>>>>,
    inputs: &Inputs,
) -> Result<Option<(u64, u64, u64, u64)>, JobError> {
    let shape = match image {
        Input::Inline(image) => {
            let (c, h, w) = image_shape(image)?;
            return Ok(Some((1, c, h, w)));
        }
        Input::Object(r) => match inputs.shape("image") {
            None => return Ok(None),
            Some(shape) => (r, shape),
        },
    };
    let as_u64 = |d: &usize| *d as u64;
    match shape.1 {
        [c, h, w] if c * h * w > 0 => Ok(Some((1, as_u64(c), as_u64(h), as_u64(w)))),
        [b, c, h, w] if b * c * h * w > 0 => Ok(Some((as_u64(b), as_u64(c), as_u64(h), as_u64(w)))),
        other => Err(JobError::invalid_input(format!(
            "conv2d image (object {:?}) has shape {other:?}; give an image file (PNG, JPEG) or a \
             tensor shaped [height, width], [channels, height, width] or [batch, channels, \
             height, width]",
            shape.0.object
        ))),
    }
}

/// Channels, rows and columns of a user image, refusing empty and ragged ones.
fn image_shape(image: &[Vec<Vec<f32>>]) -> Result<(u64, u64, u64), JobError> {
    let height = image.first().map_or(0, Vec::len);
    let width = image.first().and_then(|c| c.first()).map_or(0, Vec::len);
    if height == 0 || width == 0 {
        return Err(JobError::invalid_input(
            "conv2d image is empty; give it as [channels][height][width] with at least one pixel",
        ));
    }
    for (c, channel) in image.iter().enumerate() {
        if channel.len() != height {
            return Err(JobError::invalid_input(format!(
                "conv2d image is ragged: channel 0 has {height} rows but channel {c} has {}",
                channel.len()
            )));
        }
        if let Some((y, row)) = channel.iter().enumerate().find(|(_, r)| r.len() != width) {
            return Err(JobError::invalid_input(format!(
                "conv2d image is ragged: rows have {width} pixels but channel {c} row {y} has {}",
                row.len()
            )));
        }
    }
    Ok((image.len() as u64, height as u64, width as u64))
}

/// The `conv2d` kind: an image batch through a depthwise filter, zero "same" padding.
pub struct Conv2d;

impl Kernel for Conv2d {
    const NAME: &'static str = "conv2d";
    const SUMMARY: &'static str =
        "filters an image batch per channel (gaussian, sobel, sharpen, box or a given kernel)";
    const PARAMS_HELP: &'static str = "batch: images in the generated batch (1)\n\
         channels: channels per image (3)\n\
         height, width: image size in pixels (256, 256)\n\
         filter: gaussian (the default: 5x5, sigma 1, weights summing to 1), sobel (edge \
         magnitude sqrt(gx^2 + gy^2), gx = [[-1,0,1],[-2,0,2],[-1,0,1]], gy its transpose), \
         sharpen ([[0,-1,0],[-1,5,-1],[0,-1,0]]) or box (3x3 mean)\n\
         kernel: a square kernel with an odd side up to 31, instead of filter \
         (cross-correlation, as PyTorch's conv2d; zero padding keeps the size)\n\
         image: the image as [channels][height][width], or {\"object\": NAME} in KILN_DATA \
         (PNG, JPEG, or a [H,W] / [C,H,W] / [B,C,H,W] tensor), instead of the sizes\n\
         dtype: f32, or tf32/bf16/f16 on GPU workers (f32; on GPUs f32 is true f32)";
    const IMAGE_OUTPUT: bool = true;
    // Sharpen and box share sobel's 3×3 depthwise shape; gaussian is 5×5.
    const WARMUP: &'static [&'static str] =
        &[r#"{"filter": "gaussian"}"#, r#"{"filter": "sobel"}"#];
    type Params = Params;

    fn objects(params: &Params) -> Vec<Wanted> {
        let reference = params.image.as_ref().and_then(Input::object);
        reference
            .map(|reference| Wanted {
                param: "image",
                reference: reference.clone(),
                want: Want::Image,
            })
            .into_iter()
            .collect()
    }

    fn plan(params: &Params, inputs: &Inputs, _limits: &Limits) -> Result<Plan, JobError> {
        let gpu_only = params.dtype.unwrap_or_default() != Dtype::F32;
        let Some(s) = params.shape(inputs)? else {
            return Ok(Plan {
                gpu_only,
                ..Plan::default()
            });
        };
        let what = "conv2d";
        let pixels = checked_product(what, &[s.batch, s.channels, s.height, s.width])?;
        // Input and output, plus the passes' intermediate maps for sobel, plus the weights.
        let maps = if s.passes > 1 { 2 + s.passes } else { 2 };
        let weights = checked_product(what, &[s.channels, s.passes, s.ksize, s.ksize])?;
        let elements = checked_product(what, &[pixels, maps])?
            .checked_add(weights)
            .ok_or_else(|| JobError::too_large("conv2d sizes overflow a 64-bit element count"))?;
        Ok(Plan {
            elements,
            flops: 2.0 * pixels as f64 * (s.ksize * s.ksize * s.passes) as f64,
            gpu_only,
        })
    }

    fn refusal_on_cpu(params: &Self::Params) -> Option<JobError> {
        params.dtype.unwrap_or_default().refuse_on_cpu(Self::NAME)
    }

    fn check_output(params: &Params, inputs: &Inputs, output: OutputMode) -> Result<(), JobError> {
        match params.shape(inputs)? {
            Some(s) => png_holds(output, s.batch as usize, s.channels as usize),
            None => Ok(()),
        }
    }

    fn run<B: Backend>(
        params: &Params,
        ctx: &RunContext<'_, B>,
    ) -> Result<serde_json::Value, JobError> {
        let dtype = params.dtype.unwrap_or_default();
        if let Some(refusal) = Self::refusal_on_cpu(params).filter(|_| !ctx.is_gpu) {
            return Err(refusal);
        }
        let Some(s) = params.shape(ctx.inputs)? else {
            return Err(JobError::internal("conv2d ran before its image was loaded"));
        };
        let [b, c, h, w] = [s.batch, s.channels, s.height, s.width].map(|d| d as usize);
        let (name, k, kernels) = params.kernels();
        let passes = kernels.len();
        // Depthwise: output channel `ch * passes + p` is pass `p` over input channel `ch`.
        let weights: Vec<f32> = (0..c).flat_map(|_| kernels.concat()).collect();
        let conv = ConvShape {
            batch: b,
            channels: c,
            height: h,
            width: w,
            out_channels: c * passes,
            kernel: [k, k],
            padding: [k / 2, k / 2],
            groups: c,
        };
        let one_image = b == 1 && !given_as_batch(params, ctx.inputs);
        // An image the user sent comes back inline when small (and one image: inline images
        // are [C, H, W]), else as an object; generated images get the summary only (unless
        // the job asks for the object).
        let inline_fits = if one_image { c * h * w } else { usize::MAX };
        let placement = ctx.place(params.image.is_some(), inline_fits);
        let Convolved {
            output,
            dtype: computed,
            engine,
            made_on,
        } = convolve(params, ctx, (&weights, &kernels), &conv, (dtype, placement))?;
        let mut out = json!({
            "shape": [b, c, h, w],
            "filter": name,
            "dtype": computed,
            "engine": engine,
            "summary": output.summary(),
        });
        if made_on == MadeOn::Device {
            out["inputs"] = json!(made_on.as_str());
        }
        let placement = match &output {
            Output::Values(values) => placement.finite(values),
            Output::Summary(_) => placement,
        };
        let values = || match output {
            Output::Values(values) => Ok(values),
            Output::Summary(_) => Err(JobError::internal("conv2d's output was not read back")),
        };
        match placement {
            Placement::Inline => {
                let values = values()?;
                let image: Vec<Vec<&[f32]>> = values
                    .chunks(h * w)
                    .map(|channel| channel.chunks(w).collect())
                    .collect();
                out["image"] = json!(image);
            }
            Placement::Object => {
                let shape = if one_image {
                    vec![c, h, w]
                } else {
                    vec![b, c, h, w]
                };
                ctx.sink
                    .put("image", kiln_data::HostTensor::new(shape, values()?));
            }
            Placement::Summary => {}
        }
        Ok(out)
    }
}

/// Refuse, before anything is computed, `"output": "png"` for a batch of several images (a
/// PNG holds one), or for images of more than 4 channels (a PNG's gray, gray and alpha, RGB or
/// RGBA; the output has the image's channels, a filter's passes combined).
fn png_holds(output: OutputMode, images: usize, channels: usize) -> Result<(), JobError> {
    if output != OutputMode::Png {
        return Ok(());
    }
    if images > 1 {
        return Err(JobError::invalid_input(format!(
            "\"output\": \"png\" holds one image, and this job's batch has {images}: store \
             it as npy or safetensors (`--output FILE.npy`), or send one image a job"
        )));
    }
    if channels > 4 {
        return Err(JobError::invalid_input(format!(
            "\"output\": \"png\" holds 1 to 4 channels (gray, gray and alpha, RGB, RGBA), \
             and this job's image has {channels}: store it as npy or safetensors (`--output \
             FILE.npy`)"
        )));
    }
    Ok(())
}

/// A convolution's output and how it was made.
struct Convolved {
    /// Every value, or only their summary (a generated image's output on cuDNN).
    output: Output,
    /// The dtype it really ran in.
    dtype: String,
    /// cudnn, direct, burn-cuda or burn-ndarray.
    engine: &'static str,
    /// Where its image was made.
    made_on: MadeOn,
}

/// The job's image on the host: given inline, loaded, or `None` when it is generated.
fn host_image<B: Backend>(
    params: &Params,
    ctx: &RunContext<'_, B>,
) -> Result<Option<Vec<f32>>, JobError> {
    Ok(match &params.image {
        Some(Input::Inline(image)) => Some(image.iter().flatten().flatten().copied().collect()),
        Some(Input::Object(_)) => Some(ctx.inputs.take_tensor("image")?.data),
        None => None,
    })
}

/// The convolution and the job's output from its maps: on cuDNN (the image made on the device
/// when generated, the output made and summarised there: [`cudnn::conv2d_from`]) where the
/// worker runs conv2d there; else on the CPU's direct loop or on Burn, with the image made on
/// the host.
fn convolve<B: Backend>(
    params: &Params,
    ctx: &RunContext<'_, B>,
    (weights, kernels): (&[f32], &[Vec<f32>]),
    conv: &ConvShape,
    (dtype, placement): (Dtype, Placement),
) -> Result<Convolved, JobError> {
    let given = host_image(params, ctx)?;
    let on_cudnn = ctx.engines.conv == ConvEngine::Native && conv.check().is_ok();
    if let (Some(index), true) = (ctx.cuda_index, on_cudnn) {
        let image = match &given {
            Some(pixels) => cudnn::Image::Host(pixels),
            None => cudnn::Image::Seeded(ctx.seed),
        };
        let read = ReadBack::for_placement(placement);
        match cudnn::conv2d_from(index, image, weights, conv, dtype, read) {
            Ok((output, made_on)) => {
                return Ok(Convolved {
                    output,
                    dtype: dtype.as_str().to_owned(),
                    engine: "cudnn",
                    made_on,
                });
            }
            Err(e) if e.kind == kiln_proto::ErrorKind::Internal => {
                tracing::warn!(error = %e.message, "cuDNN failed a conv2d; running it on Burn");
            }
            Err(e) => return Err(e),
        }
    }
    let pixels = given.unwrap_or_else(|| crate::seeded::image(ctx.seed, conv.input_len()));
    let passes = kernels.len();
    let (maps, computed, engine) = match (ctx.cuda_index, ctx.engines.conv) {
        (None, ConvEngine::Native) => {
            let maps = direct(ctx, &pixels, kernels, conv)?;
            (
                maps,
                dtype.as_str().to_owned(),
                crate::cpu::depthwise::ENGINE,
            )
        }
        _ => {
            let (maps, computed) = burn_conv2d::<B>(pixels, weights.to_vec(), conv, dtype, ctx)?;
            (maps, computed, crate::burn_engine(ctx.is_gpu))
        }
    };
    Ok(Convolved {
        output: Output::Values(magnitude(maps, passes, conv.height * conv.width)),
        dtype: computed,
        engine,
        made_on: MadeOn::Host,
    })
}

/// The maps on the CPU's direct depthwise loop, in pieces of whole planes with a checkpoint
/// between pieces, so that a cancel, a timeout or a drain lands within about a second on any
/// image.
fn direct<B: Backend>(
    ctx: &RunContext<'_, B>,
    pixels: &[f32],
    kernels: &[Vec<f32>],
    conv: &ConvShape,
) -> Result<Vec<f32>, JobError> {
    let [b, c, h, w] = [conv.batch, conv.channels, conv.height, conv.width];
    let ([k, _], passes) = (conv.kernel, kernels.len());
    let plane = h * w;
    let flops_per_plane = (plane * k * k * passes * 2).max(1);
    let per_piece = (CPU_PIECE_FLOPS / flops_per_plane).max(1);
    let pieces = (b * c).div_ceil(per_piece) as u64;
    let mut maps = vec![0.0f32; b * c * passes * plane];
    let piece = (per_piece * plane).max(1);
    let pieces_out = maps.chunks_mut(piece * passes);
    for (i, (chunk, out)) in pixels.chunks(piece).zip(pieces_out).enumerate() {
        ctx.checkpoint(i as u64, pieces)?;
        let depthwise = Depthwise {
            planes: chunk.len() / plane.max(1),
            height: h,
            width: w,
            side: k,
            kernels,
        };
        depthwise.run_into(chunk, out);
    }
    Ok(maps)
}

/// Work in one piece of a CPU convolution between checkpoints (about a second at most).
const CPU_PIECE_FLOPS: usize = 1 << 30;

/// The job's output from the convolution's maps, laid out [batch][channel][pass][pixel]: the
/// maps themselves for one pass, Sobel's √(gx² + gy²) per pixel for two.
pub(crate) fn magnitude(maps: Vec<f32>, passes: usize, plane: usize) -> Vec<f32> {
    if passes == 1 {
        return maps;
    }
    maps.chunks_exact(passes * plane)
        .flat_map(|maps| {
            let (gx, gy) = maps.split_at(plane);
            gx.iter().zip(gy).map(|(x, y)| (x * x + y * y).sqrt())
        })
        .collect()
}

/// The convolution on Burn's kernels, in `dtype`'s Burn element type (tf32 runs as Burn's f32);
/// returns its maps in f32, laid out as [`magnitude`] takes them, and the dtype it really ran
/// in.
fn burn_conv2d<B: Backend>(
    pixels: Vec<f32>,
    weights: Vec<f32>,
    conv: &ConvShape,
    dtype: Dtype,
    ctx: &RunContext<'_, B>,
) -> Result<(Vec<f32>, String), JobError> {
    let [b, c, h, w] = [conv.batch, conv.channels, conv.height, conv.width];
    let [k, _] = conv.kernel;
    let input = Tensor::<B, 4>::from_data(TensorData::new(pixels, [b, c, h, w]), &ctx.device);
    let weights = Tensor::<B, 4>::from_data(
        TensorData::new(weights, [conv.out_channels, 1, k, k]),
        &ctx.device,
    );
    let (input, weights) = match dtype.burn_dtype() {
        None => (input, weights),
        Some(low) => (input.cast(low), weights.cast(low)),
    };
    let options = ConvOptions::new([1, 1], conv.padding, [1, 1], conv.groups);
    let output = conv2d(input, weights, None, options);
    let computed = dtype_name(output.dtype());
    let output = match output.dtype() {
        DType::F32 => output,
        _ => output.cast(FloatDType::F32),
    };
    // Flattened before it is read: burn-ndarray reads a batch-1 convolution's output element
    // by element through a generic iterator (its strides look non-contiguous to it), 20–30×
    // slower than this copy (4.6 ms against 0.15 ms for 3×256², 67 ms against 2.2 ms for
    // 3×1024², on the 2-core dev machine).
    let maps = output
        .reshape([b * conv.out_channels * h * w])
        .into_data()
        .into_vec::<f32>()
        .map_err(|e| JobError::internal(format!("reading conv2d output: {e:?}")))?;
    Ok((maps, computed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sobel_magnitude_pairs_each_channels_two_maps() {
        // Two channels of two pixels: (gx, gy) maps [3, 0], [4, 1] and [0, 5], [0, 12].
        let maps = vec![3.0, 0.0, 4.0, 1.0, 0.0, 5.0, 0.0, 12.0];
        assert_eq!(magnitude(maps, 2, 2), [5.0, 1.0, 0.0, 13.0]);
        assert_eq!(magnitude(vec![1.0, -2.0], 1, 2), [1.0, -2.0]);
    }
}
