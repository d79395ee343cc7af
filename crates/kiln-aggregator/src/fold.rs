//! The fold itself: pure, so that it is tested without a server.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};

use kiln_proto::{
    DeviceClass, ErrorKind, Latency, MAX_RESULT_RANGES, MetricsSnapshot, PredictionStats,
    ResultEvent, Routing, Status,
};
use serde::Deserialize;
use time::OffsetDateTime;

use crate::watermark::Watermark;

/// The fields of a result event the fold needs. Decoding into it skips the `output` object
/// instead of building it, which is most of a result event's bytes.
#[derive(Debug, Clone, Deserialize)]
pub struct ResultHead {
    /// See [`ResultEvent::id`].
    pub id: String,
    /// See [`ResultEvent::kind`].
    pub kind: String,
    /// See [`ResultEvent::status`].
    pub status: Status,
    /// See [`ResultEvent::device`].
    pub device: String,
    /// See [`ResultEvent::class`].
    pub class: DeviceClass,
    /// See [`ResultEvent::worker`] (empty when absent).
    #[serde(default)]
    pub worker: String,
    /// See [`ResultEvent::attempt`] (0 when absent).
    #[serde(default)]
    pub attempt: u64,
    /// See [`ResultEvent::finished_at`].
    #[serde(with = "time::serde::rfc3339")]
    pub finished_at: OffsetDateTime,
    /// See [`ResultEvent::queue_ms`].
    pub queue_ms: f64,
    /// See [`ResultEvent::compute_ms`].
    pub compute_ms: f64,
    /// See [`ResultEvent::total_ms`].
    pub total_ms: f64,
    /// The failure's kind, when it failed.
    #[serde(default)]
    pub error: Option<ErrorHead>,
    /// See [`ResultEvent::routing`].
    #[serde(default)]
    pub routing: Option<Routing>,
    /// See [`ResultEvent::replay`].
    #[serde(default)]
    pub replay: u32,
    /// The job's work in flops (0 when unknown), for the speedup's size buckets.
    #[serde(default)]
    pub flops: f64,
}

/// The kind of a failure, without its message.
#[derive(Debug, Clone, Deserialize)]
pub struct ErrorHead {
    /// See [`kiln_proto::JobError::kind`].
    pub kind: ErrorKind,
}

impl From<&ResultEvent> for ResultHead {
    fn from(event: &ResultEvent) -> Self {
        ResultHead {
            id: event.id.clone(),
            kind: event.kind.clone(),
            status: event.status,
            device: event.device.clone(),
            class: event.class,
            worker: event.worker.clone(),
            attempt: event.attempt,
            finished_at: event.finished_at,
            queue_ms: event.queue_ms,
            compute_ms: event.compute_ms,
            total_ms: event.total_ms,
            error: event.error.as_ref().map(|e| ErrorHead { kind: e.kind }),
            routing: event.routing.clone(),
            replay: event.replay,
            flops: event.flops,
        }
    }
}

/// Counts and latencies of one (kind, class).
#[derive(Debug, Clone, Default)]
pub struct Fold {
    /// Distinct jobs counted.
    pub jobs: u64,
    /// Of them, jobs that succeeded.
    pub succeeded: u64,
    /// Of them, jobs that failed.
    pub failed: u64,
    /// Failed jobs by error kind (`unknown` when the result names none).
    pub failures: BTreeMap<String, u64>,
    /// Result events dropped because their job (and run) was already counted.
    pub duplicates: u64,
    /// Jobs counted per device (`cpu`, `cuda:0`, `none`).
    pub devices: BTreeMap<String, u64>,
    /// Earliest `finished_at` counted (`None`: no job yet).
    pub first_finished_at: Option<OffsetDateTime>,
    /// Latest `finished_at` counted (`None`: no job yet).
    pub last_finished_at: Option<OffsetDateTime>,
    /// `queue_ms` of the jobs counted.
    pub queue: Latency,
    /// `compute_ms` of the jobs counted that succeeded: a failed job's time is often none (it
    /// never reached a device) and would pull means and speedups down.
    pub compute: Latency,
    /// `total_ms` of the jobs counted.
    pub total: Latency,
    /// Succeeded jobs and the sum of their `compute_ms`, by size (the decade of their flops,
    /// -1 for none; labelled as [`kiln_telemetry::size_bucket`] does in snapshots).
    pub compute_by_size: BTreeMap<i32, (u64, f64)>,
    /// Routed jobs with a prediction, and the sums of their errors.
    predicted: u64,
    abs_error_sum_ms: f64,
    error_sum_ms: f64,
    jobs_at_last_snapshot: u64,
    last_snapshot_at: Option<OffsetDateTime>,
    dirty: bool,
    /// `results_through` of the stored snapshot this fold was restored from: its results at
    /// or below it were counted before a restart.
    restored_through: u64,
    /// `results_above` of that snapshot: results above `restored_through` counted too.
    restored_above: Vec<[u64; 2]>,
}

