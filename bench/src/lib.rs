//! kiln's benchmarks as a library, for the `kiln-bench` binary, its tests and examples.
//!
//! [`timing`] times the kernels behind the job kinds on the device; the rest of the suite
//! (pipeline, scheduler, data path, scaling) lives in the binary, which drives whole kiln
//! processes.

pub mod timing;
