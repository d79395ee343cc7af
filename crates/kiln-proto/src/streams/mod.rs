//! Stream and consumer definitions, created or updated idempotently by every kiln process.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, pull},
    stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
};

mod buckets;
mod setup;

pub use setup::{SETUP_PATIENCE, SetupError, ensure_all, patiently, update_all};

/// The job queue: `jobs.<gpu|cpu|auto>.<kind>` and kiln's copies, work-queue retention.
pub const STREAM_JOBS: &str = "KILN_JOBS";
/// Result events, `results.<kind>.<id>`: one per job id for as long as they are kept.
pub const STREAM_RESULTS: &str = "KILN_RESULTS";
/// Metrics snapshots, `metrics.<kind>.<class>`: the latest per subject.
pub const STREAM_METRICS: &str = "KILN_METRICS";
/// Dead letters, `dlq.<kind>`: jobs given up on, kept 30 days.
pub const STREAM_DLQ: &str = "KILN_DLQ";
/// The server's max-deliveries advisories for `KILN_JOBS`, kept until a worker has turned
/// each into a failed result and a dead letter.
pub const STREAM_ADVISORIES: &str = "KILN_ADVISORIES";

/// GPU workers' consumer on `KILN_JOBS` (`jobs.gpu.>`).
pub const CONSUMER_WORKERS_GPU: &str = "workers-gpu";
/// CPU workers' consumer on `KILN_JOBS` (`jobs.cpu.>`).
pub const CONSUMER_WORKERS_CPU: &str = "workers-cpu";
/// The scheduler's consumer on `KILN_JOBS` (`jobs.auto.>`).
pub const CONSUMER_SCHEDULER: &str = "scheduler";
/// The aggregator's consumer on `KILN_RESULTS`.
pub const CONSUMER_AGGREGATOR: &str = "aggregator";
/// Workers' consumer on `KILN_ADVISORIES`.
pub const CONSUMER_DEAD_LETTERS: &str = "dead-letters";

/// What the server publishes when a job has been delivered `max_deliver` times without an
/// ack (a worker crashed or stalled on each attempt).
pub const MAX_DELIVERIES_ADVISORIES: &str =
    "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.KILN_JOBS.>";

/// The body of a max-deliveries advisory (`io.nats.jetstream.advisory.v1.max_deliver`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct MaxDeliveriesAdvisory {
    /// The stream that holds the job (`KILN_JOBS`).
    pub stream: String,
    /// The consumer that gave up on it (`workers-gpu`, …).
    pub consumer: String,
    /// The job's sequence in the stream.
    pub stream_seq: u64,
    /// How many times it was delivered.
    pub deliveries: u64,
}

/// How long the job and result streams remember message ids to drop resubmissions.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// Sizes and replication of kiln's streams; one per deployment.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Stream and consumer replicas: 1 on a laptop, 3 on a cluster.
    pub replicas: usize,
    /// Most jobs waiting in `KILN_JOBS`; beyond it submitters are refused (discard new).
    pub max_queued_jobs: i64,
    /// Most bytes waiting in `KILN_JOBS`.
    pub max_queued_bytes: i64,
    /// How long result events are kept (and with them, the guarantee that a job id is
    /// answered once).
    pub results_max_age: Duration,
    /// Most bytes of result events kept; past it the oldest results make room (discard old:
    /// a full stream must not refuse every new answer). Job states in `KILN_STATE` are kept
    /// within the same number of bytes, the oldest going first too.
    pub results_max_bytes: i64,
    /// How long objects in `KILN_DATA` (inputs people put, outputs workers store) are kept.
    pub data_max_age: Duration,
    /// Most bytes `KILN_DATA` holds; past it new objects are refused.
    pub data_max_bytes: i64,
    /// Consumer ack wait: a job not acked (or progress-acked) in this time is redelivered.
    pub ack_wait: Duration,
    /// Deliveries of one job before it is given up.
    pub max_deliver: i64,
    /// How often workers refresh their entry in `KILN_WORKERS`; an entry expires after
    /// three missed heartbeats.
    pub heartbeat: Duration,
    /// Whether an update ([`update_all`]) leaves the ack wait and deliveries of the workers'
    /// consumers as they are: `kiln init` takes neither, and must not undo what the worker
    /// that made a consumer chose (`--ack-wait`) or an operator set since.
    pub keep_delivery: bool,
}