impl Fold {
    fn add(&mut self, event: &ResultHead) {
        self.jobs += 1;
        match event.status {
            Status::Succeeded => self.succeeded += 1,
            Status::Failed => {
                self.failed += 1;
                let kind = event
                    .error
                    .as_ref()
                    .map_or("unknown".to_owned(), |e| e.kind.to_string());
                *self.failures.entry(kind).or_default() += 1;
            }
        }
        *self
            .devices
            .entry(device_key(&self.devices, &event.device))
            .or_default() += 1;
        let at = event.finished_at;
        self.first_finished_at = Some(self.first_finished_at.map_or(at, |f| f.min(at)));
        self.last_finished_at = Some(self.last_finished_at.map_or(at, |l| l.max(at)));
        self.queue.record_ms(event.queue_ms);
        if event.status == Status::Succeeded {
            self.compute.record_ms(event.compute_ms);
            // Within a week, as predictions are: sums of absurd times would reach infinity,
            // which the snapshot's JSON writes as `null` and no reader parses.
            if (0.0..=MAX_PREDICTED_MS).contains(&event.compute_ms) {
                let size = kiln_telemetry::flops_decade(event.flops);
                let (jobs, sum_ms) = self.compute_by_size.entry(size).or_default();
                *jobs += 1;
                *sum_ms += event.compute_ms;
            }
        }
        self.total.record_ms(event.total_ms);
        // A prediction is believed only as a time between 0 and a week (workers pass on only
        // such, see `kiln_proto::Envelope`): one absurd value would make every sum infinite,
        // and an infinite sum is `null` in the snapshot's JSON, which no reader parses.
        if let Some(predicted) = event.routing.as_ref().and_then(Routing::predicted_ms)
            && predicted.is_finite()
            && (0.0..=MAX_PREDICTED_MS).contains(&predicted)
            && event.total_ms.is_finite()
        {
            let error = predicted - event.total_ms;
            self.predicted += 1;
            self.abs_error_sum_ms += error.abs();
            self.error_sum_ms += error;
        }
        self.dirty = true;
    }

    fn snapshot(&mut self, kind: &str, class: &str, now: OffsetDateTime) -> MetricsSnapshot {
        let span = match (self.first_finished_at, self.last_finished_at) {
            (Some(first), Some(last)) => (last - first).as_seconds_f64(),
            _ => 0.0,
        };
        let throughput_per_s = if span > 0.0 {
            (self.jobs.saturating_sub(1)) as f64 / span
        } else {
            0.0
        };
        let recent_per_s = match self.last_snapshot_at {
            Some(at) if (now - at).as_seconds_f64() > 0.0 => {
                (self.jobs - self.jobs_at_last_snapshot) as f64 / (now - at).as_seconds_f64()
            }
            _ => 0.0,
        };
        self.jobs_at_last_snapshot = self.jobs;
        self.last_snapshot_at = Some(now);
        self.dirty = false;
        MetricsSnapshot {
            kind: kind.to_owned(),
            class: class.to_owned(),
            jobs: self.jobs,
            succeeded: self.succeeded,
            failed: self.failed,
            failures: self.failures.clone(),
            duplicates: self.duplicates,
            devices: self.devices.clone(),
            first_finished_at: self.first_finished_at,
            last_finished_at: self.last_finished_at,
            throughput_per_s,
            recent_per_s,
            queue_ms: self.queue.stats(),
            compute_ms: self.compute.stats(),
            compute_by_size: self
                .compute_by_size
                .iter()
                .map(|(&decade, &(jobs, sum_ms))| {
                    let mean_ms = sum_ms / jobs.max(1) as f64;
                    let size = kiln_telemetry::size_label(decade);
                    (size, kiln_proto::SizeMean { jobs, mean_ms })
                })
                .collect(),
            total_ms: self.total.stats(),
            results_through: self.restored_through,
            results_above: Vec::new(),
            prediction: PredictionStats {
                routed: self.predicted,
                mean_abs_error_ms: self.abs_error_sum_ms / self.predicted.max(1) as f64,
                mean_error_ms: self.error_sum_ms / self.predicted.max(1) as f64,
            },
            updated_at: now,
        }
    }

