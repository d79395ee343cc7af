//! kiln's key-value buckets and its object store, as `kiln init` and every role's start
//! make them: created when missing, set to the topology on `kiln init`, and the settings the
//! client libraries do not expose (a full job-state bucket drops its oldest states; rollups
//! are refused) applied to their streams.

use async_nats::jetstream;

use super::Topology;
use super::setup::SetupError;

/// Let a full `KILN_STATE` drop its oldest job states. async-nats makes (and updates) every
/// bucket with discard *new*, under which a bucket that reached its byte limit would refuse
/// every new state until old ones aged out a week later: `kiln status` would know nothing of
/// new jobs. A job state is a convenience (`kiln submit` goes on without one), so the oldest
/// give way.
async fn state_makes_room(js: &jetstream::Context) -> Result<(), BoxError> {
    let name = format!("KV_{}", crate::BUCKET_STATE);
    change_stream(js, &name, |config| {
        config.discard = jetstream::stream::DiscardPolicy::Old;
    })
    .await
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Apply `change` to the configuration of stream `name` as it is on the server (a bucket's
/// own stream, which the key-value and object-store calls do not let kiln configure in
/// full), and store it where that changed anything.
async fn change_stream(
    js: &jetstream::Context,
    name: &str,
    change: impl FnOnce(&mut jetstream::stream::Config),
) -> Result<(), BoxError> {
    let mut stream = js.get_stream(name).await?;
    let current = stream.info().await?.config.clone();
    let mut config = current.clone();
    change(&mut config);
    if config != current {
        js.update_stream(config).await?;
    }
    Ok(())
}

/// The key-value buckets: created when missing; with `update`, set to `topology`'s
/// configuration.
pub(super) async fn create_buckets(
    js: &jetstream::Context,
    topology: &Topology,
    update: bool,
) -> Result<(), SetupError> {
    for (bucket, config) in [
        (crate::BUCKET_WORKERS, topology.workers_bucket()),
        (crate::BUCKET_CANCEL, topology.cancel_bucket()),
        (crate::BUCKET_STATE, topology.state_bucket()),
    ] {
        if update {
            js.create_or_update_key_value(config)
                .await
                .map_err(|source| SetupError::Bucket { bucket, source })?;
        } else if js.get_key_value(bucket).await.is_err() {
            if let Err(source) = js.create_or_update_key_value(config).await
                // Made by another role starting at the same moment?
                && js.get_key_value(bucket).await.is_err()
            {
                return Err(SetupError::Missing {
                    what: format!("key-value bucket {bucket}"),
                    source: source.into(),
                });
            }
        } else {
            continue;
        }
        if bucket == crate::BUCKET_STATE {
            state_makes_room(js)
                .await
                .map_err(|source| SetupError::BucketDiscard { bucket, source })?;
        }
        // Not the workers' bucket: kept in memory, it is made again after a server restart
        // by the first worker to start, which may create it but not update it; its entries
        // live 6 s, and a wipe of them is made good by the next heartbeats.
        if bucket != crate::BUCKET_WORKERS {
            no_rollups(js, bucket)
                .await
                .map_err(|source| SetupError::BucketRollups { bucket, source })?;
        }
    }
    Ok(())
}

/// Refuse rollups in a bucket's stream. async-nats makes every bucket allowing them (for
/// `purge`, which kiln never calls; `nats kv purge` is refused on these buckets), and one
/// message with `Nats-Rollup: all`, which anyone allowed to write one key may send, wiped
/// the whole bucket: every cancel mark (a job cancelled while no worker was up then ran) or
/// every job state.
async fn no_rollups(js: &jetstream::Context, bucket: &str) -> Result<(), BoxError> {
    change_stream(js, &format!("KV_{bucket}"), |config| {
        config.allow_rollup = false;
    })
    .await
}

/// The `KILN_DATA` object store: created when missing; with `update`, its stream's age, size
/// and replicas set to `topology`'s.
pub(super) async fn ensure_data_bucket(
    js: &jetstream::Context,
    topology: &Topology,
    update: bool,
) -> Result<(), SetupError> {
    let config = topology.data_bucket();
    let missing = |source: BoxError| SetupError::Missing {
        what: format!("object store bucket {}", crate::BUCKET_DATA),
        source,
    };
    if js.get_object_store(crate::BUCKET_DATA).await.is_err() {
        return match js.create_object_store(config).await {
            Ok(_) => Ok(()),
            // Made by another role starting at the same moment (the server can refuse the
            // second of two creations for the storage both reserve)?
            Err(_) if js.get_object_store(crate::BUCKET_DATA).await.is_ok() => Ok(()),
            Err(e) => Err(missing(e.into())),
        };
    }
    if update {
        let name = format!("OBJ_{}", crate::BUCKET_DATA);
        change_stream(js, &name, |current| {
            current.max_age = config.max_age;
            current.max_bytes = config.max_bytes;
            current.num_replicas = config.num_replicas;
            // The server refuses a duplicate window longer than the age (it made the bucket
            // with 2 min, or the age if shorter); object chunks carry no message ids.
            if !config.max_age.is_zero() {
                current.duplicate_window = current.duplicate_window.min(config.max_age);
            }
        })
        .await
        .map_err(|source| SetupError::DataBucket { source })?;
    }
    Ok(())
}
