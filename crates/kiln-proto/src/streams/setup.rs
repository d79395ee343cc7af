//! Creating and updating kiln's streams, consumers and buckets: what `kiln init` and every
//! process at start do, waiting for JetStream while a cluster forms.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};

use super::buckets::{create_buckets, ensure_data_bucket};
use super::{STREAM_ADVISORIES, STREAM_DLQ, STREAM_JOBS, STREAM_METRICS, STREAM_RESULTS, Topology};

/// Errors from creating streams and consumers.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A stream could not be created or updated.
    #[error("could not create or update stream {stream}: {source}")]
    Stream {
        /// The stream's name.
        stream: &'static str,
        /// The server's refusal.
        #[source]
        source: jetstream::context::CreateStreamError,
    },
    /// A consumer could not be created or updated.
    #[error("could not create or update consumer {consumer}: {source}")]
    Consumer {
        /// The consumer's name.
        consumer: String,
        /// The server's refusal.
        #[source]
        source: jetstream::stream::ConsumerError,
    },
    /// The `KILN_DATA` object store's stream could not be updated to `kiln init`'s limits.
    #[error(
        "could not update object store bucket {}'s limits: {source}",
        crate::BUCKET_DATA
    )]
    DataBucket {
        /// The server's refusal.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A consumer's settings, which an update keeps, could not be read.
    #[error(
        "could not read consumer {consumer}'s ack wait and deliveries, which it keeps: {source}"
    )]
    ReadConsumer {
        /// The consumer's name.
        consumer: &'static str,
        /// Why.
        #[source]
        source: jetstream::context::ConsumerInfoError,
    },
    /// A key-value bucket could not be created or updated.
    #[error("could not create or update the key-value bucket {bucket}: {source}")]
    Bucket {
        /// The bucket's name.
        bucket: &'static str,
        /// The server's refusal.
        #[source]
        source: jetstream::context::CreateKeyValueError,
    },
    /// A bucket's stream could not be set to drop its oldest entries when full.
    #[error(
        "could not let the key-value bucket {bucket} drop its oldest entries when full: {source}"
    )]
    BucketDiscard {
        /// The bucket's name.
        bucket: &'static str,
        /// The server's refusal.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A bucket's stream could not be set to refuse rollups.
    #[error("could not set the key-value bucket {bucket} to refuse rollups: {source}")]
    BucketRollups {
        /// The bucket's name.
        bucket: &'static str,
        /// The server's refusal.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Something a role needs does not exist and this user could not create it: with
    /// least-privilege users only the admin creates streams and consumers.
    #[error(
        "{what} does not exist and this user could not create it: run `kiln init` as a user \
         allowed to create streams (the admin user with nats/secure)"
    )]
    Missing {
        /// What is missing: `stream KILN_JOBS`, `consumer workers-gpu`, ….
        what: String,
        /// Why it could not be created.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Something a role needs does not exist and the server refused to create it, saying why.
    #[error("{what} does not exist and the server refused to create it")]
    Refused {
        /// What is missing: `stream KILN_JOBS`, `consumer workers-gpu`, ….
        what: String,
        /// The server's answer.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The server has not the JetStream storage kiln's limits reserve.
    #[error(
        "{refused}. The server has not the JetStream storage that kiln's limits reserve: by \
         default 8 GiB for KILN_DATA (--data-max-bytes), 4 GiB each for KILN_RESULTS and \
         KILN_STATE (--results-max-bytes) and 1 GiB for queued jobs. Run `kiln init` with \
         smaller limits (say --data-max-bytes 1073741824 --results-max-bytes 536870912), or \
         give the server more: `max_file_store` in its jetstream block, or free disk (without \
         it, the server takes 75% of the disk space free when it starts)"
    )]
    NoStorage {
        /// What the server refused.
        refused: String,
    },
    /// A stream made by an older kiln lacks what this one needs, and roles do not change
    /// what `kiln init` set (its limits are the operator's).
    #[error(
        "{what}: run `kiln init` once (as the admin user with nats/secure) to update it; it \
         keeps the queued jobs"
    )]
    Outdated {
        /// What it lacks.
        what: String,
    },
    /// A stream made by hand keeps jobs in a way `kiln init` cannot change (its retention).
    #[error(
        "{what}; `kiln init` cannot change a stream's retention: let kiln's roles finish with \
         what is in it (`kiln status`), delete it (`nats stream rm {stream}`), then run \
         `kiln init`"
    )]
    Unusable {
        /// The stream's name.
        stream: &'static str,
        /// How it keeps its messages.
        what: String,
    },
    /// An existing stream could not be read.
    #[error("could not open stream {stream}: {source}")]
    GetStream {
        /// The stream's name.
        stream: &'static str,
        /// The server's answer.
        #[source]
        source: jetstream::context::GetStreamError,
    },
    /// JetStream did not answer for [`SETUP_PATIENCE`]: no server with JetStream (`-js`), or a
    /// cluster that has not elected its leader.
    #[error(
        "JetStream did not answer for {waited:?} ({reason}): is the server started with JetStream (-js), and has a cluster elected its leader?"
    )]
    Unavailable {
        /// How long setup waited.
        waited: Duration,
        /// The last answer.
        reason: String,
    },
}

