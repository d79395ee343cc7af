//! The worker's entry in `KILN_WORKERS`, refreshed every heartbeat and removed on a clean stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_nats::jetstream;
use kiln_kernels::ComputeDevice;
use kiln_proto::{BUCKET_WORKERS, WorkerInfo};
use time::OffsetDateTime;
use tokio::sync::oneshot;

use crate::WorkerConfig;
use crate::shared::Shared;

/// How long a stopping worker waits for its last beat and the removal of its entry.
const STOP_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// A running heartbeat; [`Heartbeat::stop`] removes the entry.
pub(crate) struct Heartbeat {
    stop: Option<oneshot::Sender<()>>,
    /// Beat now, not at the next tick ([`Heartbeat::beat_now`]).
    now: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

/// A key-value key for a worker name: what a key cannot hold becomes `_`.
fn key(name: &str) -> String {
    name.chars()
        .map(|c| match c.is_ascii() && kiln_proto::key_byte(c as u8) {
            true => c,
            false => '_',
        })
        .collect()
}

/// Claim `config.name` in `KILN_WORKERS`, or refuse to start under it while a live worker
/// uses it: a live worker's entry is refreshed every heartbeat. An entry that is not (left by
/// a worker that stopped without removing it, until its TTL) is no obstacle. The claim is a
/// conditional write (create the key, or replace the stale entry read before waiting), so of
/// two workers starting under one name at the same instant, one gets it and the other is
/// refused; the claim is a `warming_up` entry that the first heartbeat, started right after,
/// replaces. A write that fails for another reason than the entry having changed (a timeout,
/// an election) claims nothing and refuses nothing: the worker starts, as it would without
/// the bucket.
pub(crate) async fn claim_name(
    js: &jetstream::Context,
    config: &WorkerConfig,
) -> crate::Result<()> {
    use jetstream::kv::UpdateErrorKind;
    let Ok(store) = js.get_key_value(BUCKET_WORKERS).await else {
        return Ok(());
    };
    let key = key(&config.name);
    let Some((revision, first)) = live_entry(&store, &key).await else {
        return create_claim(&store, &key, config).await;
    };
    // A worker draining under this name (the one this replaces, in a rolling restart that
    // does not wait for it to exit) leaves its entry soon: no obstacle, and no claim (it
    // still writes its entry until it leaves).
    if first.state == "draining" {
        return Ok(());
    }
    tokio::time::sleep(config.topology.heartbeat + config.topology.heartbeat / 2).await;
    match store.update(&key, claim(config), revision).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
            match live_entry(&store, &key).await {
                // Refreshed meanwhile, or claimed by another starting worker.
                Some((_, other)) => refuse(other),
                // Expired meanwhile (its TTL is three heartbeats): claim the empty key.
                None => create_claim(&store, &key, config).await,
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not claim the worker name; starting without");
            Ok(())
        }
    }
}

/// Create the key of a name nobody holds; refused when another worker created it first.
async fn create_claim(
    store: &jetstream::kv::Store,
    key: &str,
    config: &WorkerConfig,
) -> crate::Result<()> {
    match store.create(key, claim(config)).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == jetstream::kv::CreateErrorKind::AlreadyExists => {
            match live_entry(store, key).await {
                Some((_, other)) => refuse(other),
                // Gone again, or not a worker's entry: nobody to name.
                None => Ok(()),
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not claim the worker name; starting without");
            Ok(())
        }
    }
}

/// The claim's body: [`entry_of`] the worker starting now, as JSON.
fn claim(config: &WorkerConfig) -> bytes::Bytes {
    serde_json::to_vec(&entry_of(config, OffsetDateTime::now_utc()))
        .unwrap_or_default()
        .into()
}

/// Refuse to start under the name `other` holds, unless it is draining (it leaves soon).
fn refuse(other: WorkerInfo) -> crate::Result<()> {
    if other.state == "draining" {
        return Ok(());
    }
    Err(taken(&other))
}

