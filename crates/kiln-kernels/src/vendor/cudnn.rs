//! Convolutions on NVIDIA's cuDNN, the library PyTorch's `conv2d` runs on.
//!
//! Burn 0.21's CubeCL convolution reached 0.53 of cuDNN in TF32 and 0.33 in bf16 on an H200
//! (a dense 3×3, 64→64-channel convolution), and like its GEMM it has no strict f32 mode. So
//! `conv2d` jobs on a CUDA worker go through cuDNN by default, with the precision the job asks
//! for, set the way PyTorch sets it:
//!
//! | job `dtype` | tensors on the device | cuDNN compute type, math type |
//! |---|---|---|
//! | `f32` | f32 | f32, `CUDNN_FMA_MATH` (true f32, no tensor cores) |
//! | `tf32` | f32 | f32, `CUDNN_DEFAULT_MATH` (TF32 tensor cores allowed) |
//! | `bf16` | bf16 | f32, `CUDNN_TENSOR_OP_MATH` (f32 accumulation) |
//! | `f16` | f16 | f32, `CUDNN_TENSOR_OP_MATH` (f32 accumulation) |
//!
//! The algorithm for each new shape and dtype is measured once per process with
//! `cudnnFindConvolutionForwardAlgorithmEx` on the job's own buffers (PyTorch's
//! `cudnn.benchmark = True`) and kept; the fastest one that succeeded runs, with the math type
//! cuDNN measured it with (as PyTorch does), except that a `f32` job never takes a tensor-core
//! one.
//!
//! libcudnn (cuDNN 9) is loaded at run time, like libcuda and libcublas: a worker that cannot
//! load it, or whose start-up check ([`probe`]) fails, logs why and runs conv2d on Burn's
//! kernels instead ([`crate::ConvEngine::Burn`], also chosen with
//! `kiln worker --conv2d-engine burn`).
//!
//! Unsafe code (as in the other modules of `vendor/`; elsewhere in kiln only the vector-width
//! dispatch of the CPU loops): cuDNN's C API on raw descriptors and device pointers (cudarc's
//! typed wrappers do not expose the descriptors that `cudnnFindConvolutionForwardAlgorithmEx`
//! takes).
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cudnn::{result, result::CudnnError, sys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtrMut};
use kiln_proto::{ErrorKind, JobError};

use super::cuda::{Buffers, Handles, Library, lock};
use crate::Dtype;

const CUDNN: Library = Library {
    name: "cuDNN",
    file: "cudnn",
    kind: "conv2d",
    install: "install cuDNN 9 for your CUDA version (NVIDIA's libcudnn9-cuda-13 package or \
              PyTorch's nvidia-cudnn-cu13 wheel) and add its folder to LD_LIBRARY_PATH",
};

/// Largest workspace an algorithm may use (PyTorch lets cuDNN use what the caching allocator
/// can give; a worker shares its GPU with admission's budget, so it stays bounded).
const MAX_WORKSPACE: usize = 1 << 30;
/// Plans kept per device before the cache starts over (each is four small descriptors).
const MAX_PLANS: usize = 256;

/// One forward convolution: NCHW input, OIHW weights with `channels / groups` input channels
/// each, stride 1, no dilation, zero padding `padding` on each side, no bias, and
/// cross-correlation (the kernel is not flipped), as PyTorch's and Burn's `conv2d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvShape {
    /// Images in the batch.
    pub batch: usize,
    /// Input channels per image.
    pub channels: usize,
    /// Input rows.
    pub height: usize,
    /// Input columns.
    pub width: usize,
    /// Output channels per image.
    pub out_channels: usize,
    /// Kernel rows and columns.
    pub kernel: [usize; 2],
    /// Zero rows and columns added on each side.
    pub padding: [usize; 2],
    /// 1 for a dense convolution, `channels` for a depthwise one.
    pub groups: usize,
}

impl ConvShape {
    /// Output rows and columns.
    pub fn output_side(&self) -> [usize; 2] {
        [0, 1].map(|i| {
            let input = [self.height, self.width][i];
            (input + 2 * self.padding[i] + 1).saturating_sub(self.kernel[i])
        })
    }

    /// [batch, out_channels, rows, columns] of the output.
    pub fn output_dims(&self) -> [usize; 4] {
        let [h, w] = self.output_side();
        [self.batch, self.out_channels, h, w]
    }

    /// Elements of the input.
    pub fn input_len(&self) -> usize {
        self.batch * self.channels * self.height * self.width
    }

    /// Elements of the weights.
    pub fn weight_len(&self) -> usize {
        self.out_channels * (self.channels / self.groups.max(1)) * self.kernel[0] * self.kernel[1]
    }

