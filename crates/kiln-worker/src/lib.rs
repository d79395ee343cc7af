#![warn(missing_docs, unreachable_pub)]
//! kiln's stateless worker: pull a job from its device class's consumer, validate it, run
//! it on a Burn backend off the async executor, publish the result event, wait for the
//! server's acknowledgement of that event, and only then ack the job.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kiln_worker::Error> {
//! use kiln_worker::{WorkerConfig, run};
//! let client = async_nats::connect("nats://127.0.0.1:4222").await.unwrap();
//! let config = WorkerConfig::new(kiln_kernels::ComputeDevice::Cpu);
//! let stats = run(client, config, tokio::signal::ctrl_c()).await?;
//! println!("served {} jobs", stats.succeeded + stats.failed);
//! # Ok(()) }
//! ```

// The worker's phases (`worker`: start, pull loop, drain) hand each job to `job`, which
// takes it from its `arrival` through `compute` to its `answer` (or `handback`); `admission`
// decides how many jobs are held and which compute now; `publish` writes results and dead
// letters.
mod acks;
mod ackwait;
mod admission;
mod answer;
mod arrival;
mod batch;
mod cancel;
mod compute;
mod config;
mod data;
mod deadletter;
mod engines;
mod error;
mod handback;
mod heartbeat;
mod job;
mod observe;
mod publish;
mod shared;
mod start;
mod trace;
mod warmup;
mod worker;

pub use config::WorkerConfig;
pub use error::{Error, Result};
pub use shared::WorkerStats;
pub use start::GPU_MAX_ELEMENTS;
pub use worker::run;
