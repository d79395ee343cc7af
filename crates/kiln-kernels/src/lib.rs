#![warn(missing_docs, unreachable_pub)]
//! kiln's job kinds, written once as Burn code generic over `B: Backend`, and the registry
//! that maps a kind's name to its code.
//!
//! A kind is one module implementing [`Kernel`] plus one line in [`registry!`] below; the
//! worker, the `kiln` command and the docs find it through [`find`] and [`KINDS`].
//!
//! ```
//! use kiln_kernels::{ComputeDevice, find};
//! use kiln_proto::{Codec, Limits};
//! let kind = find("vector_add").unwrap();
//! let job = kind.decode(Codec::Json, br#"{"params":{"len":8},"seed":1}"#, &Limits::default()).unwrap();
//! let out = job.run(&ComputeDevice::Cpu, &kiln_kernels::NoCheckpoint).unwrap();
//! assert_eq!(out["len"], 8);
//! ```

// `bench` names this crate as `kiln_kernels`, as it will once it moves to a crate of its own.
extern crate self as kiln_kernels;

mod data;
mod device;
mod dtype;
mod io;
mod kernel;
mod memory;

pub mod bench;
pub mod cpu;
mod engine;
pub mod kinds;
pub mod vendor;

pub use data::{Summary, seeded_values};
pub use device::{
    ComputeDevice, CpuBackend, CudaBackend, DeviceMemory, cuda_device_count, default_cache_dir,
    device_memory, use_cache_dir,
};
pub use dtype::{Dtype, dtype_name};
pub use engine::{ConvEngine, Engines, MatmulEngine, burn_engine};
pub use io::{Input, Inputs, OutputSink, Placement, Stored, Wanted};
pub use kernel::{
    Checkpoint, DecodedJob, JobMeta, Kernel, KindEntry, NoCheckpoint, Plan, Progress, RunContext,
};
pub use kiln_data::store::{Loaded, Want};
pub use memory::{BYTES_PER_ELEMENT, Bytes, MemoryBudget};

/// The kind registry: one entry per job kind. Adding a kind = one module + one line here.
macro_rules! registry {
    ($($kernel:ty),+ $(,)?) => {
        /// Every job kind this build of kiln can run.
        pub static KINDS: &[KindEntry] = &[$(KindEntry::of::<$kernel>()),+];
    };
}

registry! {
    kinds::matmul::Matmul,
    kinds::vector_add::VectorAdd,
    kinds::conv2d::Conv2d,
    kinds::train_mlp::TrainMlp,
    kinds::mlp_predict::MlpPredict,
}

/// The registry entry of the kind called `name`.
pub fn find(name: &str) -> Option<&'static KindEntry> {
    KINDS.iter().find(|k| k.name == name)
}

/// Names of every registered kind, for error messages and help texts.
pub fn kind_names() -> Vec<&'static str> {
    KINDS.iter().map(|k| k.name).collect()
}