    /// Elements of the output.
    pub fn output_len(&self) -> usize {
        self.output_dims().iter().product()
    }

    /// Refuse shapes cuDNN cannot take: groups that do not divide the channels, an output
    /// without pixels, sizes over cuDNN's 32-bit `int`.
    pub fn check(&self) -> Result<(), JobError> {
        let g = self.groups;
        if g == 0 || !self.channels.is_multiple_of(g) || !self.out_channels.is_multiple_of(g) {
            return Err(JobError::invalid_input(format!(
                "conv2d groups {g} must divide the input channels {} and output channels {}",
                self.channels, self.out_channels
            )));
        }
        if self.output_len() == 0 {
            return Err(JobError::invalid_input(format!(
                "conv2d output of {:?} has no pixels: the kernel {:?} is larger than the padded image",
                self.output_dims(),
                self.kernel
            )));
        }
        for (name, len) in [
            ("input", self.input_len()),
            ("weight", self.weight_len()),
            ("output", self.output_len()),
        ] {
            if c_int::try_from(len).is_err() {
                return Err(JobError::too_large(format!(
                    "conv2d {name} of {len} elements is over cuDNN's limit of {} per tensor",
                    c_int::MAX
                )));
            }
        }
        Ok(())
    }

    fn int(value: usize) -> c_int {
        // `check` bounds every tensor's element count, and so each of its sizes.
        c_int::try_from(value).unwrap_or(c_int::MAX)
    }
}

/// The convolution of [`ConvShape`] computed directly on the host, with f64 accumulation: the
/// reference of the start-up check and of the tests.
pub fn conv2d_reference(x: &[f32], w: &[f32], s: &ConvShape) -> Vec<f32> {
    let [oh, ow] = s.output_side();
    let per_group_in = s.channels / s.groups;
    let per_group_out = s.out_channels / s.groups;
    let [kh, kw] = s.kernel;
    let mut out = vec![0.0f32; s.output_len()];
    for b in 0..s.batch {
        for o in 0..s.out_channels {
            let group = o / per_group_out;
            for y in 0..oh {
                for x_ in 0..ow {
                    let mut acc = 0.0f64;
                    for ci in 0..per_group_in {
                        let c = group * per_group_in + ci;
                        for i in 0..kh {
                            for j in 0..kw {
                                let (iy, ix) = (y + i, x_ + j);
                                let (Some(iy), Some(ix)) =
                                    (iy.checked_sub(s.padding[0]), ix.checked_sub(s.padding[1]))
                                else {
                                    continue;
                                };
                                if iy >= s.height || ix >= s.width {
                                    continue;
                                }
                                let xv = x[((b * s.channels + c) * s.height + iy) * s.width + ix];
                                let wv = w[((o * per_group_in + ci) * kh + i) * kw + j];
                                acc += f64::from(xv) * f64::from(wv);
                            }
                        }
                    }
                    out[((b * s.out_channels + o) * oh + y) * ow + x_] = acc as f32;
                }
            }
        }
    }
    out
}

/// The convolutions of the start-up check: a dense 3×3 one (as Burn's layers and the
/// benchmark use) and a depthwise 5×5 one (as `conv2d` jobs use), each with its input and
/// weights. The values are small integers, so that every product and sum is exact in f32.
pub fn probe_cases() -> Vec<(ConvShape, Vec<f32>, Vec<f32>)> {
    let dense = ConvShape {
        batch: 2,
        channels: 3,
        height: 5,
        width: 6,
        out_channels: 4,
        kernel: [3, 3],
        padding: [1, 1],
        groups: 1,
    };
    let depthwise = ConvShape {
        batch: 1,
        channels: 3,
        height: 7,
        width: 5,
        out_channels: 6,
        kernel: [5, 5],
        padding: [2, 2],
        groups: 3,
    };
    [dense, depthwise]
        .into_iter()
        .map(|shape| {
            let x = (0..shape.input_len())
                .map(|i| (i % 7) as f32 - 3.0)
                .collect();
            let w = (0..shape.weight_len())
                .map(|i| (i % 5) as f32 - 2.0)
                .collect();
            (shape, x, w)
        })
        .collect()
}

/// Check that cuDNN works on CUDA device `index`: the library loads, and the convolutions of
/// [`probe_cases`] give the host's answer, to 1e-5 of the largest output (exact but for the FFT
/// and Winograd algorithms, whose transforms round; a wrong layout or a flipped kernel is off by
/// the size of the outputs). The error says what is missing or wrong.
pub fn probe(index: usize) -> Result<(), String> {
    for (shape, x, w) in probe_cases() {
        let want = conv2d_reference(&x, &w, &shape);
        let got = conv2d(index, &x, &w, &shape, Dtype::F32).map_err(|e| e.message)?;
        let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let off = got
            .iter()
            .zip(&want)
            .position(|(g, w)| (g - w).abs() > 1e-5 * scale);
        if got.len() != want.len() || off.is_some() {
            return Err(format!(
                "cuDNN's conv2d of {:?} (groups {}) differs from the host's at element {off:?} \
                 of {}",
                shape.output_dims(),
                shape.groups,
                want.len()
            ));
        }
    }
    Ok(())
}