impl Default for Topology {
    fn default() -> Self {
        Self {
            replicas: 1,
            max_queued_jobs: 1_000_000,
            max_queued_bytes: 1 << 30,
            results_max_age: Duration::from_secs(7 * 24 * 3600),
            results_max_bytes: 4 << 30,
            data_max_age: Duration::from_secs(7 * 24 * 3600),
            data_max_bytes: 8 << 30,
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            heartbeat: Duration::from_secs(2),
            keep_delivery: false,
        }
    }
}

impl Topology {
    /// `KILN_JOBS`: work-queue, file, discard new past `max_queued_jobs`/`max_queued_bytes`.
    pub fn jobs_stream(&self) -> stream::Config {
        stream::Config {
            name: STREAM_JOBS.into(),
            description: Some("kiln jobs: jobs.<gpu|cpu|auto>.<kind>".into()),
            // Only `jobs.<class>.<kind>` of the three classes, and kiln's own copies
            // `jobs.<gpu|cpu>.<kind>.copy`: a job on any other subject (`jobs.cpu`,
            // `jobs.GPU.matmul`, `jobs.cpu.matmul.x`) would match no consumer and sit in the
            // queue unanswered for ever; refused, its publisher hears of it.
            subjects: [
                crate::DeviceClass::Gpu,
                crate::DeviceClass::Cpu,
                crate::DeviceClass::Auto,
            ]
            .into_iter()
            .flat_map(crate::subject::stored_jobs_of_class)
            .collect(),
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            discard: DiscardPolicy::New,
            max_messages: self.max_queued_jobs,
            max_bytes: self.max_queued_bytes,
            duplicate_window: DUPLICATE_WINDOW,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    /// `KILN_RESULTS`: one message per subject, each published only onto an empty subject,
    /// kept `results_max_age`/`results_max_bytes` (the oldest go first).
    pub fn results_stream(&self) -> stream::Config {
        stream::Config {
            name: STREAM_RESULTS.into(),
            description: Some("kiln result events: results.<kind>.<id>".into()),
            subjects: vec!["results.>".into()],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            // One stored result per job id for as long as results are kept: every result is
            // published on the condition that its subject holds none yet
            // (`Nats-Expected-Last-Subject-Sequence: 0`, [`crate::expect_no_result`]), so a
            // second result (a job id reused after the duplicate window, a job redelivered
            // after a lost ack) is refused, not stored over the first. Past the byte limit
            // the oldest results make room: with `discard: new` a full stream refused every
            // new result, and every worker held its jobs retrying until results aged out.
            discard: DiscardPolicy::Old,
            max_messages_per_subject: 1,
            max_age: self.results_max_age,
            max_bytes: self.results_max_bytes,
            duplicate_window: DUPLICATE_WINDOW,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    /// `KILN_METRICS`: the latest snapshot per subject, readable with direct gets.
    pub fn metrics_stream(&self) -> stream::Config {
        stream::Config {
            name: STREAM_METRICS.into(),
            description: Some("kiln metrics snapshots: metrics.<kind>.<class>".into()),
            subjects: vec!["metrics.>".into()],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            discard: DiscardPolicy::Old,
            max_messages_per_subject: 1,
            allow_direct: true,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    /// `KILN_DLQ`: dead letters, kept 30 days.
    pub fn dlq_stream(&self) -> stream::Config {
        stream::Config {
            name: STREAM_DLQ.into(),
            description: Some("kiln dead letters: dlq.<kind>".into()),
            subjects: vec!["dlq.>".into()],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            discard: DiscardPolicy::Old,
            max_age: Duration::from_secs(30 * 24 * 3600),
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    /// Max-deliveries advisories of `KILN_JOBS`: the server publishes one, whoever listens,
    /// when a job has been delivered `max_deliver` times unacknowledged. Captured in a stream
    /// they cannot be missed by a worker that is down or busy at that moment.
    pub fn advisories_stream(&self) -> stream::Config {
        stream::Config {
            name: STREAM_ADVISORIES.into(),
            description: Some("kiln: max-deliveries advisories of KILN_JOBS".into()),
            subjects: vec![MAX_DELIVERIES_ADVISORIES.into()],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            discard: DiscardPolicy::Old,
            max_age: Duration::from_secs(7 * 24 * 3600),
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    /// The workers' consumer on `KILN_ADVISORIES`; no delivery limit: an advisory is only
    /// done once its job is answered.
    pub fn dead_letters_consumer(&self) -> pull::Config {
        pull::Config {
            durable_name: Some(CONSUMER_DEAD_LETTERS.into()),
            description: Some("kiln workers: dead-letter jobs the server gave up on".into()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    /// The live-workers bucket: one key per worker, expiring three heartbeats after its
    /// last refresh.
    pub fn workers_bucket(&self) -> jetstream::kv::Config {
        jetstream::kv::Config {
            bucket: crate::BUCKET_WORKERS.into(),
            description: "kiln live workers (heartbeats)".into(),
            history: 1,
            max_age: self.heartbeat * 3,
            storage: StorageType::Memory,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    /// Job states (`KILN_STATE`): one key per job, kept as long as results and within as
    /// many bytes. (A bucket drops its oldest keys when full only once its stream discards
    /// old, which the setup sets after making it: see `streams::setup`.)
    pub fn state_bucket(&self) -> jetstream::kv::Config {
        jetstream::kv::Config {
            bucket: crate::BUCKET_STATE.into(),
            description: "kiln job states (kiln status <id>)".into(),
            history: 1,
            max_age: self.results_max_age,
            max_bytes: self.results_max_bytes,
            storage: StorageType::File,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    /// The `KILN_DATA` object store: job inputs put by users, outputs stored by workers.
    pub fn data_bucket(&self) -> jetstream::object_store::Config {
        jetstream::object_store::Config {
            bucket: crate::BUCKET_DATA.into(),
            description: Some("kiln job data: inputs (kiln put) and outputs".into()),
            max_age: self.data_max_age,
            max_bytes: self.data_max_bytes,
            storage: StorageType::File,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    /// Cancelled job ids: one key per job, kept a day.
    pub fn cancel_bucket(&self) -> jetstream::kv::Config {
        jetstream::kv::Config {
            bucket: crate::BUCKET_CANCEL.into(),
            description: "kiln cancelled jobs (kiln cancel)".into(),
            history: 1,
            max_age: Duration::from_secs(24 * 3600),
            storage: StorageType::File,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    /// A worker or scheduler consumer on `KILN_JOBS`.
    pub fn jobs_consumer(&self, name: &str, filter: String) -> pull::Config {
        pull::Config {
            durable_name: Some(name.into()),
            description: Some(format!("kiln {name}")),
            filter_subject: filter,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: self.max_deliver,
            max_ack_pending: 20_000,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    /// The aggregator's consumer on `KILN_RESULTS`. It acks a result only once a snapshot
    /// that includes it is stored, so its ack wait spans several snapshot intervals; and
    /// cumulatively, one ack per snapshot for every result it accounted for (see the
    /// aggregator's `acks` module). A consumer made by an older kiln keeps explicit acks (a
    /// consumer's ack policy cannot change), and the aggregator acks each result there.
    pub fn aggregator_consumer(&self) -> pull::Config {
        pull::Config {
            durable_name: Some(CONSUMER_AGGREGATOR.into()),
            description: Some("kiln aggregator".into()),
            filter_subject: "results.>".into(),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::All,
            ack_wait: Duration::from_secs(60),
            max_ack_pending: 200_000,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }
}

/// [`live_workers`] for people (`kiln workers`, `kiln status`): a missing bucket lists none.
/// The bucket is kept in memory, so after a server restart it is missing until a worker beats
/// again (a live one makes it at once). The scheduler keeps its last read instead, for as
/// long as a heartbeat would stand.
pub async fn listed_workers(js: &jetstream::Context) -> Result<Vec<crate::WorkerInfo>, String> {
    match js.get_key_value(crate::BUCKET_WORKERS).await {
        Err(e) if bucket_missing(&e) => Ok(Vec::new()),
        _ => live_workers(js).await,
    }
}

/// Whether opening a bucket failed because its stream does not exist.
fn bucket_missing(e: &jetstream::context::KeyValueError) -> bool {
    use jetstream::context::{GetStreamError, GetStreamErrorKind, KeyValueErrorKind};
    e.kind() == KeyValueErrorKind::GetBucket
        && std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<GetStreamError>())
            .is_some_and(|s| {
                matches!(s.kind(), GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
            })
}

/// The workers whose heartbeat has not expired, sorted by class then name. Entries that do
/// not parse are skipped.
///
/// The keys come from the bucket's stream info (its subjects), not from the bucket's key
/// listing: that is an ordered consumer on the server per call, which lingers there for 30 s
/// after it is read, and the scheduler reads the workers four times a second. Several
/// schedulers and `kiln status` calls piled up hundreds of them, and at the account's
/// consumer limit every listing (and every new consumer) failed.
pub async fn live_workers(js: &jetstream::Context) -> Result<Vec<crate::WorkerInfo>, String> {
    use futures_util::TryStreamExt as _;
    let kv = js
        .get_key_value(crate::BUCKET_WORKERS)
        .await
        .map_err(|e| e.to_string())?;
    let prefix = format!("$KV.{}.", crate::BUCKET_WORKERS);
    let subjects: Vec<(String, usize)> = js
        .get_stream(format!("KV_{}", crate::BUCKET_WORKERS))
        .await
        .map_err(|e| e.to_string())?
        .info_with_subjects(format!("{prefix}>"))
        .await
        .map_err(|e| e.to_string())?
        .try_collect()
        .await
        .map_err(|e| e.to_string())?;
    // A subject published there by hand that is no key kiln writes is nobody's heartbeat:
    // skipped, rather than fail every read.
    let key_like = |key: &&str| {
        !key.is_empty()
            && !key.starts_with('.')
            && !key.ends_with('.')
            && key.bytes().all(crate::key_byte)
    };
    let keys: Vec<&str> = subjects
        .iter()
        .filter_map(|(subject, _)| subject.strip_prefix(prefix.as_str()))
        .filter(key_like)
        .collect();
    let mut workers = Vec::with_capacity(keys.len());
    for key in keys {
        // A key gone since the listing (or deleted: its last message is a marker) is a
        // worker gone; a read that fails is an error, not a worker fewer (the scheduler keeps
        // its last read instead).
        let value = kv
            .get(key)
            .await
            .map_err(|e| format!("reading {key}: {e}"))?;
        if let Some(info) = value.and_then(|v| serde_json::from_slice::<crate::WorkerInfo>(&v).ok())
        {
            workers.push(info);
        }
    }
    workers.sort_by(|a, b| (a.class, &a.name).cmp(&(b.class, &b.name)));
    Ok(workers)
}

/// The latest snapshot of every `metrics.<kind>.<class>` subject, sorted by kind then
/// class. Snapshots that do not parse are skipped.
pub async fn latest_metrics(
    js: &jetstream::Context,
) -> Result<Vec<crate::MetricsSnapshot>, String> {
    let stored = latest_metrics_stored(js).await?;
    let mut snapshots: Vec<_> = stored.into_iter().filter_map(|s| s.snapshot).collect();
    snapshots.sort_by(|a, b| (&a.kind, &a.class).cmp(&(&b.kind, &b.class)));
    Ok(snapshots)
}

/// The last message of one `metrics.<kind>.<class>` subject.
#[derive(Debug, Clone)]
pub struct StoredSnapshot {
    /// Its subject.
    pub subject: String,
    /// Its sequence in `KILN_METRICS`: the aggregator publishes the next snapshot of the
    /// subject on the condition that this is still the last (one writer at a time).
    pub sequence: u64,
    /// The snapshot, `None` when it does not parse.
    pub snapshot: Option<crate::MetricsSnapshot>,
}

/// The last message of every `metrics.<kind>.<class>` subject, with its sequence.
pub async fn latest_metrics_stored(js: &jetstream::Context) -> Result<Vec<StoredSnapshot>, String> {
    use futures_util::TryStreamExt as _;
    let stream = js
        .get_stream(STREAM_METRICS)
        .await
        .map_err(|e| e.to_string())?;
    let subjects: Vec<(String, usize)> = stream
        .info_with_subjects("metrics.>")
        .await
        .map_err(|e| e.to_string())?
        .try_collect()
        .await
        .map_err(|e| e.to_string())?;
    let mut stored = Vec::with_capacity(subjects.len());
    for (subject, _count) in subjects {
        let message = stream
            .direct_get_last_for_subject(subject.as_str())
            .await
            .map_err(|e| e.to_string())?;
        stored.push(StoredSnapshot {
            subject,
            sequence: message.sequence,
            snapshot: serde_json::from_slice(&message.payload).ok(),
        });
    }
    Ok(stored)
}

/// Whether a consumer lookup failed because the consumer (or its stream) is gone, deleted
/// (`kiln init` makes it again), rather than because the server is out of reach: a consumer
/// deleted while its reader was disconnected ends no pull, whose requests then fail for ever.
pub fn consumer_gone(error: &jetstream::context::ConsumerInfoError) -> bool {
    use jetstream::context::ConsumerInfoErrorKind as Kind;
    matches!(error.kind(), Kind::NotFound | Kind::StreamNotFound)
}
