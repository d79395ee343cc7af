//! Cancellations: the worker mirrors the `KILN_CANCEL` bucket into memory, so that checking a
//! job (before it starts, and at each checkpoint) costs a set lookup, not a server round trip.
//!
//! The mirror is bounded whatever the number of marks: it keeps a 64-bit hash of each key
//! (not the key), forgets a mark once the bucket's own age limit has expired it on the
//! server (the server sends no delete for an expired key), and holds at most [`MAX_MARKS`],
//! forgetting the oldest first. About 60 bytes a mark: a million marks are about 60 MiB.
//!
//! A mark cancels the jobs of its id enqueued before it was put, not a job sent under that id
//! later ([`kiln_proto::cancel_applies`]): `kiln cancel` of an id with no job yet (a typo, a
//! cancel before the submit) marks it in case a job published without a record waits in the
//! queue, and the mark, kept a day, cancelled the next job under that id before it ran.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash as _, Hasher as _};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv::Operation};
use futures::StreamExt as _;
use kiln_proto::{BUCKET_CANCEL, job_key};
use time::OffsetDateTime;
use tokio_util::task::AbortOnDropHandle;

/// Most cancellation marks a worker remembers.
pub(crate) const MAX_MARKS: usize = 1_000_000;

/// Longest a starting worker waits to have read the cancellation marks.
const MIRROR_PATIENCE: Duration = Duration::from_secs(60);

/// The cancelled job keys' hashes, kept current by a watcher task that stops with the last
/// clone (a worker that has stopped leaves no watch running on its client, which may live on:
/// an in-process worker's, in `kiln demo` or the benchmarks).
#[derive(Debug, Clone)]
pub(crate) struct Cancellations {
    marks: Arc<RwLock<Marks>>,
    _watcher: Arc<AbortOnDropHandle<()>>,
}

#[derive(Debug, Default)]
pub(crate) struct Marks {
    /// Each mark's key hash, and when the server stored it.
    set: HashMap<u64, OffsetDateTime>,
    /// When each mark came, oldest first (a mark put again is listed again; the older entry
    /// is skipped when it expires).
    order: VecDeque<(Instant, u64)>,
    /// The bucket's age limit (zero: none).
    ttl: Duration,
    cap: usize,
}

