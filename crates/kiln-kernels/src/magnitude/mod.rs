//! conv2d's output made on a CUDA device from cuDNN's maps: the kernel's source
//! ([`KERNEL_SOURCE`], compiled at run time by [`crate::vendor::nvrtc`]).
//!
//! A conv2d on cuDNN writes one map per pass and channel (two for Sobel: the x and y
//! derivatives), in the job's element type. The host made the job's output from them after
//! reading every map back: the magnitude `sqrt(gx² + gy²)` for Sobel, the map as f32 otherwise
//! (`magnitude` in `kinds/conv2d.rs`). This kernel makes the same f32 values on the device, bit
//! for bit (each product, the sum and the square root rounded as the host rounds them; bf16 and
//! f16 widened exactly, as the `half` crate does) but for the bits of a NaN (a Sobel map can
//! hold one where cuDNN added infinities of both signs: the GPU's arithmetic makes its own NaN
//! where the CPU passes its operand's on; both read `null` in a result), so that the output
//! stays there for the summary kernel ([`crate::reduce`]) and only what the job returns comes
//! back.
//!
//! The tests (no GPU needed) run the kernel's own source compiled for the CPU with the shim
//! for CUDA's built-ins (`host.cpp`; needs a C++ compiler) against the host's conversions and
//! `magnitude`, for every 16-bit pattern and for crafted maps.

/// The kernel, CUDA C: `kiln_magnitude_f32`, `kiln_magnitude_bf16` and `kiln_magnitude_f16`
/// write one output value per thread from maps in that element type.
pub(crate) const KERNEL_SOURCE: &str = include_str!("kernel.cu");

/// The kernel's entry points, for maps in f32, bf16 and f16.
pub(crate) const ENTRY_F32: &str = "kiln_magnitude_f32";
pub(crate) const ENTRY_BF16: &str = "kiln_magnitude_bf16";
pub(crate) const ENTRY_F16: &str = "kiln_magnitude_f16";

#[cfg(test)]
mod tests;
