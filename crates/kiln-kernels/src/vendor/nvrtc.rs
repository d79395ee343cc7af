//! kiln's own CUDA kernels: seeded inputs made on the device ([`crate::seeded`] holds the source
//! and the Rust mirror the tests check it with) and output summaries made on the device
//! ([`crate::reduce`]). Each is compiled at run time by NVRTC (loaded at run time like libcuda;
//! burn-cuda compiles its kernels with the same library), once per process, loaded once per
//! device, and launched on the stream of the job's cuBLAS handle.
//!
//! A `matmul` or `vector_add` job on cuBLAS whose inputs come from its seed allocates A and B on
//! the device and fills them there, one ChaCha8 block of 16 values per thread, with the bits
//! `seeded_values` and the host's bf16/f16 conversion give (see [`crate::seeded`]): a 10M-element
//! vector add no longer generates 80 MB on the host and copies it over PCIe. Its result says
//! `"inputs": "device"`.
//!
//! A job whose output comes back only as its summary has the summary made where the output is,
//! and reads back a few kilobytes of partial sums instead of the output (see [`crate::reduce`]).
//!
//! A `conv2d` job on cuDNN has its generated image made on the device too (the seeded values
//! mapped to [0, 1)), and its output made there from cuDNN's maps (Sobel's magnitude, 16-bit
//! maps widened to f32: [`crate::magnitude`]), so that only what it returns comes back.
//!
//! When NVRTC does not load, or a kernel does not compile or load, the reason is logged once
//! per device and such jobs generate their inputs on the host and upload them, or read their
//! output back and summarise it on the host, as before.
//!
//! Unsafe code: allocating the inputs, the conv2d output and the summary's lanes without
//! clearing them (the kernel that fills each writes every element before anything reads one)
//! and launching the kernels.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts};
use kiln_proto::JobError;

use super::cuda::{Library, lock};
use crate::data::Lane;
use crate::seeded::{
    ENTRY_BF16, ENTRY_F16, ENTRY_F32, ENTRY_UNIT_BF16, ENTRY_UNIT_F16, ENTRY_UNIT_F32,
    KERNEL_SOURCE, VALUES_PER_THREAD, key_words,
};
use crate::{Dtype, Summary, magnitude, reduce};

const NVRTC: Library = Library {
    name: "NVRTC",
    file: "nvrtc",
    kind: "seeded input",
    install: "install the CUDA toolkit's NVRTC (libnvrtc and libnvrtc-builtins) and add its \
              folder to LD_LIBRARY_PATH",
};

/// Threads per block of the generator's launch.
const THREADS: u32 = 256;

/// One kernel's entry points, one per element type: f32, bf16 and f16.
#[derive(Debug)]
pub(crate) struct Entries {
    f32: CudaFunction,
    bf16: CudaFunction,
    f16: CudaFunction,
}

impl Entries {
    fn of([f32, bf16, f16]: [CudaFunction; 3]) -> Self {
        Entries { f32, bf16, f16 }
    }
}

/// The generator kernel loaded on one device: the entry points writing seeded values, and
/// those writing them mapped to [0, 1).
pub(crate) struct Generator {
    signed: Entries,
    unit: Entries,
}

/// Which seeded values the generator writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Range {
    /// `seeded_values` as they are, in [-1, 1).
    Signed,
    /// Mapped to [0, 1): `(v + 1) / 2` in f32 (conv2d's generated images).
    Unit,
}

/// An element type kiln's kernels read or write: f32, or the bits of bf16 or f16.
pub(crate) trait Element: cudarc::driver::DeviceRepr {
    /// This type's entry point of `entries`, for `dtype`.
    fn entry(entries: &Entries, dtype: Dtype) -> &CudaFunction;
}

impl Element for f32 {
    fn entry(entries: &Entries, _dtype: Dtype) -> &CudaFunction {
        &entries.f32
    }
}

impl Element for u16 {
    fn entry(entries: &Entries, dtype: Dtype) -> &CudaFunction {
        match dtype {
            Dtype::F16 => &entries.f16,
            _ => &entries.bf16,
        }
    }
}

/// Each device's loaded kernel of one kind, or why it has none.
type PerDevice<T> = Mutex<HashMap<usize, Result<Arc<T>, String>>>;