/// The descriptors of one shape and dtype, and the algorithm measured for it.
struct Plan {
    desc: Descriptors,
    algo: sys::cudnnConvolutionFwdAlgo_t,
    workspace: usize,
}

/// cuDNN's description of one convolution: input, weights, output, and the convolution itself.
struct Descriptors {
    x: TensorDesc,
    w: FilterDesc,
    y: TensorDesc,
    conv: ConvDesc,
}

impl Descriptors {
    /// Describe `shape` (checked by the caller) in `dtype`, and check that cuDNN's idea of the
    /// output is kiln's. Host-side only: no device or handle needed.
    fn new(shape: &ConvShape, dtype: Dtype) -> Result<Self, JobError> {
        let (element, math) = types(dtype);
        let int = ConvShape::int;
        let x = TensorDesc::new(
            element,
            [shape.batch, shape.channels, shape.height, shape.width].map(int),
        )
        .map_err(|e| dnn_error("describing the input", e))?;
        let w = FilterDesc::new(
            element,
            [
                shape.out_channels,
                shape.channels / shape.groups,
                shape.kernel[0],
                shape.kernel[1],
            ]
            .map(int),
        )
        .map_err(|e| dnn_error("describing the weights", e))?;
        let y = TensorDesc::new(element, shape.output_dims().map(int))
            .map_err(|e| dnn_error("describing the output", e))?;
        let conv = ConvDesc::new(shape.padding.map(int), int(shape.groups), math)
            .map_err(|e| dnn_error("describing the convolution", e))?;
        let desc = Descriptors { x, w, y, conv };
        let dims = desc
            .output_dims()
            .map_err(|e| dnn_error("computing the output size", e))?;
        if dims != shape.output_dims().map(int) {
            return Err(JobError::internal(format!(
                "cuDNN computes a conv2d output of {dims:?}, kiln {:?}",
                shape.output_dims()
            )));
        }
        Ok(desc)
    }

    /// The output size cuDNN computes from the input, weights and convolution.
    fn output_dims(&self) -> Result<[c_int; 4], CudnnError> {
        let mut dims: [c_int; 4] = [0; 4];
        // SAFETY: the descriptors are live and initialised; the four out-pointers are distinct
        // elements of `dims`.
        unsafe {
            let [n, c, h, w] = &mut dims;
            sys::cudnnGetConvolution2dForwardOutputDim(self.conv.0, self.x.0, self.w.0, n, c, h, w)
        }
        .result()?;
        Ok(dims)
    }
}

/// The number of forward algorithms cuDNN has, the most it reports on.
const ALGOS: usize = sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_COUNT as usize;

/// Room for cuDNN's report on every algorithm.
fn perf_slots() -> [sys::cudnnConvolutionFwdAlgoPerf_t; ALGOS] {
    // SAFETY: an all-zero perf struct is valid (enums with a zero variant, numbers); cuDNN
    // overwrites the first ones it reports on.
    unsafe { std::mem::zeroed() }
}

/// A cuDNN handle on its own stream of one device, its plans and its workspace.
struct Dnn {
    stream: Arc<CudaStream>,
    handle: Handle,
    plans: HashMap<(ConvShape, Dtype), Plan>,
    workspace: Option<CudaSlice<u8>>,
}

fn dnn_for(index: usize) -> Result<Arc<Mutex<Dnn>>, JobError> {
    static FOUND: OnceLock<Result<String, String>> = OnceLock::new();
    static HANDLES: Handles<Dnn> = OnceLock::new();
    CUDNN.loads(&FOUND).map_err(JobError::internal)?;
    CUDNN.handle(&HANDLES, index, |stream| {
        let handle = Handle::new(&stream).map_err(|e| dnn_error("creating a cuDNN handle", e))?;
        Ok(Dnn {
            stream,
            handle,
            plans: HashMap::new(),
            workspace: None,
        })
    })
}

fn dnn_error(what: &str, e: CudnnError) -> JobError {
    let text = format!("{:?}", e.0);
    if text.contains("ALLOC") {
        JobError::new(
            ErrorKind::OutOfMemory,
            format!("cuDNN ran out of memory {what} ({text})"),
        )
    } else {
        JobError::internal(format!("cuDNN failed {what}: {text}"))
    }
}

