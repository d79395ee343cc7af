//! cuDNN's descriptors of one convolution (input, weights, output, the convolution itself),
//! the cuDNN handle, and the element and math types of each job dtype.
//!
//! Unsafe code: cuDNN's C API on raw descriptors (see the module above).
#![allow(unsafe_code)]

use std::ffi::c_int;

use cudarc::cudnn::{result, result::CudnnError, sys};
use cudarc::driver::CudaStream;
use kiln_proto::JobError;

use super::{ConvShape, dnn_error};
use crate::Dtype;

/// cuDNN's description of one convolution: input, weights, output, and the convolution itself.
pub(super) struct Descriptors {
    pub(super) x: TensorDesc,
    pub(super) w: FilterDesc,
    pub(super) y: TensorDesc,
    pub(super) conv: ConvDesc,
}

impl Descriptors {
    /// Describe `shape` (checked by the caller) in `dtype`, and check that cuDNN's idea of the
    /// output is kiln's. Host-side only: no device or handle needed.
    pub(super) fn new(shape: &ConvShape, dtype: Dtype) -> Result<Self, JobError> {
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
pub(super) const ALGOS: usize =
    sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_COUNT as usize;

/// Room for cuDNN's report on every algorithm.
pub(super) fn perf_slots() -> [sys::cudnnConvolutionFwdAlgoPerf_t; ALGOS] {
    // SAFETY: an all-zero perf struct is valid (enums with a zero variant, numbers); cuDNN
    // overwrites the first ones it reports on.
    unsafe { std::mem::zeroed() }
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

/// A cuDNN handle, destroyed on drop.
pub(super) struct Handle(pub(super) sys::cudnnHandle_t);

// SAFETY: cuDNN lets any host thread use a handle, one at a time; kiln's handles live behind a
// Mutex (`Dnn`), so they are never used by two threads at once.
unsafe impl Send for Handle {}

impl Handle {
    pub(super) fn new(stream: &CudaStream) -> Result<Self, CudnnError> {
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
pub(super) struct TensorDesc(pub(super) sys::cudnnTensorDescriptor_t);

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
pub(super) struct FilterDesc(pub(super) sys::cudnnFilterDescriptor_t);

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
pub(super) struct ConvDesc(pub(super) sys::cudnnConvolutionDescriptor_t);

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

    pub(super) fn set_math(&self, math: sys::cudnnMathType_t) -> Result<(), CudnnError> {
        // SAFETY: a live descriptor.
        unsafe { result::set_convolution_math_type(self.0, math) }
    }

    pub(super) fn math(&self) -> Result<sys::cudnnMathType_t, CudnnError> {
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
    use std::ffi::c_void;
    use std::sync::OnceLock;

    use super::super::{CUDNN, probe_cases};
    use super::*;

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