/// The generator on `stream`'s device: compiled and loaded the first time; an error (logged
/// once per device, and the same for every later call) when NVRTC does not load or the kernel
/// does not compile or load there.
pub(crate) fn generator(stream: &Arc<CudaStream>) -> Result<Arc<Generator>, JobError> {
    static LOADED: OnceLock<PerDevice<Generator>> = OnceLock::new();
    let device = stream.context().ordinal();
    let mut loaded = lock(LOADED.get_or_init(Default::default));
    loaded
        .entry(device)
        .or_insert_with(|| {
            let generator = load(stream);
            if let Err(why) = &generator {
                tracing::warn!(
                    device,
                    "seeded inputs of cuBLAS jobs will be generated on the host: {why}"
                );
            }
            generator
        })
        .clone()
        .map_err(JobError::internal)
}

/// One of kiln's kernels: its source, the file name NVRTC gives it, what it is called in
/// messages, and its PTX once compiled.
struct Source {
    code: &'static str,
    file: &'static str,
    what: &'static str,
    ptx: OnceLock<Result<String, String>>,
}

static SEEDED: Source = Source {
    code: KERNEL_SOURCE,
    file: "kiln_seeded.cu",
    what: "seeded-input kernel",
    ptx: OnceLock::new(),
};

static MAGNITUDE: Source = Source {
    code: magnitude::KERNEL_SOURCE,
    file: "kiln_magnitude.cu",
    what: "conv2d output kernel",
    ptx: OnceLock::new(),
};

static SUMMARY: Source = Source {
    code: reduce::KERNEL_SOURCE,
    file: "kiln_summary.cu",
    what: "summary kernel",
    ptx: OnceLock::new(),
};

impl Source {
    /// The kernel as PTX, compiled once per process.
    fn ptx(&self) -> Result<String, String> {
        static FOUND: OnceLock<Result<String, String>> = OnceLock::new();
        self.ptx
            .get_or_init(|| {
                NVRTC.loads(&FOUND)?;
                let options = CompileOptions {
                    // No contraction into FMAs: the summary's squares are rounded before they
                    // are added, as on the host (the generator's arithmetic is exact either way).
                    fmad: Some(false),
                    name: Some(self.file.into()),
                    ..Default::default()
                };
                // cudarc panics where an NVRTC lacks a symbol it calls or cannot give its log:
                // that too becomes an error (and the host's way), not a failed worker.
                std::panic::catch_unwind(|| compile_ptx_with_opts(self.code, options))
                    .map_err(|_| format!("NVRTC panicked compiling the {}", self.what))?
                    .map(|ptx| ptx.to_src())
                    .map_err(|e| format!("NVRTC could not compile the {}: {e}", self.what))
            })
            .clone()
    }

    /// Compile (once) and load the kernel on `stream`'s device; its entry points `names`.
    fn load<const N: usize>(
        &self,
        stream: &Arc<CudaStream>,
        names: [&str; N],
    ) -> Result<[CudaFunction; N], String> {
        let module = stream
            .context()
            .load_module(Ptx::from_src(self.ptx()?))
            .map_err(|e| format!("the device could not load the {}: {e:?}", self.what))?;
        let functions = names.map(|name| {
            module
                .load_function(name)
                .map_err(|e| format!("the {} has no {name}: {e:?}", self.what))
        });
        if let Some(Err(why)) = functions.iter().find(|f| f.is_err()) {
            return Err(why.clone());
        }
        Ok(functions.map(|f| f.expect("every function loaded")))
    }
}

/// Compile (once) and load the generator on `stream`'s device.
fn load(stream: &Arc<CudaStream>) -> Result<Arc<Generator>, String> {
    let names = [
        ENTRY_F32,
        ENTRY_BF16,
        ENTRY_F16,
        ENTRY_UNIT_F32,
        ENTRY_UNIT_BF16,
        ENTRY_UNIT_F16,
    ];
    let [f32, bf16, f16, unit_f32, unit_bf16, unit_f16] = SEEDED.load(stream, names)?;
    Ok(Arc::new(Generator {
        signed: Entries::of([f32, bf16, f16]),
        unit: Entries::of([unit_f32, unit_bf16, unit_f16]),
    }))
}

/// The summary kernel loaded on one device.
pub(crate) struct Summarizer {
    f32: CudaFunction,
}

/// The summary kernel on `stream`'s device: compiled and loaded the first time; an error
/// (logged once per device, and the same for every later call) where it cannot be.
pub(crate) fn summarizer(stream: &Arc<CudaStream>) -> Result<Arc<Summarizer>, JobError> {
    static LOADED: OnceLock<PerDevice<Summarizer>> = OnceLock::new();
    let device = stream.context().ordinal();
    let mut loaded = lock(LOADED.get_or_init(Default::default));
    loaded
        .entry(device)
        .or_insert_with(|| {
            let summarizer = SUMMARY
                .load(stream, [reduce::ENTRY_F32])
                .map(|[f32]| Arc::new(Summarizer { f32 }));
            if let Err(why) = &summarizer {
                tracing::warn!(
                    device,
                    "outputs of cuBLAS jobs will be summarised on the host: {why}"
                );
            }
            summarizer
        })
        .clone()
        .map_err(JobError::internal)
}

