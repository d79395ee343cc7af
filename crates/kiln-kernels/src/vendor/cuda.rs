//! What kiln's direct calls into NVIDIA's libraries share (cuBLAS for matmul in
//! [`super::cublas`], cuDNN for conv2d in [`super::cudnn`]): finding the library before cudarc
//! loads it (cudarc panics when one is missing), one handle per device on its own stream, the
//! device buffers of one operation in the element type the library reads (uploaded from the
//! host, or seeded inputs made on the device by [`super::nvrtc`]), and CUDA's errors as job
//! errors.
//!
//! Unsafe code: loading the library with libloading to see whether it loads; allocating seeded
//! inputs without clearing them (the generator writes every element).
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use cudarc::driver::{
    CudaContext, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, DriverError,
    SyncOnDrop, ValidAsZeroBits, sys::CUdeviceptr,
};
use kiln_proto::{ErrorKind, JobError};

use super::cublas::{Output, ReadBack};
use super::nvrtc::{Element, Generator, Range, summarizer};
use crate::dtype::{Dtype, from_half, to_half};

/// One of NVIDIA's libraries, as kiln uses it.
pub(crate) struct Library {
    /// As people write it: cuBLAS, cuDNN.
    pub name: &'static str,
    /// What cudarc calls it (libcublas.so.13, libcudnn.so.9 and the other candidates).
    pub file: &'static str,
    /// The job kind that runs on it, for messages.
    pub kind: &'static str,
    /// How to install it, for the error when it does not load.
    pub install: &'static str,
}

/// The handles of one library, one per device index.
pub(crate) type Handles<T> = OnceLock<Mutex<HashMap<usize, Arc<Mutex<T>>>>>;

impl Library {
    /// Whether the library loads; looked for once per process (`found` keeps the answer).
    pub(crate) fn loads(&self, found: &OnceLock<Result<String, String>>) -> Result<(), String> {
        found
            .get_or_init(|| {
                let candidates = cudarc::get_lib_name_candidates(self.file);
                for name in &candidates {
                    // SAFETY: loading the library runs only its initialisers, as cudarc's own
                    // load of the same library would.
                    if unsafe { libloading::Library::new(name) }.is_ok() {
                        return Ok(name.clone());
                    }
                }
                Err(format!(
                    "lib{} could not be loaded (tried {}); {}",
                    self.file,
                    candidates.join(", "),
                    self.install
                ))
            })
            .as_ref()
            .map(|_| ())
            .map_err(Clone::clone)
    }

    /// The handle of device `index`, made the first time by `create` on a new stream of the
    /// device (bound to this thread while `create` runs).
    pub(crate) fn handle<T>(
        &self,
        handles: &Handles<T>,
        index: usize,
        create: impl FnOnce(Arc<CudaStream>) -> Result<T, JobError>,
    ) -> Result<Arc<Mutex<T>>, JobError> {
        let mut handles = lock(handles.get_or_init(Default::default));
        if let Some(handle) = handles.get(&index) {
            return Ok(handle.clone());
        }
        let context =
            CudaContext::new(index).map_err(|e| self.driver_error("opening the device", e))?;
        keep_freed_memory(&context);
        let stream = context
            .new_stream()
            .map_err(|e| self.driver_error("creating a stream", e))?;
        context
            .bind_to_thread()
            .map_err(|e| self.driver_error("binding the device", e))?;
        let handle = Arc::new(Mutex::new(create(stream)?));
        handles.insert(index, handle.clone());
        Ok(handle)
    }

    /// A CUDA driver error while doing `what`: `out_of_memory` when the device is full, else
    /// `internal`.
    pub(crate) fn driver_error(&self, what: &str, e: DriverError) -> JobError {
        let text = format!("{e:?}");
        if text.contains("OUT_OF_MEMORY") {
            JobError::new(
                ErrorKind::OutOfMemory,
                format!(
                    "the GPU ran out of memory {what} for this {} ({text}); submit a smaller job \
                     or run it on a device with more memory",
                    self.kind
                ),
            )
        } else {
            JobError::internal(format!("CUDA failed {what} for {}: {text}", self.name))
        }
    }