fn hash(key: &str) -> u64 {
    // SipHash with fixed keys: the same hash in every process and run.
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

impl Marks {
    fn new(ttl: Duration, cap: usize) -> Self {
        Marks {
            ttl,
            cap,
            ..Default::default()
        }
    }

    fn put(&mut self, key: &str, now: Instant, created: OffsetDateTime) {
        let h = hash(key);
        self.set.insert(h, created);
        self.order.push_back((now, h));
        self.expire(now);
    }

    fn remove(&mut self, key: &str) {
        self.set.remove(&hash(key));
    }

    /// Forget marks older than the bucket keeps them, and the oldest beyond the cap.
    fn expire(&mut self, now: Instant) {
        while let Some(&(at, h)) = self.order.front() {
            let old = !self.ttl.is_zero() && now.duration_since(at) > self.ttl;
            if !old && self.order.len() <= self.cap {
                break;
            }
            self.order.pop_front();
            // Put again later: a newer entry still stands for it.
            if !self.order.iter().rev().take(64).any(|&(_, x)| x == h) {
                self.set.remove(&h);
            }
        }
    }

    /// Whether a mark on `key` cancels a job enqueued at `enqueued_at`.
    fn cancels(&self, key: &str, enqueued_at: OffsetDateTime) -> bool {
        self.set
            .get(&hash(key))
            .is_some_and(|&created| kiln_proto::cancel_applies(created, enqueued_at))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.set.len()
    }
}

impl Cancellations {
    /// Start mirroring the bucket (its current keys first, then every change), and return
    /// once the current keys are mirrored: a worker that served jobs before it had read the
    /// bucket ran jobs cancelled while no worker was up.
    pub(crate) async fn watch(js: &jetstream::Context) -> Result<Self, String> {
        let store = js
            .get_key_value(BUCKET_CANCEL)
            .await
            .map_err(|e| format!("opening the {BUCKET_CANCEL} bucket: {e}"))?;
        let status = store.status().await.ok();
        let ttl = status
            .as_ref()
            .map_or(Duration::from_secs(24 * 3600), |s| s.max_age());
        let stored = status.as_ref().map_or(1, |s| s.values());
        // The bucket's last entry at the start: the mirror has read what was stored once it has
        // read that one (or nothing is pending), even while new marks keep coming.
        let last = status
            .as_ref()
            .map_or(u64::MAX, |s| s.info.state.last_sequence);
        let watch = store
            .watch_with_history(">")
            .await
            .map_err(|e| format!("watching {BUCKET_CANCEL}: {e}"))?;
        let marks = Arc::new(RwLock::new(Marks::new(ttl, MAX_MARKS)));
        let (read, mirrored) = tokio::sync::oneshot::channel();
        // Nothing stored: nothing to wait for.
        let read = (stored > 0).then_some(read);
        let watcher = tokio::spawn(mirror(watch, marks.clone(), read, last));
        let watcher = AbortOnDropHandle::new(watcher);
        if stored > 0 {
            wait_until_mirrored(&store, mirrored, stored).await?;
        }
        Ok(Cancellations {
            marks,
            _watcher: Arc::new(watcher),
        })
    }

    /// Whether job `id`, enqueued at `enqueued_at`, is cancelled: by a mark put after it was
    /// enqueued (a mark older than the job was for another job under that id, or none).
    pub(crate) fn cancels(&self, id: &str, enqueued_at: OffsetDateTime) -> bool {
        let marks = self.marks.read().unwrap_or_else(|e| e.into_inner());
        // Nothing cancelled (nearly always): no key to build for every job and checkpoint.
        !marks.set.is_empty() && marks.cancels(&job_key(id), enqueued_at)
    }
}

/// Mirror the bucket's entries into `marks`, a batch of those ready at a time under one lock
/// (one at a time, a flood of a million marks outran the mirror, and the client dropped
/// entries as a slow consumer); say on `read` when the entries stored at the start are in.
async fn mirror(
    watch: async_nats::jetstream::kv::Watch,
    marks: Arc<RwLock<Marks>>,
    mut read: Option<tokio::sync::oneshot::Sender<()>>,
    last: u64,
) {
    let mut batches = watch.ready_chunks(4096);
    while let Some(batch) = batches.next().await {
        let now = Instant::now();
        let mut marks = marks.write().unwrap_or_else(|e| e.into_inner());
        for entry in batch {
            let Ok(entry) = entry else { continue };
            match entry.operation {
                Operation::Put => marks.put(&entry.key, now, entry.created),
                Operation::Delete | Operation::Purge => marks.remove(&entry.key),
            }
            // No more pending, or past the last entry stored at the start: they are all in.
            if (entry.delta == 0 || entry.revision >= last)
                && let Some(read) = read.take()
            {
                let _ = read.send(());
            }
        }
    }
}

/// Wait for the mirror to have read the `stored` entries the bucket held at the start, saying
/// so every few seconds while it takes long (and done if `store` has expired them all
/// meanwhile: then none comes). At most [`MIRROR_PATIENCE`]: past it the worker serves with
/// what it has read, saying so, rather than not at all.
async fn wait_until_mirrored(
    store: &async_nats::jetstream::kv::Store,
    mut mirrored: tokio::sync::oneshot::Receiver<()>,
    stored: u64,
) -> Result<(), String> {
    let started = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), &mut mirrored).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(_)) => {
                return Err(format!(
                    "the watch of {BUCKET_CANCEL} ended before its {stored} entries were read"
                ));
            }
            Err(_) => {
                if store.status().await.is_ok_and(|s| s.values() == 0) {
                    return Ok(());
                }
                if started.elapsed() >= MIRROR_PATIENCE {
                    tracing::warn!(
                        entries = stored,
                        "serving before every cancellation mark is read: a job cancelled among \
                         the marks not read yet may still run"
                    );
                    return Ok(());
                }
                tracing::info!(
                    entries = stored,
                    waited_s = started.elapsed().as_secs(),
                    "reading the cancellation marks before serving jobs"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job enqueued when the marks below were put.
    const AT: OffsetDateTime = time::macros::datetime!(2026-12-05 12:00 UTC);

    impl Marks {
        fn contains(&self, key: &str) -> bool {
            self.cancels(key, AT)
        }
    }

    #[test]
    fn marks_are_bounded_by_count_and_by_age() {
        let start = Instant::now();
        let mut marks = Marks::new(Duration::from_secs(60), 1000);
        for i in 0..5000 {
            marks.put(&format!("job.j-{i}"), start, AT);
        }
        assert_eq!(marks.len(), 1000);
        assert!(marks.contains("job.j-4999") && !marks.contains("job.j-0"));
        assert!(marks.order.len() <= 1000);
        // Past the bucket's age limit every mark is gone, with the next one.
        marks.put("job.late", start + Duration::from_secs(61), AT);
        assert_eq!(marks.len(), 1);
        assert!(marks.contains("job.late"));
        marks.remove("job.late");
        assert!(!marks.contains("job.late"));
    }

    #[test]
    fn a_mark_put_again_outlives_its_first_entry() {
        let start = Instant::now();
        let mut marks = Marks::new(Duration::from_secs(10), 100);
        marks.put("job.a", start, AT);
        marks.put("job.a", start + Duration::from_secs(8), AT);
        marks.put("job.b", start + Duration::from_secs(11), AT);
        assert!(marks.contains("job.a"), "its second put is 3 s old");
    }

    #[test]
    fn a_mark_cancels_jobs_enqueued_before_it_not_after() {
        let mut marks = Marks::new(Duration::from_secs(60), 100);
        marks.put("job.a", Instant::now(), AT);
        let seconds = time::Duration::seconds;
        assert!(marks.cancels("job.a", AT - seconds(3600)));
        assert!(marks.cancels("job.a", AT));
        assert!(
            marks.cancels("job.a", AT + seconds(1)),
            "within the clocks' slack"
        );
        assert!(
            !marks.cancels("job.a", AT + seconds(2)),
            "a job sent after the mark"
        );
        assert!(!marks.cancels("job.b", AT));
    }
}