/// The cuDNN types of a job dtype: tensor element type, math type. The compute type is f32 for
/// all of them.
fn types(dtype: Dtype) -> (sys::cudnnDataType_t, sys::cudnnMathType_t) {
    use sys::cudnnDataType_t::{CUDNN_DATA_BFLOAT16, CUDNN_DATA_FLOAT, CUDNN_DATA_HALF};
    use sys::cudnnMathType_t::{CUDNN_DEFAULT_MATH, CUDNN_FMA_MATH, CUDNN_TENSOR_OP_MATH};
    match dtype {
        Dtype::F32 => (CUDNN_DATA_FLOAT, CUDNN_FMA_MATH),
        Dtype::Tf32 => (CUDNN_DATA_FLOAT, CUDNN_DEFAULT_MATH),
        Dtype::Bf16 => (CUDNN_DATA_BFLOAT16, CUDNN_TENSOR_OP_MATH),
        Dtype::F16 => (CUDNN_DATA_HALF, CUDNN_TENSOR_OP_MATH),
    }
}

impl Dnn {
    /// The plan of `shape` in `dtype`, measuring the algorithms on `ops` the first time.
    fn plan(
        &mut self,
        shape: &ConvShape,
        dtype: Dtype,
        ops: &mut Buffers,
    ) -> Result<&Plan, JobError> {
        let key = (*shape, dtype);
        if !self.plans.contains_key(&key) {
            let plan = self.measure(shape, dtype, ops)?;
            if self.plans.len() >= MAX_PLANS {
                self.plans.clear();
            }
            self.plans.insert(key, plan);
        }
        self.plans
            .get(&key)
            .ok_or_else(|| JobError::internal("the cuDNN plan was not kept"))
    }

    /// Describe the convolution and measure cuDNN's algorithms for it on `ops`.
    fn measure(
        &mut self,
        shape: &ConvShape,
        dtype: Dtype,
        ops: &mut Buffers,
    ) -> Result<Plan, JobError> {
        let desc = Descriptors::new(shape, dtype)?;

        // The largest workspace any algorithm asks for, within bounds and what the GPU can
        // give; algorithms that need more are not measured.
        let wanted = self.largest_workspace(&desc);
        let workspace = self.reserve_workspace(wanted)?;

        let mut returned: c_int = 0;
        let mut perf = perf_slots();
        let stream = self.stream.clone();
        {
            let at = ops.pointers(&stream);
            let (space, _space) = match self.workspace.as_mut() {
                Some(buffer) if workspace > 0 => {
                    let (p, record) = buffer.device_ptr_mut(&stream);
                    (p as *mut c_void, Some(record))
                }
                _ => (std::ptr::null_mut(), None),
            };
            // SAFETY: the handle works on `stream`, where the buffers live; x, w and y hold the
            // element counts their descriptors describe, in `dtype`'s element type
            // (`Buffers::upload` made them from slices of those lengths, checked by `conv2d`);
            // the workspace holds `workspace` bytes; `perf` has room for ALGOS results.
            unsafe {
                sys::cudnnFindConvolutionForwardAlgorithmEx(
                    self.handle.0,
                    desc.x.0,
                    at.a as *const c_void,
                    desc.w.0,
                    at.b as *const c_void,
                    desc.conv.0,
                    desc.y.0,
                    at.out as *mut c_void,
                    ALGOS as c_int,
                    &mut returned,
                    perf.as_mut_ptr(),
                    space,
                    workspace,
                )
            }
            .result()
            .map_err(|e| dnn_error("measuring the convolution algorithms", e))?;
        }
        let strict = dtype == Dtype::F32;
        let chosen = perf
            .iter()
            .take(usize::try_from(returned).unwrap_or(0))
            .find(|p| {
                p.status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS
                    && p.memory <= workspace
                    && !(strict && p.mathType != sys::cudnnMathType_t::CUDNN_FMA_MATH)
            })
            .ok_or_else(|| {
                JobError::internal(format!(
                    "cuDNN has no algorithm for a {} conv2d of {:?} with kernel {:?} and {} \
                     groups within a {workspace}-byte workspace",
                    dtype.as_str(),
                    [shape.batch, shape.channels, shape.height, shape.width],
                    shape.kernel,
                    shape.groups
                ))
            })?;
        desc.conv
            .set_math(chosen.mathType)
            .map_err(|e| dnn_error("setting the math type", e))?;
        tracing::debug!(
            shape = ?shape,
            dtype = dtype.as_str(),
            algo = ?chosen.algo,
            math = ?chosen.mathType,
            ms = chosen.time,
            workspace = chosen.memory,
            "cudnn conv2d plan"
        );
        Ok(Plan {
            desc,
            algo: chosen.algo,
            workspace: chosen.memory,
        })
    }