impl Summarizer {
    /// The summary of `values` on `stream` (waits for it): the lanes made on the device, read
    /// back with the last block's leftover values, and folded on the host into what
    /// [`Summary::of`] gives for the values. `what` names the buffer in `library`'s errors.
    pub(crate) fn summarize(
        &self,
        (library, what): (&Library, &str),
        stream: &Arc<CudaStream>,
        values: &CudaSlice<f32>,
    ) -> Result<Summary, JobError> {
        let n = values.len();
        let lanes = reduce::lanes(n);
        if lanes == 0 {
            return Ok(Summary::of(&[]));
        }
        let failed = |doing: &str| {
            let doing = format!("{doing} the summary of {what}");
            move |e| library.driver_error(&doing, e)
        };
        let blocks = u32::try_from(lanes.div_ceil(THREADS as usize))
            .map_err(|_| JobError::too_large(format!("{what} has too many values to summarise")))?;
        let config = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the kernel launched next on the same stream writes every lane (a thread per
        // lane, `lanes` of them) before the read-back below, on the stream too, reads one.
        let mut out =
            unsafe { stream.alloc::<u8>(lanes * Lane::BYTES) }.map_err(failed("allocating"))?;
        let count = n as u64;
        library.bind(stream)?;
        let mut launch = stream.launch_builder(&self.f32);
        launch.arg(values).arg(&count).arg(&mut out);
        // SAFETY: the entry point takes (const float* values, unsigned long long n, KilnLane*
        // lanes), the arguments pushed in that order; `values` holds `n` f32s and `out`
        // `lanes` lanes of 32 bytes (a device allocation, so aligned as a lane's doubles need),
        // and the kernel reads only indices below `n` and writes one lane per thread below
        // `lanes` (threads past it return at once).
        unsafe { launch.launch(config) }.map_err(failed("making"))?;
        let start = reduce::tail_start(n);
        let tail = if start < n {
            stream
                .clone_dtoh(&values.slice(start..))
                .map_err(failed("reading back"))?
        } else {
            Vec::new()
        };
        let bytes = stream.clone_dtoh(&out).map_err(failed("reading back"))?;
        let lanes: Vec<Lane> = bytes
            .chunks_exact(Lane::BYTES)
            .map(|b| Lane::from_bytes(b.try_into().expect("a whole lane")))
            .collect();
        Ok(Summary::of_lanes(n, &lanes, &tail))
    }
}

/// The launch of one thread per 16 of `len` values.
fn launch_config(len: usize) -> Option<LaunchConfig> {
    let blocks = len.div_ceil(VALUES_PER_THREAD).div_ceil(THREADS as usize);
    // CUDA's grids are at most 2^31 - 1 blocks wide.
    let blocks = i32::try_from(blocks).ok()? as u32;
    Some(LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

impl Generator {
    /// Launch the kernel filling `out` with `seeded_values(seed, stream_id, out.len())` (as
    /// they are or mapped to [0, 1): `range`) in `T` (f32, or `dtype`'s 16-bit bits) on
    /// `stream`; does not wait for it. `what` names the buffer in `library`'s error messages.
    pub(crate) fn fill<T: Element>(
        &self,
        (library, what): (&Library, &str),
        stream: &Arc<CudaStream>,
        out: &mut CudaSlice<T>,
        (seed, stream_id, range): (u64, u64, Range),
        dtype: Dtype,
    ) -> Result<(), JobError> {
        let len = out.len();
        if len == 0 {
            return Ok(());
        }
        let config = launch_config(len).ok_or_else(|| {
            JobError::too_large(format!(
                "{what} has {len} elements, more than one launch of the seeded-input kernel makes"
            ))
        })?;
        let n = len as u64;
        let key = key_words(seed);
        library.bind(stream)?;
        let entries = match range {
            Range::Signed => &self.signed,
            Range::Unit => &self.unit,
        };
        let mut launch = stream.launch_builder(T::entry(entries, dtype));
        launch.arg(out).arg(&n).arg(&key).arg(&stream_id);
        // SAFETY: the entry point takes (T* out, unsigned long long n, KilnKey key [8 × u32 by
        // value], unsigned long long stream), which are the arguments pushed, in that order;
        // `out` is a whole allocation of `n` elements of T on this stream's device (so 256-byte
        // aligned, as the kernel's 16-byte stores need), and the kernel writes only indices
        // below `n`; the grid has a thread for every 16 of them.
        unsafe { launch.launch(config) }
            .map(drop)
            .map_err(|e| library.driver_error(&format!("generating {what}"), e))
    }
}

/// The conv2d output kernel loaded on one device ([`crate::magnitude`]).
pub(crate) struct Magnitudes {
    entries: Entries,
}

/// The conv2d output kernel on `stream`'s device: compiled and loaded the first time; an error
/// (logged once per device, and the same for every later call) where it cannot be.
pub(crate) fn magnitudes(stream: &Arc<CudaStream>) -> Result<Arc<Magnitudes>, JobError> {
    static LOADED: OnceLock<PerDevice<Magnitudes>> = OnceLock::new();
    let device = stream.context().ordinal();
    let mut loaded = lock(LOADED.get_or_init(Default::default));
    loaded
        .entry(device)
        .or_insert_with(|| {
            let names = [
                magnitude::ENTRY_F32,
                magnitude::ENTRY_BF16,
                magnitude::ENTRY_F16,
            ];
            let kernel = MAGNITUDE.load(stream, names).map(|entries| {
                Arc::new(Magnitudes {
                    entries: Entries::of(entries),
                })
            });
            if let Err(why) = &kernel {
                tracing::warn!(
                    device,
                    "conv2d outputs on cuDNN will be made on the host from their maps: {why}"
                );
            }
            kernel
        })
        .clone()
        .map_err(JobError::internal)
}

/// The shape of a convolution's maps, as the conv2d output kernel reads them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Maps {
    /// Images × channels: the output's planes.
    pub planes: usize,
    /// Values in one plane (height × width).
    pub plane: usize,
    /// Maps per plane: 1, or 2 (Sobel's x and y derivatives).
    pub passes: usize,
}

impl Magnitudes {
    /// The output made from `maps` (laid out as [`Maps`] says, in `T`: f32 or `dtype`'s 16-bit
    /// bits) on `stream`, as f32 in a new buffer; does not wait for it. `what` names the output
    /// in `library`'s errors.
    pub(crate) fn make<T: Element>(
        &self,
        (library, what): (&Library, &str),
        stream: &Arc<CudaStream>,
        (maps, shape): (&CudaSlice<T>, Maps),
        dtype: Dtype,
    ) -> Result<CudaSlice<f32>, JobError> {
        let n = shape.planes * shape.plane;
        if !(1..=2).contains(&shape.passes) || maps.len() != n * shape.passes {
            return Err(JobError::internal(format!(
                "the conv2d output kernel was given {} map values for {shape:?}",
                maps.len()
            )));
        }
        // SAFETY: the kernel launched next on the same stream writes all `n` values before any
        // later work on the stream reads one.
        let mut out = unsafe { stream.alloc::<f32>(n) }
            .map_err(|e| library.driver_error(&format!("allocating {what}"), e))?;
        if n == 0 {
            return Ok(out);
        }
        let blocks = u32::try_from(n.div_ceil(THREADS as usize))
            .ok()
            .filter(|&b| b <= i32::MAX as u32)
            .ok_or_else(|| JobError::too_large(format!("{what} has too many values")))?;
        let config = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (count, plane, passes) = (n as u64, shape.plane as u64, shape.passes as u32);
        library.bind(stream)?;
        let mut launch = stream.launch_builder(T::entry(&self.entries, dtype));
        launch
            .arg(maps)
            .arg(&mut out)
            .arg(&count)
            .arg(&plane)
            .arg(&passes);
        // SAFETY: the entry point takes (const T* maps, float* out, unsigned long long n,
        // unsigned long long plane, unsigned int passes), the arguments pushed in that order;
        // `maps` holds n · passes values of T and `out` n f32s on this stream's device, and each
        // thread below n reads two map values below n · passes (its plane's, at its pixel, in
        // passes 0 and 1) and writes its own output value; threads past n return at once.
        unsafe { launch.launch(config) }
            .map(drop)
            .map_err(|e| library.driver_error(&format!("making {what}"), e))?;
        Ok(out)
    }
}

/// The summary of `values` made on CUDA device `index` by the summary kernel, whatever their
/// number, for the GPU tests: what a cuBLAS job's summary-only result carries. An error if
/// NVRTC does not load or the kernel does not compile.
pub fn summary_on_device(index: usize, values: &[f32]) -> Result<Summary, JobError> {
    let context = CudaContext::new(index)
        .map_err(|e| NVRTC.driver_error(&format!("opening CUDA device {index}"), e))?;
    let stream = context
        .new_stream()
        .map_err(|e| NVRTC.driver_error("creating a stream", e))?;
    let summarizer = summarizer(&stream)?;
    if values.is_empty() {
        return Ok(Summary::of(values));
    }
    let on_device = stream
        .clone_htod(values)
        .map_err(|e| NVRTC.driver_error("uploading the values", e))?;
    summarizer.summarize((&NVRTC, "the values"), &stream, &on_device)
}

/// Seeded values read back from a device, in the type the device holds them.
#[derive(Debug, Clone, PartialEq)]
pub enum OnDevice {
    /// f32 (f32 and tf32 jobs).
    F32(Vec<f32>),
    /// The bits of bf16 or f16 values (bf16 and f16 jobs).
    Half(Vec<u16>),
}

/// `seeded_values(seed, stream_id, n)` made on CUDA device `index` in `dtype`'s element type and
/// read back, for the GPU tests: what a cuBLAS job's seeded inputs hold. An error if NVRTC does
/// not load or the kernel does not compile.
pub fn seeded_on_device(
    index: usize,
    (seed, stream_id): (u64, u64),
    n: usize,
    dtype: Dtype,
) -> Result<OnDevice, JobError> {
    let context = CudaContext::new(index)
        .map_err(|e| NVRTC.driver_error(&format!("opening CUDA device {index}"), e))?;
    let stream = context
        .new_stream()
        .map_err(|e| NVRTC.driver_error("creating a stream", e))?;
    let generator = generator(&stream)?;
    fn make<T: Element>(
        generator: &Generator,
        stream: &Arc<CudaStream>,
        (seed, stream_id, n): (u64, u64, usize),
        dtype: Dtype,
    ) -> Result<Vec<T>, JobError> {
        // SAFETY: `fill` writes all `n` elements before `clone_dtoh`, on the same stream,
        // reads them.
        let mut out = unsafe { stream.alloc::<T>(n) }
            .map_err(|e| NVRTC.driver_error("allocating the values", e))?;
        generator.fill(
            (&NVRTC, "the values"),
            stream,
            &mut out,
            (seed, stream_id, Range::Signed),
            dtype,
        )?;
        stream
            .clone_dtoh(&out)
            .map_err(|e| NVRTC.driver_error("reading the values back", e))
    }
    let what = (seed, stream_id, n);
    Ok(if dtype.is_half() {
        OnDevice::Half(make(&generator, &stream, what, dtype)?)
    } else {
        OnDevice::F32(make(&generator, &stream, what, dtype)?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_launch_has_a_thread_for_every_16_values() {
        for (len, blocks) in [(1, 1), (16 * 256, 1), (16 * 256 + 1, 2), (10_000_000, 2442)] {
            let config = launch_config(len).unwrap();
            assert_eq!(config.grid_dim, (blocks, 1, 1), "len {len}");
            assert_eq!(config.block_dim, (THREADS, 1, 1));
            let threads = blocks as usize * THREADS as usize;
            assert!(threads * VALUES_PER_THREAD >= len, "len {len}");
        }
        assert!(launch_config(usize::MAX).is_none());
    }

    /// Compiles the kernel with the NVRTC the machine has (no GPU needed).
    #[test]
    #[ignore = "needs libnvrtc (NVRTC) on the loader path; run with --ignored nvrtc"]
    fn nvrtc_compiles_kilns_kernels() {
        let ptx = SEEDED
            .ptx()
            .expect("NVRTC compiles the seeded-input kernel");
        for entry in [ENTRY_F32, ENTRY_BF16, ENTRY_F16] {
            assert!(
                ptx.contains(&format!(".entry {entry}(")),
                "{entry} in the PTX"
            );
        }
        for entry in [ENTRY_UNIT_F32, ENTRY_UNIT_BF16, ENTRY_UNIT_F16] {
            assert!(
                ptx.contains(&format!(".entry {entry}(")),
                "{entry} in the PTX"
            );
        }
        let ptx = SUMMARY.ptx().expect("NVRTC compiles the summary kernel");
        assert!(ptx.contains(&format!(".entry {}(", reduce::ENTRY_F32)));
        let ptx = MAGNITUDE
            .ptx()
            .expect("NVRTC compiles the conv2d output kernel");
        for entry in [
            magnitude::ENTRY_F32,
            magnitude::ENTRY_BF16,
            magnitude::ENTRY_F16,
        ] {
            assert!(
                ptx.contains(&format!(".entry {entry}(")),
                "{entry} in the PTX"
            );
        }
    }
}