    /// Carry on from a stored snapshot.
    pub fn restore(snapshot: &MetricsSnapshot) -> Self {
        Fold {
            jobs: snapshot.jobs,
            succeeded: snapshot.succeeded,
            failed: snapshot.failed,
            failures: snapshot.failures.clone(),
            duplicates: snapshot.duplicates,
            devices: snapshot.devices.clone(),
            first_finished_at: snapshot.first_finished_at,
            last_finished_at: snapshot.last_finished_at,
            queue: Latency::from_stats(&snapshot.queue_ms).unwrap_or_default(),
            compute: Latency::from_stats(&snapshot.compute_ms).unwrap_or_default(),
            total: Latency::from_stats(&snapshot.total_ms).unwrap_or_default(),
            compute_by_size: snapshot
                .compute_by_size
                .iter()
                .filter_map(|(size, m)| {
                    let decade = kiln_proto::size_decade(size)?;
                    Some((decade, (m.jobs, m.mean_ms * m.jobs as f64)))
                })
                .collect(),
            predicted: snapshot.prediction.routed,
            abs_error_sum_ms: snapshot.prediction.mean_abs_error_ms
                * snapshot.prediction.routed as f64,
            error_sum_ms: snapshot.prediction.mean_error_ms * snapshot.prediction.routed as f64,
            jobs_at_last_snapshot: snapshot.jobs,
            last_snapshot_at: Some(snapshot.updated_at),
            dirty: false,
            restored_through: snapshot.results_through,
            restored_above: snapshot.results_above.clone(),
        }
    }
}

/// The largest predicted time folded, and the largest compute time folded by size, in
/// milliseconds (a week).
const MAX_PREDICTED_MS: f64 = 7.0 * 24.0 * 3600.0 * 1000.0;

/// Job ids remembered to drop duplicate result events: the newest this many.
const SEEN_CAPACITY: usize = 1 << 20;

/// Most devices one fold names, and the longest name it keeps: results from other devices
/// count under `other`. A worker names its device in a few bytes (`cpu`, `cuda:0`, `none`);
/// results published by hand with long or ever-new names grew a snapshot past the server's
/// max_payload, after which no snapshot was stored and every count stood still.
const MAX_DEVICES: usize = 64;
const MAX_DEVICE_NAME: usize = 64;

/// Most (kind, class) folds: results of further kinds (made up, published by hand) are not
/// counted, and make no snapshot subject or metrics series of their own.
pub(crate) const MAX_FOLDS: usize = 1024;

/// The key `device` counts under in `devices`.
fn device_key(devices: &BTreeMap<String, u64>, device: &str) -> String {
    let known = devices.contains_key(device) || devices.len() < MAX_DEVICES;
    match device.len() <= MAX_DEVICE_NAME && known {
        true => device.to_owned(),
        false => "other".to_owned(),
    }
}

/// Every (kind, class) fold, plus the ids already counted.
#[derive(Debug, Default)]
pub struct Folds {
    folds: BTreeMap<(String, String), Fold>,
    /// The jobs counted, each as a 64-bit hash of its kind, id and run ([`Folds::seen_key`]):
    /// 27 MB at [`SEEN_CAPACITY`]. As strings they took about 170 bytes a job, and a
    /// long-running aggregator grew by that much per job, to about 150 MB
    /// (bench/results/2026-12-06/aggregator-rss).
    seen: HashSet<u64>,
    seen_order: VecDeque<u64>,
    /// Keyed afresh by each process (the set is not kept across restarts), so that no sender
    /// can pick an id whose hash is another job's.
    seen_hasher: RandomState,
    delivered: Watermark,
    /// See [`Folds::owed_through`].
    owed: u64,
}

impl Folds {
    /// Whether a result of `kind` on `class` has a fold to count in: one it has, or room for
    /// another ([`MAX_FOLDS`]).
    pub fn has_room_for(&self, kind: &str, class: DeviceClass) -> bool {
        self.folds.len() < MAX_FOLDS
            || self
                .folds
                .contains_key(&(kind.to_owned(), class.to_string()))
    }

    /// Count one result event; returns false when its job id was already counted.
    pub fn add(&mut self, event: &ResultHead) -> bool {
        self.add_at(event, 0)
    }