/// How long a process waits at start for JetStream to answer (a cluster forming, a stream's
/// leader being elected) before it gives up.
pub const SETUP_PATIENCE: Duration = Duration::from_secs(60);

/// `op` again while it fails, for up to [`SETUP_PATIENCE`] in all (with a growing pause,
/// each failure logged as `what`), then its last error: what a process does with the requests
/// it makes at start, which time out while a cluster node restarts or a leader is elected.
pub async fn patiently<T, E, F, Fut>(what: &str, mut op: F) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(200);
    loop {
        match op().await {
            Err(e) if started.elapsed() + pause < SETUP_PATIENCE => {
                tracing::warn!(error = %e, retry_in = ?pause, "could not {what} yet");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            done => return done,
        }
    }
}

/// Create every stream, consumer and bucket kiln uses that does not exist yet, leaving
/// existing ones as they are: what every kiln process does at start, so that a process with
/// default settings never undoes what `kiln init` configured.
pub async fn ensure_all(js: &jetstream::Context, topology: &Topology) -> Result<(), SetupError> {
    setup(js, topology, false).await.map_err(short_of_storage)
}

/// Create or update every stream, consumer and bucket to `topology`: `kiln init`.
pub async fn update_all(js: &jetstream::Context, topology: &Topology) -> Result<(), SetupError> {
    setup(js, topology, true).await.map_err(short_of_storage)
}

/// `error`, or [`SetupError::NoStorage`] when the server refused it for the storage kiln's
/// limits reserve (JetStream error 10047): said as a permission problem before, while the
/// defaults (17 GiB) are more than a server on a small disk grants.
fn short_of_storage(error: SetupError) -> SetupError {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    // 10047 on one server; a cluster's placement says 10023, memory storage 10028.
    let short = [
        "insufficient storage resources",
        "insufficient resources",
        "insufficient memory resources",
    ];
    if short.iter().any(|s| text.contains(s)) {
        return SetupError::NoStorage {
            refused: match error {
                SetupError::Missing { what, source } => {
                    format!("could not create {what}: {source}")
                }
                other => other.to_string(),
            },
        };
    }
    match error {
        // The server answered the creation with a reason of its own (`replicas > 1 not
        // supported in non-clustered mode`, a consumer overlapping another): not a permission
        // it lacks, as `Missing` says (a request the user may not make goes unanswered).
        SetupError::Missing { what, source } if text.contains(", error code ") => {
            SetupError::Refused { what, source }
        }
        other => other,
    }
}