    /// Make the stream's device current on this thread: the libraries work on the calling
    /// thread's context, jobs run on whichever blocking thread is free, and a process may serve
    /// several devices.
    pub(crate) fn bind(&self, stream: &CudaStream) -> Result<(), JobError> {
        stream
            .context()
            .bind_to_thread()
            .map_err(|e| self.driver_error("binding the device", e))
    }
}

/// `values` (f32 on `stream`'s device) read back as `read` asks (waits for the stream): only
/// their summary, made on the device by the summary kernel, when that is all that is wanted and
/// there are at least [`crate::reduce::DEVICE_FROM`] of them; else every value (summarised
/// here when only the summary is wanted). `what` names them in `library`'s errors.
pub(crate) fn read_values(
    library: &Library,
    stream: &Arc<CudaStream>,
    (what, values): (&str, &CudaSlice<f32>),
    read: ReadBack,
) -> Result<Output, JobError> {
    if read == ReadBack::Summary
        && values.len() >= crate::reduce::DEVICE_FROM
        // Why a device has no summary kernel is logged once by `summarizer`.
        && let Ok(summarizer) = summarizer(stream)
    {
        return summarizer
            .summarize((library, what), stream, values)
            .map(Output::Summary);
    }
    let values = stream
        .clone_dtoh(values)
        .map_err(|e| library.driver_error(&format!("reading {what} back"), e))?;
    Ok(Output::read(values, read))
}

/// Most device memory a pool keeps for later allocations after a sync.
const POOL_KEEPS: u64 = 1 << 30;

/// Let the device's stream-ordered memory pool, which the libraries' buffers come from
/// (cudarc allocates with `cuMemAllocAsync` where the device supports it), keep up to
/// [`POOL_KEEPS`] (at most a sixteenth of the device) of freed memory across syncs instead of
/// none, its default. With none kept, every job's buffers were freed back to the device at the
/// next job's first sync and mapped afresh for it, a cost of every small job; PyTorch's
/// stream-ordered allocator keeps all of it. Burn's CUDA runtime allocates from the same pool,
/// so the bound caps what freed memory of either sits unused. Best effort: a device that
/// refuses keeps its default (logged at debug).
fn keep_freed_memory(context: &CudaContext) {
    if !context.has_async_alloc() {
        return;
    }
    let total = context.total_mem().unwrap_or(0) as u64;
    let mut keep: u64 = (total / 16).min(POOL_KEEPS);
    // SAFETY: the device is the context's own; the release threshold is a cuuint64_t, and
    // `keep` is one, alive for the call.
    let set = unsafe {
        cudarc::driver::result::device::get_default_mem_pool(context.cu_device()).and_then(|pool| {
            cudarc::driver::result::mem_pool::set_attribute(
                pool,
                cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut keep as *mut u64).cast(),
            )
        })
    };
    if let Err(e) = set {
        tracing::debug!(error = ?e, "the device's memory pool keeps no freed memory");
    }
}

/// A handle, whether or not a job panicked while holding it (the handle itself stays valid).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The device buffers of one operation with two inputs and an output (A, B, C of a product;
/// input, weights, output of a convolution), in one element type.
pub(crate) struct Operands<T> {
    a: CudaSlice<T>,
    b: CudaSlice<T>,
    out: CudaSlice<T>,
}

impl<T: DeviceRepr + ValidAsZeroBits> Operands<T> {
    fn upload(
        library: &Library,
        stream: &Arc<CudaStream>,
        [(a_name, a), (b_name, b)]: [(&str, &[T]); 2],
        (out_name, out_len): (&str, usize),
    ) -> Result<Self, JobError> {
        let upload = |name: &str, values: &[T]| {
            stream
                .clone_htod(values)
                .map_err(|e| library.driver_error(&format!("uploading {name}"), e))
        };
        Ok(Operands {
            a: upload(a_name, a)?,
            b: upload(b_name, b)?,
            out: stream
                .alloc_zeros(out_len)
                .map_err(|e| library.driver_error(&format!("allocating {out_name}"), e))?,
        })
    }
}