    /// [`add`](Self::add) for the result at `sequence` in `KILN_RESULTS` (0: unknown). A
    /// result at or below the sequence its fold's stored snapshot had counted before a
    /// restart is a redelivery of one already counted (the consumer delivers results in
    /// stream order the first time), and is dropped as a duplicate.
    pub fn add_at(&mut self, event: &ResultHead, sequence: u64) -> bool {
        self.delivered_at(sequence);
        let key = (event.kind.clone(), event.class.to_string());
        if sequence > 0
            && let Some(fold) = self.folds.get_mut(&key)
            && (sequence <= fold.restored_through
                || fold
                    .restored_above
                    .iter()
                    .any(|[first, last]| (*first..=*last).contains(&sequence)))
        {
            fold.duplicates += 1;
            fold.dirty = true;
            return false;
        }
        // One count per job and run: a replay from the dead-letter queue is a new run. A job
        // is its kind and id, as its result subject is (`results.<kind>.<id>`): the same id
        // sent as two kinds is two jobs with two results, and both are counted.
        let seen_key = self.seen_key(event);
        if !self.seen.insert(seen_key) {
            let fold = self.folds.entry(key).or_default();
            fold.duplicates += 1;
            fold.dirty = true;
            return false;
        }
        // The oldest forgotten first, so that the queue never outgrows its first allocation.
        if self.seen_order.len() >= SEEN_CAPACITY
            && let Some(old) = self.seen_order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.seen_order.push_back(seen_key);
        self.folds.entry(key).or_default().add(event);
        true
    }

    /// A job's run as its key in `seen`: two jobs share one with a chance of about 2^-64
    /// per pair (one in 18 million million million), so that a result is counted wrongly
    /// as a duplicate about once in 10^13 results while the set is full.
    fn seen_key(&self, event: &ResultHead) -> u64 {
        self.seen_hasher
            .hash_one((&event.kind, &event.id, event.replay))
    }

    /// The aggregator consumer's ack floor, read again: see [`Watermark::raise`].
    pub fn acked_through(&mut self, floor: u64) {
        self.delivered.raise(floor);
    }

    /// A result at `sequence` was delivered, counted or not (one that does not parse).
    pub fn delivered_at(&mut self, sequence: u64) {
        if sequence > 0 {
            self.delivered.see(sequence);
        }
    }

    /// No result from `first` to `last` is in the stream (the consumer went past them
    /// without a delivery lost on the way, or the stream said so). Returns how many of them
    /// no stored snapshot counted: every sequence was a result once, so those were dropped
    /// from the stream (its age or size limit) before any aggregator read them.
    pub fn absent(&mut self, first: u64, last: u64) -> u64 {
        if first > last {
            return 0;
        }
        self.delivered.see_range(first, last);
        let through = self.folds.values().map(|f| f.restored_through).max();
        let first = first.max(through.unwrap_or(0) + 1);
        if first > last {
            return 0;
        }
        let mut counted: Vec<[u64; 2]> = self
            .folds
            .values()
            .flat_map(|f| f.restored_above.iter().copied())
            .filter(|[s, e]| *s <= last && *e >= first)
            .map(|[s, e]| [s.max(first), e.min(last)])
            .collect();
        counted.sort_unstable();
        let (mut covered, mut upto) = (0, first - 1);
        for [s, e] in counted {
            let s = s.max(upto + 1);
            if s <= e {
                covered += e - s + 1;
                upto = e;
            }
        }
        (last - first + 1) - covered
    }

    /// The watermark: every result at or below it is accounted for.
    pub fn through(&self) -> u64 {
        self.delivered.through
    }

    /// Up to `limit` sequences below the highest delivered that are not accounted for: a
    /// delivery lost on the way (a consumer leader moving in a cluster), or results a
    /// previous instance held unacked when it stopped.
    pub fn holes(&self, limit: usize) -> Vec<u64> {
        self.delivered.holes(limit, self.owed)
    }

    /// Results up to `sequence` were delivered before this instance started (to an instance
    /// that stopped, or stood down, with them unacked): read them at the next snapshot,
    /// rather than wait for their redelivery after the ack wait.
    pub fn owed_through(&mut self, sequence: u64) {
        self.owed = self.owed.max(sequence);
    }