/// [`setup_once`], again while JetStream is not answering yet (a cluster forming at start,
/// as under `docker compose up`), for up to [`SETUP_PATIENCE`].
async fn setup(
    js: &jetstream::Context,
    topology: &Topology,
    update: bool,
) -> Result<(), SetupError> {
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        match setup_once(js, topology, update).await {
            Err(NotYet(reason)) if started.elapsed() < SETUP_PATIENCE => {
                tracing::warn!(%reason, retry_in = ?delay, "JetStream is not answering yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(NotYet(reason)) => {
                return Err(SetupError::Unavailable {
                    waited: started.elapsed(),
                    reason,
                });
            }
            Err(Failed(e)) => return Err(e),
            Ok(()) => return Ok(()),
        }
    }
}

/// Why one round of setup stopped.
enum Stop {
    /// JetStream did not answer, or answered that it is not available yet: try again.
    NotYet(String),
    Failed(SetupError),
}
use Stop::{Failed, NotYet};

impl From<SetupError> for Stop {
    fn from(e: SetupError) -> Self {
        Failed(e)
    }
}

/// Whether a JetStream API error means "not now" (no leader yet, no responders, a timeout)
/// rather than a refusal.
fn not_yet(code: Option<jetstream::ErrorCode>) -> bool {
    use jetstream::ErrorCode;
    code.is_none_or(|code| {
        [
            ErrorCode::CLUSTER_NOT_AVAILABLE,
            ErrorCode::CLUSTER_NOT_ACTIVE,
            ErrorCode::CLUSTER_NOT_LEADER,
            ErrorCode::CLUSTER_NOT_ASSIGNED,
        ]
        .contains(&code)
    })
}

/// Account information answers once JetStream is up, and a cluster has a meta leader.
async fn jetstream_ready(js: &jetstream::Context) -> Result<(), Stop> {
    use jetstream::context::AccountErrorKind;
    match js.query_account().await {
        Ok(_) => Ok(()),
        Err(e) => match e.kind() {
            AccountErrorKind::JetStream(inner) if !not_yet(Some(inner.error_code())) => {
                Err(Failed(SetupError::Unavailable {
                    waited: Duration::ZERO,
                    reason: e.to_string(),
                }))
            }
            AccountErrorKind::JetStreamUnavailable if !js.client().server_info().jetstream => {
                Err(NotYet(format!(
                    "{e}: the server runs without JetStream; start it with -js"
                )))
            }
            _ => Err(NotYet(e.to_string())),
        },
    }
}

async fn setup_once(
    js: &jetstream::Context,
    topology: &Topology,
    update: bool,
) -> Result<(), Stop> {
    jetstream_ready(js).await?;
    create_streams(js, topology, update).await?;
    let mut jobs = get_stream(js, STREAM_JOBS).await?;
    if !update {
        check_jobs_stream(&mut jobs, topology).await?;
    }
    create_consumers(js, &jobs, topology, update).await?;
    create_buckets(js, topology, update).await?;
    Ok(ensure_data_bucket(js, topology, update).await?)
}

/// Every stream: created when missing; with `update`, set to `topology`'s configuration.
async fn create_streams(
    js: &jetstream::Context,
    topology: &Topology,
    update: bool,
) -> Result<(), Stop> {
    let mut jobs = topology.jobs_stream();
    jobs.first_sequence = recreated_jobs_first_sequence(js).await?;
    for config in [
        jobs,
        topology.results_stream(),
        topology.metrics_stream(),
        topology.dlq_stream(),
        topology.advisories_stream(),
    ] {
        let stream = stream_name(&config.name);
        if update {
            check_retention(js, stream, config.retention).await?;
            js.create_or_update_stream(config)
                .await
                .map_err(|source| SetupError::Stream { stream, source })?;
        } else if stream_missing(js, stream).await?
            && let Err(source) = js.create_or_update_stream(config).await
            // Another role starting at the same moment may have made it (the server can
            // refuse the second of two creations for the storage both reserve).
            && stream_missing(js, stream).await?
        {
            return Err(SetupError::Missing {
                what: format!("stream {stream}"),
                source: source.into(),
            }
            .into());
        }
    }
    Ok(())
}

