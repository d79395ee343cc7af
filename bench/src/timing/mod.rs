//! Device-side timing of the kernels behind the job kinds: matmul (f32, tf32, bf16; on CUDA
//! through cuBLAS as `matmul` jobs run there, plus Burn's own kernels in `_burn` rows), vector add,
//! a dense 3×3 conv2d (f32, tf32, bf16; on CUDA through cuDNN as `conv2d` jobs run there, plus
//! Burn's in `_burn` rows), one Adam step of an MLP, and the one-job-at-a-time small vector add
//! (upload, add, read back).
//!
//! Every case creates its inputs once on the device (outside the timed region), runs warm-up
//! iterations (they pay JIT compilation and autotune), then times each iteration on its own:
//! `B::sync`, start the clock, run, `B::sync`, stop the clock. The output of an iteration is
//! kept alive until after the second sync, so a lazy backend (burn's fusion) must compute it.
//! A row reports the median, mean and minimum seconds per iteration and, from the median, the
//! case's throughput. A case that fails (a panic in the backend, a dtype the device lacks)
//! becomes an error row; the other cases still run.
//!
//! Case names are the join key with the PyTorch reference (`bench/scripts/torch_reference.py`), which
//! names its rows with the same rules.
//!
//! It uses only `kiln_kernels`' public API: the kinds' networks, the vendor engines and the
//! CPU loop, exactly as jobs call them.
//!
//! ```
//! use kiln_bench::timing::{Profile, Settings, cases, run_case};
//! use kiln_kernels::{ComputeDevice, Engines};
//! let case = cases(Profile::Quick).remove(0);
//! let settings = Settings { warmup: 1, iters: 2, case_budget_s: 1.0 };
//! let row = run_case(&ComputeDevice::Cpu, Engines::default(), &case, &settings);
//! assert_eq!(row.status, "ok");
//! assert!(row.median_s.unwrap() > 0.0);
//! ```

mod case;
mod measure;
mod run;

pub use self::case::{Case, MLP_CLASSES, MLP_FEATURES, MLP_HIDDEN, Profile, Work, cases};
pub use self::run::{Row, Settings, backend_name, run_case, run_cases};

/// Timed iterations always run at least this many times, whatever the time budget.
pub const MIN_ITERS: u32 = 3;
/// The small vector add runs this many times the configured iterations (each one is short).
pub const SMALL_ITERS_FACTOR: u32 = 10;
/// Length of the one-job-at-a-time vector add.
pub const SMALL_LEN: usize = 1024;