    /// The largest workspace of the algorithms cuDNN's heuristics list, at most
    /// [`MAX_WORKSPACE`].
    fn largest_workspace(&self, desc: &Descriptors) -> usize {
        let mut returned: c_int = 0;
        let mut perf = perf_slots();
        // SAFETY: live descriptors, room for ALGOS results.
        let listed = unsafe {
            result::get_convolution_forward_algorithm(
                self.handle.0,
                desc.x.0,
                desc.w.0,
                desc.conv.0,
                desc.y.0,
                ALGOS as c_int,
                &mut returned,
                perf.as_mut_ptr(),
            )
        };
        if listed.is_err() {
            return 0;
        }
        perf.iter()
            .take(usize::try_from(returned).unwrap_or(0))
            .filter(|p| p.status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS)
            .map(|p| p.memory)
            .filter(|&m| m <= MAX_WORKSPACE)
            .max()
            .unwrap_or(0)
    }

    /// A workspace of at least `bytes`, or of as much as the GPU gives (halving down to none);
    /// returns its size.
    fn reserve_workspace(&mut self, bytes: usize) -> Result<usize, JobError> {
        if let Some(buffer) = &self.workspace
            && buffer.len() >= bytes
        {
            return Ok(buffer.len());
        }
        self.workspace = None;
        let mut want = bytes;
        while want > 0 {
            match self.stream.alloc_zeros::<u8>(want) {
                Ok(buffer) => {
                    self.workspace = Some(buffer);
                    return Ok(want);
                }
                Err(e) if format!("{e:?}").contains("OUT_OF_MEMORY") => want /= 2,
                Err(e) => return Err(CUDNN.driver_error("allocating the workspace", e)),
            }
        }
        Ok(0)
    }

    /// Launch y = conv(x, w) with `plan` on the handle's stream; does not wait for it.
    fn launch(
        &mut self,
        shape: &ConvShape,
        dtype: Dtype,
        ops: &mut Buffers,
    ) -> Result<(), JobError> {
        CUDNN.bind(&self.stream)?;
        let needed = self.plan(shape, dtype, ops)?.workspace;
        let workspace = self.reserve_workspace(needed)?;
        if workspace < needed {
            return Err(JobError::new(
                ErrorKind::OutOfMemory,
                format!(
                    "the GPU ran out of memory for cuDNN's {needed}-byte workspace of this \
                     conv2d (it gave {workspace}); submit a smaller job or run it on a device \
                     with more memory"
                ),
            ));
        }
        let stream = self.stream.clone();
        let plan = self
            .plans
            .get(&(*shape, dtype))
            .ok_or_else(|| JobError::internal("the cuDNN plan was not kept"))?;
        let at = ops.pointers(&stream);
        let (space, _space) = match self.workspace.as_mut() {
            Some(buffer) if plan.workspace > 0 => {
                let (p, record) = buffer.device_ptr_mut(&stream);
                (p as *mut c_void, Some(record))
            }
            _ => (std::ptr::null_mut(), None),
        };
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: as in `measure`; alpha and beta are f32 host scalars, as the f32 compute type
        // requires; the workspace holds at least the plan's bytes.
        unsafe {
            result::convolution_forward(
                self.handle.0,
                (&alpha as *const f32).cast::<c_void>(),
                plan.desc.x.0,
                at.a as *const c_void,
                plan.desc.w.0,
                at.b as *const c_void,
                plan.desc.conv.0,
                plan.algo,
                space,
                if plan.workspace > 0 { workspace } else { 0 },
                (&beta as *const f32).cast::<c_void>(),
                plan.desc.y.0,
                at.out as *mut c_void,
            )
        }
        .map_err(|e| dnn_error("running the convolution", e))
    }
}

/// `y = conv(x, w)` on CUDA device `index` through cuDNN: x and w are f32 on the host, laid out
/// as [`ConvShape`] says; they are converted to `dtype`'s element type (bf16/f16 round to
/// nearest) before the upload, and y comes back as f32.
pub fn conv2d(
    index: usize,
    x: &[f32],
    w: &[f32],
    shape: &ConvShape,
    dtype: Dtype,
) -> Result<Vec<f32>, JobError> {
    shape.check()?;
    if x.len() != shape.input_len() || w.len() != shape.weight_len() {
        return Err(JobError::internal(format!(
            "conv2d was given {} input and {} weight values for {shape:?}",
            x.len(),
            w.len()
        )));
    }
    let dnn = dnn_for(index)?;
    let mut dnn = lock(&dnn);
    let stream = dnn.stream.clone();
    let mut ops = Buffers::upload(
        &CUDNN,
        &stream,
        [("the input", x), ("the weights", w)],
        ("the output", shape.output_len()),
        dtype,
    )?;
    dnn.launch(shape, dtype, &mut ops)?;
    ops.download(&CUDNN, &stream, "the output", dtype)
}

