//! The system as a whole: queues and consumers, live workers, stream sizes and the latest
//! per-kind metrics (what `kiln status` shows).

use async_nats::jetstream;
use kiln_proto::streams::{self, STREAM_DLQ, STREAM_JOBS, STREAM_RESULTS};
use kiln_proto::{DeviceClass, MetricsSnapshot, WorkerInfo};
use serde::Serialize;

use crate::error::{Context as _, Error, Result, open_stream};

/// One read of kiln's queues, workers and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// Jobs waiting in `KILN_JOBS`.
    pub queued_jobs: u64,
    /// Bytes they take.
    pub queued_bytes: u64,
    /// Most jobs `KILN_JOBS` holds (`kiln init --max-queued-jobs`; `None`: no limit).
    pub max_queued_jobs: Option<u64>,
    /// Most bytes `KILN_JOBS` holds (`None`: no limit).
    pub max_queued_bytes: Option<u64>,
    /// The job consumers: `workers-gpu`, `workers-cpu`, `scheduler`.
    pub consumers: Vec<ConsumerState>,
    /// Live workers, from their heartbeats.
    pub workers: Vec<WorkerInfo>,
    /// Why the workers could not be read, when they could not.
    pub workers_error: Option<String>,
    /// Result events in `KILN_RESULTS` (`None`: unreadable).
    pub results: Option<u64>,
    /// Dead letters in `KILN_DLQ` (`None`: unreadable).
    pub dead_letters: Option<u64>,
    /// The latest metrics snapshot of every (kind, class).
    pub metrics: Vec<MetricsSnapshot>,
}

/// One job consumer's backlog.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerState {
    /// The consumer's name.
    pub name: String,
    /// Jobs waiting, not yet delivered.
    pub pending: u64,
    /// Jobs delivered, not yet acknowledged (in the workers' hands).
    pub in_flight: u64,
    /// Jobs delivered more than once.
    pub redelivered: u64,
    /// Pull requests waiting for jobs.
    pub waiting_pulls: u64,
    /// Why it could not be read, when it could not (the counts are then 0).
    pub error: Option<String>,
}

/// Read kiln's queues, consumers, live workers, stream sizes and metrics.
pub async fn overview(js: &jetstream::Context) -> Result<Overview> {
    let mut jobs = open_stream(js, STREAM_JOBS).await?;
    let info = jobs
        .info()
        .await
        .nats(|| format!("reading {STREAM_JOBS}"))?;
    let (state, max_queued_jobs) = (
        info.state.clone(),
        u64::try_from(info.config.max_messages).ok(),
    );
    let max_queued_bytes = u64::try_from(info.config.max_bytes).ok();
    let consumers = consumers(&mut jobs).await;
    let (workers, workers_error) = match streams::listed_workers(js).await {
        Ok(workers) => (workers, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let mut counts = [None, None];
    for (count, name) in counts.iter_mut().zip([STREAM_RESULTS, STREAM_DLQ]) {
        if let Ok(mut stream) = js.get_stream(name).await
            && let Ok(info) = stream.info().await
        {
            *count = Some(info.state.messages);
        }
    }
    let metrics = streams::latest_metrics(js).await.map_err(|e| Error::Nats {
        what: "reading metrics".into(),
        source: e.into(),
    })?;
    Ok(Overview {
        queued_jobs: state.messages,
        queued_bytes: state.bytes,
        max_queued_jobs,
        max_queued_bytes,
        consumers,
        workers,
        workers_error,
        results: counts[0],
        dead_letters: counts[1],
        metrics,
    })
}

/// The backlogs of the job consumers on `KILN_JOBS` (`jobs`): `workers-gpu`, `workers-cpu`,
/// `scheduler`; one that cannot be read says why.
pub async fn consumers(jobs: &mut jetstream::stream::Stream) -> Vec<ConsumerState> {
    let mut consumers = Vec::new();
    for class in [DeviceClass::Gpu, DeviceClass::Cpu, DeviceClass::Auto] {
        let name = class.consumer().to_owned();
        consumers.push(match jobs.consumer_info(&name).await {
            Ok(c) => ConsumerState {
                name,
                pending: c.num_pending,
                in_flight: c.num_ack_pending as u64,
                redelivered: c.num_redelivered as u64,
                waiting_pulls: c.num_waiting as u64,
                error: None,
            },
            Err(e) => ConsumerState {
                name,
                pending: 0,
                in_flight: 0,
                redelivered: 0,
                waiting_pulls: 0,
                error: Some(e.to_string()),
            },
        });
    }
    consumers
}

/// The live workers, from their heartbeats in `KILN_WORKERS` (at most 2 s old).
/// A server without kiln's streams is [`crate::error::NOT_INITIALISED`], as for `kiln status`
/// (it was "no live workers").
pub async fn workers(js: &jetstream::Context) -> Result<Vec<WorkerInfo>> {
    let workers = streams::listed_workers(js).await.map_err(|e| Error::Nats {
        what: "reading the workers' heartbeats".into(),
        source: e.into(),
    })?;
    if workers.is_empty() {
        crate::error::open_stream(js, kiln_proto::streams::STREAM_JOBS).await?;
    }
    Ok(workers)
}