impl<T> Operands<T> {
    /// The output buffer.
    pub(crate) fn output(&self) -> &CudaSlice<T> {
        &self.out
    }
}

/// A buffer of `len` seeded values (`(seed, stream_id, range)`) made on the device by
/// `generator` in `T`; `name` names it in `library`'s errors.
fn seeded_buffer<T: Element>(
    library: &Library,
    stream: &Arc<CudaStream>,
    generator: &Generator,
    (name, len): (&str, usize),
    values: (u64, u64, Range),
    dtype: Dtype,
) -> Result<CudaSlice<T>, JobError> {
    // SAFETY: the kernel `fill` launches next on the same stream writes all `len` elements
    // before any later work on the stream reads one.
    let mut buffer = unsafe { stream.alloc::<T>(len) }
        .map_err(|e| library.driver_error(&format!("allocating {name}"), e))?;
    generator.fill((library, name), stream, &mut buffer, values, dtype)?;
    Ok(buffer)
}

impl<T: Element + ValidAsZeroBits> Operands<T> {
    /// A and B made on the device by `generator` from `seed` (streams 0 and 1, as
    /// `seeded_values`), and the output allocated.
    fn seeded(
        library: &Library,
        stream: &Arc<CudaStream>,
        (generator, seed): (&Generator, u64),
        [(a_name, a_len), (b_name, b_len)]: [(&str, usize); 2],
        (out_name, out_len): (&str, usize),
        dtype: Dtype,
    ) -> Result<Self, JobError> {
        let make = |name: &str, stream_id: u64, len: usize| {
            let values = (seed, stream_id, Range::Signed);
            seeded_buffer(library, stream, generator, (name, len), values, dtype)
        };
        Ok(Operands {
            a: make(a_name, 0, a_len)?,
            b: make(b_name, 1, b_len)?,
            out: stream
                .alloc_zeros(out_len)
                .map_err(|e| library.driver_error(&format!("allocating {out_name}"), e))?,
        })
    }

    /// An image made on the device by `generator` from `seed` (stream 0, mapped to [0, 1)),
    /// weights uploaded, and the output allocated.
    fn seeded_image(
        library: &Library,
        stream: &Arc<CudaStream>,
        (generator, seed): (&Generator, u64),
        ((a_name, a_len), (b_name, b)): ((&str, usize), (&str, &[T])),
        (out_name, out_len): (&str, usize),
        dtype: Dtype,
    ) -> Result<Self, JobError> {
        let values = (seed, 0, Range::Unit);
        Ok(Operands {
            a: seeded_buffer(library, stream, generator, (a_name, a_len), values, dtype)?,
            b: stream
                .clone_htod(b)
                .map_err(|e| library.driver_error(&format!("uploading {b_name}"), e))?,
            out: stream
                .alloc_zeros(out_len)
                .map_err(|e| library.driver_error(&format!("allocating {out_name}"), e))?,
        })
    }
}

/// [`Operands`] in f32 (f32, tf32) or as 16-bit floats (bf16, f16).
pub(crate) enum Buffers {
    Full(Operands<f32>),
    Half(Operands<u16>),
}

/// The device addresses of [`Buffers`], valid while it lives (the guards record the stream's
/// work on the buffers when dropped).
pub(crate) struct Pointers<'a> {
    pub a: CUdeviceptr,
    pub b: CUdeviceptr,
    pub out: CUdeviceptr,
    _guards: [SyncOnDrop<'a>; 3],
}