/// Convolutions of one shape and dtype over seeded values, with the operands kept on the
/// device, for the kernel benchmarks (which time [`Convolutions::launch`] between two
/// [`Convolutions::sync`] calls, as they time Burn between two `B::sync`).
pub struct Convolutions {
    dnn: Arc<Mutex<Dnn>>,
    operands: Buffers,
    shape: ConvShape,
    dtype: Dtype,
}

impl Convolutions {
    /// Upload seeded operands of `shape` in `dtype` to CUDA device `index`; an error if the
    /// shape is invalid, cuDNN does not load or the device has no room.
    pub fn new(index: usize, shape: ConvShape, dtype: Dtype) -> Result<Self, String> {
        shape.check().map_err(|e| e.message)?;
        let x = crate::seeded_values(7, 0, shape.input_len());
        let w: Vec<f32> = crate::seeded_values(7, 1, shape.weight_len())
            .into_iter()
            .map(|v| v * 0.1)
            .collect();
        let dnn = dnn_for(index).map_err(|e| e.message)?;
        let stream = lock(&dnn).stream.clone();
        let operands = Buffers::upload(
            &CUDNN,
            &stream,
            [("the input", &x), ("the weights", &w)],
            ("the output", shape.output_len()),
            dtype,
        )
        .map_err(|e| e.message)?;
        Ok(Convolutions {
            dnn,
            operands,
            shape,
            dtype,
        })
    }

    /// Start one convolution on the handle's stream; does not wait for it. The first call
    /// measures the algorithms.
    pub fn launch(&mut self) -> Result<(), String> {
        lock(&self.dnn)
            .launch(&self.shape, self.dtype, &mut self.operands)
            .map_err(|e| e.message)
    }

    /// The algorithm and math type chosen for this shape, once [`Convolutions::launch`] ran.
    pub fn algorithm(&self) -> Option<String> {
        let dnn = lock(&self.dnn);
        let plan = dnn.plans.get(&(self.shape, self.dtype))?;
        let math = plan.desc.conv.math().ok()?;
        Some(format!("{:?}, {:?}", plan.algo, math))
    }

    /// Wait for the convolutions launched so far.
    pub fn sync(&self) -> Result<(), String> {
        lock(&self.dnn)
            .stream
            .synchronize()
            .map_err(|e| format!("stream sync: {e:?}"))
    }
}

/// A cuDNN handle, destroyed on drop.
struct Handle(sys::cudnnHandle_t);

// SAFETY: cuDNN lets any host thread use a handle, one at a time; kiln's handles live behind a
// Mutex (`Dnn`), so they are never used by two threads at once.
unsafe impl Send for Handle {}

impl Handle {
    fn new(stream: &CudaStream) -> Result<Self, CudnnError> {
        let handle = Handle(result::create_handle()?);
        // SAFETY: a live handle and the live stream it will work on (the stream outlives it:
        // both belong to the same `Dnn`, and the stream is an Arc kept there).
        unsafe { result::set_stream(handle.0, stream.cu_stream() as sys::cudaStream_t) }?;
        Ok(handle)
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreate and dropped once.
        let _ = unsafe { result::destroy_handle(self.0) };
    }
}

/// A 4-D NCHW tensor descriptor, destroyed on drop.
struct TensorDesc(sys::cudnnTensorDescriptor_t);

// SAFETY: descriptors are plain host structures, used under the `Dnn` Mutex.
unsafe impl Send for TensorDesc {}

impl TensorDesc {
    fn new(element: sys::cudnnDataType_t, dims: [c_int; 4]) -> Result<Self, CudnnError> {
        let desc = TensorDesc(result::create_tensor_descriptor()?);
        // SAFETY: a live descriptor.
        unsafe {
            result::set_tensor4d_descriptor(
                desc.0,
                sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                element,
                dims,
            )
        }?;
        Ok(desc)
    }
}

impl Drop for TensorDesc {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreateTensorDescriptor and dropped once.
        let _ = unsafe { result::destroy_tensor_descriptor(self.0) };
    }
}

/// A 4-D OIHW filter descriptor, destroyed on drop.
struct FilterDesc(sys::cudnnFilterDescriptor_t);

// SAFETY: as for `TensorDesc`.
unsafe impl Send for FilterDesc {}

impl FilterDesc {
    fn new(element: sys::cudnnDataType_t, dims: [c_int; 4]) -> Result<Self, CudnnError> {
        let desc = FilterDesc(result::create_filter_descriptor()?);
        // SAFETY: a live descriptor.
        unsafe {
            result::set_filter4d_descriptor(
                desc.0,
                element,
                sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                dims,
            )
        }?;
        Ok(desc)
    }
}