/// The error of a name `other` holds.
pub(crate) fn taken(other: &WorkerInfo) -> crate::Error {
    crate::Error::NameTaken {
        name: other.name.clone(),
        device: other.device.clone(),
        started_at: other
            .started_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    }
}

/// The entry under `key` and its revision, unless there is none, it was deleted, or it does
/// not parse.
async fn live_entry(store: &jetstream::kv::Store, key: &str) -> Option<(u64, WorkerInfo)> {
    let entry = store.entry(key).await.ok()??;
    if entry.operation != jetstream::kv::Operation::Put {
        return None;
    }
    Some((entry.revision, serde_json::from_slice(&entry.value).ok()?))
}

/// A worker's entry as its configuration alone gives it, started at `started_at`: nothing
/// held or answered yet, `warming_up` (the scheduler counts serving workers only). A
/// starting worker claims its name with it; every heartbeat fills in the rest.
fn entry_of(config: &WorkerConfig, started_at: OffsetDateTime) -> WorkerInfo {
    WorkerInfo {
        name: config.name.clone(),
        class: config.class,
        device: config.device.to_string(),
        backend: match config.device {
            ComputeDevice::Cpu => "ndarray",
            ComputeDevice::Cuda(_) => "cuda",
        }
        .into(),
        engines: Default::default(),
        capacity: config.compute_slots,
        max_in_flight: config.max_in_flight,
        in_flight: 0,
        succeeded: 0,
        failed: 0,
        running: Vec::new(),
        state: "warming_up".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        started_at,
        updated_at: OffsetDateTime::now_utc(),
    }
}

/// What became of one beat.
enum Beat {
    /// Written, at this revision.
    Written(u64),
    /// Not written: another worker's entry holds the name.
    Taken(Box<WorkerInfo>),
    /// Not written, for another reason (the server gone, the bucket missing).
    Failed(String),
}

/// Write this worker's entry (started at `started_at`) over its last beat, at `revision`
/// (the first beat, with none, writes it whatever the key holds: the claim made it a moment
/// ago). A worker stalled past the entry's TTL (three heartbeats) may find its name taken by
/// another started meanwhile, which a plain write would overwrite, both then serving under
/// one entry; where its entry merely expired, it writes it afresh.
async fn beat(
    store: &jetstream::kv::Store,
    key: &str,
    body: bytes::Bytes,
    revision: Option<u64>,
    started_at: OffsetDateTime,
) -> Beat {
    use jetstream::kv::UpdateErrorKind;
    let Some(revision) = revision else {
        return match store.put(key, body).await {
            Ok(written) => Beat::Written(written),
            Err(e) => Beat::Failed(e.to_string()),
        };
    };
    match store.update(key, body.clone(), revision).await {
        Ok(written) => Beat::Written(written),
        Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
            match live_entry(store, key).await {
                // Its own (a beat whose acknowledgement was lost): on from that one.
                Some((now, ours)) if ours.started_at == started_at => {
                    match store.update(key, body, now).await {
                        Ok(written) => Beat::Written(written),
                        Err(e) => Beat::Failed(e.to_string()),
                    }
                }
                Some((_, other)) => Beat::Taken(Box::new(other)),
                // Expired (or removed): written afresh, unless another worker does so first.
                None => match store.create(key, body).await {
                    Ok(written) => Beat::Written(written),
                    Err(e) if e.kind() == jetstream::kv::CreateErrorKind::AlreadyExists => {
                        match live_entry(store, key).await {
                            Some((_, other)) if other.started_at != started_at => {
                                Beat::Taken(Box::new(other))
                            }
                            _ => Beat::Failed(e.to_string()),
                        }
                    }
                    Err(e) => Beat::Failed(e.to_string()),
                },
            }
        }
        Err(e) => Beat::Failed(e.to_string()),
    }
}