/// Where a `KILN_JOBS` made again (deleted, then created) while `KILN_RESULTS` holds earlier
/// results starts its sequence: past any sequence an earlier one could have reached. A job
/// sent without an id goes by `seq-<stream sequence>`, and a new stream counting from 1 again
/// gave its jobs the ids of earlier ones whose results are kept: they were taken for answered
/// and their own results dropped. The time in nanoseconds is beyond a stream that took one
/// message every nanosecond since the epoch. `None` (from 1) for a first creation, or while
/// `KILN_JOBS` exists (its sequence cannot change).
async fn recreated_jobs_first_sequence(js: &jetstream::Context) -> Result<Option<u64>, Stop> {
    if !stream_missing(js, STREAM_JOBS).await? || stream_missing(js, STREAM_RESULTS).await? {
        return Ok(None);
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    Ok(u64::try_from(now).ok())
}

/// Whether `stream` does not exist. Any other failure to read it is "not yet": creating it
/// then would reset an existing stream to this process's defaults.
async fn stream_missing(js: &jetstream::Context, stream: &str) -> Result<bool, Stop> {
    use jetstream::context::GetStreamErrorKind;
    match js.get_stream(stream).await {
        Ok(_) => Ok(false),
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(inner)
                if inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(true)
            }
            _ => Err(NotYet(format!("reading stream {stream}: {e}"))),
        },
    }
}