impl Drop for FilterDesc {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreateFilterDescriptor and dropped once.
        let _ = unsafe { result::destroy_filter_descriptor(self.0) };
    }
}

/// A 2-D convolution descriptor (stride 1, no dilation, cross-correlation, f32 compute),
/// destroyed on drop.
struct ConvDesc(sys::cudnnConvolutionDescriptor_t);

// SAFETY: as for `TensorDesc`.
unsafe impl Send for ConvDesc {}

impl ConvDesc {
    fn new(
        [pad_h, pad_w]: [c_int; 2],
        groups: c_int,
        math: sys::cudnnMathType_t,
    ) -> Result<Self, CudnnError> {
        let desc = ConvDesc(result::create_convolution_descriptor()?);
        // SAFETY: a live descriptor.
        unsafe {
            result::set_convolution2d_descriptor(
                desc.0,
                pad_h,
                pad_w,
                1,
                1,
                1,
                1,
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
            )
        }?;
        // SAFETY: a live descriptor.
        unsafe { result::set_convolution_group_count(desc.0, groups) }?;
        desc.set_math(math)?;
        Ok(desc)
    }

    fn set_math(&self, math: sys::cudnnMathType_t) -> Result<(), CudnnError> {
        // SAFETY: a live descriptor.
        unsafe { result::set_convolution_math_type(self.0, math) }
    }

    fn math(&self) -> Result<sys::cudnnMathType_t, CudnnError> {
        let mut math = sys::cudnnMathType_t::CUDNN_DEFAULT_MATH;
        // SAFETY: a live descriptor and an out-pointer to a local.
        unsafe { sys::cudnnGetConvolutionMathType(self.0, &mut math) }.result()?;
        Ok(math)
    }
}