/// Another worker's entry, `other`, holds this worker's name. Draining, the name is its
/// successor's to take (a rolling restart under one name: no error); serving, the worker was
/// stalled past its entry's TTL while `other` started, and it stops ([`Shared::name_taken`]).
fn name_lost(shared: &Shared, other: WorkerInfo, draining: bool) {
    if draining {
        tracing::info!(other_started_at = %other.started_at, "the worker taking over this worker's name wrote its entry; no more heartbeats");
        return;
    }
    tracing::error!(
        other_started_at = %other.started_at,
        "another worker took this worker's name while it was stalled past its entry's TTL; stopping"
    );
    let _ = shared.name_taken.set(other);
}

impl Heartbeat {
    pub(crate) async fn start(
        js: &jetstream::Context,
        shared: Arc<Shared>,
        serving: Arc<AtomicBool>,
    ) -> Result<Self, String> {
        let mut store = js
            .get_key_value(BUCKET_WORKERS)
            .await
            .map_err(|e| format!("opening the {BUCKET_WORKERS} bucket: {e}"))?;
        let (stop, mut stopped) = oneshot::channel();
        let now = Arc::new(tokio::sync::Notify::new());
        let beat_now = now.clone();
        let started_at = OffsetDateTime::now_utc();
        let key = key(&shared.config.name);
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(shared.config.topology.heartbeat);
            // The revision of this worker's last beat: each beat replaces that one only.
            let mut revision = None;
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    () = beat_now.notified() => ticker.reset_immediately(),
                    _ = ticker.tick() => {
                        // Cut off from the server (said once by the connection's own log): a
                        // beat would time out, and warn every 5 s of the outage, saying less.
                        if shared.client.connection_state() != async_nats::connection::State::Connected {
                            tracing::debug!("heartbeat skipped: not connected to NATS");
                            continue;
                        }
                        let info = info(&shared, &serving, started_at);
                        let Ok(body) = serde_json::to_vec(&info) else { continue };
                        let e = match beat(&store, &key, body.clone().into(), revision, started_at).await {
                            Beat::Written(written) => {
                                revision = Some(written);
                                continue;
                            }
                            Beat::Taken(other) => {
                                name_lost(&shared, *other, info.state == "draining");
                                // Its entry is the other's now: left as it is.
                                return;
                            }
                            Beat::Failed(e) => e,
                        };
                        // The bucket keeps its entries in memory: a restarted server comes
                        // back without it. Make it again, as every role does at start.
                        let text = e.to_string();
                        if !(text.contains("no stream found") || text.contains("stream not found")) {
                            tracing::warn!(error = %e, "heartbeat failed");
                            continue;
                        }
                        // Create only (a worker may not update streams); another worker may have made it first.
                        let made = match shared.js.create_key_value(shared.config.topology.workers_bucket()).await {
                            Ok(store) => Ok(store),
                            Err(e) => shared.js.get_key_value(BUCKET_WORKERS).await.map_err(|_| e),
                        };
                        match made {
                            Ok(again) => {
                                tracing::info!("{BUCKET_WORKERS} was gone (a server restart); made it again");
                                store = again;
                                match store.put(&key, body.into()).await {
                                    Ok(written) => revision = Some(written),
                                    Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
                                }
                            }
                            Err(again) => tracing::warn!(error = %e, making_it = %again, "heartbeat failed: {BUCKET_WORKERS} is missing and could not be made"),
                        }
                    }
                }
            }
            // A clean stop leaves at once rather than after the TTL.
            let _ = store.delete(&key).await;
        });
        Ok(Heartbeat {
            stop: Some(stop),
            now,
            task,
        })
    }

    /// Beat at once, not at the next tick: a worker that starts draining says so before the
    /// scheduler next reads the entries, rather than up to a heartbeat later while the
    /// scheduler routes jobs to its class as if it served them.
    pub(crate) fn beat_now(&self) {
        self.now.notify_one();
    }

    /// Stop beating and remove the worker's entry, waiting at most [`STOP_PATIENCE`]: with
    /// the server gone, a beat on its way and the removal each waited for their request to
    /// time out, and the worker outlived its orchestrator's grace period.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(STOP_PATIENCE, &mut self.task)
            .await
            .is_err()
        {
            // The entry then lives out its TTL, three heartbeats.
            self.task.abort();
        }
    }
}