impl Buffers {
    /// Upload two f32 host inputs, converted to `dtype`'s element type (bf16/f16 round to
    /// nearest), and allocate the output; each comes with its name for error messages.
    pub(crate) fn upload(
        library: &Library,
        stream: &Arc<CudaStream>,
        [(a_name, a), (b_name, b)]: [(&str, &[f32]); 2],
        out: (&str, usize),
        dtype: Dtype,
    ) -> Result<Self, JobError> {
        if dtype.is_half() {
            let (a, b) = (to_half(a, dtype), to_half(b, dtype));
            Operands::upload(library, stream, [(a_name, &a), (b_name, &b)], out).map(Buffers::Half)
        } else {
            Operands::upload(library, stream, [(a_name, a), (b_name, b)], out).map(Buffers::Full)
        }
    }

    /// Make two seeded inputs on the device in `dtype`'s element type (`seeded_values(seed, 0,
    /// ..)` and `seeded_values(seed, 1, ..)`, bf16/f16 rounded to nearest as [`Buffers::upload`]
    /// rounds them), and allocate the output; each comes with its name for error messages.
    pub(crate) fn seeded(
        library: &Library,
        stream: &Arc<CudaStream>,
        generator: (&Generator, u64),
        inputs: [(&str, usize); 2],
        out: (&str, usize),
        dtype: Dtype,
    ) -> Result<Self, JobError> {
        if dtype.is_half() {
            Operands::seeded(library, stream, generator, inputs, out, dtype).map(Buffers::Half)
        } else {
            Operands::seeded(library, stream, generator, inputs, out, dtype).map(Buffers::Full)
        }
    }

    /// A convolution's buffers: its image made on the device from `seed` (`seeded_values(seed,
    /// 0, ..)` mapped to [0, 1), in `dtype`'s element type), its f32 weights converted to that
    /// type and uploaded, its output allocated; each comes with its name for error messages.
    pub(crate) fn seeded_image(
        library: &Library,
        stream: &Arc<CudaStream>,
        generator: (&Generator, u64),
        (image, (w_name, w)): ((&str, usize), (&str, &[f32])),
        out: (&str, usize),
        dtype: Dtype,
    ) -> Result<Self, JobError> {
        if dtype.is_half() {
            let w = to_half(w, dtype);
            let inputs = (image, (w_name, w.as_slice()));
            Operands::seeded_image(library, stream, generator, inputs, out, dtype)
                .map(Buffers::Half)
        } else {
            let inputs = (image, (w_name, w));
            Operands::seeded_image(library, stream, generator, inputs, out, dtype)
                .map(Buffers::Full)
        }
    }

    /// The output buffer, when it holds f32.
    pub(crate) fn output_f32(&self) -> Option<&CudaSlice<f32>> {
        match self {
            Buffers::Full(ops) => Some(&ops.out),
            Buffers::Half(_) => None,
        }
    }

    /// Where the buffers are, for a library call on `stream`.
    pub(crate) fn pointers<'a>(&'a mut self, stream: &'a CudaStream) -> Pointers<'a> {
        fn of<'a, T>(ops: &'a mut Operands<T>, stream: &'a CudaStream) -> Pointers<'a> {
            let (a, ga) = ops.a.device_ptr(stream);
            let (b, gb) = ops.b.device_ptr(stream);
            let (out, gout) = ops.out.device_ptr_mut(stream);
            Pointers {
                a,
                b,
                out,
                _guards: [ga, gb, gout],
            }
        }
        match self {
            Buffers::Full(ops) => of(ops, stream),
            Buffers::Half(ops) => of(ops, stream),
        }
    }

    /// The output back on the host as f32 (waits for the stream).
    pub(crate) fn download(
        &self,
        library: &Library,
        stream: &Arc<CudaStream>,
        what: &str,
        dtype: Dtype,
    ) -> Result<Vec<f32>, JobError> {
        let failed = |e| library.driver_error(&format!("reading {what} back"), e);
        match self {
            Buffers::Full(ops) => stream.clone_dtoh(&ops.out).map_err(failed),
            Buffers::Half(ops) => Ok(from_half(
                &stream.clone_dtoh(&ops.out).map_err(failed)?,
                dtype,
            )),
        }
    }
}