/// A jobs stream kiln can run on, said at start rather than found out later: one made before
/// copies had a subject of their own would refuse every routed copy and hand-back; one that
/// stores subjects beyond kiln's keeps jobs no consumer reads; one made by hand as a limits
/// stream keeps jobs after they ran, and one that drops its oldest messages when full loses
/// queued jobs without a word to their submitters (kiln's refuses new ones instead).
async fn check_jobs_stream(
    jobs: &mut jetstream::stream::Stream,
    topology: &Topology,
) -> Result<(), SetupError> {
    let Ok(info) = jobs.info().await else {
        return Ok(());
    };
    let stored = &info.config;
    if stored.retention != jetstream::stream::RetentionPolicy::WorkQueue {
        return Err(SetupError::Unusable {
            stream: STREAM_JOBS,
            what: format!(
                "{STREAM_JOBS} keeps its messages by {:?} retention, not as a work queue: jobs \
                 would stay in it after they ran",
                stored.retention
            ),
        });
    }
    let wanted = topology.jobs_stream().subjects;
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|w| !stored.subjects.iter().any(|s| crate::subject::covers(s, w)))
        .collect();
    // And nothing beyond them: a stream on `jobs.>` stores what no consumer reads
    // (`jobs.cpu`, `jobs.GPU.matmul`), which then waits there for ever, counted against the
    // queue's limits, where the server should answer "no responders".
    let extra: Vec<&String> = stored
        .subjects
        .iter()
        .filter(|s| !wanted.iter().any(|w| crate::subject::covers(w, s)))
        .collect();
    if !extra.is_empty() {
        return Err(SetupError::Outdated {
            what: format!(
                "{STREAM_JOBS} stores {}, which no kiln consumer reads: jobs sent there would \
                 wait for ever",
                extra
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    if !missing.is_empty() {
        return Err(SetupError::Outdated {
            what: format!(
                "{STREAM_JOBS} stores {} but this kiln also needs {}",
                stored.subjects.join(", "),
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    if stored.discard != jetstream::stream::DiscardPolicy::New {
        return Err(SetupError::Outdated {
            what: format!(
                "{STREAM_JOBS} drops its oldest queued jobs when it is full, unseen by their \
                 submitters; kiln's refuses new ones instead"
            ),
        });
    }
    Ok(())
}

/// A stream whose retention is not `retention`, which no update can change: said with what to
/// do, rather than as the server's "can not change retention policy".
async fn check_retention(
    js: &jetstream::Context,
    stream: &'static str,
    retention: jetstream::stream::RetentionPolicy,
) -> Result<(), SetupError> {
    if let Ok(mut existing) = js.get_stream(stream).await
        && let Ok(info) = existing.info().await
        && info.config.retention != retention
    {
        return Err(SetupError::Unusable {
            stream,
            what: format!(
                "{stream} keeps its messages by {:?} retention, where kiln's keeps them by \
                 {retention:?}",
                info.config.retention
            ),
        });
    }
    Ok(())
}

/// Every consumer: each device class's on `jobs`, the aggregator's on the results, and the
/// workers' dead-letter consumer on the advisories.
async fn create_consumers(
    js: &jetstream::Context,
    jobs: &jetstream::stream::Stream,
    topology: &Topology,
    update: bool,
) -> Result<(), SetupError> {
    for class in [
        crate::DeviceClass::Gpu,
        crate::DeviceClass::Cpu,
        crate::DeviceClass::Auto,
    ] {
        let mut config =
            topology.jobs_consumer(class.consumer(), crate::subject::jobs_of_class(class));
        if update && topology.keep_delivery {
            use jetstream::context::ConsumerInfoErrorKind;
            match jobs.consumer_info(class.consumer()).await {
                Ok(info) => {
                    config.ack_wait = info.config.ack_wait;
                    config.max_deliver = info.config.max_deliver;
                }
                // Made now, with the defaults.
                Err(e) if matches!(e.kind(), ConsumerInfoErrorKind::NotFound) => {}
                // Not known: updating would set the defaults over an operator's values.
                Err(source) => {
                    return Err(SetupError::ReadConsumer {
                        consumer: class.consumer(),
                        source,
                    });
                }
            }
        }
        create_consumer(jobs, config, update).await?;
    }
    let results = get_stream(js, STREAM_RESULTS).await?;
    create_consumer(&results, topology.aggregator_consumer(), update).await?;
    let advisories = get_stream(js, STREAM_ADVISORIES).await?;
    create_consumer(&advisories, topology.dead_letters_consumer(), update).await
}

async fn get_stream(
    js: &jetstream::Context,
    name: &'static str,
) -> Result<jetstream::stream::Stream, SetupError> {
    js.get_stream(name)
        .await
        .map_err(|source| SetupError::GetStream {
            stream: name,
            source,
        })
}

async fn create_consumer(
    stream: &jetstream::stream::Stream,
    config: pull::Config,
    update: bool,
) -> Result<(), SetupError> {
    let consumer = config.durable_name.clone().unwrap_or_default();
    if update {
        // A consumer's ack policy cannot change: one made by an older kiln keeps its own.
        let mut config = config;
        if let Ok(info) = stream.consumer_info(&consumer).await {
            config.ack_policy = info.config.ack_policy;
        }
        return stream
            .create_consumer(config)
            .await
            .map(|_| ())
            .map_err(|source| SetupError::Consumer { consumer, source });
    }
    if stream.consumer_info(&consumer).await.is_ok() {
        return Ok(());
    }
    stream
        .create_consumer(config)
        .await
        .map(|_| ())
        .map_err(|source| SetupError::Missing {
            what: format!("consumer {consumer}"),
            source: source.into(),
        })
}

fn stream_name(name: &str) -> &'static str {
    match name {
        STREAM_JOBS => STREAM_JOBS,
        STREAM_RESULTS => STREAM_RESULTS,
        STREAM_METRICS => STREAM_METRICS,
        STREAM_ADVISORIES => STREAM_ADVISORIES,
        _ => STREAM_DLQ,
    }
}
