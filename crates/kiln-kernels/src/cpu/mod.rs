//! kiln's own loops on the CPU: the direct depthwise convolution CPU workers run `conv2d` jobs
//! on, and the choice of vector width at run time that it and the seeded inputs use.

pub mod depthwise;
pub(crate) mod simd;