    /// Start from the aggregator consumer's ack floor (every result at or below it was acked,
    /// so counted in a stored snapshot) and the results stream's last sequence. A stream whose
    /// last sequence is below what the restored snapshots recorded was made again, with its
    /// sequences starting over: their `results_through` then says nothing, and is forgotten.
    pub fn start(&mut self, ack_floor: u64, last_sequence: u64) {
        self.delivered = Watermark::at(ack_floor);
        if self
            .folds
            .values()
            .any(|f| f.restored_through > last_sequence)
        {
            for fold in self.folds.values_mut() {
                fold.restored_through = 0;
                fold.restored_above.clear();
            }
        }
    }

    /// Carry on from a stored snapshot, replacing its (kind, class) fold.
    pub fn restore(&mut self, snapshot: &MetricsSnapshot) {
        self.folds.insert(
            (snapshot.kind.clone(), snapshot.class.clone()),
            Fold::restore(snapshot),
        );
    }

    /// The fold of (`kind`, `class`), if a result of it was counted or restored.
    pub fn get(&self, kind: &str, class: &str) -> Option<&Fold> {
        self.folds.get(&(kind.to_owned(), class.to_owned()))
    }

    /// Mark the folds of `snapshots` changed again: they were not stored, so the next
    /// [`snapshots`](Self::snapshots) call includes them.
    pub fn unstored(&mut self, snapshots: &[MetricsSnapshot]) {
        for s in snapshots {
            if let Some(fold) = self.folds.get_mut(&(s.kind.clone(), s.class.clone())) {
                fold.dirty = true;
            }
        }
    }

    /// Snapshots of every fold that changed since the last call.
    pub fn snapshots(&mut self, now: OffsetDateTime) -> Vec<MetricsSnapshot> {
        let through = self.delivered.through;
        let delivered_above = self.delivered.ranges();
        self.folds
            .iter_mut()
            .filter(|(_, fold)| fold.dirty)
            .map(|((kind, class), fold)| {
                let mut snapshot = fold.snapshot(kind, class, now);
                snapshot.results_through = snapshot.results_through.max(through);
                // What this fold counted above the watermark: delivered here, or counted by
                // the instance it was restored from and not yet passed.
                let mut above: Vec<[u64; 2]> = fold
                    .restored_above
                    .iter()
                    .chain(&delivered_above)
                    .filter(|[_, last]| *last > snapshot.results_through)
                    .map(|&[first, last]| [first.max(snapshot.results_through + 1), last])
                    .collect();
                snapshot.results_above = merge_ranges(&mut above);
                snapshot
            })
            .collect()
    }
}

