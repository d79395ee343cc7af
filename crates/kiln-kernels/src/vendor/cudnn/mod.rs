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

mod descriptors;
mod shape;

use std::borrow::Cow;
use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cudnn::{result, result::CudnnError, sys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtrMut};
use kiln_proto::{ErrorKind, JobError};

use self::descriptors::{ALGOS, Descriptors, Handle, perf_slots};
pub use self::shape::{ConvShape, conv2d_reference, probe_cases};
use super::cublas::{MadeOn, Output, ReadBack};
use super::cuda::{Buffers, Handles, Library, lock, read_values};
use super::nvrtc::{Generator, Magnitudes, Maps, generator, magnitudes, summarizer};
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

        let measured = self.find_algorithms(&desc, ops, workspace)?;
        let strict = dtype == Dtype::F32;
        let chosen = measured
            .iter()
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

    /// cuDNN's report on running each of its algorithms for `desc` on `ops`, with `workspace`
    /// bytes of workspace, fastest first (`cudnnFindConvolutionForwardAlgorithmEx`).
    fn find_algorithms(
        &mut self,
        desc: &Descriptors,
        ops: &mut Buffers,
        workspace: usize,
    ) -> Result<Vec<sys::cudnnConvolutionFwdAlgoPerf_t>, JobError> {
        let mut returned: c_int = 0;
        let mut perf = perf_slots();
        let stream = self.stream.clone();
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
        let reported = usize::try_from(returned).unwrap_or(0);
        Ok(perf.into_iter().take(reported).collect())
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

/// Where a conv2d job's image comes from.
#[derive(Debug, Clone, Copy)]
pub enum Image<'a> {
    /// f32 values on the host (given or loaded), uploaded.
    Host(&'a [f32]),
    /// `seeded_values(seed, 0, ..)` mapped to [0, 1) (`(v + 1) / 2`): made on the device by
    /// [`super::nvrtc`]'s generator, or on the host and uploaded where it is not available.
    Seeded(u64),
}

/// A conv2d job on CUDA device `index` through cuDNN: the depthwise convolution of the image
/// (from `image`) with the f32 weights `w` (`passes` = `shape.out_channels / shape.channels`
/// maps per channel: 1, or 2 for Sobel), in `dtype`'s element type, and the job's output made
/// from the maps (Sobel's magnitude √(gx² + gy²), or the map, as f32: what `magnitude` in
/// `kinds/conv2d.rs` makes on the host). The output (every value, or its summary: `read`)
/// comes back with where the image was made. The output is made on the device by
/// [`super::nvrtc`]'s conv2d output kernel, and summarised there when large; where that kernel
/// is not available, the maps are read back and the host makes it.
pub fn conv2d_from(
    index: usize,
    image: Image<'_>,
    w: &[f32],
    shape: &ConvShape,
    dtype: Dtype,
    read: ReadBack,
) -> Result<(Output, MadeOn), JobError> {
    shape.check()?;
    let maps = conv_maps(shape)?;
    let wrong = |what: &str, len: usize, want: usize| {
        JobError::internal(format!(
            "conv2d was given {len} {what} values for {shape:?}, not {want}"
        ))
    };
    if w.len() != shape.weight_len() {
        return Err(wrong("weight", w.len(), shape.weight_len()));
    }
    let len = shape.input_len();
    if let Image::Host(x) = image
        && x.len() != len
    {
        return Err(wrong("image", x.len(), len));
    }
    let dnn = dnn_for(index)?;
    let stream = lock(&dnn).stream.clone();
    let pixels = Pixels::of(image, &stream, len);
    // The first job on a device compiles and loads the output and summary kernels here, not
    // while holding the handle every conv2d job on the device waits for (`output` finds them
    // loaded; why one is missing is logged once, and `output` takes the host's way).
    let _ = (magnitudes(&stream), summarizer(&stream));
    let mut dnn = lock(&dnn);
    let out = ("the output", shape.output_len());
    let mut ops = match &pixels {
        Pixels::Host(x) => {
            let inputs = [("the image", &**x), ("the weights", w)];
            Buffers::upload(&CUDNN, &stream, inputs, out, dtype)?
        }
        Pixels::Device(generator, seed) => {
            let inputs = (("the image", len), ("the weights", w));
            Buffers::seeded_image(&CUDNN, &stream, (generator, *seed), inputs, out, dtype)?
        }
    };
    dnn.launch(shape, dtype, &mut ops)?;
    let made_on = match pixels {
        Pixels::Host(_) => MadeOn::Host,
        Pixels::Device(..) => MadeOn::Device,
    };
    Ok((output(&stream, &ops, maps, dtype, read)?, made_on))
}

/// A conv2d job's image ready to go to the device: host values (given, or generated on the
/// host where the generator is not available), or the generator and the seed.
enum Pixels<'a> {
    Host(Cow<'a, [f32]>),
    Device(Arc<Generator>, u64),
}

impl<'a> Pixels<'a> {
    /// Resolve `image` (of `len` values) for `stream`'s device; host generation, where
    /// needed, runs before the handle is locked for the job.
    fn of(image: Image<'a>, stream: &Arc<CudaStream>, len: usize) -> Self {
        match image {
            Image::Host(x) => Pixels::Host(Cow::Borrowed(x)),
            Image::Seeded(seed) => match generator(stream) {
                Ok(generator) => Pixels::Device(generator, seed),
                // Why is logged once per device by `generator`.
                Err(_) => Pixels::Host(Cow::Owned(crate::seeded::image(seed, len))),
            },
        }
    }
}

/// The planes, plane size and passes of a conv2d job's maps: an error for a convolution whose
/// maps are not a depthwise one's with one or two passes.
fn conv_maps(shape: &ConvShape) -> Result<Maps, JobError> {
    let passes = shape.out_channels / shape.channels.max(1);
    let [h, w] = shape.output_side();
    if shape.groups != shape.channels
        || shape.out_channels != shape.channels * passes
        || !(1..=2).contains(&passes)
        || [h, w] != [shape.height, shape.width]
    {
        return Err(JobError::internal(format!(
            "{shape:?} is not a conv2d job's depthwise convolution with one or two passes"
        )));
    }
    Ok(Maps {
        planes: shape.batch * shape.channels,
        plane: h * w,
        passes,
    })
}

/// The job's output from the maps in `ops` (waits for the stream): made and, when large,
/// summarised on the device where the output kernel loads; else the maps read back and the
/// host's `magnitude`.
fn output(
    stream: &Arc<CudaStream>,
    ops: &Buffers,
    maps: Maps,
    dtype: Dtype,
    read: ReadBack,
) -> Result<Output, JobError> {
    const WHAT: &str = "the output";
    let made;
    let values = match (ops, maps.passes) {
        // f32 maps of one pass are the output already.
        (Buffers::Full(ops), 1) => ops.output(),
        // Why a device has no output kernel is logged once by `magnitudes`.
        _ => match magnitudes(stream) {
            Ok(kernel) => {
                made = make_output(&kernel, stream, ops, maps, dtype)?;
                &made
            }
            Err(_) => {
                let read_maps = ops.download(&CUDNN, stream, WHAT, dtype)?;
                let values = crate::kinds::conv2d::magnitude(read_maps, maps.passes, maps.plane);
                return Ok(Output::read(values, read));
            }
        },
    };
    read_values(&CUDNN, stream, (WHAT, values), read)
}

/// The output kernel run on the maps in `ops`: the output, as f32, in a new buffer.
fn make_output(
    kernel: &Magnitudes,
    stream: &Arc<CudaStream>,
    ops: &Buffers,
    maps: Maps,
    dtype: Dtype,
) -> Result<CudaSlice<f32>, JobError> {
    let what = (&CUDNN, "the output");
    match ops {
        Buffers::Full(ops) => kernel.make(what, stream, (ops.output(), maps), dtype),
        Buffers::Half(ops) => kernel.make(what, stream, (ops.output(), maps), dtype),
    }
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