fn info(shared: &Shared, serving: &AtomicBool, started_at: OffsetDateTime) -> WorkerInfo {
    let config = &shared.config;
    let stats = shared.stats();
    WorkerInfo {
        engines: shared.engines.names(&config.device),
        // Jobs held (computing, waiting for a slot, publishing) — not the slots reserved by
        // a pull request still waiting for jobs.
        in_flight: config.metrics.in_flight.get().max(0) as usize,
        succeeded: stats.succeeded,
        failed: stats.failed,
        running: shared
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .take(1000)
            .cloned()
            .collect(),
        // A draining worker takes no new jobs (the scheduler counts serving workers only) but
        // still holds some, which `kiln status <id>` finds here.
        state: if config.health.is_stopping() {
            "draining"
        } else if serving.load(Ordering::Relaxed) {
            "serving"
        } else {
            "warming_up"
        }
        .into(),
        ..entry_of(config, started_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_proto::streams;
    use kiln_testkit::NatsServer;

    async fn jetstream(server: &NatsServer) -> jetstream::Context {
        jetstream::new(async_nats::connect(server.url()).await.expect("connect"))
    }

    /// A worker named `name` whose heartbeat is `heartbeat_ms` (entries live three).
    fn config(name: &str, heartbeat_ms: u64) -> WorkerConfig {
        let mut config = WorkerConfig::new(ComputeDevice::Cpu);
        config.name = name.into();
        config.topology.heartbeat = std::time::Duration::from_millis(heartbeat_ms);
        config
    }

    /// A connection to `server` with kiln's streams made (as `config` has them), and the
    /// workers' bucket.
    async fn set_up(
        server: &NatsServer,
        config: &WorkerConfig,
    ) -> (jetstream::Context, jetstream::kv::Store) {
        let js = jetstream(server).await;
        streams::ensure_all(&js, &config.topology)
            .await
            .expect("streams");
        let store = js.get_key_value(BUCKET_WORKERS).await.unwrap();
        (js, store)
    }

    /// A `serving` entry under `name`, as a worker that died left it.
    async fn left_behind(store: &jetstream::kv::Store, name: &str) -> u64 {
        let mut left = entry_of(&config(name, 1000), OffsetDateTime::now_utc());
        left.state = "serving".into();
        let body = serde_json::to_vec(&left).unwrap();
        store.put(name, body.into()).await.unwrap()
    }

    /// Each beat replaces the worker's own last one: a worker stalled past its entry's TTL
    /// whose name another worker took meanwhile finds the other's entry and stops (a plain
    /// write overwrote it, and both served under one entry); its own entry, expired or
    /// written by a beat whose acknowledgement was lost, it writes on.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_beat_finds_its_name_taken_by_another_worker() {
        let server = NatsServer::start();
        let config = config("stalled", 1000);
        let (_, store) = set_up(&server, &config).await;
        let started_at = OffsetDateTime::now_utc();
        let ours = |state: &str| {
            let mut info = entry_of(&config, started_at);
            info.state = state.into();
            bytes::Bytes::from(serde_json::to_vec(&info).unwrap())
        };
        let written = |beat: Beat| match beat {
            Beat::Written(revision) => revision,
            Beat::Taken(other) => panic!("taken by {other:?}"),
            Beat::Failed(e) => panic!("failed: {e}"),
        };
        let first = written(beat(&store, "stalled", ours("serving"), None, started_at).await);
        let second =
            written(beat(&store, "stalled", ours("serving"), Some(first), started_at).await);
        assert!(second > first);
        // Its own beat stored, its acknowledgement lost: on from that one.
        let lost = store.put("stalled", ours("serving")).await.unwrap();
        let third =
            written(beat(&store, "stalled", ours("serving"), Some(second), started_at).await);
        assert!(third > lost);
        // Expired (removed here): written afresh.
        store.delete("stalled").await.unwrap();
        let fourth =
            written(beat(&store, "stalled", ours("serving"), Some(third), started_at).await);
        // Another worker started under the name meanwhile: not overwritten.
        let other = left_behind(&store, "stalled").await;
        match beat(&store, "stalled", ours("serving"), Some(fourth), started_at).await {
            Beat::Taken(entry) => assert_ne!(entry.started_at, started_at),
            _ => panic!("the other worker's entry was not seen"),
        }
        let entry = store.entry("stalled").await.unwrap().unwrap();
        assert_eq!(entry.revision, other, "the other's entry stands");
    }

    /// Two workers claiming one name at the same instant, each on its own connection, each
    /// refreshing its entry from right after a claim as the heartbeat does: a read and then
    /// a write would let both through; the conditional write lets one.
    #[tokio::test(flavor = "multi_thread")]
    async fn of_two_claims_of_one_name_at_once_one_is_refused() {
        let server = NatsServer::start();
        let (a, b) = (jetstream(&server).await, jetstream(&server).await);
        let twin = config("twin", 200);
        streams::ensure_all(&a, &twin.topology)
            .await
            .expect("streams");
        let claim_and_beat = async |js: &jetstream::Context| {
            let claimed = claim_name(js, &twin).await;
            if claimed.is_ok() {
                let store = js.get_key_value(BUCKET_WORKERS).await.unwrap();
                let body = claim(&twin);
                tokio::spawn(async move {
                    for _ in 0..40 {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        let _ = store.put("twin", body.clone()).await;
                    }
                });
            }
            claimed
        };
        let (first, second) = tokio::join!(claim_and_beat(&a), claim_and_beat(&b));
        let refused: Vec<_> = [first, second]
            .into_iter()
            .filter_map(Result::err)
            .collect();
        assert_eq!(refused.len(), 1, "{refused:?}");
        let message = refused[0].to_string();
        assert!(
            message.contains("a live worker named \"twin\" (on cpu, started "),
            "{message}"
        );
        // The claim is a `warming_up` entry under the name, which no scheduler counts.
        let store = a.get_key_value(BUCKET_WORKERS).await.unwrap();
        let (_, claimed) = live_entry(&store, "twin").await.expect("the claim");
        assert_eq!(
            (claimed.name.as_str(), claimed.state.as_str()),
            ("twin", "warming_up")
        );
    }

    /// An entry nobody refreshes (a worker killed without removing it) is claimed after a
    /// heartbeat and a half; one that is refreshed is not.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_stale_entry_is_claimed_and_a_live_one_is_not() {
        let server = NatsServer::start();
        let stale = config("stale", 1000);
        let (js, store) = set_up(&server, &stale).await;
        let before = left_behind(&store, "stale").await;
        claim_name(&js, &stale)
            .await
            .expect("a stale entry is no obstacle");
        let (revision, claimed) = live_entry(&store, "stale").await.expect("the claim");
        assert!(
            revision > before && claimed.state == "warming_up",
            "{claimed:?}"
        );

        left_behind(&store, "live").await;
        let refresh = tokio::spawn(async move {
            for _ in 0..60 {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                left_behind(&store, "live").await;
            }
        });
        let refused = claim_name(&js, &config("live", 1000)).await.unwrap_err();
        assert!(
            matches!(refused, crate::Error::NameTaken { .. }),
            "{refused}"
        );
        refresh.abort();
    }

    /// A stale entry that expires (three heartbeats after its last write) while the claim
    /// waits: the key is empty then, and the claim creates it rather than starting without.
    #[tokio::test(flavor = "multi_thread")]
    async fn an_entry_expiring_during_the_wait_is_claimed_all_the_same() {
        let server = NatsServer::start();
        let expiring = config("expiring", 200);
        let (js, store) = set_up(&server, &expiring).await;
        left_behind(&store, "expiring").await;
        // Read at 400 ms, still there; gone at 600 ms, before the claim at 700 ms.
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        claim_name(&js, &expiring).await.expect("no live worker");
        let (_, claimed) = live_entry(&store, "expiring").await.expect("the claim");
        assert_eq!(claimed.state, "warming_up");
    }
}
