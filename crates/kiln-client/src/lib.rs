#![warn(missing_docs, unreachable_pub)]
//! kiln's Rust client: what a Rust program embedding kiln uses, as `clients/python` is for
//! Python (the `kiln` command is built on it).
//!
//! - [`ConnectOptions`], [`connect`]: a server and credentials as the `nats` CLI takes them,
//!   its contexts filling in what is not given ([`ConnectOptions::resolve`]).
//! - [`submit`]: [`JobSpec`]s built and checked by their kind, [`publish_all`] with pipelined
//!   acknowledgements, a [`ResultCollector`] to wait for their results.
//! - [`jobs`]: one job by its id: its result, where it is ([`jobs::locate`]), cancelling it.
//! - [`cluster`]: queues, live workers and metrics at a glance.
//! - [`dlq`]: the dead-letter queue, listed and replayed.
//! - [`data`]: the `KILN_DATA` object store: input files stored, outputs fetched.
//! - [`watch`]: the system followed live: a [`watch::Dashboard`] fed by [`watch::Feeds`].
//!
//! Errors are one [`Error`] enum; its messages say what to do, in the `kiln` command's terms.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kiln_client::Error> {
//! use std::time::Duration;
//! use kiln_client::{ConnectOptions, JobSpec, ResultCollector, connect, publish_all};
//! use kiln_proto::{Codec, DeviceClass};
//!
//! let client = connect(&ConnectOptions::new("nats://127.0.0.1:4222").resolve()?).await?;
//! let js = async_nats::jetstream::new(client.clone());
//! let kind = kiln_kernels::find("matmul").unwrap();
//! let params = serde_json::json!({ "n": 256 });
//! let job = JobSpec::new(kind, DeviceClass::Cpu, params, "mm-1".into(), 0, None, Codec::Json)?;
//! let mut results = ResultCollector::subscribe(&client, Some("matmul"), &[job.id.clone()]).await?;
//! publish_all(&js, [job], true, || {}).await?;
//! let ids = ["mm-1".to_owned()].into();
//! let got = results.collect(ids, Duration::from_secs(60), |_| {}).await;
//! println!("{:?}", got["mm-1"].status);
//! # Ok(()) }
//! ```

pub mod cluster;
mod connect;
mod context;
pub mod data;
pub mod dlq;
mod error;
pub mod jobs;
pub mod submit;
pub mod watch;

pub use connect::{
    ConnectOptions, DEFAULT_NATS_URL, NOT_A_NATS_URL, connect, connect_and_wait,
    connect_to_jetstream, server_addrs,
};
pub use error::{Error, Result};
pub use submit::{
    JobSpec, ResultCollector, check_class, job_digest, publish_all, publish_all_counted,
};