impl Drop for ConvDesc {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreateConvolutionDescriptor and dropped once.
        let _ = unsafe { result::destroy_convolution_descriptor(self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(groups: usize, channels: usize, out: usize) -> ConvShape {
        ConvShape {
            batch: 1,
            channels,
            height: 3,
            width: 4,
            out_channels: out,
            kernel: [3, 3],
            padding: [1, 1],
            groups,
        }
    }

    #[test]
    fn same_padding_keeps_the_size_and_valid_padding_shrinks_it() {
        let same = shape(1, 2, 5);
        assert_eq!(same.output_dims(), [1, 5, 3, 4]);
        assert_eq!(same.weight_len(), 5 * 2 * 9);
        let valid = ConvShape {
            padding: [0, 0],
            ..same
        };
        assert_eq!(valid.output_dims(), [1, 5, 1, 2]);
        let none = ConvShape {
            kernel: [5, 5],
            ..valid
        };
        assert_eq!(none.output_len(), 0);
        assert_eq!(none.check().unwrap_err().kind, ErrorKind::InvalidInput);
    }

    #[test]
    fn groups_must_divide_both_channel_counts() {
        assert!(shape(3, 3, 6).check().is_ok());
        assert_eq!(shape(1, 3, 6).weight_len(), 6 * 3 * 9);
        assert_eq!(shape(3, 3, 6).weight_len(), 6 * 9);
        let e = shape(2, 3, 6).check().unwrap_err();
        assert_eq!(
            e.message,
            "conv2d groups 2 must divide the input channels 3 and output channels 6"
        );
        assert_eq!(
            shape(0, 3, 6).check().unwrap_err().kind,
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn tensors_over_the_int_limit_are_too_large() {
        let big = ConvShape {
            batch: 1 << 12,
            channels: 1 << 10,
            height: 1 << 5,
            width: 1 << 5,
            out_channels: 1,
            kernel: [1, 1],
            padding: [0, 0],
            groups: 1,
        };
        let e = big.check().unwrap_err();
        assert_eq!(e.kind, ErrorKind::TooLarge);
        assert!(
            e.message.starts_with("conv2d input of 4294967296 elements"),
            "{}",
            e.message
        );
    }

    #[test]
    fn the_reference_is_a_cross_correlation_with_zero_padding() {
        // One 3x4 image, an identity kernel shifted right: each output takes its right
        // neighbour, and the last column reads the zero padding.
        let s = shape(1, 1, 1);
        let x: Vec<f32> = (1..=12).map(|v| v as f32).collect();
        let mut w = vec![0.0; 9];
        w[5] = 1.0; // row 1, column 2
        assert_eq!(
            conv2d_reference(&x, &w, &s),
            [2., 3., 4., 0., 6., 7., 8., 0., 10., 11., 12., 0.]
        );
        // A 3x3 box sum at the centre of a 3x3 image of ones is 9, at a corner 4.
        let ones = ConvShape { width: 3, ..s };
        let out = conv2d_reference(&[1.0; 9], &[1.0; 9], &ones);
        assert_eq!(out, [4., 6., 4., 6., 9., 6., 4., 6., 4.]);
    }

    #[test]
    fn the_reference_keeps_groups_apart() {
        // Depthwise over two channels: channel 0 is scaled by 2, channel 1 by -1 (1x1 kernels).
        let s = ConvShape {
            kernel: [1, 1],
            padding: [0, 0],
            ..shape(2, 2, 2)
        };
        let x: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let out = conv2d_reference(&x, &[2.0, -1.0], &s);
        let want: Vec<f32> = (0..12)
            .map(|v| 2.0 * v as f32)
            .chain((12..24).map(|v| -(v as f32)))
            .collect();
        assert_eq!(out, want);
    }

    /// cuDNN's entry points kiln calls; cudarc resolves each on first use and panics on a
    /// missing one.
    const SYMBOLS: [&str; 19] = [
        "cudnnCreate",
        "cudnnDestroy",
        "cudnnSetStream",
        "cudnnCreateTensorDescriptor",
        "cudnnSetTensor4dDescriptor",
        "cudnnDestroyTensorDescriptor",
        "cudnnCreateFilterDescriptor",
        "cudnnSetFilter4dDescriptor",
        "cudnnDestroyFilterDescriptor",
        "cudnnCreateConvolutionDescriptor",
        "cudnnSetConvolution2dDescriptor",
        "cudnnSetConvolutionGroupCount",
        "cudnnSetConvolutionMathType",
        "cudnnGetConvolutionMathType",
        "cudnnDestroyConvolutionDescriptor",
        "cudnnGetConvolution2dForwardOutputDim",
        "cudnnGetConvolutionForwardAlgorithm_v7",
        "cudnnFindConvolutionForwardAlgorithmEx",
        "cudnnConvolutionForward",
    ];

    /// Without a GPU, where libcudnn loads (it needs no device for this): every entry point
    /// exists, and cuDNN accepts kiln's descriptors in every dtype and computes the output size
    /// kiln computes. `./dev cudnn-check` runs it against PyTorch's cuDNN wheel.
    #[test]
    fn cudnn_takes_kilns_descriptors_and_agrees_on_output_sizes() {
        static FOUND: OnceLock<Result<String, String>> = OnceLock::new();
        if let Err(why) = CUDNN.loads(&FOUND) {
            eprintln!("SKIPPED: {why}");
            return;
        }
        let library = FOUND.get().unwrap().as_ref().unwrap();
        // SAFETY: loading the library runs its initialisers only.
        let lib = unsafe { libloading::Library::new(library) }.unwrap();
        for symbol in SYMBOLS {
            // SAFETY: only looked up, never called.
            let found = unsafe { lib.get::<*const c_void>(symbol.as_bytes()) };
            assert!(found.is_ok(), "{library} lacks {symbol}");
        }
        println!("cuDNN {} from {library}", result::get_version());
        let mut shapes: Vec<ConvShape> = probe_cases().into_iter().map(|(s, _, _)| s).collect();
        shapes.push(ConvShape {
            batch: 32,
            channels: 64,
            height: 224,
            width: 224,
            out_channels: 64,
            kernel: [3, 3],
            padding: [1, 1],
            groups: 1,
        });
        shapes.push(ConvShape {
            padding: [0, 1],
            kernel: [5, 3],
            ..shapes[0]
        });
        for shape in shapes {
            for dtype in [Dtype::F32, Dtype::Tf32, Dtype::Bf16, Dtype::F16] {
                let what = format!("{shape:?} {}", dtype.as_str());
                let desc = Descriptors::new(&shape, dtype)
                    .unwrap_or_else(|e| panic!("{what}: {}", e.message));
                assert_eq!(
                    desc.output_dims().unwrap(),
                    shape.output_dims().map(ConvShape::int),
                    "{what}"
                );
                assert_eq!(desc.conv.math().unwrap(), types(dtype).1, "{what}");
            }
        }
    }

    #[test]
    fn each_dtype_maps_to_pytorchs_math_type() {
        use sys::cudnnMathType_t::*;
        assert_eq!(types(Dtype::F32).1, CUDNN_FMA_MATH);
        assert_eq!(types(Dtype::Tf32).1, CUDNN_DEFAULT_MATH);
        assert_eq!(types(Dtype::Bf16).1, CUDNN_TENSOR_OP_MATH);
        assert_eq!(types(Dtype::F16).0, sys::cudnnDataType_t::CUDNN_DATA_HALF);
    }
}