/// `ranges` sorted and merged, at most [`MAX_RESULT_RANGES`] (the newest kept: past the
/// bound, a restart may count some results twice rather than miss any).
fn merge_ranges(ranges: &mut [[u64; 2]]) -> Vec<[u64; 2]> {
    ranges.sort_unstable();
    let mut merged: Vec<[u64; 2]> = Vec::new();
    for &[first, last] in ranges.iter() {
        match merged.last_mut() {
            Some(prev) if first <= prev[1].saturating_add(1) => prev[1] = prev[1].max(last),
            _ => merged.push([first, last]),
        }
    }
    let excess = merged.len().saturating_sub(MAX_RESULT_RANGES);
    merged.drain(..excess);
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_proto::JobError;

    #[test]
    fn results_counted_above_the_watermark_are_not_counted_again_by_the_next_instance() {
        // A counted 1–5 and stored them; 6–10 were delivered to it, unacked, when it was
        // killed. B starts at the ack floor, 5, counts 11 and 12 (6–10 come back only after
        // the ack wait), stores its snapshot, and is killed before its acks reach the server.
        let mut a = Folds::default();
        for seq in 1..=5 {
            a.add_at(&event(&seq.to_string(), Status::Succeeded, 1.0), seq);
        }
        let stored = a.snapshots(OffsetDateTime::now_utc()).remove(0);
        let mut b = Folds::default();
        b.restore(&stored);
        b.start(5, 12);
        for seq in [11, 12] {
            assert!(b.add_at(&event(&seq.to_string(), Status::Succeeded, 1.0), seq));
        }
        let stored = b.snapshots(OffsetDateTime::now_utc()).remove(0);
        assert_eq!(stored.results_through, 5);
        assert_eq!(stored.results_above, vec![[11, 12]]);
        // C gets 6–10 and, its acks lost, 11 and 12 again: counted once.
        let mut c = Folds::default();
        c.restore(&stored);
        c.start(5, 12);
        for seq in [6, 7, 11, 8, 9, 12, 10] {
            let counted = c.add_at(&event(&seq.to_string(), Status::Succeeded, 1.0), seq);
            assert_eq!(counted, seq <= 10, "result {seq}");
        }
        let done = c.snapshots(OffsetDateTime::now_utc()).remove(0);
        assert_eq!((done.jobs, done.duplicates), (12, 2));
        assert_eq!(done.results_through, 12);
        assert!(done.results_above.is_empty());
        // Killed again before 6–10 came back, C would pass B's ranges on.
        let mut c2 = Folds::default();
        c2.restore(&stored);
        c2.start(5, 12);
        c2.add_at(&event("13", Status::Succeeded, 1.0), 13);
        let passed_on = c2.snapshots(OffsetDateTime::now_utc()).remove(0);
        assert_eq!(passed_on.results_above, vec![[11, 13]]);
    }

    #[test]
    fn ranges_are_merged_and_bounded() {
        assert_eq!(
            merge_ranges(&mut [[5, 6], [1, 2], [3, 3], [9, 9]]),
            vec![[1, 3], [5, 6], [9, 9]]
        );
        let mut many: Vec<[u64; 2]> = (0..1000).map(|i| [i * 10, i * 10]).collect();
        let merged = merge_ranges(&mut many);
        assert_eq!(merged.len(), MAX_RESULT_RANGES);
        assert_eq!(merged.last(), Some(&[9990, 9990]), "the newest kept");
    }

    #[test]
    fn an_absurd_prediction_leaves_the_snapshot_readable() {
        let mut folds = Folds::default();
        for (i, predicted) in [1.7e308, 1.7e308, -5.0, 12.0].into_iter().enumerate() {
            let mut e = event(&format!("p{i}"), Status::Succeeded, 10.0);
            e.routing = Some(Routing {
                chosen: DeviceClass::Cpu,
                by: "s".into(),
                predicted_gpu_ms: None,
                predicted_cpu_ms: Some(predicted),
                reason: String::new(),
            });
            folds.add(&e);
        }
        let snapshots = folds.snapshots(OffsetDateTime::now_utc());
        let json = serde_json::to_vec(&snapshots[0]).unwrap();
        let back: MetricsSnapshot = serde_json::from_slice(&json).expect("readable");
        assert_eq!(back.jobs, 4);
        assert_eq!(back.prediction.routed, 1, "only the believable prediction");
        assert!((back.prediction.mean_error_ms - 2.0).abs() < 1e-9);
    }

    #[test]
    fn devices_with_long_or_ever_new_names_count_under_other() {
        let mut folds = Folds::default();
        let long = "d".repeat(99_000);
        for n in 0..200 {
            let mut e = event(&format!("dev-{n}"), Status::Succeeded, 1.0);
            e.device = match n % 2 {
                0 => format!("{long}{n}"),
                _ => format!("cuda:{n}"),
            };
            assert!(folds.add(&e));
        }
        let mut e = event("cpu-1", Status::Succeeded, 1.0);
        e.device = "cuda:1".into();
        folds.add(&e);
        let snapshot = folds.snapshots(OffsetDateTime::now_utc()).remove(0);
        assert_eq!(snapshot.jobs, 201);
        let devices = &snapshot.devices;
        assert_eq!(devices.len(), MAX_DEVICES, "{:?}", devices.keys());
        assert_eq!(devices.values().sum::<u64>(), 201);
        assert_eq!(devices["cuda:1"], 2, "a device it names goes on counting");
        // The long names, and the cuda devices past the 63 named beside `other`.
        assert_eq!(devices["other"], 100 + (100 - 63));
        assert!(snapshot.devices.keys().all(|d| d.len() <= MAX_DEVICE_NAME));
        assert!(serde_json::to_vec(&snapshot).unwrap().len() < 64 * 1024);
    }

    #[test]
    fn there_is_room_for_a_bounded_number_of_kinds() {
        let mut folds = Folds::default();
        for n in 0..MAX_FOLDS {
            let mut e = event(&format!("k-{n}"), Status::Succeeded, 1.0);
            e.kind = format!("kind{n}");
            assert!(folds.has_room_for(&e.kind, e.class));
            folds.add(&e);
        }
        assert!(!folds.has_room_for("another", DeviceClass::Cpu));
        assert!(folds.has_room_for("kind7", DeviceClass::Cpu), "one it has");
    }

    fn event(id: &str, status: Status, total_ms: f64) -> ResultHead {
        let now = OffsetDateTime::now_utc();
        let event = ResultEvent {
            id: id.into(),
            kind: "vector_add".into(),
            status,
            device: "cpu".into(),
            class: DeviceClass::Cpu,
            worker: "w".into(),
            attempt: 1,
            enqueued_at: now,
            started_at: now,
            finished_at: now,
            queue_ms: 1.0,
            compute_ms: 2.0,
            total_ms,
            output: serde_json::Value::Null,
            error: (status == Status::Failed)
                .then(|| JobError::new(ErrorKind::InvalidInput, "bad")),
            flops: 0.0,
            routing: None,
            replay: 0,
        };
        // Through JSON, as the service reads it.
        serde_json::from_slice(&serde_json::to_vec(&event).unwrap()).unwrap()
    }

    #[test]
    fn counts_each_job_id_once() {
        let mut folds = Folds::default();
        assert!(folds.add(&event("a", Status::Succeeded, 3.0)));
        assert!(!folds.add(&event("a", Status::Succeeded, 3.0)));
        // The same id as another kind is another job.
        let mut other = event("a", Status::Succeeded, 3.0);
        other.kind = "matmul".into();
        assert!(folds.add(&other));
        assert!(folds.add(&event("b", Status::Failed, 5.0)));
        let snaps = folds.snapshots(OffsetDateTime::now_utc());
        assert_eq!(snaps.len(), 2);
        let s = snaps.iter().find(|s| s.kind == "vector_add").unwrap();
        assert_eq!((s.jobs, s.succeeded, s.failed, s.duplicates), (2, 1, 1, 1));
        assert_eq!(s.failures.get("invalid_input"), Some(&1));
        assert_eq!(s.total_ms.count, 2);
        assert!((s.total_ms.max - 5.0).abs() < 0.01);
        // Compute times are the succeeded jobs' only.
        assert_eq!(s.compute_ms.count, 1);
        // Nothing changed: no new snapshot.
        assert!(folds.snapshots(OffsetDateTime::now_utc()).is_empty());
    }

    #[test]
    fn a_replay_is_another_run_and_the_oldest_ids_are_forgotten() {
        let mut folds = Folds::default();
        let mut e = event("a", Status::Succeeded, 3.0);
        assert!(folds.add(&e));
        e.replay = 1;
        assert!(
            folds.add(&e),
            "a replay from the dead-letter queue is counted"
        );
        assert!(!folds.add(&e));
        // Past the newest SEEN_CAPACITY jobs, the first is forgotten, and the memory the
        // ids take stays that of SEEN_CAPACITY hashes (strings grew it 150 bytes a job).
        e.replay = 0;
        for i in 0..SEEN_CAPACITY {
            e.id = format!("j{i}");
            assert!(folds.add(&e), "{i}");
        }
        assert!(folds.seen_order.capacity() <= SEEN_CAPACITY);
        assert_eq!(folds.seen.len(), SEEN_CAPACITY);
        e.id = "a".into();
        assert!(folds.add(&e), "forgotten, so counted again");
        e.id = format!("j{}", SEEN_CAPACITY - 1);
        assert!(!folds.add(&e), "the newest are still known");
    }

    #[test]
    fn prediction_error_of_routed_jobs() {
        let mut folds = Folds::default();
        for (id, predicted, total) in [("a", 12.0, 10.0), ("b", 4.0, 8.0)] {
            let mut e = event(id, Status::Succeeded, total);
            e.routing = Some(Routing {
                chosen: DeviceClass::Cpu,
                by: "s".into(),
                predicted_gpu_ms: None,
                predicted_cpu_ms: Some(predicted),
                reason: String::new(),
            });
            folds.add(&e);
        }
        folds.add(&event("c", Status::Succeeded, 1.0));
        let s = folds.snapshots(OffsetDateTime::now_utc()).remove(0);
        assert_eq!(s.prediction.routed, 2);
        assert!((s.prediction.mean_abs_error_ms - 3.0).abs() < 1e-9);
        assert!((s.prediction.mean_error_ms - (-1.0)).abs() < 1e-9);
    }

    #[test]
    fn absent_results_no_snapshot_counted_are_told_apart_as_dropped_unread() {
        // A counted 1-5 and, above its watermark, 11-12, and stored that.
        let mut a = Folds::default();
        a.start(0, 12);
        for seq in [1, 2, 3, 4, 5, 11, 12] {
            a.add_at(&event(&seq.to_string(), Status::Succeeded, 1.0), seq);
        }
        let stored = a.snapshots(OffsetDateTime::now_utc()).remove(0);
        assert_eq!(
            (stored.results_through, stored.results_above.clone()),
            (5, vec![[11, 12]])
        );
        // The stream then dropped 1-14 (its age limit) before the next instance read 6-10 and
        // 13-14: those seven were never counted by anyone.
        let mut b = Folds::default();
        b.restore(&stored);
        b.start(5, 20);
        assert_eq!(b.absent(1, 14), 7);
        assert_eq!(b.absent(15, 15), 1);
        assert_eq!(b.absent(3, 2), 0, "an empty range");
        assert_eq!(b.through(), 15);
    }

    #[test]
    fn restored_fold_carries_on() {
        let mut folds = Folds::default();
        for i in 0..10 {
            folds.add(&event(&i.to_string(), Status::Succeeded, i as f64 + 1.0));
        }
        let snap = folds.snapshots(OffsetDateTime::now_utc()).remove(0);
        let mut restored = Folds::default();
        restored.restore(&snap);
        restored.add(&event("10", Status::Succeeded, 11.0));
        let again = restored.snapshots(OffsetDateTime::now_utc()).remove(0);
        assert_eq!(again.jobs, 11);
        assert_eq!(again.total_ms.count, 11);
        assert!((again.total_ms.max - 11.0).abs() < 0.01);
    }

    #[test]
    fn results_a_stored_snapshot_counted_are_not_counted_again_after_a_restart() {
        let mut folds = Folds::default();
        for seq in 1..=10 {
            assert!(folds.add_at(&event(&seq.to_string(), Status::Succeeded, 1.0), seq));
        }
        let snap = folds.snapshots(OffsetDateTime::now_utc()).remove(0);
        assert_eq!(snap.results_through, 10);
        // The aggregator stopped after storing the snapshot, before acking: all ten come
        // back, with the results that followed.
        let mut restored = Folds::default();
        restored.restore(&snap);
        for seq in 1..=12 {
            let counted = restored.add_at(&event(&seq.to_string(), Status::Succeeded, 1.0), seq);
            assert_eq!(counted, seq > 10, "result {seq}");
        }
        let again = restored.snapshots(OffsetDateTime::now_utc()).remove(0);
        assert_eq!((again.jobs, again.duplicates), (12, 10));
        assert_eq!(again.results_through, 12);
    }

    #[test]
    fn results_a_stopped_aggregator_held_unacked_are_counted_by_a_later_one() {
        // A counted 1–5 and stored them (through 5); 6–10 were delivered to it, unacked, when
        // it stopped. B starts at the ack floor, 5, and gets 11 and 12 first: 6–10 come back
        // only after the ack wait.
        let mut a = Folds::default();
        for seq in 1..=5 {
            a.add_at(&event(&seq.to_string(), Status::Succeeded, 1.0), seq);
        }
        let stored = a.snapshots(OffsetDateTime::now_utc()).remove(0);
        let mut b = Folds::default();
        b.restore(&stored);
        b.start(5, 12);
        for seq in [11, 12] {
            assert!(b.add_at(&event(&seq.to_string(), Status::Succeeded, 1.0), seq));
        }
        let stored = b.snapshots(OffsetDateTime::now_utc()).remove(0);
        assert_eq!(stored.results_through, 5, "6–10 not seen: not claimed");
        // B stops too; C gets 6–10 at last and counts them.
        let mut c = Folds::default();
        c.restore(&stored);
        c.start(5, 12);
        for seq in 6..=10 {
            assert!(c.add_at(&event(&seq.to_string(), Status::Succeeded, 1.0), seq));
        }
        let done = c.snapshots(OffsetDateTime::now_utc()).remove(0);
        assert_eq!(done.jobs, 12);
        assert_eq!(
            done.results_through, 10,
            "11 and 12 were delivered to B, not C"
        );
    }

    #[test]
    fn a_results_stream_made_again_forgets_the_recorded_sequences() {
        let mut a = Folds::default();
        for seq in 1..=50 {
            a.add_at(&event(&seq.to_string(), Status::Succeeded, 1.0), seq);
        }
        let stored = a.snapshots(OffsetDateTime::now_utc()).remove(0);
        let mut b = Folds::default();
        b.restore(&stored);
        // The stream now ends at 3: it was deleted and made again.
        b.start(0, 3);
        assert!(b.add_at(&event("new-1", Status::Succeeded, 1.0), 1));
    }
}
